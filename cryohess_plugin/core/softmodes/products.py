"""The products of the accumulated Hessian on one backend: one interface, chosen once.

:class:`.hessian.AccumulatedHessian` holds the geometry (ring samples, real harmonics,
squared CTFs over the noise, ring weights) and the pose blocks; every product with volume
changes runs in a :class:`HessianProducts` that :func:`.hessian.hessian_products` picks
once from the backend (as the projector picks its kernels): :class:`HostProducts` here
(NumPy BLAS) or :class:`.products_cuda.DeviceProducts` (``numba.cuda``), both of which
slice every direction per product, or, on the CPU when its factors fit the memory budget,
:class:`FactoredProducts` (the same operator from factors set up once, ``(L + 1) / 3``
times fewer flops).  All take stacks of shell columns ``(k, R, P)``
(:meth:`.hessian.RealHarmonics.to_columns`) in and give host arrays out.  Formulas:
``docs/methods/hessian_soft_modes.md`` §2.5 and §2.7.
"""
from abc import ABC, abstractmethod

import numpy as np

class HessianProducts(ABC):
    """Slices, Hessian-vector products and pose responses over blocks of directions.

    Every backend is built with the same arguments (:func:`.hessian.hessian_products`):

    :param samples: ``(D, Q/2, 3)`` half-ring sample directions.
    :param harmonics: :class:`.hessian.RealHarmonics`.
    :param block: directions per block.  :param cache: keep every block's harmonics
        (else they are recomputed at every product).
    :param shell_weights: ``(G, R)`` ``C²_{g,r} / σ²_r``, each group's mean squared CTF over
        the shell's noise power.  :param counts: ``(D, G)`` image counts.
    :param ring_weights: ``(R,)`` ``2 (2π/Q) ρ_r``.
    """

    def __init__(self, samples, harmonics, block):
        self.n_directions, self.half = samples.shape[0], samples.shape[1]
        self.block = int(block)
        self.harmonics = harmonics

    def _starts(self):
        return range(0, self.n_directions, self.block)

    @abstractmethod
    def mode_slices(self, modes):
        """Per block of directions ``(where, Re V, Im V)``: the ``(d, Q/2, k, R)`` slices of
        the stack of shell columns ``modes`` ``(k, R, P)`` on the block's half rings."""

    @abstractmethod
    def set_poses(self, derivatives, pinv):
        """Keep the pose-derivative slices ``(Re U, Im U)`` ``(3, D, Q/2, R)`` and the pose
        blocks' pseudo-inverses ``(D, G, 3, 3)`` that the products below read."""

    @abstractmethod
    def matvec(self, columns, implicit_poses):
        """``(k, R, P)`` shell columns of the Hessian applied to each of ``(k, R, P)``."""

    @abstractmethod
    def pose_change(self, columns):
        """``(k, D, G, 3)`` first-order pose responses to shell columns ``(k, R, P)``."""


#: Degree bands are merged up to at least this many columns: narrower GEMMs run slower per
#: flop than the flops they save (measured at 2πK = 32).
MIN_BAND_COLUMNS = 128


def degree_bands(degrees, limits, min_columns=MIN_BAND_COLUMNS):
    """Column ranges and the shells that read them: ``[(start, stop, first_shell)]``.

    ``degrees`` ``(p,)`` the degree of each column of a block (ascending), ``limits``
    ``(R,)`` the shells' degree limits (ascending with the radius): columns of degrees in
    ``(l_{j-1}, l_j]`` are read by the shells from the first one whose limit is ``l_j``
    on, so a slice costs about ``Σ_r (l_r + 1)²`` products per sample instead of
    ``R (L + 1)²``.  Consecutive bands are merged up to ``min_columns`` columns (the
    merged band is read by the shells of its first part; columns beyond a shell's limit
    hold zeros there, so the result is the same).
    """
    bands, start, stop, first = [], 0, 0, None
    for limit in np.unique(limits):
        stop = int(np.searchsorted(degrees, limit, side="right"))
        if stop <= start:
            continue
        if first is None:
            first = int(np.searchsorted(limits, limit))
        if stop - start >= min_columns:
            bands.append((start, stop, first))
            start, first = stop, None
    if first is not None:
        bands.append((start, stop, first))
    return bands


