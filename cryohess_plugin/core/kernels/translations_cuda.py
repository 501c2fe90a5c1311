"""``numba.cuda`` twin of :func:`.translations_cpu.shift_bounds`.

Same contract, host NumPy arrays in and the result written into the host
``out``.  One thread computes one (pair, shift) row.  Complex arrays travel
as real views (real and imaginary parts interleaved along the last axis).
"""
import functools
import math

import numba
import numpy as np
from numba import cuda

from .cuda_launch import MAX_BLOCKS_Y, THREADS


@functools.lru_cache(maxsize=None)
def _kernel(real_dtype):
    """The bound kernel for spectra of real precision ``real_dtype``."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def bounds(spectra, scale, out):
        s = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if s >= spectra.shape[1]:
            return
        n_freq = spectra.shape[2] // 2
        for i in range(cuda.blockIdx.y, spectra.shape[0], cuda.gridDim.y):
            total = real(-0.5) * math.hypot(spectra[i, s, 0], spectra[i, s, 1])
            for q in range(n_freq):
                total += math.hypot(spectra[i, s, 2 * q], spectra[i, s, 2 * q + 1])
            out[i, s] = real(2) * total * scale[i]

    return bounds


def shift_bounds(spectra, scale, out):
    """``out[i, s] = scale[i] (|spectra[i, s, 0]| + 2 sum_{q >= 1} |spectra[i, s, q]|)``."""
    pairs, n_shifts, _ = spectra.shape
    if pairs == 0 or n_shifts == 0:
        return
    view = np.ascontiguousarray(spectra).view(spectra.real.dtype)
    bounds = _kernel(view.dtype)
    d_out = cuda.device_array(out.shape, dtype=out.dtype)
    blocks = ((n_shifts + THREADS - 1) // THREADS, min(pairs, MAX_BLOCKS_Y))
    bounds[blocks, THREADS](cuda.to_device(view),
                            cuda.to_device(np.ascontiguousarray(scale, dtype=out.dtype)), d_out)
    out[...] = d_out.copy_to_host()
