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
from numba import njit, prange

from .interpolation import gather_squared_taps, grid_position, sample_taps, used_taps
from .projector_cpu import misses_slab, slab_bounds, slab_count


def sampling_density(weights, rows, kx, ky, interpolation, grid):
    """Add ``sum_ij weights[i, j] * w_ij(voxel)^2`` into the real ``grid``.

    Threads own disjoint z-slabs (as :func:`.projector_cpu.slice_adjoint`), so
    the scatter needs no atomics.
    """
    _slab_density(weights, rows, kx, ky, interpolation, slab_count(grid.shape[0]), grid)


@njit(parallel=True, cache=True)
def _slab_density(weights, rows, kx, ky, interpolation, n_slabs, grid):
    n, m = weights.shape
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
def gather_squared(grid, rows, kx, ky, interpolation, out):
    """``out[i, j] = sum_voxels w_ij(voxel)^2 * grid[voxel]`` for a real ``grid``."""
    n, m = out.shape
    centre = grid.shape[0] // 2
    for i in prange(n):
        for j in range(m):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            out[i, j] = gather_squared_taps(grid, gx, gy, gz, interpolation)
