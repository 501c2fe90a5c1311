"""Numba CPU kernels of the Fourier-slice projector.

The padded Fourier grid ``grid[z, y, x]`` has its origin at ``P // 2``.  For
image ``i`` and 2-D frequency ``(kx, ky)`` the sample position in grid units
is ``g = kx * rows[i, 0] + ky * rows[i, 1] + P // 2`` where ``rows[i]`` holds
the first two rows of the rotation matrix times the padding factor, in
``(x, y, z)`` order.  Interpolation uses four taps ``f - 1 .. f + 2`` around
``f = floor(g)`` per axis (the linear kernel gives zero weight to the outer
two); taps outside the grid read as zero, in the adjoint too, so forward and
adjoint are exact transposes.

Samples are multiplied by ``ctf[i, j]`` (when ``ctf`` has rows) and by the
shift phase ``exp(-2 pi i (kx tx + ky ty) / box)``.

The forward kernel is bound by memory latency: a 2x padded grid (128 MB at
box 128) is far larger than the caches, and the taps of one image lie on a
slab through all of it.  Per sample and core, at box 128 on the reference
machine, it took 170 ns image by image against 25 ns with the grid in cache.
Two measures close most of that gap:

* batches of many images are visited cell by cell of the grid
  (:func:`_spatial_order`), so every image crossing a cell reads its taps
  from cache: 45 ns plus 6 ns for the sort at 256 images;
* smaller batches go image by image and prefetch the taps a few samples
  ahead: 85 ns.

Each row of taps (four complex values, contiguous in ``x``) is read with one
SIMD load and accumulated with one SIMD multiply-add (:func:`_load_row`,
:func:`_fma`).
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .interpolation import (LINEAR, grid_position, sample_modulation, sample_tap_derivatives,
                            sample_taps, used_taps)

#: Samples per parallel task of the forward kernel.
_CHUNK = 2048
#: Edge, in grid units, of the cells :func:`_spatial_order` sorts samples into.
_CELL = 16
#: Batches of at least this many images are visited cell by cell; below it the
#: cells are crossed by too few images to pay for the sort.
_SORT_MIN_IMAGES = 96
#: Most images sorted together: more share each cell, but the order and the
#: cell of every sample take 12 bytes per sample.
_SORT_BATCH = 512
#: Samples ahead whose taps the image-by-image traversal prefetches.
_AHEAD = 8
#: The "image by image" order marker of :func:`_forward`.
_NATURAL_ORDER = np.zeros(0, dtype=np.int64)


_LANE = ir.IntType(32)


def _splat(context, builder, value, value_type, dtype, vector):
    """LLVM vector with every lane ``value`` (cast to ``dtype``)."""
    scalar = context.cast(builder, value, value_type, dtype)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, _LANE(0))
    lanes = ir.Constant(ir.VectorType(_LANE, vector.count), [0] * vector.count)
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined), lanes)


def _to_vector(builder, value, vector):
    """LLVM vector from a numba tuple."""
    result = ir.Constant(vector, ir.Undefined)
    for q in range(vector.count):
        result = builder.insert_element(result, builder.extract_value(value, q), _LANE(q))
    return result


def _to_tuple(context, builder, value, tuple_type):
    """numba tuple from an LLVM vector."""
    result = context.get_constant_undef(tuple_type)
    for q in range(tuple_type.count):
        result = builder.insert_value(result, builder.extract_element(value, _LANE(q)), q)
    return result


# Rows of taps are carried as tuples, which LLVM keeps in SIMD registers once
# these intrinsics are inlined: numba leaves short fixed-length loops scalar
# (its SLP vectoriser is off), which made a cubic sample three times slower.

@intrinsic
def _zero_row(typingctx, array, width):
    """Tuple of ``width`` (a literal) zeros of ``array``'s dtype."""
    if not isinstance(width, types.IntegerLiteral):
        return None
    row = types.UniTuple(array.dtype, width.literal_value)

    def codegen(context, builder, sig, args):
        return context.get_constant_null(row)
    return row(array, width), codegen


