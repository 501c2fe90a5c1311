"""Composite hyper-molecules and their Fourier slices (docs/methods/hyper_molecules.md §2, §3).

A hyper-molecule is a sum of components ``V(r, τ¹..τᴹ) = Σ_m M_m(r) W_m(r, τᵐ)`` with
``W_m(r, τ) = Σ_q P_q(τ) u_{m,q}(r)``: a mask ``M_m`` (compact support), the state basis
``P_q`` of :mod:`.basis` and coefficient maps ``u_{m,q}`` on the working box.  A rigid
component has state dimension 0 (one map).  A component may *share* the coefficients of
another one, rotated by a symmetry operation ``G`` about the box centre (identical
subunits, e.g. two arms): ``V_c(r) = V_m(Gᵀ r)``, with its own state per particle.

Slices come from the shared projector (:class:`..projector.SliceOperator`) on the working
box: the slice of a shared copy in pose ``R`` is the owner's slice in pose ``R G``.  The
gradient with respect to the coefficients is the projector's exact adjoint followed by the
transposes of the grid transform and the mask.  Images are of the full box ``D``; the
working-box transform is scaled by ``(D / w)³`` to equal the full-box one.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError, ShapeError
from ..projector import SliceOperator
from .basis import (StateBasis, band_limit, fourier_resample, radial_filter, soft_ball,
                    working_box)


@dataclass
class Component:
    """One part of a composite hyper-molecule.

    :param name: label used in logs and outputs.
    :param state_dimension: 0 (rigid) to 3.
    :param mask: ``(D, D, D)`` support in the particle box (values in [0, 1]), or None for
        the ball inscribed in the box.
    :param shares: index of the component whose coefficients this one reuses, or None.
    :param symmetry: ``(3, 3)`` rotation ``G`` of the shared copy about the box centre.
    """
    name: str
    state_dimension: int
    mask: np.ndarray = None
    shares: int = None
    symmetry: np.ndarray = None


def validate_components(components, box):
    """Check masks, state dimensions and sharing; return the list."""
    components = list(components)
    if not components:
        raise InvalidDataError("a hyper-molecule needs at least one component")
    for index, component in enumerate(components):
        StateBasis(component.state_dimension, 1)
        if component.mask is not None:
            mask = np.asarray(component.mask)
            if mask.shape != (box,) * 3:
                raise ShapeError(f"the mask of component {component.name!r} has box "
                                 f"{mask.shape[0] if mask.ndim else mask.shape} but the "
                                 f"particles have box {box}; resample the mask to {box} px")
            if not np.isfinite(mask).all() or mask.max() <= 0:
                raise InvalidDataError(f"the mask of component {component.name!r} is empty or "
                                       "not finite; give a mask with positive values inside")
        if component.shares is not None:
            owner = component.shares
            if not 0 <= owner < len(components) or owner == index \
                    or components[owner].shares is not None:
                raise InvalidDataError(f"component {component.name!r} shares the coefficients "
                                       f"of component {owner}, which is not an owning component")
            if components[owner].state_dimension != component.state_dimension:
                raise InvalidDataError(f"component {component.name!r} shares coefficients with "
                                       "a component of another state dimension")
            symmetry = np.eye(3) if component.symmetry is None else np.asarray(component.symmetry)
            if symmetry.shape != (3, 3) or not np.allclose(symmetry @ symmetry.T, np.eye(3),
                                                           atol=1e-6):
                raise InvalidDataError(f"the symmetry of component {component.name!r} must be "
                                       "a 3x3 rotation matrix")
    return components


class HyperMolecule:
    """Coefficients, masks and slicing of a composite hyper-molecule on a working box.

    :param components: list of :class:`Component`.
    :param order: terms per state axis of every heterogeneous component.
    :param box: particle box ``D``.
    :param band: highest frequency (cycles per box) the model must represent.
    :param interpolation: the projector's ``"cubic"`` or ``"linear"``.
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, components, order, box, band, interpolation="linear", backend="auto"):
        self.components = validate_components(components, box)
        self.order, self.box, self.band = int(order), int(box), float(band)
        self.interpolation, self.backend = interpolation, backend
        self.size = working_box(band)
        self.scale = (self.box / self.size) ** 3
        self.operator = SliceOperator(self.size, interpolation=interpolation, dtype=np.float32,
                                      backend=backend)
        self.band_mask = band_limit(self.size, self.band)
        self.bases = [StateBasis(c.state_dimension, order if c.state_dimension else 1)
                      for c in self.components]
        self.owners = [i for i, c in enumerate(self.components) if c.shares is None]
        self.masks = {i: self._working_mask(self.components[i].mask) for i in self.owners}
        self.coefficients = {i: np.zeros((self.bases[i].size,) + (self.size,) * 3)
                             for i in self.owners}
        # Flattened terms (component, owner, q) of the image model.
        self.terms = [(c, self.owner(c), q) for c in range(len(self.components))
                      for q in range(self.bases[c].size)]

    def owner(self, component):
        shares = self.components[component].shares
        return component if shares is None else shares

    def symmetry(self, component):
        g = self.components[component].symmetry
        return np.eye(3) if g is None or self.components[component].shares is None else np.asarray(g)

    def _working_mask(self, mask):
        if mask is None:
            return soft_ball(self.size, self.size / 2 - 1.5, edge=1.0)
        return np.clip(fourier_resample(np.asarray(mask, np.float64), self.size), 0.0, 1.0)

    @property
    def heterogeneous(self):
        """Indices of the components with a state (their τ is sampled per particle)."""
        return [i for i, c in enumerate(self.components) if c.state_dimension > 0]

    @property
    def coefficient_count(self):
        """Free real coefficients: the in-band frequencies of every coefficient map."""
        in_band = int(np.count_nonzero(np.abs(np.fft.fftfreq(self.size) * self.size)[:, None, None]
                                       ** 2 + (np.fft.fftfreq(self.size) * self.size)[None, :, None]
                                       ** 2 + (np.fft.fftfreq(self.size) * self.size)[None, None, :]
                                       ** 2 <= self.band ** 2))
        return in_band * sum(self.coefficients[i].shape[0] for i in self.owners)

    # ------------------------------------------------------------------ slices
    def grids(self, coefficients=None):
        """Padded Fourier grids ``{(owner, q): grid}`` of the masked coefficient maps."""
        coefficients = self.coefficients if coefficients is None else coefficients
        return {(m, q): self.operator.volume_to_grid(
                    (self.masks[m] * coefficients[m][q]).astype(np.float32))
                for m in self.owners for q in range(coefficients[m].shape[0])}

    def slices(self, grids, rotations, kx, ky):
        """``(n, K, m)`` complex64 slices of every term at frequencies ``(kx, ky)``."""
        rotations = np.asarray(rotations, dtype=np.float64)
        out = np.empty((rotations.shape[0], len(self.terms), np.size(kx)), dtype=np.complex64)
        for t, (c, m, q) in enumerate(self.terms):
            posed = rotations @ self.symmetry(c)
            out[:, t] = self.operator.slices(grids[(m, q)], posed, kx, ky) * self.scale
        return out

    def term_weights(self, states, contrast):
        """``(n, K)`` weights ``a_i P_q(τᶜ_i)`` of every term.

        :param states: ``{component: (n, d) τ}`` for the heterogeneous components.
        """
        columns = []
        for c, basis in enumerate(self.bases):
            if basis.dimension == 0:
                columns.append(np.ones((contrast.size, 1)))
            else:
                columns.append(basis.values(states[c]))
        return np.concatenate(columns, axis=1) * contrast[:, None]

    def gradient(self, residuals, weights, rotations, kx, ky):
        """Gradient of ``Re Σ conj(g) slices`` back to the coefficients.

        :param residuals: ``(n, m)`` ``g / weights``: the per-sample gradient of the
            log-likelihood with respect to the combined slice ``Σ_q w_q S_q``.
        :returns: ``{owner: array like its coefficients}``.
        """
        rotations = np.asarray(rotations, dtype=np.float64)
        grids = {}
        for t, (c, m, q) in enumerate(self.terms):
            posed = rotations @ self.symmetry(c)
            values = residuals * weights[:, t, None].astype(np.float32)
            grid = self.operator.slices_adjoint(values, posed, kx, ky)
            grids[(m, q)] = grids[(m, q)] + grid if (m, q) in grids else grid
        out = {m: np.zeros_like(self.coefficients[m]) for m in self.owners}
        for (m, q), grid in grids.items():
            out[m][q] = self.masks[m] * self.operator.grid_to_volume_adjoint(grid) * self.scale
        return out

    # ------------------------------------------------------------------ maps
    def component_map(self, component, tau, coefficients=None, full_box=False):
        """Map of one component at state ``tau`` (its owner's coefficients, rotated by ``G``
        only in slices: maps are returned in the owner's frame)."""
        coefficients = self.coefficients if coefficients is None else coefficients
        m = self.owner(component)
        basis = self.bases[component]
        values = basis.values(np.atleast_2d(tau)) [0] if basis.dimension else np.ones(1)
        volume = self.masks[m] * np.tensordot(values, coefficients[m], axes=1)
        return fourier_resample(volume, self.box) if full_box else volume

    def limit(self, volumes):
        """Volumes ``(..., w, w, w)`` band-limited to this model's band."""
        return radial_filter(volumes, self.band_mask)

    def resample(self, band):
        """A new model for ``band`` with these coefficients Fourier-resampled to it."""
        other = HyperMolecule(self.components, self.order, self.box, band, self.interpolation,
                              self.backend)
        for m in self.owners:
            other.coefficients[m] = other.limit(np.stack([fourier_resample(u, other.size)
                                                          for u in self.coefficients[m]]))
        return other
