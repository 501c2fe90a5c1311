"""Numba CPU kernel of the factorised translation kernel (:mod:`..alignment.translations`).

:func:`combine_terms` turns the per-term spectra of image-template pairs into
the angular spectra of one ring of shifts: term ``t`` (Bessel order ``p_t``)
adds ``factors[t] * G[pair, t, q]`` to column ``p_t mod n_omega`` of
``out[pair, q]``.  Orders that alias onto the same column are summed, which is
exact on the ``n_omega`` equispaced shift directions of the ring.
"""
from numba import njit, prange


@njit(parallel=True, cache=True)
def combine_terms(spectra, factors, columns, out):
    """``out[i, q, columns[t]] += factors[t] * spectra[i, t, q]`` for every term ``t``.

    :param spectra: ``(pairs, terms, M)`` complex per-term spectra.
    :param factors: ``(terms,)`` complex weights of the terms at one shift radius.
    :param columns: ``(terms,)`` int64 column of each term (its order mod ``n_omega``).
    :param out: ``(pairs, M, n_omega)`` complex, zeroed by the caller.
    """
    pairs, terms, n_freq = spectra.shape
    for i in prange(pairs):
        for t in range(terms):
            weight = factors[t]
            column = columns[t]
            for q in range(n_freq):
                out[i, q, column] += weight * spectra[i, t, q]