@intrinsic
def _load_row(typingctx, array, index, width):
    """``array[index:index + width]`` (``width`` a literal) as a tuple, in one SIMD load.

    ``array`` is 1-D and contiguous; ``index`` is not bounds-checked.
    """
    if not (isinstance(array, types.Array) and array.ndim == 1
            and isinstance(width, types.IntegerLiteral)):
        return None
    row = types.UniTuple(array.dtype, width.literal_value)

    def codegen(context, builder, sig, args):
        vector = ir.VectorType(context.get_value_type(array.dtype), row.count)
        data = context.make_array(array)(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), vector.as_pointer())
        return _to_tuple(context, builder, builder.load(pointer, align=array.dtype.bitwidth // 8),
                         row)
    return row(array, index, width), codegen


@intrinsic
def _fma(typingctx, weight, row, acc):
    """``acc + weight * row`` for tuples ``row`` and ``acc``, in one SIMD multiply-add."""
    if not (isinstance(row, types.UniTuple) and row == acc
            and isinstance(row.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        vector = ir.VectorType(context.get_value_type(row.dtype), row.count)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3),
            f"llvm.fma.v{row.count}f{row.dtype.bitwidth}")
        total = builder.call(fma, [_splat(context, builder, args[0], weight, row.dtype, vector),
                                   _to_vector(builder, args[1], vector),
                                   _to_vector(builder, args[2], vector)])
        return _to_tuple(context, builder, total, acc)
    return acc(weight, row, acc), codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to bring the cache line of ``array[index]`` in (a hint; no effect on results)."""
    if not (isinstance(array, types.Array) and array.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        flag = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, flag, flag, flag]),
            "llvm.prefetch.p0i8")
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_pointer)
        # read, keep in all cache levels, data cache
        builder.call(prefetch, [address, flag(0), flag(3), flag(1)])
        return context.get_dummy_value()
    return types.none(array, index), codegen


@njit(inline="always", cache=True)
def _taps_inside(x0, y0, z0, size):
    """True when all 4 x 4 x 4 taps from ``(x0, y0, z0)`` lie in the grid."""
    return 0 <= min(x0, y0, z0) and max(x0, y0, z0) <= size - 4


@njit(cache=True)
def _interpolate_edge(grid, x0, y0, z0, wx, wy, wz, interpolation):
    """Interpolation when some taps fall outside the grid (they read as zero)."""
    size = grid.shape[0]
    lo, hi = used_taps(interpolation)
    value = 0j
    for c in range(lo, hi):
        z = z0 + c
        for b in range(lo, hi):
            y = y0 + b
            for a in range(lo, hi):
                x = x0 + a
                if 0 <= z < size and 0 <= y < size and 0 <= x < size:
                    value += (wz[c] * wy[b] * wx[a]) * grid[z, y, x]
    return value


@njit(inline="always", cache=True)
def _interpolate(grid, flat, gx, gy, gz, interpolation):
    """Interpolated ``grid`` value at grid coordinates ``(gx, gy, gz)``.

    ``flat`` is the grid's real view (real and imaginary parts interleaved),
    so a row of taps is 8 (cubic) or 4 (linear) contiguous reals, summed in
    the grid's precision.
    """
    size = grid.shape[0]
    x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
    if not _taps_inside(x0, y0, z0, size):
        return _interpolate_edge(grid, x0, y0, z0, wx, wy, wz, interpolation)
    plane = 2 * size * size
    line = 2 * size
    base = z0 * plane + y0 * line + 2 * x0
    # Sum each z plane's rows with the y weights, then the planes with the z
    # weights: 4 + 4 weights to broadcast instead of 16 products.
    if interpolation == LINEAR:
        # Taps 1 and 2 only: rows of 2 complex values from x0 + 1.
        acc = _zero_row(flat, 4)
        for c in range(1, 3):
            plane_sum = _zero_row(flat, 4)
            for b in range(1, 3):
                row = _load_row(flat, base + c * plane + b * line + 2, 4)
                plane_sum = _fma(wy[b], row, plane_sum)
            acc = _fma(wz[c], plane_sum, acc)
        return complex(wx[1] * acc[0] + wx[2] * acc[2], wx[1] * acc[1] + wx[2] * acc[3])
    acc8 = _zero_row(flat, 8)
    for c in range(4):
        plane_sum8 = _zero_row(flat, 8)
        for b in range(4):
            plane_sum8 = _fma(wy[b], _load_row(flat, base + c * plane + b * line, 8), plane_sum8)
        acc8 = _fma(wz[c], plane_sum8, acc8)
    return complex(wx[0] * acc8[0] + wx[1] * acc8[2] + wx[2] * acc8[4] + wx[3] * acc8[6],
                   wx[0] * acc8[1] + wx[1] * acc8[3] + wx[2] * acc8[5] + wx[3] * acc8[7])


@njit(inline="always", cache=True)
def _prefetch_taps(flat, size, gx, gy, gz, interpolation):
    """Prefetch the tap rows of the sample at ``(gx, gy, gz)`` (a row may span two lines)."""
    x0, y0, z0 = int(math.floor(gx)) - 1, int(math.floor(gy)) - 1, int(math.floor(gz)) - 1
    if not _taps_inside(x0, y0, z0, size):
        return
    lo, hi = used_taps(interpolation)
    plane = 2 * size * size
    line = 2 * size
    base = z0 * plane + y0 * line + 2 * x0
    for c in range(lo, hi):
        for b in range(lo, hi):
            row = base + c * plane + b * line
            _prefetch(flat, row + 2 * lo)
            _prefetch(flat, row + 2 * hi - 1)


@njit(inline="always", cache=True)
def _cell(i, j, rows, kx, ky, size):
    """Flat index of the :data:`_CELL`-sized grid cell holding sample ``j`` of image ``i``."""
    gx, gy, gz = grid_position(i, j, rows, kx, ky, size // 2)
    cells = (size + _CELL - 1) // _CELL
    cx = min(max(int(math.floor(gx)), 0), size - 1) // _CELL
    cy = min(max(int(math.floor(gy)), 0), size - 1) // _CELL
    cz = min(max(int(math.floor(gz)), 0), size - 1) // _CELL
    return (cz * cells + cy) * cells + cx


@njit(parallel=True, cache=True)
def _spatial_order(rows, kx, ky, size, shares):
    """Samples ``(i << 32) | j`` sorted by grid cell, in ``(i, j)`` order within a cell.

    A counting sort: each of ``shares`` tasks counts the cells of its share of
    images, one prefix sum places every (cell, share) run, and each task fills
    its runs.
    """
    n, m = rows.shape[0], kx.size
    n_cells = ((size + _CELL - 1) // _CELL) ** 3
    cells = np.empty((n, m), dtype=np.int32)
    counts = np.zeros((shares, n_cells), dtype=np.int64)
    for share in prange(shares):
        for i in range(share * n // shares, (share + 1) * n // shares):
            for j in range(m):
                cell = _cell(i, j, rows, kx, ky, size)
                cells[i, j] = cell
                counts[share, cell] += 1
    start = 0
    for cell in range(n_cells):
        for share in range(shares):
            count = counts[share, cell]
            counts[share, cell] = start
            start += count
    order = np.empty(n * m, dtype=np.int64)
    for share in prange(shares):
        for i in range(share * n // shares, (share + 1) * n // shares):
            for j in range(m):
                cell = cells[i, j]
                order[counts[share, cell]] = (i << 32) | j
                counts[share, cell] += 1
    return order


@njit(inline="always", cache=True)
def _sample_at(s, order, m):
    """Image and sample index of the ``s``-th visited sample."""
    if order.size:
        return order[s] >> 32, order[s] & 0xFFFFFFFF
    return s // m, s % m


@njit(parallel=True, cache=True)
def _forward(grid, flat, rows, shifts, kx, ky, ctf, box, interpolation, order, ahead, out):
    """:func:`slice_forward` visiting samples in ``order`` (from :func:`_spatial_order`;
    image by image when empty), prefetching the taps ``ahead`` samples on when
    ``ahead > 0``."""
    n, m = out.shape
    size = grid.shape[0]
    centre = size // 2
    total = n * m
    for task in prange((total + _CHUNK - 1) // _CHUNK):
        stop = min(total, (task + 1) * _CHUNK)
        for s in range(task * _CHUNK, stop):
            if ahead > 0 and s + ahead < stop:
                i, j = _sample_at(s + ahead, order, m)
                gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
                _prefetch_taps(flat, size, gx, gy, gz, interpolation)
            i, j = _sample_at(s, order, m)
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            value = _interpolate(grid, flat, gx, gy, gz, interpolation)
            mod_re, mod_im = sample_modulation(i, j, kx, ky, shifts, ctf, box)
            out[i, j] = value * complex(mod_re, mod_im)


def slice_forward(grid, rows, shifts, kx, ky, ctf, box, interpolation, out):
    """``out[i, j]`` = modulated interpolation of ``grid`` at sample ``j`` of image ``i``."""
    n = out.shape[0]
    grid = np.ascontiguousarray(grid)
    flat = grid.reshape(-1).view(grid.real.dtype)
    if n < _SORT_MIN_IMAGES:
        _forward(grid, flat, rows, shifts, kx, ky, ctf, box, interpolation, _NATURAL_ORDER, _AHEAD, out)
        return
    n_batches = -(-n // _SORT_BATCH)
    shares = numba.get_num_threads()
    for batch in np.array_split(np.arange(n), n_batches):
        part = slice(batch[0], batch[-1] + 1)
        order = _spatial_order(rows[part], kx, ky, grid.shape[0], min(shares, batch.size))
        _forward(grid, flat, rows[part], shifts[part], kx, ky, ctf[part] if ctf.shape[0] else ctf,
                 box, interpolation, order, 0, out[part])


def slab_count(size):
    """z-slabs of a ``size``-edged grid for the scatters: four per thread balance the load."""
    return min(size, 4 * numba.get_num_threads())


@njit(inline="always", cache=True)
def slab_bounds(slab, n_slabs, size):
    """First and end z plane of z-slab ``slab`` of ``n_slabs``."""
    return slab * size // n_slabs, (slab + 1) * size // n_slabs


@njit(inline="always", cache=True)
def misses_slab(i, j, rows, kx, ky, centre, z_lo, z_hi):
    """True when no tap of sample ``j`` of image ``i`` lies in planes ``z_lo .. z_hi - 1``.

    Only the z coordinate is computed: most samples miss a slab and need nothing else.
    """
    gz = kx[j] * rows[i, 0, 2] + ky[j] * rows[i, 1, 2] + centre
    z0 = int(math.floor(gz)) - 1
    return z0 + 3 < z_lo or z0 >= z_hi


def slice_adjoint(values, rows, shifts, kx, ky, ctf, box, interpolation, grid):
    """Add the transpose of :func:`slice_forward` applied to ``values`` into ``grid``.

    Threads own disjoint z-slabs of the grid (:func:`slab_count`), so the
    scatter needs no atomics.
    """
    _slab_adjoint(values, rows, shifts, kx, ky, ctf, box, interpolation, slab_count(grid.shape[0]), grid)


@njit(parallel=True, cache=True)
def _slab_adjoint(values, rows, shifts, kx, ky, ctf, box, interpolation, n_slabs, grid):
    """:func:`slice_adjoint` over ``n_slabs`` z-slabs, one task per slab."""
    n, m = values.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(interpolation)
    for slab in prange(n_slabs):
        z_lo, z_hi = slab_bounds(slab, n_slabs, size)
        for i in range(n):
            for j in range(m):
                if misses_slab(i, j, rows, kx, ky, centre, z_lo, z_hi):
                    continue
                gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
                x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
                # Conjugate modulation: the adjoint of multiplying by a complex factor.
                mod_re, mod_im = sample_modulation(i, j, kx, ky, shifts, ctf, box)
                v = values[i, j] * complex(mod_re, -mod_im)
                for c in range(lo, hi):
                    z = z0 + c
                    if z < z_lo or z >= z_hi or z < 0 or z >= size:
                        continue
                    for b in range(lo, hi):
                        y = y0 + b
                        if y < 0 or y >= size:
                            continue
                        vzy = v * (wz[c] * wy[b])
                        for a in range(lo, hi):
                            x = x0 + a
                            if 0 <= x < size:
                                grid[z, y, x] += vzy * wx[a]


@njit(parallel=True, cache=True)
def slice_gradient(grid, rows, kx, ky, interpolation, values, gradients):
    """Unmodulated samples and their gradients with respect to ``(gx, gy, gz)``.

    ``values[i, j]`` is the interpolated grid value and ``gradients[i, j, :]``
    its derivative along the grid's x, y and z axes.
    """
    n, m = values.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(interpolation)
    for i in prange(n):
        for j in range(m):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
            dx, dy, dz = sample_tap_derivatives(gx, gy, gz, interpolation)
            value = 0j
            grad_x = 0j
            grad_y = 0j
            grad_z = 0j
            for c in range(lo, hi):
                z = z0 + c
                if z < 0 or z >= size:
                    continue
                for b in range(lo, hi):
                    y = y0 + b
                    if y < 0 or y >= size:
                        continue
                    for a in range(lo, hi):
                        x = x0 + a
                        if x < 0 or x >= size:
                            continue
                        g = grid[z, y, x]
                        value += wx[a] * wy[b] * wz[c] * g
                        grad_x += dx[a] * wy[b] * wz[c] * g
                        grad_y += wx[a] * dy[b] * wz[c] * g
                        grad_z += wx[a] * wy[b] * dz[c] * g
            values[i, j] = value
            gradients[i, j, 0] = grad_x
            gradients[i, j, 1] = grad_y
            gradients[i, j, 2] = grad_z


def empty_ctf(dtype):
    """The "no CTF" marker the kernels accept: an array with no rows."""
    return np.zeros((0, 0), dtype=dtype)
