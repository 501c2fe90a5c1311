"""The E-step of micrograph EM: posteriors of every patch over (rotation, shift) states.

``docs/methods/micrograph_em.md`` §5.  For a block of patches ``X`` ``(n, L²)`` of one
micrograph the cross-correlations with every shifted projection are one GEMM,
``C = X Yᵀ`` with ``Y`` ``(K·S, L²)`` the projections of the current volume (with the
micrograph's CTF) at every non-empty shift (:func:`.patches.shifted_stack`), batched over
rotations so it comes out ``(K, n, S)``.  The kernel (:mod:`..kernels.micrograph_em_cpu`)
turns it into posteriors ``π``; the M-step's statistics are then ``W = Σ_p π`` (state
weights), ``b_k = Σ_{p,s} π[k, p, s] (C T_s Z)ᵀ I_p`` (a second GEMM against the
back-shifted patches, :func:`.patches.back_shifted_patches`), the empty mass and
``Σ_p |I_p|²``, all per micrograph.  Nothing of size patches × states is kept beyond one
block.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidDataError
from ..kernels import resolve_backend
from ..kernels import micrograph_em_cpu
from . import patches as patch_model

#: Patches per block: the block's ``n × K·S`` correlations stay near 32 MB at the paper's size.
BLOCK = 32


@dataclass
class Model:
    """The parameters the EM estimates.

    :param coefficients: ``(d,)`` volume coefficients (:mod:`.basis`).
    :param shift_prior: ``(S,)`` prior mass of each non-empty shift.
    :param empty_mass: prior mass of the empty state (``1 - Σ shift_prior``).
    :param noise_variance: ``(M,)`` per-pixel noise variance of each micrograph.
    """
    coefficients: np.ndarray
    shift_prior: np.ndarray
    empty_mass: float
    noise_variance: np.ndarray


@dataclass
class MicrographStatistics:
    """Sufficient statistics of one micrograph's patches in one E-step."""
    count: int
    weights: np.ndarray        # (K, S) Σ_p π_p(k, s)
    back_projection: np.ndarray  # (K, L, L) b_k
    empty: float               # Σ_p π_p(empty)
    energy: float              # Σ_p |I_p|²


@dataclass
class Expectation:
    """The result of :func:`expectation` for the patches ``indices``.

    :param log_likelihood: ``(n,)`` ``log p(I_p)`` under the model.
    :param empty: ``(n,)`` posterior of "empty".
    :param statistics: ``{micrograph: MicrographStatistics}`` (empty when not accumulated).
    :param map_state: ``(n,)`` index of the most probable non-empty shift (marginal over
        rotations), when asked.
    :param map_shift_posterior: ``(n,)`` its posterior mass.
    :param map_rotation: ``(n,)`` the most probable rotation at that shift.
    """
    indices: np.ndarray
    log_likelihood: np.ndarray
    empty: np.ndarray
    statistics: dict = field(default_factory=dict)
    map_state: np.ndarray = None
    map_shift_posterior: np.ndarray = None
    map_rotation: np.ndarray = None


def _kernels(backend):
    if resolve_backend(backend) == "cuda":
        from ..kernels import micrograph_em_cuda
        return micrograph_em_cuda
    return micrograph_em_cpu


def expectation(patch_set, indices, operator, model, ctfs=None, accumulate=True,
                maximum_a_posteriori=False, dtype=np.float32, backend="cpu", block=BLOCK):
    """Posteriors of the patches ``indices`` under ``model``.

    :param patch_set: :class:`.patches.PatchSet`.
    :param operator: :class:`.projection.ProjectionOperator` of the model's basis.
    :param ctfs: None, or per micrograph the ``(L, L)`` CTF image (:func:`.projection.ctf_image`).
    :param accumulate: collect the M-step statistics.
    :param maximum_a_posteriori: also report each patch's most probable shift and rotation.
    :param dtype: float32 (production) or float64 (exact tests) for correlations.
    :param backend: where the posterior kernel runs (``"cpu"``, ``"cuda"``, ``"auto"``).
    :returns: :class:`Expectation`.
    """
    kernels = _kernels(backend)
    dtype = np.dtype(dtype)
    indices = np.asarray(indices)
    box = patch_set.box
    pixels = box * box
    n_total = indices.size
    log_likelihood = np.empty(n_total)
    empty = np.empty(n_total)
    map_state = np.full(n_total, -1, dtype=np.int64) if maximum_a_posteriori else None
    map_mass = np.zeros(n_total) if maximum_a_posteriori else None
    map_rotation = np.full(n_total, -1, dtype=np.int64) if maximum_a_posteriori else None
    shift_prior = np.asarray(model.shift_prior, dtype=np.float64)
    n_shifts = shift_prior.size
    log_prior = np.log(np.maximum(shift_prior, 1e-300) / operator.count)
    log_empty = float(np.log(max(model.empty_mass, 1e-300)))
    statistics = {}
    owners = patch_set.micrograph[indices]
    for micrograph in np.unique(owners):
        positions = np.flatnonzero(owners == micrograph)
        ctf = None if ctfs is None else ctfs[micrograph]
        variance = float(model.noise_variance[micrograph])
        if not variance > 0:
            raise InvalidDataError(f"the noise variance of micrograph {micrograph + 1} is "
                                   f"{variance}; it must be positive")
        projections = operator.project(model.coefficients, ctf)
        count = operator.count
        stack = patch_model.shifted_stack(projections, dtype).reshape(count, n_shifts, pixels)
        energy = np.einsum("ksj,ksj->ks", stack, stack, dtype=np.float64).astype(dtype)
        stack = np.ascontiguousarray(stack.transpose(0, 2, 1))  # (K, L², S)
        offset = (log_prior[None, :] - energy / (2 * variance)).astype(dtype)
        weights = np.zeros((count, n_shifts))
        back = np.zeros((count, pixels))
        empty_sum = energy_sum = 0.0
        for start in range(0, positions.size, block):
            where = positions[start:start + block]
            chosen = patch_set.patches[indices[where]].astype(dtype)
            data = chosen.reshape(-1, pixels)
            correlations = np.matmul(data, stack)  # (K, n, S)
            best = np.empty(where.size)
            totals = np.empty(where.size)
            kernels.patch_weights(correlations, offset, 1.0 / variance, log_empty, best,
                                  totals)
            inverse = 1.0 / totals
            squared = np.einsum("ij,ij->i", data, data, dtype=np.float64)
            log_likelihood[where] = (best + np.log(totals) - squared / (2 * variance)
                                     - 0.5 * pixels * np.log(2 * np.pi * variance))
            empty[where] = np.exp(log_empty - best) * inverse
            if accumulate:
                scales = inverse.astype(dtype)
                weights += np.matmul(scales[None, None, :], correlations)[:, 0, :]
                moved = patch_model.back_shifted_patches(chosen * scales[:, None, None])
                back += correlations.reshape(count, -1) @ moved.reshape(-1, pixels)
                empty_sum += empty[where].sum()
                energy_sum += squared.sum()
            if maximum_a_posteriori:
                marginal = np.einsum("kps,p->ps", correlations, inverse)
                best_shift = marginal.argmax(axis=1)
                rows = np.arange(where.size)
                map_state[where] = best_shift
                map_mass[where] = marginal[rows, best_shift]
                map_rotation[where] = correlations[:, rows, best_shift].argmax(axis=0)
        if accumulate:
            statistics[int(micrograph)] = MicrographStatistics(
                positions.size, weights, back.reshape(count, box, box), empty_sum, energy_sum)
    return Expectation(indices, log_likelihood, empty, statistics, map_state, map_mass,
                       map_rotation)
