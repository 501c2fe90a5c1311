"""``numba.cuda`` kernels of the accumulated soft-mode Hessian, and their launches.

The device products that call them (what stays on the device, block by block) are
:class:`cryohess_plugin.core.softmodes.products_cuda.DeviceProducts`; the formulas are
in ``docs/methods/hessian_soft_modes.md`` §2.5 and §2.7.

Kernels:

* :func:`_harmonics`: one thread per sample direction running the CPU kernel's
  per-sample routine (:func:`.soft_modes_cpu.sample_harmonics`).
* :func:`_gemm_nt` (slice: ``V = H Cᵀ``) and :func:`_gemm_tn` (adjoint slice:
  ``C += Zᵀ H``): tiled shared-memory matrix products.  They are written by
  hand because ``numba.cuda`` has no BLAS binding and CuPy (cuBLAS) is not a
  dependency of the plugin; the CPU path keeps NumPy's BLAS.
* :func:`_pose`: one thread block per direction: the overlaps
  ``<U_a, V>`` per shell, the couplings and the ``3 x 3`` pseudo-inverse
  solves per (direction, group), the mixing back onto the slices and the
  ring weights, written in place over ``V`` (the shell weights hold ``1 / σ²``).

Launches: :func:`evaluate_harmonics`, :func:`slice_product`,
:func:`adjoint_product` and :func:`pose_algebra`; :func:`to_device` and
:func:`device_array` allocate what they work on.
"""

import numpy as np
from numba import cuda

from .soft_modes_cpu import sample_harmonics

#: Tile edge of the matrix-product kernels (TILE x TILE threads per block).
TILE = 16
#: Threads per block of the harmonics and pose kernels.
THREADS = 64
#: CUDA caps grid dimension y at 65535.
_MAX_BLOCKS_Y = 65535

#: Modes of :func:`_pose`.
FIXED_POSES, IMPLICIT_POSES, POSE_CHANGE = 0, 1, 2


@cuda.jit
def _harmonics(samples, max_degree, table, even, odd):
    """Real harmonics at ``samples`` ``(n, 3)`` into ``even`` ``(n, n_even)``, ``odd``.

    ``table[l, m, k]`` is the column of ``(l, m)``'s kind ``a`` (``k = 0``; kind ``0``
    for ``m = 0``) and kind ``b`` (``k = 1``) in ``even`` (even ``l``) or ``odd``.
    """
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < samples.shape[0]:
        sample_harmonics(samples, i, max_degree, table, even, odd)


