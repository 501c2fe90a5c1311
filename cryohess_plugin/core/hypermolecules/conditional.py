"""Exact draws of the coefficients from their Gaussian conditional (docs/methods/hyper_molecules.md §5.2).

Given the states, poses, shifts and contrasts, the model is linear in the coefficients, so
their conditional is Gaussian with precision ``Q = 2β AᵀWA + Λ`` and ``Q μ = b = 2β AᵀWY``.
A draw is ``Q⁻¹(b + w)`` with ``w ~ N(0, Q)`` (perturbation–optimisation: ``w`` is the
adjoint of noise-like data plus prior noise), but the solve is iterative and inexact.
:func:`reflection_step` makes the draw exact whatever the solver's error: with the
auxiliary ``z = Q x + w`` the map ``x → F(b + z) - x`` (any deterministic ``F ≈ Q⁻¹``) is
an involution of unit Jacobian at fixed ``z``, and the Metropolis–Hastings ratio of the
joint ``π(x) N(z; Qx, Q)`` is

    log π(x') + zᵀx' - ½ x'ᵀQx' - (log π(x) + zᵀx - ½ xᵀQx),

which is 0 when ``F = Q⁻¹`` and ``π`` is that Gaussian (the move is then an independent
exact draw); otherwise it corrects the solver's error, and a ``Q`` that is only close to
the target's precision still leaves ``π`` invariant.
"""
import numpy as np


def conjugate_gradient(apply_matrix, right_hand_side, precondition, iterations, start=None):
    """``iterations`` steps of preconditioned conjugate gradients (a deterministic function
    of the right-hand side and the start); returns the iterate."""
    x = np.zeros_like(right_hand_side) if start is None else start.copy()
    residual = right_hand_side - apply_matrix(x) if start is not None else right_hand_side.copy()
    z = precondition(residual)
    direction = z.copy()
    rz = float(np.dot(residual, z))
    for _ in range(iterations):
        if rz <= 0:
            break
        product = apply_matrix(direction)
        curvature = float(np.dot(direction, product))
        if curvature <= 0:
            break
        alpha = rz / curvature
        x += alpha * direction
        residual -= alpha * product
        z = precondition(residual)
        rz_new = float(np.dot(residual, z))
        direction = z + (rz_new / rz) * direction
        rz = rz_new
    return x


def reflection_step(x, log_current, log_target, apply_precision, linear, noise, solve, rng):
    """One exact Metropolis–Hastings step by a reflected perturbation–optimisation draw.

    :param x: current flat point.  :param log_current: ``log π(x)``.
    :param log_target: function of a point giving ``log π`` (any target).
    :param apply_precision: ``v → Q v``, symmetric positive definite on the sampled space.
    :param linear: ``b`` (the Gaussian ``N(Q⁻¹b, Q⁻¹)`` approximates ``π``).
    :param noise: function of ``rng`` giving ``w ~ N(0, Q)``.
    :param solve: deterministic ``c → ≈ Q⁻¹ c``.
    :returns: ``(proposal, log π(proposal), accepted, acceptance probability)``.
    """
    current_product = apply_precision(x)
    auxiliary = current_product + noise(rng)
    proposal = solve(linear + auxiliary) - x
    log_new = log_target(proposal)
    proposal_product = apply_precision(proposal)
    log_ratio = (log_new + float(np.dot(auxiliary, proposal))
                 - 0.5 * float(np.dot(proposal, proposal_product))
                 - log_current - float(np.dot(auxiliary, x))
                 + 0.5 * float(np.dot(x, current_product)))
    accepted = bool(np.log(rng.random()) < log_ratio)
    return proposal, log_new, accepted, float(np.exp(min(log_ratio, 0.0)))
