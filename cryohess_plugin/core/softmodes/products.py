"""The products of the accumulated Hessian on one backend: one interface, chosen once.

:class:`.hessian.AccumulatedHessian` holds the geometry (ring samples, real harmonics,
squared CTFs, ring weights) and the pose blocks; every product with a volume change runs
in a :class:`HessianProducts` that :func:`.hessian.hessian_products` picks once from the backend
(as the projector picks its kernels): :class:`HostProducts` here (NumPy BLAS) or
:class:`.products_cuda.DeviceProducts` (``numba.cuda``).  Both take shell columns
``(R, P)`` (:meth:`.hessian.RealHarmonics.to_columns`) in and give host arrays out.
Formulas: ``docs/methods/hessian_soft_modes.md`` §2.5 and §2.7.
"""
from abc import ABC, abstractmethod

import numpy as np

#: Harmonics are evaluated for about this many ring samples at once (temporary memory).
HARMONICS_BLOCK_SAMPLES = 2048


class HessianProducts(ABC):
    """Slices, Hessian-vector products and pose responses over blocks of directions.

    Every backend is built with the same arguments (:func:`.hessian.hessian_products`):

    :param samples: ``(D, Q/2, 3)`` half-ring sample directions.
    :param harmonics: :class:`.hessian.RealHarmonics`.
    :param block: directions per block.  :param cache: keep every block's harmonics
        (else they are recomputed at every product).
    :param ctf_squared: ``(G, R)``.  :param counts: ``(D, G)`` image counts.
    :param ring_weights: ``(R,)`` ``2 (2π/Q) ρ_r``.  :param noise_sigma2: ``σ²``.
    """

    def __init__(self, samples, harmonics, block):
        self.n_directions, self.half = samples.shape[0], samples.shape[1]
        self.block = int(block)
        self.harmonics = harmonics

    def _starts(self):
        return range(0, self.n_directions, self.block)

    @abstractmethod
    def mode_slices(self, modes):
        """Per block of directions ``(where, [(Re V, Im V)])``: the ``(d, Q/2, R)`` slices
        of each of the shell columns ``modes`` on the block's half rings."""

    @abstractmethod
    def set_poses(self, derivatives, pinv):
        """Keep the pose-derivative slices ``(Re U, Im U)`` ``(3, D, Q/2, R)`` and the pose
        blocks' pseudo-inverses ``(D, G, 3, 3)`` that the products below read."""

    @abstractmethod
    def matvec(self, columns, implicit_poses):
        """``(R, P)`` shell columns of the Hessian applied to shell columns ``(R, P)``."""

    @abstractmethod
    def pose_change(self, columns):
        """``(D, G, 3)`` first-order pose response to shell columns ``(R, P)``."""


class HostProducts(HessianProducts):
    """The products as NumPy BLAS GEMMs against host harmonics (the CPU backend)."""

    def __init__(self, samples, harmonics, block, cache, ctf_squared, counts, ring_weights,
                 noise_sigma2):
        super().__init__(samples, harmonics, block)
        self._samples = samples
        self.ctf_squared = ctf_squared
        self.counts = counts
        self._ring_weights = ring_weights
        self.noise_sigma2 = noise_sigma2
        self._cache = [self._harmonics_block(start) for start in self._starts()] if cache else None
        self._derivatives = self._pose_pinv = None

    def _harmonics_block(self, start):
        samples = self._samples[start:start + self.block].reshape(-1, 3)
        parts = [self.harmonics.evaluate(samples[i:i + HARMONICS_BLOCK_SAMPLES])
                 for i in range(0, samples.shape[0], HARMONICS_BLOCK_SAMPLES)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _blocks(self):
        for k, start in enumerate(self._starts()):
            block = self._cache[k] if self._cache is not None else self._harmonics_block(start)
            yield slice(start, start + self.block), block

    def _slice(self, block, columns):
        """``(Re V, Im V)`` ``(d, Q/2, R)`` of shell columns ``(R, P)`` on a block's half rings."""
        even, odd = block
        n_even = self.harmonics.n_even
        shape = (-1, self.half, columns.shape[0])
        return ((even @ columns[:, :n_even].T).reshape(shape),
                (odd @ columns[:, n_even:].T).reshape(shape))

    def _slice_adjoint(self, block, real, imag):
        """Transpose of :meth:`_slice`: ``(R, P)`` columns of ``(d, Q/2, R)`` values."""
        even, odd = block
        shells = real.shape[-1]
        return np.concatenate([real.reshape(-1, shells).T @ even,
                               imag.reshape(-1, shells).T @ odd], axis=1)

    def mode_slices(self, modes):
        for where, block in self._blocks():
            yield where, [self._slice(block, mode) for mode in modes]

    def set_poses(self, derivatives, pinv):
        self._derivatives, self._pose_pinv = derivatives, pinv

    def _pose_response(self, v_re, v_im, where):
        """``Δτ`` ``(d, G, 3)`` of the block's directions for the slices ``V`` of ``ΔF``."""
        u_re, u_im = self._derivatives[0][:, where], self._derivatives[1][:, where]
        overlap = (np.einsum("adqr,dqr->dar", u_re, v_re)
                   + np.einsum("adqr,dqr->dar", u_im, v_im)) * self._ring_weights
        coupling = np.einsum("gr,dar->dga", self.ctf_squared, overlap)
        return -np.einsum("dgab,dgb->dga", self._pose_pinv[where], coupling)

    def matvec(self, columns, implicit_poses):
        counts = self.counts
        out = np.zeros(columns.shape)
        for where, block in self._blocks():
            v_re, v_im = self._slice(block, columns)
            evidence = counts[where] @ self.ctf_squared  # (d, R): Σ_g c C²
            z_re, z_im = evidence[:, None, :] * v_re, evidence[:, None, :] * v_im
            if implicit_poses:
                change = self._pose_response(v_re, v_im, where)
                mixing = np.einsum("dg,gr,dga->adr", counts[where], self.ctf_squared, change)
                u_re, u_im = self._derivatives[0][:, where], self._derivatives[1][:, where]
                z_re += np.einsum("adr,adqr->dqr", mixing, u_re)
                z_im += np.einsum("adr,adqr->dqr", mixing, u_im)
            weights = self._ring_weights / self.noise_sigma2
            out += self._slice_adjoint(block, z_re * weights, z_im * weights)
        return out

    def pose_change(self, columns):
        parts = [self._pose_response(*self._slice(block, columns), where)
                 for where, block in self._blocks()]
        return np.concatenate(parts)
