"""The M-steps of micrograph EM: the volume's linear system, the shift prior and the noise.

``docs/methods/micrograph_em.md`` §6.  The volume update solves ``A a = y`` with

    A = Σ_g Σ_k Φ_g(k)ᵀ diag(M_{g,k}) Φ_g(k),   y = Σ_g Σ_k Φ_g(k)ᵀ b_{g,k},

``g`` running over the micrographs' CTFs (one group without CTF), ``M`` the
per-rotation visibility weights (:func:`.patches.visibility_weights`) and ``b`` the
back-shifted patch sums of the E-step: the mask formulation, with no tensor over shifts.
"""
import numpy as np
import scipy.linalg

from .patches import visibility_weights


def ctf_groups(n_micrographs, ctfs):
    """``{group: [micrographs]}``: one group per micrograph with CTFs, one in all without."""
    if ctfs is None:
        return {0: list(range(n_micrographs))}
    return {m: [m] for m in range(n_micrographs)}


def volume_system(operator, statistics, ctfs=None):
    """``(A, y)`` of the volume M-step from the statistics of :func:`.estep.expectation`."""
    size = operator.basis.size
    box = operator.box
    matrix = np.zeros((size, size))
    vector = np.zeros(size)
    n_micrographs = 1 + max(statistics) if statistics else 0
    for group, members in ctf_groups(n_micrographs, ctfs).items():
        members = [m for m in members if m in statistics]
        if not members:
            continue
        masks = sum(visibility_weights(statistics[m].weights, box) for m in members)
        back = sum(statistics[m].back_projection for m in members)
        ctf = None if ctfs is None else ctfs[group]
        for start, block in operator.blocks(ctf):
            stop = start + block.shape[0]
            flat = block.reshape(-1, size)
            weighted = flat * masks[start:stop].reshape(-1, 1)
            matrix += weighted.T @ flat
            vector += flat.T @ back[start:stop].ravel()
    return matrix, vector


def solve_volume(matrix, vector, ridge=0.0):
    """``a`` solving ``(A + ridge · mean(diag A) · I) a = y`` (Cholesky; an eigenvalue
    threshold where ``A`` is singular) and the condition number of ``A``."""
    eigenvalues = np.linalg.eigvalsh(matrix)
    top = max(eigenvalues[-1], 1e-300)
    condition = top / eigenvalues[0] if eigenvalues[0] > 0 else np.inf
    regularised = matrix + ridge * np.mean(np.diag(matrix)) * np.eye(matrix.shape[0])
    try:
        factor = scipy.linalg.cho_factor(regularised)
        return scipy.linalg.cho_solve(factor, vector), float(condition)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(regularised)
        keep = values > 1e-10 * values[-1]
        return vectors[:, keep] @ ((vectors[:, keep].T @ vector) / values[keep]), np.inf


def update_shift_prior(statistics):
    """``(shift_prior (S,), empty_mass)``: the average posterior over the patches."""
    count = sum(s.count for s in statistics.values())
    shift = sum(s.weights.sum(axis=0) for s in statistics.values()) / count
    empty = sum(s.empty for s in statistics.values()) / count
    return shift, float(empty)


def update_noise(operator, coefficients, statistics, noise_variance, ctfs=None, floor=1e-12):
    """Per-micrograph noise variance at the new volume:
    ``σ²_m = (Σ_p |I_p|² - 2 Σ_k <b_k, P_k> + Σ_k <M_k, P_k²>) / (n_m L²)`` with ``P`` the
    projections of ``coefficients`` (the expected residual energy; the paper keeps σ² fixed,
    ``docs/methods/micrograph_em.md`` §6.3).  Micrographs without patches keep theirs."""
    out = np.array(noise_variance, dtype=np.float64)
    box = operator.box
    shared = None if ctfs is not None else operator.project(coefficients)
    for m, stats in statistics.items():
        projections = shared if ctfs is None else operator.project(coefficients, ctfs[m])
        masks = visibility_weights(stats.weights, box)
        residual = (stats.energy - 2 * np.sum(stats.back_projection * projections)
                    + np.sum(masks * projections ** 2))
        out[m] = max(residual / (stats.count * box * box), floor)
    return out
