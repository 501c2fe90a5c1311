"""``numba.cuda`` kernels of the Fourier posterior: squared interpolation weights.

Same contract as :mod:`.posterior_cpu` (grid convention, taps and sample
positions of :mod:`.projector_cpu`), with host NumPy arrays in and results
written into the host output arrays.  One thread handles one sample ``j`` of
one image ``i``: :func:`sampling_density` scatters ``weights[i, j] * w^2``
with atomic additions, :func:`gather_squared` reads ``sum w^2 grid``.  Both
work in float64 (the density is a sum over every sample of the data set).
"""
import numpy as np
from numba import cuda

from .interpolation import grid_position, sample_taps, used_taps

_THREADS = 128
#: CUDA caps grid dimension y at 65535; kernels stride over the remaining images.
_MAX_BLOCKS_Y = 65535


@cuda.jit
def _density(weights, rows, kx, ky, kernel, grid):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = weights.shape
    if j >= m:
        return
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(kernel)
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
        x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, kernel)
        v = weights[i, j]
        for c in range(lo, hi):
            z = z0 + c
            if z < 0 or z >= size:
                continue
            for b in range(lo, hi):
                y = y0 + b
                if y < 0 or y >= size:
                    continue
                vzy = v * (wz[c] * wy[b]) ** 2
                for a in range(lo, hi):
                    x = x0 + a
                    if 0 <= x < size:
                        cuda.atomic.add(grid, (z, y, x), vzy * wx[a] ** 2)


@cuda.jit
def _gather(grid, rows, kx, ky, kernel, out):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = out.shape
    if j >= m:
        return
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(kernel)
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
        x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, kernel)
        total = 0.0
        for c in range(lo, hi):
            z = z0 + c
            if z < 0 or z >= size:
                continue
            for b in range(lo, hi):
                y = y0 + b
                if y < 0 or y >= size:
                    continue
                wzy = (wz[c] * wy[b]) ** 2
                for a in range(lo, hi):
                    x = x0 + a
                    if 0 <= x < size:
                        total += wzy * wx[a] ** 2 * grid[z, y, x]
        out[i, j] = total


def _launch_shape(n, m):
    """Blocks and threads for ``n`` images of ``m`` samples (one thread per sample)."""
    return ((m + _THREADS - 1) // _THREADS, min(n, _MAX_BLOCKS_Y)), _THREADS


def _geometry(rows, kx, ky):
    return (cuda.to_device(np.ascontiguousarray(rows, dtype=np.float64)),
            cuda.to_device(np.ascontiguousarray(kx, dtype=np.float64)),
            cuda.to_device(np.ascontiguousarray(ky, dtype=np.float64)))


def sampling_density(weights, rows, kx, ky, kernel, grid):
    """Add ``sum_ij weights[i, j] * w_ij(voxel)^2`` into the real float64 ``grid``."""
    n, m = weights.shape
    if n == 0 or m == 0:
        return
    d_rows, d_kx, d_ky = _geometry(rows, kx, ky)
    d_weights = cuda.to_device(np.ascontiguousarray(weights, dtype=np.float64))
    # Uploading the host grid and scattering onto it adds into ``grid`` in place.
    d_grid = cuda.to_device(np.ascontiguousarray(grid, dtype=np.float64))
    blocks, threads = _launch_shape(n, m)
    _density[blocks, threads](d_weights, d_rows, d_kx, d_ky, int(kernel), d_grid)
    grid[...] = d_grid.copy_to_host()


def gather_squared(grid, rows, kx, ky, kernel, out):
    """``out[i, j] = sum_voxels w_ij(voxel)^2 * grid[voxel]`` for a real ``grid``."""
    n, m = out.shape
    if n == 0 or m == 0:
        return
    d_rows, d_kx, d_ky = _geometry(rows, kx, ky)
    d_grid = cuda.to_device(np.ascontiguousarray(grid, dtype=np.float64))
    d_out = cuda.device_array((n, m), dtype=np.float64)
    blocks, threads = _launch_shape(n, m)
    _gather[blocks, threads](d_grid, d_rows, d_kx, d_ky, int(kernel), d_out)
    out[...] = d_out.copy_to_host()