class HostProducts(HessianProducts):
    """The products as NumPy BLAS GEMMs against host harmonics (the CPU backend).

    A slice multiplies each block of harmonic columns (:func:`degree_bands`) only with the
    shells whose degree limit reaches it; the ``k`` columns of a stack share every pass
    over the harmonics.
    """

    def __init__(self, samples, harmonics, block, cache, shell_weights, counts, ring_weights):
        super().__init__(samples, harmonics, block)
        self._samples = samples
        self.shell_weights = shell_weights
        self.counts = counts
        self._ring_weights = ring_weights
        limits = harmonics.shells.degree_limits
        n_even = harmonics.n_even
        self._bands = (degree_bands(harmonics.degrees[:n_even], limits),
                       degree_bands(harmonics.degrees[n_even:], limits))
        self._cache = [self._harmonics_block(start) for start in self._starts()] if cache else None
        self._derivatives = self._pose_pinv = None

    def _harmonics_block(self, start):
        return self.harmonics.evaluate(self._samples[start:start + self.block].reshape(-1, 3))

    def _blocks(self):
        for k, start in enumerate(self._starts()):
            block = self._cache[k] if self._cache is not None else self._harmonics_block(start)
            yield slice(start, start + self.block), block

    def _slice(self, block, columns):
        """``(Re V, Im V)`` ``(d, Q/2, k, R)`` of shell columns ``(k, R, P)`` on a block."""
        n_even = self.harmonics.n_even
        parts = []
        for harmonics, bands, part in zip(block, self._bands,
                                          (columns[..., :n_even], columns[..., n_even:])):
            values = np.zeros((harmonics.shape[0],) + columns.shape[:2])
            for start, stop, first in bands:
                # (S, b) x (b, k R'): the band's columns for the shells that reach it.
                values[:, :, first:] += (harmonics[:, start:stop]
                                         @ part[:, first:, start:stop].reshape(-1, stop - start).T
                                         ).reshape(harmonics.shape[0], columns.shape[0], -1)
            parts.append(values.reshape(-1, self.half, columns.shape[0], columns.shape[1]))
        return parts

    def _slice_adjoint(self, block, real, imag, out):
        """Add the transpose of :meth:`_slice` of ``(d, Q/2, k, R)`` values to ``out``."""
        n_even = self.harmonics.n_even
        for harmonics, bands, values, offset in zip(block, self._bands, (real, imag),
                                                    (0, n_even)):
            flat = values.reshape(harmonics.shape[0], -1, values.shape[-1])
            for start, stop, first in bands:
                product = flat[:, :, first:].reshape(harmonics.shape[0], -1).T @ harmonics[:, start:stop]
                out[:, first:, offset + start:offset + stop] += product.reshape(
                    flat.shape[1], -1, stop - start)

    def mode_slices(self, modes):
        for where, block in self._blocks():
            yield (where, *self._slice(block, modes))

    def set_poses(self, derivatives, pinv):
        self._derivatives, self._pose_pinv = derivatives, pinv

    def _pose_response(self, v_re, v_im, where):
        """``Δτ`` ``(k, d, G, 3)`` of the block's directions for the slices ``V``."""
        u_re, u_im = self._derivatives[0][:, where], self._derivatives[1][:, where]
        overlap = (np.einsum("adqr,dqkr->kdar", u_re, v_re, optimize=True)
                   + np.einsum("adqr,dqkr->kdar", u_im, v_im, optimize=True)) * self._ring_weights
        coupling = np.einsum("gr,kdar->kdga", self.shell_weights, overlap, optimize=True)
        return -np.einsum("dgab,kdgb->kdga", self._pose_pinv[where], coupling, optimize=True)

    def matvec(self, columns, implicit_poses):
        counts = self.counts
        out = np.zeros(columns.shape)
        for where, block in self._blocks():
            v_re, v_im = self._slice(block, columns)
            evidence = (counts[where] @ self.shell_weights) * self._ring_weights  # (d, R)
            z_re, z_im = evidence[:, None, None, :] * v_re, evidence[:, None, None, :] * v_im
            if implicit_poses:
                change = self._pose_response(v_re, v_im, where)
                mixing = np.einsum("dg,gr,kdga->dakr", counts[where], self.shell_weights, change,
                                   optimize=True) * self._ring_weights
                u_re, u_im = self._derivatives[0][:, where], self._derivatives[1][:, where]
                z_re += np.einsum("dakr,adqr->dqkr", mixing, u_re, optimize=True)
                z_im += np.einsum("dakr,adqr->dqkr", mixing, u_im, optimize=True)
            self._slice_adjoint(block, z_re, z_im, out)
        return out

    def pose_change(self, columns):
        parts = [self._pose_response(*self._slice(block, columns), where)
                 for where, block in self._blocks()]
        return np.concatenate(parts, axis=1)


