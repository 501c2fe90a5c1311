"""Numba CPU kernels of the hyper-molecule likelihood: per-image sums over frequencies.

Every image ``i`` is compared with its model at the half-plane frequencies
``(kx[j], ky[j])`` (cycles per box of ``box`` pixels)::

    model[i, j] = ctf[i, j] * exp(-2 pi i (kx[j] tx_i + ky[j] ty_i) / box)
                  * sum_q weights[i, q] * slices[i, q, j]

where ``slices[i, q]`` is the central slice of state-basis map ``q`` (unshifted, no CTF)
and ``weights[i, q]`` the contrast times the state-basis value ``P_q(tau_i)``.  The shift
enters only as a phase, so a shift proposal reuses the slices.

* :func:`log_likelihoods`: ``out[i] = -sum_j precision[j] |data[i, j] - model[i, j]|^2``;
* :func:`weighted_residuals`: ``out[i, j] = precision[j] conj(ctf phase) (data - model)``,
  from which the gradient of the log-likelihood with respect to the slices follows.

:mod:`.hypermolecule_cuda` has the same two functions for the CUDA backend.
"""
import math

from numba import njit, prange
from numba.extending import register_jitable


@register_jitable(inline="always")
def modulated_model(data, slices, weights, ctf, shifts, kx, ky, box, i, j):
    """``(modulation, model)`` of sample ``j`` of image ``i`` (see the module docstring);
    compiled into the CPU kernels here and the CUDA kernels of :mod:`.hypermolecule_cuda`."""
    angle = -2.0 * math.pi * (kx[j] * shifts[i, 0] + ky[j] * shifts[i, 1]) / box
    modulation = ctf[i, j] * complex(math.cos(angle), math.sin(angle))
    combined = 0j
    for q in range(weights.shape[1]):
        combined += weights[i, q] * slices[i, q, j]
    return modulation, modulation * combined


@njit(parallel=True, cache=True)
def log_likelihoods(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    """``out[i] = -sum_j precision[j] |data[i, j] - model[i, j]|^2`` for every image."""
    n, m = data.shape
    for i in prange(n):
        total = 0.0
        for j in range(m):
            _, model = modulated_model(data, slices, weights, ctf, shifts, kx, ky, box, i, j)
            residual = data[i, j] - model
            total += precision[j] * (residual.real ** 2 + residual.imag ** 2)
        out[i] = -total


@njit(parallel=True, cache=True)
def weighted_residuals(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    """``out[i, j] = precision[j] * conj(modulation) * (data - model)``."""
    n, m = data.shape
    for i in prange(n):
        for j in range(m):
            modulation, model = modulated_model(data, slices, weights, ctf, shifts, kx, ky,
                                                 box, i, j)
            out[i, j] = precision[j] * modulation.conjugate() * (data[i, j] - model)
