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
"""
import math

import numba
import numpy as np
from numba import njit, prange

from .interpolation import (LINEAR, grid_position, sample_modulation, tap_weight_derivatives,
                            tap_weights)

_BLOCK = 512


@njit(inline="always", cache=True)
def interpolate(grid, gx, gy, gz, kernel, weights):
    """Interpolated grid value at grid coordinates ``(gx, gy, gz)``.

    ``weights`` is scratch space of 12 elements in the grid's real precision,
    so single-precision grids are interpolated in single precision (twice as
    fast as promoting every product to double).
    """
    size = grid.shape[0]
    fx, fy, fz = math.floor(gx), math.floor(gy), math.floor(gz)
    wx = tap_weights(gx - fx, kernel)
    wy = tap_weights(gy - fy, kernel)
    wz = tap_weights(gz - fz, kernel)
    for a in range(4):
        weights[a] = wx[a]
        weights[4 + a] = wy[a]
        weights[8 + a] = wz[a]
    x0, y0, z0 = int(fx) - 1, int(fy) - 1, int(fz) - 1
    lo, hi = (1, 3) if kernel == LINEAR else (0, 4)
    interior = x0 >= 0 and y0 >= 0 and z0 >= 0 and max(x0, y0, z0) + 3 < size
    acc_re = weights[0] * 0
    acc_im = weights[0] * 0
    for c in range(lo, hi):
        z = z0 + c
        if not interior and (z < 0 or z >= size):
            continue
        for b in range(lo, hi):
            y = y0 + b
            if not interior and (y < 0 or y >= size):
                continue
            line = grid[z, y]
            row_re = weights[0] * 0
            row_im = weights[0] * 0
            for a in range(lo, hi):
                x = x0 + a
                if interior or 0 <= x < size:
                    row_re += weights[a] * line[x].real
                    row_im += weights[a] * line[x].imag
            w = weights[8 + c] * weights[4 + b]
            acc_re += w * row_re
            acc_im += w * row_im
    return complex(acc_re, acc_im)


@njit(parallel=True, cache=True)
def slice_forward(grid, rows, shifts, kx, ky, ctf, box, kernel, out):
    """``out[i, j]`` = modulated interpolation of ``grid`` at sample ``j`` of image ``i``."""
    n, m = out.shape
    centre = grid.shape[0] // 2
    blocks = (m + _BLOCK - 1) // _BLOCK
    for task in prange(n * blocks):
        i = task // blocks
        start = (task % blocks) * _BLOCK
        weights = np.empty_like(grid[0, 0, :12].real)
        for j in range(start, min(m, start + _BLOCK)):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            value = interpolate(grid, gx, gy, gz, kernel, weights)
            mod_re, mod_im = sample_modulation(i, j, kx, ky, shifts, ctf, box)
            out[i, j] = value * complex(mod_re, mod_im)


def slice_adjoint(values, rows, shifts, kx, ky, ctf, box, kernel, grid):
    """Add the transpose of :func:`slice_forward` applied to ``values`` into ``grid``.

    Threads own disjoint z-slabs of the grid, so the scatter needs no atomics;
    four slabs per thread balance the load.
    """
    n_slabs = min(grid.shape[0], 4 * numba.get_num_threads())
    _slab_adjoint(values, rows, shifts, kx, ky, ctf, box, kernel, n_slabs, grid)


@njit(parallel=True, cache=True)
def _slab_adjoint(values, rows, shifts, kx, ky, ctf, box, kernel, n_slabs, grid):
    """:func:`slice_adjoint` over ``n_slabs`` z-slabs, one task per slab."""
    n, m = values.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = (1, 3) if kernel == LINEAR else (0, 4)
    for slab in prange(n_slabs):
        z_lo = slab * size // n_slabs
        z_hi = (slab + 1) * size // n_slabs
        for i in range(n):
            for j in range(m):
                # z first: most samples miss this slab and need nothing else.
                gz = kx[j] * rows[i, 0, 2] + ky[j] * rows[i, 1, 2] + centre
                fz = math.floor(gz)
                z0 = int(fz) - 1
                if z0 + 3 < z_lo or z0 >= z_hi:
                    continue
                gx = kx[j] * rows[i, 0, 0] + ky[j] * rows[i, 1, 0] + centre
                gy = kx[j] * rows[i, 0, 1] + ky[j] * rows[i, 1, 1] + centre
                fx, fy = math.floor(gx), math.floor(gy)
                wx = tap_weights(gx - fx, kernel)
                wy = tap_weights(gy - fy, kernel)
                wz = tap_weights(gz - fz, kernel)
                x0, y0 = int(fx) - 1, int(fy) - 1
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
def slice_gradient(grid, rows, kx, ky, kernel, values, gradients):
    """Unmodulated samples and their gradients with respect to ``(gx, gy, gz)``.

    ``values[i, j]`` is the interpolated grid value and ``gradients[i, j, :]``
    its derivative along the grid's x, y and z axes.
    """
    n, m = values.shape
    size = grid.shape[0]
    centre = size // 2
    lo, hi = (1, 3) if kernel == LINEAR else (0, 4)
    for i in prange(n):
        for j in range(m):
            gx, gy, gz = grid_position(i, j, rows, kx, ky, centre)
            fx, fy, fz = math.floor(gx), math.floor(gy), math.floor(gz)
            wx = tap_weights(gx - fx, kernel)
            wy = tap_weights(gy - fy, kernel)
            wz = tap_weights(gz - fz, kernel)
            dx = tap_weight_derivatives(gx - fx, kernel)
            dy = tap_weight_derivatives(gy - fy, kernel)
            dz = tap_weight_derivatives(gz - fz, kernel)
            x0, y0, z0 = int(fx) - 1, int(fy) - 1, int(fz) - 1
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
