"""Rotation grids and the projection matrices ``Φ(ω)`` of micrograph EM.

``docs/methods/micrograph_em.md`` §3: the projection of the volume with coefficients
``a`` in pose ``R`` (:mod:`..rotations`) is the real ``L × L`` image

    P = Re IDFT₂[ c(κ) · F(Rᵀ (kx, ky, 0)) ]  (|κ| < R, zero outside),

a linear map ``vec(P) = Φ(R) a`` with ``Φ(R)`` real ``L² × d``.  ``F`` is the basis
expansion of :mod:`.basis`, ``c`` the CTF of the micrograph (:mod:`..ctf`, Scipion's sign;
1 without CTF) at the working pixel size, and IDFT₂ the centred inverse transform of
:mod:`..fourier`, so with ``c = 1`` the projection is the Fourier slice of the volume
that :class:`..projector.FourierSliceProjector` interpolates (exact for the identity,
where it is ``Σ_z v``).
"""
import math

import numpy as np

from .. import fourier
from ..ctf import evaluate_ctf
from ..errors import InvalidDataError
from ..rotations import quaternion_to_matrix

#: Rotations per block when matrices are built (memory ``block · L² · d`` complex).
ROTATION_BLOCK = 64


def _colon(start, step, stop):
    """``start:step:stop`` with MATLAB's rule: the end point is kept when it is hit up to
    rounding."""
    count = int(math.floor((stop - start) / step + 1e-10)) + 1
    return start + step * np.arange(max(count, 0))


def quaternion_grid(resolution):
    """The near-uniform rotation grid of hyperspherical quaternion angles (``docs/methods/
    micrograph_em.md`` §3): 76, 299, 552, 4484 rotations at resolution 15, 20, 25, 50.

    :returns: ``(K, 3, 3)`` rotation matrices.
    """
    if resolution < 2:
        raise InvalidDataError(f"the rotation grid resolution must be >= 2, got {resolution}")
    quaternions = []
    tau_step = 2 * math.pi / resolution
    for tau in _colon(tau_step / 2, tau_step, math.pi / 2 - tau_step / 2):
        theta_step = math.pi / ((resolution / 2) * math.sin(tau))
        for theta in _colon(theta_step / 2, theta_step, math.pi - theta_step / 2):
            phi_step = 2 * math.pi / (resolution * math.sin(tau) * math.sin(theta))
            for phi in _colon(0.0, phi_step, 2 * math.pi - phi_step):
                quaternions.append((math.sin(tau) * math.sin(theta) * math.sin(phi),
                                    math.sin(tau) * math.sin(theta) * math.cos(phi),
                                    math.sin(tau) * math.cos(theta), math.cos(tau)))
    return quaternion_to_matrix(np.array(quaternions))


def grid_resolution_for_count(count):
    """The smallest grid resolution with at least ``count`` rotations."""
    resolution = 2
    while quaternion_grid(resolution).shape[0] < count:
        resolution += 1
    return resolution


def image_frequencies(box):
    """``(kx, ky)`` of the centred ``L × L`` grid, each ``(L, L)`` indexed ``(y, x)``."""
    k = fourier.frequencies(box).astype(np.float64)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    return kx, ky


def ctf_image(params, box, pixel_size):
    """CTF values ``(L, L)`` on the centred grid of a patch (1 where ``params`` is None)."""
    if params is None:
        return np.ones((box, box))
    kx, ky = image_frequencies(box)
    return evaluate_ctf(params, kx, ky, box, pixel_size)


class ProjectionOperator:
    """The slices of a basis on a rotation grid, and the matrices ``Φ`` with a CTF.

    :param basis: :class:`.basis.SphericalBesselBasis`.
    :param rotations: ``(K, 3, 3)``.
    """

    def __init__(self, basis, rotations):
        self.basis = basis
        self.rotations = np.asarray(rotations, dtype=np.float64)
        box = basis.box
        kx, ky = image_frequencies(box)
        planar = np.stack([kx.ravel(), ky.ravel(), np.zeros(box * box)], -1)
        # Rows of Rᵀ (kx, ky, 0) are planar @ R.
        points = np.einsum("pa,kab->kpb", planar, self.rotations)
        values = basis.real_values(points.reshape(-1, 3))
        self.slices = values.reshape(self.count, box * box, basis.size)
        self._phases = basis.phases()
        self._unit = None

    @property
    def count(self):
        return self.rotations.shape[0]

    @property
    def box(self):
        return self.basis.box

    def matrices(self, ctf=None, start=0, stop=None):
        """``Φ(R_k)`` for ``k`` in ``[start, stop)``: ``(k, L², d)`` real.

        :param ctf: ``(L, L)`` CTF values on the centred grid (:func:`ctf_image`) or None.
        """
        stop = self.count if stop is None else stop
        if ctf is None and start == 0 and stop == self.count and self._unit is not None:
            return self._unit
        box, size = self.box, self.basis.size
        block = self.slices[start:stop].reshape(-1, box, box, size) * self._phases
        if ctf is not None:
            block = block * np.asarray(ctf)[None, :, :, None]
        images = fourier.centred_ifftn(block, axes=(1, 2)).real
        out = np.ascontiguousarray(images.reshape(-1, box * box, size))
        if ctf is None and start == 0 and stop == self.count:
            self._unit = out
        return out

    def project(self, coefficients, ctf=None):
        """Projections ``(K, L, L)`` of the volume of ``coefficients`` at every rotation."""
        box = self.box
        weighted = np.asarray(coefficients, np.float64) * self._phases
        # Two real products: a complex one would copy the real slices to complex first.
        spectra = self.slices @ weighted.real + 1j * (self.slices @ weighted.imag)
        spectra = spectra.reshape(-1, box, box)
        if ctf is not None:
            spectra = spectra * np.asarray(ctf)[None]
        return fourier.centred_ifftn(spectra, axes=(1, 2)).real

    def project_at(self, coefficients, rotations, ctf=None):
        """Projections ``(n, L, L)`` at arbitrary ``rotations`` (e.g. continuous ones)."""
        return ProjectionOperator(self.basis, rotations).project(coefficients, ctf)

    def blocks(self, ctf=None):
        """``(start, Φ block)`` over the grid in blocks of :data:`ROTATION_BLOCK`."""
        for start in range(0, self.count, ROTATION_BLOCK):
            yield start, self.matrices(ctf, start, min(start + ROTATION_BLOCK, self.count))
