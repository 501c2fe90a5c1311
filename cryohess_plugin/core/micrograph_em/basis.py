"""The volume basis of micrograph EM: spherical Bessel × real spherical harmonics in Fourier space.

``docs/methods/micrograph_em.md`` §2 states the model; in short, for an odd patch size
``L`` with radius ``R = L // 2`` the transform of the volume is

    F(κ) = Σ_{l, m, s} a_{l m s} · i^l · Y_{l m}(κ/|κ|) · j_{l s}(|κ| / R)   for |κ| < R,

zero outside, with ``κ = (kx, ky, kz)`` in cycles per box (:mod:`..fourier`),
``Y_{l m}`` the orthonormal real spherical harmonics, ``j_{l s}(k) = 4 j_l(u_{l s} k) /
|j_{l+1}(u_{l s})|`` (the paper's Eq. (7)) and ``u_{l s}`` the positive zeros of the
spherical Bessel function ``j_l``.  The factor ``i^l`` makes ``F(-κ) = conj F(κ)`` for
real ``a``, so every coefficient vector is a real volume and the ``d`` real coefficients
are the real degrees of freedom of the paper's complex ``x`` under its reality
constraint.  The number of radial terms of degree ``l`` follows the Nyquist rule
``S(l) = #{s : u_{l s} < π R}`` (strict, see :data:`NYQUIST_TOLERANCE`).

Coefficients are ordered by degree, then radial index, then order ``m = -l .. l``, so the
basis of a lower ``l_max`` is a prefix of a higher one (frequency marching keeps the
coefficients and appends zeros).
"""
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.special

from .. import fourier
from ..errors import InvalidDataError
from ..spherical import normalized_legendre

#: A zero counts when ``u < π R (1 - NYQUIST_TOLERANCE)``: ``u_{0, 5} = 5π`` equals the
#: threshold of ``L = 11`` exactly and is left out, as the strict rule says.
NYQUIST_TOLERANCE = 1e-12
#: The smallest patch the method accepts: ``L = 7`` has ``l_max = 5`` (45 coefficients).
MIN_PATCH_SIZE = 7


@functools.lru_cache(maxsize=None)
def spherical_bessel_zeros(degree, upper):
    """The positive zeros of ``j_degree`` below ``upper``, ascending (sign changes on a
    fine grid refined by Brent's method)."""
    grid = np.linspace(1e-6, upper + 1.0, int(200 * (upper + 1)) + 2)
    values = scipy.special.spherical_jn(degree, grid)
    zeros = []
    for i in np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0):
        root = scipy.optimize.brentq(lambda x: scipy.special.spherical_jn(degree, x),
                                     grid[i], grid[i + 1], xtol=1e-15, rtol=1e-15)
        if root < upper:
            zeros.append(root)
    return tuple(zeros)


def radial_counts(box, max_degree=None):
    """``S(l)`` of the Nyquist rule for patch size ``box``, for ``l = 0 .. max_degree``
    (default: up to the last degree with a term)."""
    radius = box // 2
    threshold = math.pi * radius * (1 - NYQUIST_TOLERANCE)
    counts = []
    degree = 0
    while max_degree is None or degree <= max_degree:
        count = len(spherical_bessel_zeros(degree, threshold))
        if count == 0 and max_degree is None:
            break
        counts.append(count)
        degree += 1
    return tuple(counts)


def max_usable_degree(box):
    """The highest degree with at least one radial term at patch size ``box``."""
    return len(radial_counts(box)) - 1


def real_harmonics(max_degree, directions):
    """Orthonormal real spherical harmonics ``Y_{l m}`` at unit ``directions`` ``(n, 3)``.

    ``m > 0``: ``√2 (-1)^m Re Y_l^m``; ``m = 0``: ``Y_l^0``; ``m < 0``: ``√2 (-1)^m Im
    Y_l^|m|`` of the complex harmonics with the Condon-Shortley phase.

    :returns: ``(n, (max_degree + 1)²)`` with column ``l² + l + m``.
    """
    directions = np.asarray(directions, dtype=np.float64)
    cos_theta = np.clip(directions[:, 2], -1.0, 1.0)
    phi = np.arctan2(directions[:, 1], directions[:, 0])
    legendre = normalized_legendre(max_degree, cos_theta)
    out = np.empty((directions.shape[0], (max_degree + 1) ** 2))
    for l in range(max_degree + 1):
        out[:, l * l + l] = legendre[:, l, 0]
        for m in range(1, l + 1):
            scale = math.sqrt(2.0) * (-1.0) ** m * legendre[:, l, m]
            out[:, l * l + l + m] = scale * np.cos(m * phi)
            out[:, l * l + l - m] = scale * np.sin(m * phi)
    return out


