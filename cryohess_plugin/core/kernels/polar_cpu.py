"""Numba CPU kernels of the polar Fourier transform (:func:`..polar.polar_transform`).

Input is, per image, the window ``windows[i, y, x]`` of its oversampled
spectrum that the interpolation taps can reach.  Node ``p`` sits at window
coordinates ``(gx[p], gy[p])`` and is read with the Keys cubic kernel on the
taps ``f - 1 .. f + 2`` around ``f = floor(g)``; the window is built so that
every tap lies inside it.  The nodes are the same for every image, so
:func:`node_taps` computes their taps once and :func:`polar_interpolate`
only gathers.

Each node ``p`` is written at ``out[i, direct[p]]`` and its conjugate at
``out[i, mirror[p]]``, the antipodal node of the same ring: the spectrum of
a real image is Hermitian, and so is its interpolant, as the kernel is even.
"""
import math

import numpy as np
from numba import njit, prange

from .interpolation import tap_weights

#: The Keys cubic kernel of :func:`.interpolation.tap_weights`.
CUBIC = 1


@njit(cache=True)
def node_taps(gx, gy, width, weights_x, weights_y):
    """Flat window index of each node's first tap; fills the ``(m, 4)`` tap weights.

    ``width`` is the window's row length; tap ``(b, a)`` of node ``p`` is at
    flat index ``offsets[p] + b * width + a``.
    """
    offsets = np.empty(gx.size, dtype=np.int64)
    for p in range(gx.size):
        fx = math.floor(gx[p])
        fy = math.floor(gy[p])
        tx = tap_weights(gx[p] - fx, CUBIC)
        ty = tap_weights(gy[p] - fy, CUBIC)
        for a in range(4):
            weights_x[p, a] = tx[a]
            weights_y[p, a] = ty[a]
        offsets[p] = (int(fy) - 1) * width + int(fx) - 1
    return offsets


@njit(parallel=True, cache=True)
def polar_interpolate(windows, offsets, weights_x, weights_y, direct, mirror, out):
    """Interpolate ``windows`` ``(n, Y, X)`` at the nodes into ``out`` ``(n, M)``.

    Weights are in the windows' real precision, so single-precision input is
    interpolated in single precision.
    """
    n, height, width = windows.shape
    for i in prange(n):
        flat = windows[i].reshape(height * width)
        for p in range(offsets.size):
            acc_re = weights_x[0, 0] * 0
            acc_im = weights_x[0, 0] * 0
            for b in range(4):
                base = offsets[p] + b * width
                row_re = weights_x[0, 0] * 0
                row_im = weights_x[0, 0] * 0
                for a in range(4):
                    value = flat[base + a]
                    row_re += weights_x[p, a] * value.real
                    row_im += weights_x[p, a] * value.imag
                acc_re += weights_y[p, b] * row_re
                acc_im += weights_y[p, b] * row_im
            out[i, direct[p]] = complex(acc_re, acc_im)
            out[i, mirror[p]] = complex(acc_re, -acc_im)
