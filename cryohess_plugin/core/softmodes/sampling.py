"""What an experiment samples on each shell: its null space and the solver's coordinates.

``docs/methods/hessian_soft_modes.md`` §3.2 (every § below is a section of that page).
With fixed poses the accumulated Hessian does not couple shells: on shell ``r`` it is
``x ↦ ρ_r Σ_g (C²_{g,r}/σ²_r) S_g x`` with the *sampling operator*

    xᵀ S_g x = Σ_d counts[d, g] ∫₀^{2π} |V_x(R_dᵀ e(ψ))|² dψ = ∫_{S²} m_g |V_x|² dΩ,

``V_x`` the shell's function of the real parameters ``x``.  The second form holds
exactly for functions of degree ``<= L`` because a great circle integrates a function
of degree ``<= 2L`` like the band-limited density (Funk–Hecke)
``m(κ) = Σ_d c_d Σ_{l even <= 2L} (2l + 1)/2 · P_l(0) P_l(κ·d)``.  So
:class:`SamplingSpectrum` evaluates ``m`` (all groups' counts) on a sphere grid exact for
degree ``4L``, builds ``S`` once at degree ``L`` (even and odd degrees do not mix:
``m`` is even) and diagonalises its leading block for every degree limit the shells
have.  ``S`` depends only on the viewing directions and counts, not on the CTF.

The experiment's **null space** is, on every shell, the span of ``S``'s eigenvectors
whose eigenvalue is at most :data:`NULL_THRESHOLD` times the largest: Fourier components
the views do not sample (a missing cone).  ``H_red <= H_FF``, so the reduced Hessian
cannot pin them either; their region on the sphere is :class:`NullRegion`.
:class:`SampledCoordinates` are orthonormal coordinates of the rest, in which ``S`` is
diagonal; with each shell's mean ``C²/σ²`` its eigenvalues are the diagonal of the
fixed-pose Hessian there, the eigensolver's preconditioner (§3.1).
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError
from ..spherical import harmonics_at

#: A component is unsampled when the sampling operator's eigenvalue along it is at most
#: this fraction of the shell's largest (§3.2).
NULL_THRESHOLD = 1e-6
#: Directions per block while the density's coefficients are accumulated (memory).
_DIRECTION_BLOCK = 512
#: Grid points per block while the density is evaluated (memory).
POINT_BLOCK = 512


def sphere_grid(degree):
    """Points of the closed upper hemisphere ``(n, 3)`` and weights integrating, over the
    whole sphere, functions of degree ``<= degree`` that are even (``f(-κ) = f(κ)``).

    Gauss–Legendre in ``cos θ`` times uniform ``φ``; rows with ``cos θ > 0`` stand for
    their antipodes too (doubled weights).
    """
    count = degree // 2 + 1
    cos_theta, theta_weights = np.polynomial.legendre.leggauss(count)
    n_phi = degree + 1
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    upper = cos_theta >= 0
    doubled = np.where(cos_theta[upper] > 0, 2.0, 1.0)
    sin_theta = np.sqrt(1 - cos_theta[upper] ** 2)
    points = np.stack([sin_theta[:, None] * np.cos(phi), sin_theta[:, None] * np.sin(phi),
                       np.repeat(cos_theta[upper][:, None], n_phi, axis=1)], -1).reshape(-1, 3)
    weights = np.repeat(theta_weights[upper] * doubled * 2 * np.pi / n_phi, n_phi)
    return points, weights


def great_circle_density(directions, counts, degree, points):
    """The band-limited density of the great circles of ``directions`` ``(D, 3)`` with
    weights ``counts`` ``(D,)``, degrees ``<= degree``, at ``points`` ``(n, 3)``:
    ``∫ f m dΩ = Σ_d c_d ∫₀^{2π} f(R_dᵀ e(ψ)) dψ`` for every ``f`` of degree ``<= degree``.
    ``counts`` ``(D, G)`` gives the ``(n, G)`` densities of ``G`` sets of weights at once.

    Funk–Hecke: the great circle of ``d`` has coefficients ``2π P_l(0) conj Y_lm(d)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    columns = counts.reshape(counts.shape[0], -1)
    n_orders = 2 * degree + 1
    coefficients = np.zeros((columns.shape[1], degree + 1, n_orders), dtype=np.complex128)
    for start in range(0, len(directions), _DIRECTION_BLOCK):
        where = slice(start, start + _DIRECTION_BLOCK)
        harmonics = harmonics_at(directions[where], degree, n_orders)
        coefficients += np.einsum("dg,dlm->glm", columns[where], harmonics.conj())
    legendre_at_zero = np.array([np.polynomial.legendre.legval(0.0, np.eye(degree + 1)[l])
                                 for l in range(degree + 1)])
    coefficients *= 2 * np.pi * legendre_at_zero[:, None]
    density = np.empty((len(points), columns.shape[1]))
    for start in range(0, len(points), POINT_BLOCK):
        where = slice(start, start + POINT_BLOCK)
        density[where] = np.einsum("glm,plm->pg", coefficients,
                                   harmonics_at(points[where], degree, n_orders)).real
    return density.reshape((len(points),) + counts.shape[1:])