@dataclass(frozen=True)
class SphericalBesselBasis:
    """The basis of one patch size and maximum degree (module docstring).

    :param box: patch size ``L`` (odd, at least :data:`MIN_PATCH_SIZE`).
    :param max_degree: ``l_max``.
    """
    box: int
    max_degree: int
    counts: tuple = field(repr=False)
    zeros: tuple = field(repr=False, compare=False)
    degrees: np.ndarray = field(repr=False, compare=False)
    orders: np.ndarray = field(repr=False, compare=False)
    radial: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def create(cls, box, max_degree):
        box, max_degree = int(box), int(max_degree)
        if box % 2 == 0 or box < MIN_PATCH_SIZE:
            raise InvalidDataError(
                f"the patch size must be odd and at least {MIN_PATCH_SIZE} px, got {box}; "
                "change the particle diameter or the working resolution")
        usable = max_usable_degree(box)
        if not 0 <= max_degree <= usable:
            raise InvalidDataError(
                f"degree {max_degree} has no radial term at patch size {box} (the highest "
                f"is {usable}); lower the maximum degree or enlarge the patch")
        counts = radial_counts(box, max_degree)
        threshold = math.pi * (box // 2) * (1 - NYQUIST_TOLERANCE)
        zeros = tuple(spherical_bessel_zeros(l, threshold)[:counts[l]]
                      for l in range(max_degree + 1))
        degrees, orders, radial = [], [], []
        for l in range(max_degree + 1):
            for s in range(counts[l]):
                for m in range(-l, l + 1):
                    degrees.append(l)
                    orders.append(m)
                    radial.append(s)
        return cls(box, max_degree, counts, zeros, np.array(degrees), np.array(orders),
                   np.array(radial))

    @property
    def size(self):
        """``d = Σ_l (2l + 1) S(l)``."""
        return int(self.degrees.size)

    @property
    def radius(self):
        return self.box // 2

    def real_values(self, points):
        """``Y_{l m}(κ̂) j_{l s}(|κ| / R)`` at frequencies ``points`` ``(n, 3)`` (``kx, ky,
        kz``, cycles per box), zero for ``|κ| >= R``: ``(n, d)`` real.  The basis itself
        is these values times :meth:`phases`."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        norm = np.linalg.norm(points, axis=1)
        inside = norm < self.radius
        directions = np.where(norm[:, None] > 0, points / np.maximum(norm, 1e-300)[:, None],
                              np.array([0.0, 0.0, 1.0]))
        harmonics = real_harmonics(self.max_degree, directions)
        k = norm / self.radius
        out = np.zeros((points.shape[0], self.size))
        column = 0
        for l in range(self.max_degree + 1):
            for u in self.zeros[l]:
                radial = 4.0 / abs(scipy.special.spherical_jn(l + 1, u)) \
                    * scipy.special.spherical_jn(l, u * k)
                values = harmonics[:, l * l:(l + 1) * (l + 1)] * (radial * inside)[:, None]
                out[:, column:column + 2 * l + 1] = values
                column += 2 * l + 1
        return out

    def phases(self):
        """``i^l`` of every coefficient, ``(d,)`` complex."""
        return (1j) ** self.degrees

    def evaluate(self, points):
        """The basis at frequencies ``points`` ``(n, 3)``: ``(n, d)`` complex."""
        return self.real_values(points) * self.phases()

    def grid_points(self, size=None):
        """``(kx, ky, kz)`` of every voxel of the centred ``size³`` grid (default ``L``) in
        ``(z, y, x)`` order, in cycles per box."""
        k = fourier.frequencies(size or self.box).astype(np.float64)
        kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
        return np.stack([kx.ravel(), ky.ravel(), kz.ravel()], -1)

    def to_volume(self, coefficients, size=None):
        """The real volume of ``coefficients`` (centred inverse transform) on ``L³`` voxels,
        or on ``size³`` finer voxels over the same box (zero-padded spectrum, voxel values
        kept: the map at a smaller pixel size)."""
        size = size or self.box
        spectrum = self.evaluate(self.grid_points(size)) @ np.asarray(coefficients, np.float64)
        volume = fourier.centred_ifftn(spectrum.reshape((size,) * 3))
        return volume.real * (size / self.box) ** 3

    def fit_matrix(self):
        """The real least-squares matrix of :meth:`from_volume` (real and imaginary parts
        of the basis at the grid points inside the ball)."""
        points = self.grid_points()
        inside = np.linalg.norm(points, axis=1) < self.radius
        values = self.evaluate(points[inside])
        return np.concatenate([values.real, values.imag]), inside

    def from_volume(self, volume):
        """Least-squares coefficients of a real ``(L, L, L)`` volume: the closest
        band-limited volume of this basis on the grid points inside the ball."""
        volume = np.asarray(volume, dtype=np.float64)
        if volume.shape != (self.box,) * 3:
            raise InvalidDataError(f"the volume must be {self.box}³ voxels for this basis, "
                                   f"got {volume.shape}; resample it to the patch size")
        matrix, inside = self.fit_matrix()
        spectrum = fourier.centred_fftn(volume).ravel()[inside]
        target = np.concatenate([spectrum.real, spectrum.imag])
        return np.linalg.lstsq(matrix, target, rcond=None)[0]

    def extend(self, coefficients, basis):
        """``coefficients`` of this basis as coefficients of ``basis`` (a higher or lower
        ``l_max`` of the same patch size): kept where shared, zero where new."""
        if basis.box != self.box:
            raise InvalidDataError("frequency marching keeps the patch size")
        out = np.zeros(basis.size)
        shared = min(self.size, basis.size)
        out[:shared] = np.asarray(coefficients)[:shared]
        return out

    def reflect(self, coefficients):
        """Coefficients of the volume mirrored through its centre, ``v(-x)``: ``(-1)^l a``."""
        return np.asarray(coefficients) * (-1.0) ** self.degrees

    def rotation_blocks(self, rotation, samples=None):
        """Per degree ``l`` the orthogonal ``(2l + 1)²`` matrix ``Q_l`` with coefficients
        ``Q_l a_l`` for the rotated volume ``v(Rᵀ x)`` (whose transform is ``F(Rᵀ κ)``),
        found by least squares on sample directions."""
        if samples is None:
            samples, inverses = _harmonic_fit(self.max_degree)
        else:
            inverses = _harmonic_inverses(self.max_degree, samples)
        rotated = samples @ np.asarray(rotation)  # rows Rᵀ u
        at_rotated = real_harmonics(self.max_degree, rotated)
        return [inverse @ at_rotated[:, l * l:(l + 1) * (l + 1)]
                for l, inverse in enumerate(inverses)]

    def rotate(self, coefficients, rotation):
        """Coefficients of ``v(Rᵀ x)`` for the volume ``v`` of ``coefficients``."""
        coefficients = np.asarray(coefficients, dtype=np.float64)
        blocks = self.rotation_blocks(rotation)
        out = np.empty_like(coefficients)
        column = 0
        for l in range(self.max_degree + 1):
            width = 2 * l + 1
            for _ in range(self.counts[l]):
                out[column:column + width] = blocks[l] @ coefficients[column:column + width]
                column += width
        return out


def _harmonic_inverses(max_degree, samples):
    """Per degree the pseudo-inverse of the real harmonics at ``samples`` (the least-squares
    fit of :meth:`SphericalBesselBasis.rotation_blocks`)."""
    at_samples = real_harmonics(max_degree, samples)
    return [np.linalg.pinv(at_samples[:, l * l:(l + 1) * (l + 1)])
            for l in range(max_degree + 1)]


@functools.lru_cache(maxsize=16)
def _harmonic_fit(max_degree):
    """The default sample directions of a degree and their :func:`_harmonic_inverses`
    (the same for every rotation: an alignment rotates thousands of times)."""
    samples = _sample_directions(2 * max_degree + 2)
    return samples, _harmonic_inverses(max_degree, samples)


def _sample_directions(count):
    """``count²`` well-spread unit directions (a Fibonacci sphere)."""
    n = count * count
    index = np.arange(n) + 0.5
    cos_theta = 1 - 2 * index / n
    phi = np.pi * (1 + 5 ** 0.5) * index
    sin_theta = np.sqrt(1 - cos_theta ** 2)
    return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], -1)
