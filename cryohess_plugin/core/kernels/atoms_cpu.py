"""Numba CPU kernels that sample Gaussian atoms on a grid (the analytic density and
projections of :mod:`cryohess_plugin.core.synthetic.atoms`, which always run on the CPU).

Each Gaussian is evaluated only within ``cutoff`` sigma of its centre on every axis, as
a product of one-dimensional profiles.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def _window(centre, radius, n):
    lo = max(0, int(np.ceil(centre - radius)))
    hi = min(n - 1, int(np.floor(centre + radius)))
    return lo, hi


@njit(cache=True)
def _fill_profile(buffer, lo, hi, centre, sigma):
    for i in range(lo, hi + 1):
        d = (i - centre) / sigma
        buffer[i] = np.exp(-0.5 * d * d)


@njit(cache=True)
def splat_volume(coords, weights, sigmas, cutoff, out):
    """Add isotropic Gaussians to the ``(n, n, n)`` grid ``out`` (indexed ``(z, y, x)``).

    Atom ``a`` at voxel coordinates ``coords[a] = (x, y, z)`` with standard deviation
    ``sigmas[a]`` voxels adds ``weights[a] exp(-|v - coords[a]|^2 / (2 sigma^2))`` at the
    voxels ``v`` within ``cutoff`` sigma of it on every axis.
    """
    n = out.shape[0]
    gx = np.empty(n)
    gy = np.empty(n)
    gz = np.empty(n)
    for a in range(coords.shape[0]):
        s = sigmas[a]
        x0, y0, z0 = coords[a, 0], coords[a, 1], coords[a, 2]
        xl, xh = _window(x0, cutoff * s, n)
        yl, yh = _window(y0, cutoff * s, n)
        zl, zh = _window(z0, cutoff * s, n)
        if xl > xh or yl > yh or zl > zh:
            continue
        _fill_profile(gx, xl, xh, x0, s)
        _fill_profile(gy, yl, yh, y0, s)
        _fill_profile(gz, zl, zh, z0, s)
        w = weights[a]
        for k in range(zl, zh + 1):
            wz = w * gz[k]
            for j in range(yl, yh + 1):
                wzy = wz * gy[j]
                for i in range(xl, xh + 1):
                    out[k, j, i] += wzy * gx[i]


@njit(parallel=True, cache=True)
def splat_images(coords, weights, sigmas, cutoff, out):
    """Add 2-D Gaussians to each ``(n, n)`` image of ``out`` (indexed ``(y, x)``), in
    parallel over images: image ``m`` gets the atoms at ``coords[m, a] = (x, y)`` pixels,
    with the weights and widths of :func:`splat_volume`.
    """
    n = out.shape[1]
    for m in prange(coords.shape[0]):
        gx = np.empty(n)
        gy = np.empty(n)
        for a in range(coords.shape[1]):
            s = sigmas[a]
            x0, y0 = coords[m, a, 0], coords[m, a, 1]
            xl, xh = _window(x0, cutoff * s, n)
            yl, yh = _window(y0, cutoff * s, n)
            if xl > xh or yl > yh:
                continue
            _fill_profile(gx, xl, xh, x0, s)
            _fill_profile(gy, yl, yh, y0, s)
            w = weights[a]
            for j in range(yl, yh + 1):
                wy = w * gy[j]
                for i in range(xl, xh + 1):
                    out[m, j, i] += wy * gx[i]
