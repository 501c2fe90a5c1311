"""Numba CPU kernels of the Fourier posterior: squared interpolation weights.

Same grid, taps and sample positions as :mod:`.projector_cpu` (``rows`` are
the first two rotation rows times the padding, ``(x, y, z)`` order).  The
posterior's diagonal precision needs ``sum w^2`` where the projector's adjoint
scatters ``sum w``, so these two loops square the tap weights:

* :func:`sampling_density` scatters ``weights[i, j] * w^2`` into a real grid
  (the sampling density ``S``);
* :func:`gather_squared` reads ``sum w^2 grid`` at every sample (the variance
  a diagonal grid posterior gives each image coefficient).

:mod:`.posterior_cuda` has the same two functions for the CUDA backend.
"""
import math

import numba
from numba import njit, prange

from .interpolation import grid_position, sample_taps, used_taps


def sampling_density(weights, rows, kx, ky, kernel, grid):
    """Add ``sum_ij weights[i, j] * w_ij(voxel)^2`` into the real ``grid``.

    Threads own disjoint z-slabs (as :func:`.projector_cpu.slice_adjoint`), so
    the scatter needs no atomics.
    """
    n_slabs = min(grid.shape[0], 4 * numba.get_num_threads())
    _slab_density(weights, rows, kx, ky, kernel, n_slabs, grid)


@njit(parallel=True, cache=True)
def _slab_density(weights, rows, kx, ky, kernel, n_slabs, grid):
    n, m = weights.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(kernel)
    for slab in prange(n_slabs):
        z_lo = slab * size // n_slabs
        z_hi = (slab + 1) * size // n_slabs
        for i in range(n):
            for j in range(m):
                gz = kx[j] * rows[i, 0, 2] + ky[j] * rows[i, 1, 2] + centre
                z0 = int(math.floor(gz)) - 1
                if z0 + 3 < z_lo or z0 >= z_hi:
                    continue
                gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
                x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, kernel)
                v = weights[i, j]
                for c in range(lo, hi):
                    z = z0 + c
                    if z < z_lo or z >= z_hi or z < 0 or z >= size:
                        continue
                    for b in range(lo, hi):
                        y = y0 + b
                        if y < 0 or y >= size:
                            continue
                        vzy = v * (wz[c] * wy[b]) ** 2
                        for a in range(lo, hi):
                            x = x0 + a
                            if 0 <= x < size:
                                grid[z, y, x] += vzy * wx[a] ** 2


@njit(parallel=True, cache=True)
def gather_squared(grid, rows, kx, ky, kernel, out):
    """``out[i, j] = sum_voxels w_ij(voxel)^2 * grid[voxel]`` for a real ``grid``."""
    n, m = out.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = used_taps(kernel)
    for i in prange(n):
        for j in range(m):
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

