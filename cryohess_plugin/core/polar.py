"""Polar Fourier grids: the one owner of rings, quadrature and ring coefficients.

Frequencies are in cycles per box, as everywhere in the core (:mod:`.fourier`).
The radial-SVD notes (Rangan 2022) measure frequency ``K`` in radians per
half-box; for an image whose support is the disc of radius ``box / 2`` the two
are related by ``K = pi * f_max``.  Their defaults ``K = 48, R = 49, Q = 98``
are ``R = ceil(K) + 1`` rings and ``Q = 2 R`` angles.

Ring ``r`` lies at radius ``radii[r]`` and angle ``2 pi j / Q``; the radii and
``weights`` are the Gauss-Jacobi rule for ``integral_0^f_max g(f) f df``.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.special

from .ctf import ctf_stack
from .errors import InvalidDataError


@dataclass(frozen=True)
class PolarGrid:
    """Rings x angles sampling of a disc of frequencies, with its quadrature."""

    box: int
    max_frequency: float
    n_rings: int
    n_angles: int
    radii: np.ndarray = field(repr=False, compare=False)
    weights: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_max_frequency(cls, box, max_frequency, n_rings=None, n_angles=None):
        """Grid on ``[0, max_frequency]`` cycles per box; defaults from the notes."""
        if not 0 < max_frequency <= box / 2:
            raise InvalidDataError(
                f"the maximum frequency must lie in (0, {box / 2}] cycles per box (Nyquist), "
                f"got {max_frequency}; ask for a coarser resolution")
        bandwidth = math.pi * max_frequency
        n_rings = int(n_rings or math.ceil(bandwidth) + 1)
        n_angles = int(n_angles or 2 * (math.ceil(bandwidth) + 1))
        if n_angles % 2:
            raise InvalidDataError(f"the number of angles must be even, got {n_angles}")
        if n_angles < 2 * bandwidth + 1:
            raise InvalidDataError(
                f"{n_angles} angles under-sample rings up to {max_frequency:.2f} cycles per "
                f"box; use at least {math.ceil(2 * bandwidth + 1)}")
        nodes, node_weights = scipy.special.roots_jacobi(n_rings, 0, 1)
        half = max_frequency / 2
        return cls(int(box), float(max_frequency), n_rings, n_angles,
                   radii=half * (1 + nodes), weights=half ** 2 * node_weights)

    @classmethod
    def for_resolution(cls, box, pixel_size, resolution, n_rings=None, n_angles=None):
        """Grid reaching ``resolution`` Å for a ``box``-pixel image of ``pixel_size`` Å."""
        if resolution < 2 * pixel_size:
            raise InvalidDataError(
                f"{resolution} Å is finer than Nyquist ({2 * pixel_size} Å at "
                f"{pixel_size} Å/px)")
        return cls.from_max_frequency(box, box * pixel_size / resolution, n_rings, n_angles)

    @property
    def angles(self):
        """The ``Q`` in-plane angles ``2 pi j / Q`` (radians)."""
        return 2 * np.pi * np.arange(self.n_angles) / self.n_angles

    @property
    def angular_step(self):
        """Spacing of :attr:`angles` in radians."""
        return 2 * np.pi / self.n_angles

    @property
    def kx(self):
        """x frequencies of all nodes, ring-major ``(R * Q,)``."""
        return (self.radii[:, None] * np.cos(self.angles)[None]).ravel()

    @property
    def ky(self):
        """y frequencies of all nodes, ring-major ``(R * Q,)``."""
        return (self.radii[:, None] * np.sin(self.angles)[None]).ravel()


def ring_coefficients(polar):
    """Angular Fourier coefficients ``a[..., r, q] = fft(polar, axis=-1) / Q``.

    ``q`` follows numpy's ``fftfreq`` order (index ``Q - 1`` is ``q = -1``); the
    Nyquist bin ``q = Q / 2`` is zeroed, as it lies outside the angular band.
    """
    coefficients = np.fft.fft(polar, axis=-1) / polar.shape[-1]
    coefficients[..., polar.shape[-1] // 2] = 0
    return coefficients


def shift_phases(grid, shifts):
    """Multipliers ``(n_shifts, R, Q)`` that re-centre a particle found at offset ``t``.

    ``shifts`` are core shifts in pixels (offset of the particle centre from the
    box centre, see :mod:`.projector`); multiplying polar samples of an image by
    ``exp(+2 pi i k.t / D)`` undoes that offset.
    """
    shifts = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
    phase = (grid.kx[None] * shifts[:, :1] + grid.ky[None] * shifts[:, 1:2]) * (2 * np.pi / grid.box)
    return np.exp(1j * phase).reshape(len(shifts), grid.n_rings, grid.n_angles)


def radial_ctf(ctf_params, grid, pixel_size):
    """Angular average of each particle's CTF on every ring: ``(n, R)`` float64."""
    values = ctf_stack(ctf_params, grid.kx, grid.ky, grid.box, pixel_size)
    return values.reshape(len(ctf_params), grid.n_rings, grid.n_angles).mean(axis=-1)
