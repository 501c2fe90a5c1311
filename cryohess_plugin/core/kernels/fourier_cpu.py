"""Numba CPU kernels that move spectra between sample lists and FFT layouts.

numpy fancy indexing costs about 16 ns per element here; these parallel
loops make half-plane synthesis a small fraction of a projection.
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def scatter_rows(values, factor, flat_index, out):
    """``out[i].flat[flat_index[j]] = values[i, j] * factor[j]`` for every image ``i``."""
    n, m = values.shape
    for i in prange(n):
        row = out[i]
        for j in range(m):
            row[flat_index[j]] = values[i, j] * factor[j]


@njit(parallel=True, cache=True)
def gather_rows(spectra, factor, flat_index, out):
    """``out[i, j] = spectra[i].flat[flat_index[j]] * factor[j]`` for every image ``i``."""
    n, m = out.shape
    for i in prange(n):
        row = spectra[i]
        for j in range(m):
            out[i, j] = row[flat_index[j]] * factor[j]
