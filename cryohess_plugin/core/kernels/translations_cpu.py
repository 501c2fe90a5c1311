"""Numba CPU kernel of the FTK search (:mod:`..alignment.translations`).

:func:`shift_bounds` bounds the landscape of every (pair, shift) row over all
in-plane angles: ``|X(gamma)| <= scale (|Xhat(0)| + 2 sum_{q >= 1} |Xhat(q)|)``
for ``X(gamma) = Re[Xhat(0) + 2 sum_q Xhat(q) exp(-i q gamma)]``.
"""
import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def shift_bounds(spectra, scale, out):
    """``out[i, s] = scale[i] (|spectra[i, s, 0]| + 2 sum_{q >= 1} |spectra[i, s, q]|)``.

    :param spectra: ``(pairs, S, M)`` complex angular spectra.
    :param scale: ``(pairs,)`` real.
    :param out: ``(pairs, S)`` real.
    """
    pairs, n_shifts, n_freq = spectra.shape
    for i in prange(pairs):
        for s in range(n_shifts):
            row = spectra[i, s]
            total = -0.5 * math.sqrt(row[0].real * row[0].real + row[0].imag * row[0].imag)
            for q in range(n_freq):
                total += math.sqrt(row[q].real * row[q].real + row[q].imag * row[q].imag)
            out[i, s] = 2 * total * scale[i]
