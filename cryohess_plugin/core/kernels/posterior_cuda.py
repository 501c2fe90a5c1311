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

from .cuda_launch import launch_shape, to_device_float64
from .interpolation import gather_squared_taps, grid_position, sample_taps, used_taps


@cuda.jit
def _density(weights, rows, kx, ky, interpolation, grid):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = weights.shape
    if j >= m:
        return
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(interpolation)
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
        x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
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
def _gather(grid, rows, kx, ky, interpolation, out):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = out.shape
    if j >= m:
        return
    centre = grid.shape[0] // 2
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
        out[i, j] = gather_squared_taps(grid, gx, gy, gz, interpolation)


def sampling_density(weights, rows, kx, ky, interpolation, grid):
    """Add ``sum_ij weights[i, j] * w_ij(voxel)^2`` into the real float64 ``grid``."""
    n, m = weights.shape
    if n == 0 or m == 0:
        return
    # Uploading the host grid and scattering onto it adds into ``grid`` in place.
    d_weights, d_rows, d_kx, d_ky, d_grid = to_device_float64(weights, rows, kx, ky, grid)
    blocks, threads = launch_shape(n, m)
    _density[blocks, threads](d_weights, d_rows, d_kx, d_ky, int(interpolation), d_grid)
    grid[...] = d_grid.copy_to_host()


def gather_squared(grid, rows, kx, ky, interpolation, out):
    """``out[i, j] = sum_voxels w_ij(voxel)^2 * grid[voxel]`` for a real ``grid``."""
    n, m = out.shape
    if n == 0 or m == 0:
        return
    d_grid, d_rows, d_kx, d_ky = to_device_float64(grid, rows, kx, ky)
    d_out = cuda.device_array((n, m), dtype=np.float64)
    blocks, threads = launch_shape(n, m)
    _gather[blocks, threads](d_grid, d_rows, d_kx, d_ky, int(interpolation), d_out)
    out[...] = d_out.copy_to_host()
