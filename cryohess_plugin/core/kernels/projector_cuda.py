"""``numba.cuda`` kernels of the Fourier-slice projector.

Same contract and semantics as :mod:`.projector_cpu` (see its docstring for
the grid convention, the taps and the modulation), with host NumPy arrays in
and results written into the host output arrays.  One thread computes one
sample ``j`` of one image ``i``; the adjoint scatters with atomic additions.

Complex arrays travel to the device as real views (real and imaginary parts
interleaved along the last axis), so every kernel works on plain float
arrays and the atomic additions of the adjoint need no complex atomics.
"""
import functools

import numba
import numpy as np
from numba import cuda

from .cuda_launch import launch_shape, to_device_float64
from .interpolation import (grid_position, sample_modulation, sample_tap_derivatives,
                            sample_taps, used_taps)


@functools.lru_cache(maxsize=None)
def _kernels(real_dtype):
    """The three kernels for grids of real precision ``real_dtype`` (float32 or float64)."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def forward(grid, rows, shifts, kx, ky, ctf, box, interpolation, out):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n = out.shape[0]
        m = out.shape[1] // 2
        if j >= m:
            return
        size = grid.shape[0]
        centre = size // 2
        lo, hi = used_taps(interpolation)
        # Weights in the grid's precision, as projector_cpu.interpolate does, so
        # single-precision grids are interpolated in single precision.
        weights = cuda.local.array(12, real)
        for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
            for a in range(4):
                weights[a] = wx[a]
                weights[4 + a] = wy[a]
                weights[8 + a] = wz[a]
            acc_re = real(0)
            acc_im = real(0)
            for c in range(lo, hi):
                z = z0 + c
                if z < 0 or z >= size:
                    continue
                for b in range(lo, hi):
                    y = y0 + b
                    if y < 0 or y >= size:
                        continue
                    row_re = real(0)
                    row_im = real(0)
                    for a in range(lo, hi):
                        x = x0 + a
                        if 0 <= x < size:
                            row_re += weights[a] * grid[z, y, 2 * x]
                            row_im += weights[a] * grid[z, y, 2 * x + 1]
                    w = weights[8 + c] * weights[4 + b]
                    acc_re += w * row_re
                    acc_im += w * row_im
            mod_re, mod_im = sample_modulation(i, j, kx, ky, shifts, ctf, box)
            out[i, 2 * j] = acc_re * mod_re - acc_im * mod_im
            out[i, 2 * j + 1] = acc_re * mod_im + acc_im * mod_re

    @cuda.jit
    def adjoint(values, rows, shifts, kx, ky, ctf, box, interpolation, grid):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n = values.shape[0]
        m = values.shape[1] // 2
        if j >= m:
            return
        size = grid.shape[0]
        centre = size // 2
        lo, hi = used_taps(interpolation)
        for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
            # Conjugate modulation: the adjoint of multiplying by a complex factor.
            mod_re, mod_im = sample_modulation(i, j, kx, ky, shifts, ctf, box)
            val_re = values[i, 2 * j]
            val_im = values[i, 2 * j + 1]
            v_re = val_re * mod_re + val_im * mod_im
            v_im = val_im * mod_re - val_re * mod_im
            for c in range(lo, hi):
                z = z0 + c
                if z < 0 or z >= size:
                    continue
                for b in range(lo, hi):
                    y = y0 + b
                    if y < 0 or y >= size:
                        continue
                    wzy = wz[c] * wy[b]
                    vzy_re = v_re * wzy
                    vzy_im = v_im * wzy
                    for a in range(lo, hi):
                        x = x0 + a
                        if 0 <= x < size:
                            cuda.atomic.add(grid, (z, y, 2 * x), real(vzy_re * wx[a]))
                            cuda.atomic.add(grid, (z, y, 2 * x + 1), real(vzy_im * wx[a]))

    @cuda.jit
    def gradient(grid, rows, kx, ky, interpolation, values, gradients):
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n = values.shape[0]
        m = values.shape[1] // 2
        if j >= m:
            return
        size = grid.shape[0]
        centre = size // 2
        lo, hi = used_taps(interpolation)
        for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
            dx, dy, dz = sample_tap_derivatives(gx, gy, gz, interpolation)
            # Double-precision accumulation, as in projector_cpu.slice_gradient.
            value_re = 0.0
            value_im = 0.0
            gx_re = 0.0
            gx_im = 0.0
            gy_re = 0.0
            gy_im = 0.0
            gz_re = 0.0
            gz_im = 0.0
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
                        g_re = grid[z, y, 2 * x]
                        g_im = grid[z, y, 2 * x + 1]
                        w = wx[a] * wy[b] * wz[c]
                        value_re += w * g_re
                        value_im += w * g_im
                        w = dx[a] * wy[b] * wz[c]
                        gx_re += w * g_re
                        gx_im += w * g_im
                        w = wx[a] * dy[b] * wz[c]
                        gy_re += w * g_re
                        gy_im += w * g_im
                        w = wx[a] * wy[b] * dz[c]
                        gz_re += w * g_re
                        gz_im += w * g_im
            values[i, 2 * j] = value_re
            values[i, 2 * j + 1] = value_im
            gradients[i, j, 0] = gx_re
            gradients[i, j, 1] = gx_im
            gradients[i, j, 2] = gy_re
            gradients[i, j, 3] = gy_im
            gradients[i, j, 4] = gz_re
            gradients[i, j, 5] = gz_im

    return forward, adjoint, gradient


def _real_view(array):
    """Contiguous float view of a complex array: the last axis doubles."""
    array = np.ascontiguousarray(array)
    return array.view(array.real.dtype)


def _copy_back(device_view, host):
    """Copy a device real view into the complex host array ``host``."""
    result = device_view.copy_to_host().view(host.dtype).reshape(host.shape)
    host[...] = result


def _common_inputs(rows, shifts, kx, ky, ctf):
    """Device copies of the geometry, shift and CTF arrays the kernels share."""
    return (*to_device_float64(rows, shifts, kx, ky), cuda.to_device(np.ascontiguousarray(ctf)))


def slice_forward(grid, rows, shifts, kx, ky, ctf, box, interpolation, out):
    """``out[i, j]`` = modulated interpolation of ``grid`` at sample ``j`` of image ``i``."""
    n, m = out.shape
    if n == 0 or m == 0:
        return
    grid_view = _real_view(grid)
    forward = _kernels(grid_view.dtype)[0]
    d_rows, d_shifts, d_kx, d_ky, d_ctf = _common_inputs(rows, shifts, kx, ky, ctf)
    d_grid = cuda.to_device(grid_view)
    d_out = cuda.device_array((n, 2 * m), dtype=np.finfo(out.dtype).dtype)
    blocks, threads = launch_shape(n, m)
    forward[blocks, threads](d_grid, d_rows, d_shifts, d_kx, d_ky, d_ctf, float(box),
                             int(interpolation), d_out)
    _copy_back(d_out, out)


def slice_adjoint(values, rows, shifts, kx, ky, ctf, box, interpolation, grid):
    """Add the transpose of :func:`slice_forward` applied to ``values`` into ``grid``."""
    n, m = values.shape
    if n == 0 or m == 0:
        return
    grid_view = _real_view(grid)
    adjoint = _kernels(grid_view.dtype)[1]
    d_rows, d_shifts, d_kx, d_ky, d_ctf = _common_inputs(rows, shifts, kx, ky, ctf)
    d_values = cuda.to_device(_real_view(values))
    # Uploading the host grid and scattering onto it adds into ``grid`` in place.
    d_grid = cuda.to_device(grid_view)
    blocks, threads = launch_shape(n, m)
    adjoint[blocks, threads](d_values, d_rows, d_shifts, d_kx, d_ky, d_ctf, float(box),
                             int(interpolation), d_grid)
    _copy_back(d_grid, grid)


def slice_gradient(grid, rows, kx, ky, interpolation, values, gradients):
    """Unmodulated samples and their gradients with respect to ``(gx, gy, gz)``.

    ``values`` ``(n, m)`` and ``gradients`` ``(n, m, 3)`` are complex128, as for
    :func:`.projector_cpu.slice_gradient`.
    """
    n, m = values.shape
    if n == 0 or m == 0:
        return
    grid_view = _real_view(grid)
    gradient = _kernels(grid_view.dtype)[2]
    d_rows, d_kx, d_ky = to_device_float64(rows, kx, ky)
    d_grid = cuda.to_device(grid_view)
    d_values = cuda.device_array((n, 2 * m), dtype=np.float64)
    d_gradients = cuda.device_array((n, m, 6), dtype=np.float64)
    blocks, threads = launch_shape(n, m)
    gradient[blocks, threads](d_grid, d_rows, d_kx, d_ky, int(interpolation), d_values, d_gradients)
    _copy_back(d_values, values)
    _copy_back(d_gradients, gradients)