# Hand-written matrix products: numba.cuda has no BLAS binding and CuPy (cuBLAS) is not a
# dependency.  Classic TILE x TILE shared-memory tiling; grid y strides over row tiles.
@cuda.jit
def _gemm_nt(a, b, c):
    """``c = a bᵀ``: ``a`` ``(M, K)``, ``b`` ``(N, K)``, ``c`` ``(M, N)``."""
    tile_a = cuda.shared.array((TILE, TILE), np.float64)
    tile_b = cuda.shared.array((TILE, TILE), np.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    column = cuda.blockIdx.x * TILE + tx
    m, n, k = a.shape[0], b.shape[0], a.shape[1]
    for row0 in range(cuda.blockIdx.y * TILE, m, cuda.gridDim.y * TILE):
        row = row0 + ty
        acc = 0.0
        for k0 in range(0, k, TILE):
            # tile_a[ty, tx] = a[row, k0 + tx]; tile_b[ty, tx] = b[column block + ty, k0 + tx].
            tile_a[ty, tx] = a[row, k0 + tx] if row < m and k0 + tx < k else 0.0
            other = cuda.blockIdx.x * TILE + ty
            tile_b[ty, tx] = b[other, k0 + tx] if other < n and k0 + tx < k else 0.0
            cuda.syncthreads()
            for j in range(TILE):
                acc += tile_a[ty, j] * tile_b[tx, j]
            cuda.syncthreads()
        if row < m and column < n:
            c[row, column] = acc


@cuda.jit
def _gemm_tn(a, b, c):
    """``c += aᵀ b``: ``a`` ``(K, M)``, ``b`` ``(K, N)``, ``c`` ``(M, N)``."""
    tile_a = cuda.shared.array((TILE, TILE), np.float64)
    tile_b = cuda.shared.array((TILE, TILE), np.float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    column = cuda.blockIdx.x * TILE + tx
    k, m, n = a.shape[0], a.shape[1], b.shape[1]
    for row0 in range(cuda.blockIdx.y * TILE, m, cuda.gridDim.y * TILE):
        row = row0 + ty
        acc = 0.0
        for k0 in range(0, k, TILE):
            # tile_a[ty, tx] = a[k0 + ty, row block + tx]; tile_b[ty, tx] = b[k0 + ty, column].
            inner = k0 + ty
            mine = row0 + tx
            tile_a[ty, tx] = a[inner, mine] if inner < k and mine < m else 0.0
            tile_b[ty, tx] = b[inner, column] if inner < k and column < n else 0.0
            cuda.syncthreads()
            for j in range(TILE):
                acc += tile_a[j, ty] * tile_b[j, tx]
            cuda.syncthreads()
        if row < m and column < n:
            c[row, column] += acc


@cuda.jit
def _pose(start, mode, v_re, v_im, u_re, u_im, pinv, counts, shell_weights, ring_weights,
          overlap, change):
    """Pose algebra of direction ``start + blockIdx.x`` (module docstring), one block each.

    ``v_re``, ``v_im`` ``(d, Q/2, R)`` slices of the block; ``u_re``, ``u_im``
    ``(3, D, Q/2, R)``; ``pinv`` ``(D, G, 3, 3)``; ``counts`` ``(D, G)``; ``shell_weights``
    ``(G, R)`` (``C² / σ²``); ``overlap`` ``(d, 3, R)`` and ``change`` ``(d, G, 3)`` scratch/output.
    Modes: :data:`FIXED_POSES` and :data:`IMPLICIT_POSES` overwrite ``v`` with
    ``z · w`` (the shell weights hold ``1 / σ²``); :data:`POSE_CHANGE` only writes ``change``.
    """
    local = cuda.blockIdx.x
    d = start + local
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    half, shells = v_re.shape[1], v_re.shape[2]
    groups = counts.shape[1]
    if mode != FIXED_POSES:
        # Overlaps <U_a, V>_r, ring-weighted, one (a, r) per thread.
        for item in range(tid, 3 * shells, step):
            a = item // shells
            r = item - a * shells
            acc = 0.0
            for q in range(half):
                acc += u_re[a, d, q, r] * v_re[local, q, r] + u_im[a, d, q, r] * v_im[local, q, r]
            overlap[local, a, r] = acc * ring_weights[r]
        cuda.syncthreads()
        # Couplings and Δτ = -pinv · coupling, one group per thread.
        for g in range(tid, groups, step):
            c0 = 0.0
            c1 = 0.0
            c2 = 0.0
            for r in range(shells):
                w = shell_weights[g, r]
                c0 += w * overlap[local, 0, r]
                c1 += w * overlap[local, 1, r]
                c2 += w * overlap[local, 2, r]
            for a in range(3):
                change[local, g, a] = -(pinv[d, g, a, 0] * c0 + pinv[d, g, a, 1] * c1
                                        + pinv[d, g, a, 2] * c2)
        cuda.syncthreads()
    if mode == POSE_CHANGE:
        return
    # z = (Σ_g c C²/σ²) V + Σ_a mixing_a U_a, times the ring weight, one (q, r) per thread.
    for item in range(tid, half * shells, step):
        q = item // shells
        r = item - q * shells
        evidence = 0.0
        m0 = 0.0
        m1 = 0.0
        m2 = 0.0
        for g in range(groups):
            weight = counts[d, g] * shell_weights[g, r]
            evidence += weight
            if mode == IMPLICIT_POSES:
                m0 += weight * change[local, g, 0]
                m1 += weight * change[local, g, 1]
                m2 += weight * change[local, g, 2]
        z_re = evidence * v_re[local, q, r]
        z_im = evidence * v_im[local, q, r]
        if mode == IMPLICIT_POSES:
            z_re += m0 * u_re[0, d, q, r] + m1 * u_re[1, d, q, r] + m2 * u_re[2, d, q, r]
            z_im += m0 * u_im[0, d, q, r] + m1 * u_im[1, d, q, r] + m2 * u_im[2, d, q, r]
        scale = ring_weights[r]
        v_re[local, q, r] = z_re * scale
        v_im[local, q, r] = z_im * scale


def _gemm_shape(m, n):
    return ((n + TILE - 1) // TILE, min((m + TILE - 1) // TILE, _MAX_BLOCKS_Y)), (TILE, TILE)


def slice_product(harmonics, columns, out):
    """``out = harmonics columnsᵀ`` on the device (``(S, P) x (R, P)ᵀ``)."""
    if harmonics.shape[0] and columns.shape[0]:
        blocks, threads = _gemm_shape(harmonics.shape[0], columns.shape[0])
        _gemm_nt[blocks, threads](harmonics, columns, out)


def adjoint_product(values, harmonics, out):
    """``out += valuesᵀ harmonics`` on the device (``(S, R)ᵀ x (S, P)``)."""
    if values.shape[1] and harmonics.shape[1]:
        blocks, threads = _gemm_shape(values.shape[1], harmonics.shape[1])
        _gemm_tn[blocks, threads](values, harmonics, out)


def to_device(array, dtype=np.float64):
    """A contiguous device copy of host ``array`` in ``dtype``."""
    return cuda.to_device(np.ascontiguousarray(array, dtype))


def device_array(shape):
    """An uninitialised float64 device array."""
    return cuda.device_array(shape, np.float64)


def evaluate_harmonics(samples, max_degree, table, even, odd):
    """Real harmonics at device ``samples`` ``(n, 3)`` into ``even``, ``odd`` (:func:`_harmonics`)."""
    rows = samples.shape[0]
    _harmonics[(rows + THREADS - 1) // THREADS, THREADS](samples, max_degree, table, even, odd)


def pose_algebra(start, mode, v_re, v_im, u_re, u_im, pinv, counts, shell_weights, ring_weights,
                 overlap, change):
    """The pose algebra of the ``v_re.shape[0]`` directions from ``start`` (:func:`_pose`)."""
    _pose[v_re.shape[0], THREADS](start, mode, v_re, v_im, u_re, u_im, pinv, counts,
                                  shell_weights, ring_weights, overlap, change)
