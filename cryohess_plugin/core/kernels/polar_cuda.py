"""``numba.cuda`` kernel of the polar Fourier transform.

Same contract as :func:`.polar_cpu.polar_interpolate` (see that module for
the window, the taps and the antipodal ``direct``/``mirror`` writes), with
host NumPy arrays in and the result written into the host ``out``.  One
thread computes one node of one image.  Complex arrays travel as real views
(real and imaginary parts interleaved along the last axis).
"""
import functools

import numba
import numpy as np
from numba import cuda

_THREADS = 128
#: CUDA caps grid dimension y at 65535; the kernel strides over the remaining images.
_MAX_BLOCKS_Y = 65535


@functools.lru_cache(maxsize=None)
def _kernel(real_dtype):
    """The interpolation kernel for windows of real precision ``real_dtype``."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def interpolate(windows, offsets, weights_x, weights_y, direct, mirror, out):
        p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if p >= offsets.size:
            return
        width = windows.shape[2] // 2
        y0 = offsets[p] // width
        x0 = offsets[p] - y0 * width
        for i in range(cuda.blockIdx.y, windows.shape[0], cuda.gridDim.y):
            acc_re = real(0)
            acc_im = real(0)
            for b in range(4):
                line = windows[i, y0 + b]
                row_re = real(0)
                row_im = real(0)
                for a in range(4):
                    row_re += weights_x[p, a] * line[2 * (x0 + a)]
                    row_im += weights_x[p, a] * line[2 * (x0 + a) + 1]
                acc_re += weights_y[p, b] * row_re
                acc_im += weights_y[p, b] * row_im
            out[i, 2 * direct[p]] = acc_re
            out[i, 2 * direct[p] + 1] = acc_im
            out[i, 2 * mirror[p]] = acc_re
            out[i, 2 * mirror[p] + 1] = -acc_im

    return interpolate


def polar_interpolate(windows, offsets, weights_x, weights_y, direct, mirror, out):
    """Interpolate ``windows`` ``(n, Y, X)`` at the nodes into ``out`` ``(n, M)``."""
    n, m = windows.shape[0], offsets.size
    if n == 0 or m == 0:
        return
    window_view = np.ascontiguousarray(windows).view(windows.real.dtype)
    interpolate = _kernel(window_view.dtype)
    d_out = cuda.device_array((n, 2 * out.shape[1]), dtype=window_view.dtype)
    blocks = ((m + _THREADS - 1) // _THREADS, min(n, _MAX_BLOCKS_Y))
    interpolate[blocks, _THREADS](
        cuda.to_device(window_view), cuda.to_device(offsets), cuda.to_device(weights_x),
        cuda.to_device(weights_y), cuda.to_device(direct), cuda.to_device(mirror), d_out)
    out[...] = d_out.copy_to_host().view(out.dtype)