def sampling_grams(harmonics, directions, counts):
    """The sampling operators ``S_g`` of §3.2 at degree ``L``, per parity: ``(even, odd)``
    ``(G, P_even, P_even)``, ``(G, P_odd, P_odd)`` for counts ``(D, G)``, with
    ``∫_{S²} m_g h_p h_p' dΩ`` on :func:`sphere_grid` ``(4L)`` (exact: ``m_g`` has degree
    ``<= 2L``, the products of harmonics too).  Also the grid's ``(points, weights)`` and
    the harmonics there ``(even, odd)``."""
    degree = harmonics.shells.max_degree
    points, weights = sphere_grid(4 * degree)
    counts = np.asarray(counts, dtype=np.float64).reshape(len(directions), -1)
    density = great_circle_density(np.asarray(directions, dtype=np.float64), counts,
                                   2 * degree, points)
    tables = harmonics.evaluate(points)
    grams = tuple(np.stack([(table * (weights * density[:, g])[:, None]).T @ table
                            for g in range(counts.shape[1])]) for table in tables)
    return grams, (points, weights), tables


@dataclass(frozen=True)
class NullRegion:
    """Where on the sphere of frequency directions the null space lives (§3.2).

    ``fraction``: the share of the sphere in which at least half of the top shell's
    functions are unsampled; ``axis`` ``(3,)``: the most unsampled direction (up to
    sign); ``half_angle_deg``: the largest angle from ``±axis`` of that region (the
    half-angle of its enclosing double cone); zeros when the null space is empty.
    """
    fraction: float
    axis: np.ndarray
    half_angle_deg: float

    def describe(self):
        """The region in words, for summaries."""
        if self.fraction <= 0:
            return "no unsampled region"
        axis = np.asarray(self.axis)
        return (f"{100 * self.fraction:.0f} % of the directions in frequency space, within "
                f"{self.half_angle_deg:.0f}° of the axis ({axis[0]:.2f}, {axis[1]:.2f}, "
                f"{axis[2]:.2f}) (both ends: a missing cone)")


class SamplingSpectrum:
    """The sampling operator of an experiment per degree limit, and its null space.

    :param harmonics: :class:`.hessian.RealHarmonics` (its shells give the degree limits).
    :param directions: ``(D, 3)`` viewing directions.  :param counts: ``(D,)`` images.
    :param threshold: :data:`NULL_THRESHOLD` (relative).
    :param grams: None, or what :func:`sampling_grams` gave for these directions and any
        split of these counts into columns (their sum is used), to skip computing it again.
    """

    def __init__(self, harmonics, directions, counts, threshold=NULL_THRESHOLD, grams=None):
        if not 0 <= threshold < 1:
            raise InvalidDataError(f"the null-space threshold must be in [0, 1), got {threshold}")
        self.harmonics = harmonics
        self.threshold = float(threshold)
        if grams is None:
            grams = sampling_grams(harmonics, directions,
                                   np.asarray(counts, dtype=np.float64).reshape(-1, 1))
        (even, odd), (self._points, self._weights), (self._even, self._odd) = grams
        grams = (even.sum(axis=0), odd.sum(axis=0))
        n_even = harmonics.n_even
        self._parity_degrees = (harmonics.degrees[:n_even], harmonics.degrees[n_even:])
        #: ``{limit: ((values_even, vectors_even), (values_odd, vectors_odd))}``, ascending.
        self.spectra = {}
        for limit in np.unique(harmonics.shells.degree_limits):
            parts = []
            for gram, degrees in zip(grams, self._parity_degrees):
                size = int(np.searchsorted(degrees, limit, side="right"))
                values, vectors = np.linalg.eigh(gram[:size, :size])
                parts.append((values, vectors))
            self.spectra[int(limit)] = tuple(parts)

    def largest(self, limit):
        """The largest sampling eigenvalue at a degree limit."""
        return max(part[0][-1] for part in self.spectra[limit])

    def kept(self, limit):
        """``(kept_even, kept_odd)`` masks of the sampled eigenvectors at a degree limit."""
        bound = self.threshold * self.largest(limit)
        return tuple(part[0] > bound for part in self.spectra[limit])

    def null_counts(self):
        """``(R,)`` unsampled components per shell."""
        return np.array([sum(int(np.count_nonzero(~mask)) for mask in self.kept(int(limit)))
                         for limit in self.harmonics.shells.degree_limits])

    def region(self):
        """:class:`NullRegion` of the top degree's null space."""
        limit = int(self.harmonics.shells.degree_limits.max())
        null = 0.0
        for values_vectors, mask, table in zip(self.spectra[limit], self.kept(limit),
                                               (self._even, self._odd)):
            vectors = values_vectors[1][:, ~mask]
            null = null + np.sum((table[:, :vectors.shape[0]] @ vectors) ** 2, axis=1)
        share = null / ((limit + 1) ** 2 / (4 * np.pi))
        inside = share >= 0.5
        if not inside.any():
            return NullRegion(0.0, np.zeros(3), 0.0)
        axis = self._points[np.argmax(share)]
        cosines = np.abs(self._points[inside] @ axis)
        return NullRegion(float(np.sum(self._weights[inside]) / (4 * np.pi)), axis,
                          float(np.rad2deg(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))))


