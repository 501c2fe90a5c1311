"""Numba CPU kernel of micrograph EM: per-patch posteriors over (rotation, shift) states.

The E-step of ``docs/methods/micrograph_em.md`` §5 turns the cross-correlations of a
block of patches with every shifted projection into posteriors.  For patch ``p`` and state
``j = k·S + s`` (rotation ``k``, non-empty shift ``s``) the log-weight is

    log_prior[s] + (2 c[p, j] - energy[j]) / (2 σ_p²),

the empty state has ``log_empty``; the posterior is the softmax over all of them (the
patch's own ``|I_p|²`` cancels).  :func:`patch_posteriors` overwrites ``corr`` with the
posteriors and writes each patch's log normaliser and posterior of "empty".
:mod:`.micrograph_em_cuda` has the same function for the CUDA backend.
"""
import math

from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def patch_posteriors(corr, energy, log_prior, log_empty, inv_sigma2, log_norm, empty):
    """In place: ``corr`` ``(n, K·S)`` float32 correlations → posteriors.

    :param energy: ``(K·S,)`` visible energies of the shifted projections.
    :param log_prior: ``(S,)`` ``log(ρ_s / K)``.
    :param log_empty: ``log ρ_empty``.
    :param inv_sigma2: ``(n,)`` ``1 / σ²`` of each patch's micrograph.
    :param log_norm: ``(n,)`` out, ``log Σ_states exp(log-weight)``.
    :param empty: ``(n,)`` out, posterior of the empty state.
    """
    n, states = corr.shape
    shifts = log_prior.shape[0]
    rotations = states // shifts
    for p in prange(n):
        half = 0.5 * inv_sigma2[p]
        best = log_empty
        for k in range(rotations):
            base = k * shifts
            for s in range(shifts):
                value = log_prior[s] + (2.0 * corr[p, base + s] - energy[base + s]) * half
                corr[p, base + s] = value
                if value > best:
                    best = value
        total = math.exp(log_empty - best)
        for j in range(states):
            weight = math.exp(corr[p, j] - best)
            corr[p, j] = weight
            total += weight
        scale = 1.0 / total
        for j in range(states):
            corr[p, j] *= scale
        log_norm[p] = best + math.log(total)
        empty[p] = math.exp(log_empty - best) * scale
