"""Interpolation formulas shared by the CPU and CUDA slice kernels.

``register_jitable`` compiles each function into whichever kernel calls it,
``njit`` on the CPU or ``cuda.jit`` on the GPU, so both backends use one
definition of the taps, the grid position and the modulation.
"""
import math

from numba.extending import register_jitable

LINEAR = 0
KEYS_A = -0.5


@register_jitable(inline="always")
def tap_weights(t, interpolation):
    """Weights of taps ``f - 1, f, f + 1, f + 2`` at fractional offset ``t``."""
    s = 1.0 - t
    if interpolation == LINEAR:
        return 0.0, s, t, 0.0
    # Keys' two cubic pieces factored at the taps: the outer piece
    # a (u - 1)(u - 2)^2 at u = 1 + t and u = 2 - t is a t s^2 and a s t^2.
    a = KEYS_A
    w0 = a * t * s * s
    w1 = 1.0 + t * t * ((a + 2) * t - (a + 3))
    w2 = 1.0 + s * s * ((a + 2) * s - (a + 3))
    w3 = a * s * t * t
    return w0, w1, w2, w3


@register_jitable(inline="always")
def tap_weight_derivatives(t, interpolation):
    """Derivatives of :func:`tap_weights` with respect to ``t``."""
    if interpolation == LINEAR:
        return 0.0, -1.0, 1.0, 0.0
    a = KEYS_A
    u0, u3, s = 1.0 + t, 2.0 - t, 1.0 - t
    d0 = 3 * a * u0 ** 2 - 10 * a * u0 + 8 * a
    d1 = 3 * (a + 2) * t ** 2 - 2 * (a + 3) * t
    d2 = -(3 * (a + 2) * s ** 2 - 2 * (a + 3) * s)
    d3 = -(3 * a * u3 ** 2 - 10 * a * u3 + 8 * a)
    return d0, d1, d2, d3


@register_jitable(inline="always")
def used_taps(interpolation):
    """Range ``lo, hi`` of the taps with non-zero weight (linear: the middle two)."""
    return (1, 3) if interpolation == LINEAR else (0, 4)


@register_jitable(inline="always")
def sample_taps(gx, gy, gz, interpolation):
    """First tap ``(x0, y0, z0)`` and the x, y, z weights of grid point ``(gx, gy, gz)``."""
    fx, fy, fz = math.floor(gx), math.floor(gy), math.floor(gz)
    return (int(fx) - 1, int(fy) - 1, int(fz) - 1, tap_weights(gx - fx, interpolation),
            tap_weights(gy - fy, interpolation), tap_weights(gz - fz, interpolation))


@register_jitable(inline="always")
def sample_tap_derivatives(gx, gy, gz, interpolation):
    """Derivatives of the x, y, z weights of :func:`sample_taps`."""
    return (tap_weight_derivatives(gx - math.floor(gx), interpolation),
            tap_weight_derivatives(gy - math.floor(gy), interpolation),
            tap_weight_derivatives(gz - math.floor(gz), interpolation))


@register_jitable(inline="always")
def grid_position(i, j, rows, kx, ky, centre):
    """Grid coordinates ``(gx, gy, gz)`` of sample ``j`` of image ``i``."""
    gx = kx[j] * rows[i, 0, 0] + ky[j] * rows[i, 1, 0] + centre
    gy = kx[j] * rows[i, 0, 1] + ky[j] * rows[i, 1, 1] + centre
    gz = kx[j] * rows[i, 0, 2] + ky[j] * rows[i, 1, 2] + centre
    return gx, gy, gz


@register_jitable(inline="always")
def gather_squared_taps(grid, gx, gy, gz, interpolation):
    """``sum w^2 grid`` over the taps of grid point ``(gx, gy, gz)`` of a real ``grid``.

    Taps outside the grid read as zero, as in the slice kernels.
    """
    size = grid.shape[0]
    lo, hi = used_taps(interpolation)
    x0, y0, z0, wx, wy, wz = sample_taps(gx, gy, gz, interpolation)
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
    return total


@register_jitable(inline="always")
def sample_modulation(i, j, kx, ky, shifts, ctf, box):
    """Real and imaginary parts of CTF times shift phase of sample ``j`` of image ``i``."""
    re = 1.0
    im = 0.0
    # Unshifted images are common (templates, simulations): skip cos/sin there.
    if shifts[i, 0] != 0.0 or shifts[i, 1] != 0.0:
        theta = -2.0 * math.pi * (kx[j] * shifts[i, 0] + ky[j] * shifts[i, 1]) / box
        re = math.cos(theta)
        im = math.sin(theta)
    if ctf.shape[0] > 0:
        re *= ctf[i, j]
        im *= ctf[i, j]
    return re, im
