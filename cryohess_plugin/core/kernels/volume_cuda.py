"""``numba.cuda`` kernels of the SO(3) landscape, same contract as :mod:`.volume_cpu`.

Tables shared by every volume stay on the device (:func:`upload`); the
per-volume coefficients go up and ``out`` comes back as host arrays.  One
thread computes one ``out[b, i, j]``.  Complex arrays travel as real views
(real and imaginary parts interleaved along the last axis), as in
:mod:`.projector_cuda`.
"""
import functools

import numba
import numpy as np
from numba import cuda

_THREADS = 128


def upload(array):
    """Device copy of a table that many calls share."""
    return cuda.to_device(np.ascontiguousarray(array))


@functools.lru_cache(maxsize=None)
def _kernels(real_dtype):
    """The two kernels for coefficients of real precision ``real_dtype``."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def degree_sum(table, coefficients, out):
        n_beta, n_z, n_i, n_j = table.shape
        t = cuda.grid(1)
        if t >= n_beta * n_i * n_j:
            return
        j = t % n_j
        i = (t // n_j) % n_i
        b = t // (n_j * n_i)
        acc_re = real(0)
        acc_im = real(0)
        for z in range(n_z):
            w = table[b, z, i, j]
            acc_re += w * coefficients[z, i, 2 * j]
            acc_im += w * coefficients[z, i, 2 * j + 1]
        out[b, i, 2 * j] = acc_re
        out[b, i, 2 * j + 1] = acc_im

    @cuda.jit
    def wigner_sum(table, offsets, first, coefficients, out):
        n_beta = table.shape[1]
        n_i, n_j = offsets.shape
        n_degrees = coefficients.shape[2] // 2
        t = cuda.grid(1)
        if t >= n_beta * n_i * n_j:
            return
        j = t % n_j
        i = (t // n_j) % n_i
        b = t // (n_j * n_i)
        start = offsets[i, j]
        lo = first[i, j]
        acc_re = real(0)
        acc_im = real(0)
        for l in range(lo, n_degrees):
            w = table[start + l - lo, b]
            acc_re += w * coefficients[i, j, 2 * l]
            acc_im += w * coefficients[i, j, 2 * l + 1]
        out[b, i, 2 * j] = acc_re
        out[b, i, 2 * j + 1] = acc_im

    return degree_sum, wigner_sum


def _real_view(array):
    array = np.ascontiguousarray(array)
    return array.view(array.real.dtype)


def _launch(kernel, out, *arguments):
    """Run ``kernel`` with one thread per ``out`` element and copy the result into ``out``."""
    count = out.size
    if count == 0:
        return
    d_out = cuda.device_array(out.shape[:-1] + (2 * out.shape[-1],), dtype=out.real.dtype)
    blocks = (count + _THREADS - 1) // _THREADS
    kernel[blocks, _THREADS](*arguments, d_out)
    out[...] = d_out.copy_to_host().view(out.dtype).reshape(out.shape)


def degree_sum(table, coefficients, out):
    """Compressed step 2 (see :func:`.volume_cpu.degree_sum`); ``table`` from :func:`upload`."""
    kernel = _kernels(out.real.dtype)[0]
    _launch(kernel, out, table, cuda.to_device(_real_view(coefficients)))


def wigner_sum(table, offsets, first, coefficients, out):
    """Unreduced step 2 (see :func:`.volume_cpu.wigner_sum`); tables from :func:`upload`."""
    kernel = _kernels(out.real.dtype)[1]
    _launch(kernel, out, table, offsets, first, cuda.to_device(_real_view(coefficients)))