#: Directions per batched GEMM while the factored coupling is built (memory of its output).
COUPLING_DIRECTIONS = 16


def parity_widths(limit):
    """``(even, odd)`` real harmonics of degrees ``<= limit`` (columns of each parity)."""
    degrees = np.arange(int(limit) + 1)
    return (int(np.sum(2 * degrees[0::2] + 1)), int(np.sum(2 * degrees[1::2] + 1)))


def factored_bytes(shells, n_directions, n_groups):
    """Bytes :class:`FactoredProducts` keeps: the coupling (``3 D n`` doubles), the
    per-shell fixed-pose matrices and the groups' sampling operators."""
    shell_matrices = sum(w * w for limit in shells.degree_limits for w in parity_widths(limit))
    n_parameters = int(np.sum((shells.degree_limits + 1) ** 2))
    grams = n_groups * sum(w * w for w in parity_widths(shells.max_degree))
    return 8 * (3 * n_directions * n_parameters + shell_matrices + grams)


class FactoredProducts(HostProducts):
    """The products from two factors set up once, no slices per product (the CPU default).

    ``docs/methods/hessian_soft_modes.md`` §2.7.  The fixed-pose part does not couple
    shells: on shell ``r`` it is ``ρ_r Σ_g (C²_{g,r}/σ²_r) S_g``, with ``S_g`` the sampling
    operator of group ``g`` (:func:`.sampling.sampling_grams`, exact by Funk–Hecke), kept
    as one matrix per shell and parity.  The pose part is ``−Σ_{d,g} c_{dg} B_{dg}
    H_{ττ,dg}⁺ B_{dg}ᵀ``, whose columns ``b_{a,d}`` (shell ``r`` part:
    ``ρ̃_r T_dᵀ U_a(d, ·, r)``, ``ρ̃_r`` the ring weight) are the adjoint slices of the
    pose derivatives, one per direction and axis, weighted per group by ``C²_{g,r}/σ²_r``:
    ``3 D`` vectors of ``n`` reals, stored per shell.  A product then costs ``≈ 12 D n``
    flops for the pose part instead of ``≈ 4 D (L + 1) n`` for a slice and its adjoint
    (``(L + 1) / 3`` times fewer), and equals the slice form to round-off.  The slices
    are still used once, for the pose derivatives (:meth:`mode_slices`, harmonics
    evaluated per block and not kept).

    :param grams: ``(even, odd)`` ``(G, P, P)`` sampling operators of the groups at degree
        ``L`` (:func:`.sampling.sampling_grams` of the experiment's directions and counts).
    :param radial: ``(R,)`` ``ρ_r`` (shell weight over radius).
    The other parameters are :class:`HostProducts`' (never cached here).
    """

    def __init__(self, samples, harmonics, block, shell_weights, counts, ring_weights, grams,
                 radial):
        super().__init__(samples, harmonics, block, False, shell_weights, counts, ring_weights)
        #: Per shell: its even and its odd columns.
        self._widths = [parity_widths(limit) for limit in harmonics.shells.degree_limits]
        # ρ_r Σ_g w_{g,r} S_g on each shell's leading block, per parity.
        self._fixed = []
        for r, (even, odd) in enumerate(self._widths):
            weights = radial[r] * shell_weights[:, r]
            self._fixed.append(tuple(np.tensordot(weights, gram[:, :w, :w], axes=1)
                                     for gram, w in zip(grams, (even, odd))))
        self._coupling = None

    def _parts(self, columns, r):
        even, odd = self._widths[r]
        n_even = self.harmonics.n_even
        return columns[:, r, :even], columns[:, r, n_even:n_even + odd]

    def set_poses(self, derivatives, pinv):
        """Keep the pseudo-inverses and build the coupling ``B_r`` ``(P_r, 3 D)`` per shell
        from the pose-derivative slices (one pass over the harmonics)."""
        self._pose_pinv = pinv
        u_re, u_im = derivatives
        n_shells, n_directions = len(self._widths), self.n_directions
        coupling = [np.empty((even + odd, 3 * n_directions)) for even, odd in self._widths]
        for where, block in self._blocks():
            for start in range(where.start, min(where.stop, n_directions), COUPLING_DIRECTIONS):
                stop = min(start + COUPLING_DIRECTIONS, where.stop, n_directions)
                rows = slice((start - where.start) * self.half, (stop - where.start) * self.half)
                for harmonic, u, parity, bands in zip(block, (u_re, u_im), (0, 1), self._bands):
                    table = harmonic[rows].reshape(stop - start, self.half, -1)
                    for column, end, first in bands:
                        # (d, b, Q/2) @ (d, Q/2, 3 R'): each direction's adjoint slices of
                        # the band's columns, for the shells that read them.
                        values = table[:, :, column:end].transpose(0, 2, 1) @ u[
                            :, start:stop, :, first:].transpose(1, 2, 0, 3).reshape(
                            stop - start, self.half, -1)
                        values = (values.reshape(stop - start, end - column, 3, -1)
                                  * self._ring_weights[first:])
                        for r in range(first, n_shells):
                            width = min(end, self._widths[r][parity]) - column
                            if width <= 0:
                                continue
                            offset = column + (self._widths[r][0] if parity else 0)
                            target = coupling[r][offset:offset + width].reshape(
                                width, 3, n_directions)
                            target[:, :, start:stop] = values[:, :width, :, r - first].transpose(
                                1, 2, 0)
        self._coupling = coupling

    def _overlaps(self, columns):
        """``(k, R, 3, D)`` ``⟨b_{a,d}, x_r⟩`` per shell."""
        out = np.empty((columns.shape[0], len(self._widths), 3, self.n_directions))
        for r in range(len(self._widths)):
            x = np.concatenate(self._parts(columns, r), axis=1)
            out[:, r] = (x @ self._coupling[r]).reshape(columns.shape[0], 3, -1)
        return out

    def _changes(self, overlaps):
        """``Δτ`` ``(k, D, G, 3)`` from the overlaps."""
        coupling = np.einsum("gr,krad->kdga", self.shell_weights, overlaps, optimize=True)
        return -np.einsum("dgab,kdgb->kdga", self._pose_pinv, coupling, optimize=True)

    def matvec(self, columns, implicit_poses):
        out = np.zeros(columns.shape)
        n_even = self.harmonics.n_even
        mixing = None
        if implicit_poses:
            change = self._changes(self._overlaps(columns))
            mixing = np.einsum("dg,gr,kdga->krad", self.counts, self.shell_weights, change,
                               optimize=True).reshape(columns.shape[0], len(self._widths), -1)
        for r, (even, odd) in enumerate(self._widths):
            x_even, x_odd = self._parts(columns, r)
            fixed_even, fixed_odd = self._fixed[r]
            result = np.concatenate([x_even @ fixed_even, x_odd @ fixed_odd], axis=1)
            if mixing is not None:
                result += mixing[:, r] @ self._coupling[r].T
            out[:, r, :even], out[:, r, n_even:n_even + odd] = result[:, :even], result[:, even:]
        return out

    def pose_change(self, columns):
        return self._changes(self._overlaps(columns))
