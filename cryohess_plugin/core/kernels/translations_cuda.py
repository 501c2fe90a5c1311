"""``numba.cuda`` twin of :func:`.translations_cpu.combine_terms`.

Same contract, host NumPy arrays in and the result added into the host
``out``.  One thread owns one ``(pair, q)`` row of ``out`` and loops over the
terms, so no two threads write the same element.  Complex arrays travel as
real views (real and imaginary parts interleaved along the last axis).
"""
import functools

import numba
import numpy as np
from numba import cuda

from .cuda_launch import MAX_BLOCKS_Y, THREADS


@functools.lru_cache(maxsize=None)
def _kernel(real_dtype):
    """The combination kernel for spectra of real precision ``real_dtype``."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def combine(spectra, factors, columns, out):
        q = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n_freq = spectra.shape[2] // 2
        if q >= n_freq:
            return
        for i in range(cuda.blockIdx.y, spectra.shape[0], cuda.gridDim.y):
            for t in range(spectra.shape[1]):
                s_re = spectra[i, t, 2 * q]
                s_im = spectra[i, t, 2 * q + 1]
                f_re = real(factors[t, 0])
                f_im = real(factors[t, 1])
                c = columns[t]
                out[i, q, 2 * c] += f_re * s_re - f_im * s_im
                out[i, q, 2 * c + 1] += f_re * s_im + f_im * s_re

    return combine


def combine_terms(spectra, factors, columns, out):
    """``out[i, q, columns[t]] += factors[t] * spectra[i, t, q]`` for every term ``t``."""
    pairs, _, n_freq = spectra.shape
    if pairs == 0 or n_freq == 0:
        return
    spectra_view = np.ascontiguousarray(spectra).view(spectra.real.dtype)
    factor_view = np.ascontiguousarray(factors, dtype=np.complex128).view(np.float64)
    combine = _kernel(spectra_view.dtype)
    d_out = cuda.to_device(np.ascontiguousarray(out).view(out.real.dtype))
    blocks = ((n_freq + THREADS - 1) // THREADS, min(pairs, MAX_BLOCKS_Y))
    combine[blocks, THREADS](cuda.to_device(spectra_view),
                             cuda.to_device(factor_view.reshape(-1, 2)),
                             cuda.to_device(np.ascontiguousarray(columns, dtype=np.int64)),
                             d_out)
    out[...] = d_out.copy_to_host().view(out.dtype)