class SampledCoordinates:
    """Orthonormal coordinates ``z`` of the sampled part of the real parameters (§3.2).

    On shell ``r`` (degree limit ``l``) the coordinates are ``z_r = Vᵀ (W^{1/2} x)_r`` with
    ``V`` the kept eigenvectors of the sampling operator at ``l``, per parity; so
    :meth:`embed` ``x = W^{-1/2} V z`` is a W-isometry onto the W-orthogonal complement
    of the null space and :meth:`restrict` is its transpose (take a gradient or a
    Hessian product, ``W^{-1/2}`` included).  :attr:`diagonal` is the fixed-pose
    Hessian's diagonal in these coordinates, ``ρ_r w̄_r μ_i / W_r`` with ``w̄_r`` the
    count-weighted mean of ``C²/σ²`` on the shell.

    :param spectrum: :class:`SamplingSpectrum`.
    :param metric: ``(n,)`` the metric's diagonal (constant on each shell).
    :param shell_scale: ``(R,)`` ``ρ_r w̄_r``.
    """

    def __init__(self, spectrum, metric, shell_scale):
        harmonics = spectrum.harmonics
        self.harmonics = harmonics
        self.size = harmonics.size
        shells = harmonics.shells
        metric = np.asarray(metric, dtype=np.float64)
        self._root = np.sqrt(metric)
        shell_metric = metric[np.searchsorted(harmonics.shell_of_parameter,
                                              np.arange(shells.n_shells))] \
            if False else self._shell_metric(metric)
        self._pieces, diagonal, offset = [], [], 0
        n_even = harmonics.n_even
        for r, limit in enumerate(shells.degree_limits):
            kept = spectrum.kept(int(limit))
            bases = []
            for (values, vectors), mask, start in zip(spectrum.spectra[int(limit)], kept,
                                                     (0, n_even)):
                basis = vectors[:, mask]
                bases.append((start, basis))
                diagonal.append(shell_scale[r] * values[mask] / shell_metric[r])
            width = sum(basis.shape[1] for _, basis in bases)
            self._pieces.append((r, bases, slice(offset, offset + width)))
            offset += width
        self.dimension = offset
        self.diagonal = np.concatenate(diagonal)

    def _shell_metric(self, metric):
        shell_of = self.harmonics.shell_of_parameter
        values = np.zeros(self.harmonics.shells.n_shells)
        values[shell_of] = metric
        return values

    def _shell_columns(self, vectors, scale):
        return np.stack([self.harmonics.to_columns(v * scale) for v in vectors])

    def embed(self, z):
        """``(k, n)`` volume vectors ``W^{-1/2} V z`` of coordinates ``(k, dimension)``."""
        z = np.atleast_2d(z)
        columns = np.zeros((z.shape[0],) + self.harmonics.index.shape)
        for r, bases, where in self._pieces:
            position = where.start
            for start, basis in bases:
                width = basis.shape[1]
                columns[:, r, start:start + basis.shape[0]] = z[:, position:position + width] @ basis.T
                position += width
        return np.stack([self.harmonics.from_columns(c) for c in columns]) / self._root

    def restrict(self, vectors):
        """``(k, dimension)`` coordinates ``Vᵀ W^{-1/2} g`` of vectors ``(k, n)`` (the
        transpose of :meth:`embed`)."""
        columns = self._shell_columns(np.atleast_2d(vectors), 1.0 / self._root)
        z = np.empty((columns.shape[0], self.dimension))
        for r, bases, where in self._pieces:
            position = where.start
            for start, basis in bases:
                width = basis.shape[1]
                z[:, position:position + width] = columns[:, r, start:start + basis.shape[0]] @ basis
                position += width
        return z

    def of_volume(self, vectors):
        """Coordinates of the W-orthogonal projection of volume vectors ``(k, n)``."""
        return self.restrict(np.atleast_2d(vectors) * self._root ** 2)
