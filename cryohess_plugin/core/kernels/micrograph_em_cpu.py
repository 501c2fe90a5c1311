"""Numba CPU kernel of micrograph EM: per-patch posteriors over (rotation, shift) states.

The E-step of ``docs/methods/micrograph_em.md`` §5 turns the cross-correlations of a
block of patches of one micrograph with every shifted projection into posterior weights.
The correlations are laid out ``corr[k, p, s]`` (rotation ``k``, patch ``p``, non-empty
shift ``s``), as the batched GEMM over rotations writes them.  The log-weight of state
``(k, s)`` is ``offset[k, s] + scale · corr[k, p, s]`` with ``offset = log(ρ_s / K) -
energy[k, s] / (2σ²)`` and ``scale = 1 / σ²`` (the patch's own ``|I_p|²`` cancels); the
empty state has ``log_empty``.

:func:`patch_weights` overwrites ``corr`` with ``exp(log-weight - best_p)`` and returns
per patch ``best_p`` and the total ``Z_p`` of those weights (empty included): the
posteriors are ``corr / Z_p`` and ``log p(I_p) + |I_p|²/(2σ²) + const = best_p + log Z_p``.
:mod:`.micrograph_em_cuda` has the same function for the CUDA backend.  The
exponentials are NumPy's (SIMD); Numba's scalar ``exp`` costs about four times as much.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import config, njit, prange

#: NumPy's ufuncs release the GIL, so the exponentials run on Numba's thread count.
_WORKERS = max(1, config.NUMBA_NUM_THREADS)
_POOL = ThreadPoolExecutor(max_workers=_WORKERS)


@njit(parallel=True, fastmath=True, cache=True)
def _log_weights(corr, offset, scale, log_empty, best):
    """``corr <- offset + scale · corr`` and ``best[p]``, the maximum over patch ``p``'s
    states (empty included)."""
    rotations, n, shifts = corr.shape
    for p in prange(n):
        top = log_empty
        for k in range(rotations):
            row = corr[k, p]
            base = offset[k]
            for s in range(shifts):
                value = base[s] + scale * row[s]
                row[s] = value
                top = max(top, value)
        best[p] = top


@njit(parallel=True, fastmath=True, cache=True)
def _totals(corr, log_empty, best, totals):
    rotations, n, shifts = corr.shape
    for p in prange(n):
        total = np.exp(log_empty - best[p])
        for k in range(rotations):
            row = corr[k, p]
            for s in range(shifts):
                total += row[s]
        totals[p] = total


def patch_weights(corr, offset, scale, log_empty, best, totals):
    """In place: ``corr`` ``(K, n, S)`` correlations → ``exp(log-weight - best)``.

    :param offset: ``(K, S)`` ``log(ρ_s / K) - energy[k, s] / (2σ²)``, in ``corr``'s dtype.
    :param scale: ``1 / σ²``.
    :param log_empty: ``log ρ_empty``.
    :param best: ``(n,)`` out, each patch's largest log-weight.
    :param totals: ``(n,)`` out, each patch's sum of weights (empty included).
    """
    _log_weights(corr, offset, corr.dtype.type(scale), float(log_empty), best)
    centre = best.astype(corr.dtype)[:, None]

    def exponentiate(part):
        part -= centre
        np.exp(part, out=part)

    list(_POOL.map(exponentiate, np.array_split(corr, _WORKERS, axis=0)))
    _totals(corr, float(log_empty), best, totals)
