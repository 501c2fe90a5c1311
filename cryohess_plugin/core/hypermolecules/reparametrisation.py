"""Joint reparametrisation of the states and the coefficients (docs/methods/hyper_molecules.md §5.5).

The likelihood sees a heterogeneous component only through ``W(r, τ) = Σ_q u_q(r) P_q(τ)``
at the particles' states, so a monotone warp ``τ → φ(τ)`` of every particle's state,
with the coefficients re-expanded so that ``W'(φ(τ)) ≈ W(τ)``, leaves the images nearly
unchanged: a direction along which single-particle moves and coefficient moves (each with
the other held) travel slowly.  This module gives one-parameter *groups* of such warps,
so that a proposal ``θ ~ N(0, s²)`` and its reverse ``-θ`` are exact inverses and the
Metropolis–Hastings ratio only needs the Jacobian:

* the state warps ``φ_θ`` fix 0 and 1 (the unit cube is kept): in logit coordinates
  ``z = log(τ / (1 - τ))`` the *shift* family is ``z → z + θ`` and the *scale* family
  ``z → e^θ z`` (a stretch about ½);
* the coefficients move by ``u → exp(θ G) u`` on the state-basis index, voxel by voxel,
  with ``G_jk = -∫ P_j f ∂_τ P_k dτ`` the projection of the warp's generator
  ``∂W/∂θ = -f ∂_τ W`` (``f = dφ_θ/dθ`` at ``θ = 0``) on the basis; ``exp(θG)`` is a group
  in ``θ`` whatever the truncation, its determinant is ``exp(θ tr G)`` per voxel.
"""
import functools
import math

import numpy as np
import scipy.linalg

#: The warp families: their generator ``f(τ)`` (velocity of the states at θ = 0).
FAMILIES = ("shift", "scale")
#: Gauss–Legendre nodes of the generator's projection on the state basis.
_QUADRATURE_NODES = 256
#: States are kept this far inside (0, 1), where the logit is finite.
_EDGE = 1e-12


def _logit(tau):
    tau = np.clip(tau, _EDGE, 1.0 - _EDGE)
    return np.log(tau) - np.log1p(-tau)


def _logistic(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def warp_states(tau, family, theta):
    """``(φ_θ(τ), log φ_θ'(τ))`` elementwise for states ``tau`` in ``[0, 1]``."""
    tau = np.clip(np.asarray(tau, dtype=np.float64), _EDGE, 1.0 - _EDGE)
    z = _logit(tau)
    if family == "shift":
        new_z, log_dz = z + theta, 0.0
    elif family == "scale":
        new_z, log_dz = math.exp(theta) * z, theta
    else:
        raise ValueError(f"unknown warp family {family!r}; one of {FAMILIES}")
    new = np.clip(_logistic(new_z), _EDGE, 1.0 - _EDGE)
    # dτ/dz = τ(1 - τ), so dφ/dτ = (dz'/dz) τ'(1 - τ') / (τ(1 - τ)).
    log_derivative = (log_dz + np.log(new) + np.log1p(-new) - np.log(tau) - np.log1p(-tau))
    return new, log_derivative


def _velocity(tau, family):
    """``f(τ) = ∂φ_θ(τ)/∂θ`` at ``θ = 0``."""
    if family == "shift":
        return tau * (1.0 - tau)
    return tau * (1.0 - tau) * _logit(tau)


@functools.lru_cache(maxsize=None)
def axis_generator(order, family):
    """``(order, order)`` ``G_jk = -∫₀¹ P_j(τ) f(τ) P_k'(τ) dτ`` of the 1-D cosine series."""
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    tau, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    j = np.arange(order)
    scale = np.where(j == 0, 1.0, math.sqrt(2.0))
    values = scale * np.cos(np.pi * j * tau[:, None])
    slopes = -scale * np.pi * j * np.sin(np.pi * j * tau[:, None])
    generator = -np.einsum("t,tj,tk->jk", weights * _velocity(tau, family), values, slopes)
    generator.setflags(write=False)
    return generator


def basis_generator(basis, family, axis):
    """Generator of a warp along one axis of a tensor :class:`.basis.StateBasis`: the 1-D
    generator on that axis' index, the identity on the others."""
    one = axis_generator(basis.order, family)
    indices = basis.indices
    others = np.delete(indices, axis, axis=1)
    same = np.all(others[:, None, :] == others[None, :, :], axis=-1)
    return np.where(same, one[indices[:, axis][:, None], indices[:, axis][None, :]], 0.0)


def coefficient_map(generator, theta):
    """``(exp(θG), θ tr G)``: the map of the state-basis index and its log-determinant per
    voxel."""
    return scipy.linalg.expm(theta * generator), float(theta * np.trace(generator))


def propose_warp(states, coefficients, basis, family, axis, theta, voxels):
    """The deterministic joint map of one warp proposal.

    :param states: list of ``(n, d)`` state arrays of the components that use these
        coefficients (a shared copy's states move with its owner's).
    :param coefficients: ``(basis.size, ...)`` coefficient maps.
    :param basis: the :class:`.basis.StateBasis` of the coefficients.
    :param family: one of :data:`FAMILIES`.  :param axis: state axis warped.
    :param theta: the group parameter (the reverse proposal is ``-theta``).
    :param voxels: free real coordinates per coefficient map (the in-band dimension).
    :returns: ``(new states, new coefficients, map matrix, log |Jacobian|)``.
    """
    matrix, log_det = coefficient_map(basis_generator(basis, family, axis), theta)
    moved, log_jacobian = [], voxels * log_det
    for array in states:
        new = np.array(array, dtype=np.float64, copy=True)
        new[:, axis], log_derivative = warp_states(array[:, axis], family, theta)
        log_jacobian += float(np.sum(log_derivative))
        moved.append(new)
    return moved, np.tensordot(matrix, coefficients, axes=1), matrix, log_jacobian
