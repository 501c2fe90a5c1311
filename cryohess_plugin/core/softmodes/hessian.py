"""The experiment behind a soft-mode analysis, and its accumulated Hessian (issue 4).

Method notes §§1.9, 2.2, 2.5 and 7 ("Synthetic images").  The authors do not
sum over noisy particles: they use noise-free templates on a viewing grid
weighted by the viewing density, i.e. the expected (Fisher) Hessian at the
reference, where the particle count ``J`` and the noise ``σ²`` are scale
factors.  This module does the same for a real or planned experiment.

The accumulated form
--------------------
For noise-free templates (``r_j = 0``, notes §2.5) the reduced Hessian is

    H_red ΔF = Σ_j (1/σ²) T_j† C_j (I − Π_j) C_j T_j ΔF,

with ``Π_j`` the projector onto the image's three pose-derivative slices.
With a radial CTF an image's term depends only on its viewing direction and
its CTF: its in-plane angle rotates the ring (the ring quadrature with
``Q >= 2L + 1`` angles integrates every product exactly, so nothing
changes), and ``d`` and ``−d`` read the same great circle.  So images are
counted per viewing direction (folded onto one hemisphere) and defocus
group, ``counts[d, g]``, and one product costs a slice and an adjoint slice
per occupied direction, however many particles there are.  The poses'
``3 x 3`` blocks are per (direction, group); the pose vectors are image-frame
so(3) rotation vectors of the direction's psi = 0 pose
(:func:`.rotations.rotations_for_directions`), whose norms are those of every
image in that direction.

Approximations, both deliberate:

* expected Hessian: the residual terms of ``H_Fτ``, ``H_ττ`` (zero-mean at
  the truth) are dropped, as the authors do;
* pose binning: directions off the analysis grid move to the nearest grid
  direction (:func:`rebin`); the error shrinks with the grid spacing
  (tests/test_softmodes_analysis.py measures it);
* radial CTF: a group's CTF is that of its mean defocus (astigmatism averaged).

Slices are BLAS GEMMs against real harmonics (below), not a hand-written
kernel: the harmonics at a direction's ring are shared by every shell, so a
slice is one dense ``(D Q/2, P) x (P, R)`` product that runs near the
machine's peak; the per-direction ``3 x 3`` pose algebra is a few einsums
over ``(D, G)``, negligible next to it.  With ``backend="cuda"`` the same
products run on the device (:mod:`.kernels.soft_modes_cuda`: harmonics,
pose-derivative slices and pseudo-inverses stay there, the GEMMs are tiled
shared-memory kernels and the pose algebra one kernel per direction).

Real harmonics.  :mod:`.soft_modes` documents the real parametrisation
(:class:`.soft_modes.RealLayout`: ``A_l0 = i^l x``, ``A_lm = (a + i b) / √2`` for ``m > 0``).
In those coordinates the value of a real volume's transform at a direction is
``Σ_p x_p h_p`` with ``h_p`` real for even ``l`` and imaginary for odd ``l``
(``Y_l^{-m} = (-1)^m conj Y_l^m``), so a slice is two real GEMMs, four times
fewer flops than a complex one, and only half of every ring is computed
(``V(ψ + π) = conj V(ψ)`` for a real volume).
"""
from dataclasses import dataclass

import numpy as np
import scipy.spatial

from .. import rotations as rot
from ..ctf import CTFParams, ctf_stack
from ..errors import InvalidDataError, ShapeError
from ..kernels import resolve_backend
from ..spherical import harmonics_at

#: Relative cut-off of the per-image 3x3 pose-block pseudo-inverse (as the authors' code).
POSE_PINV_RCOND = 1e-6

#: Spacing of the direction grid of a viewing density when none is given, degrees.
DEFAULT_DISTRIBUTION_SPACING_DEG = 3.0
#: Directions whose ``|z|`` is below this lie on the equator (both halves kept).
_EQUATOR = 1e-12
#: Harmonics are evaluated for about this many ring samples at once (temporary memory).
_HARMONICS_BLOCK_SAMPLES = 2048
#: Directions are processed in blocks whose harmonics take about this many bytes.
_BLOCK_BYTES = 64 << 20
DISTRIBUTION_KINDS = ("uniform", "polar", "equatorial")


@dataclass(frozen=True)
class ViewingExperiment:
    """Image counts per viewing direction and defocus group.

    :param directions: ``(D, 3)`` unit viewing directions (image-plane normals
        ``R_jᵀ e_z``), folded onto the hemisphere ``z >= 0``.
    :param ctf_params: ``G`` :class:`.ctf.CTFParams` (one per defocus group,
        radial: the analysis uses ``defocus_u`` and ``defocus_v``'s mean), or ``()``.
    :param counts: ``(D, max(G, 1))`` non-negative image counts (or viewing-density
        weights scaled to the number of images).
    :param pixel_size: Å, of the images whose CTF and noise this is.
    """
    directions: np.ndarray
    ctf_params: tuple
    counts: np.ndarray
    pixel_size: float

    def __post_init__(self):
        directions = np.asarray(self.directions, dtype=np.float64).reshape(-1, 3)
        counts = np.asarray(self.counts, dtype=np.float64)
        params = tuple(self.ctf_params or ())
        if not all(isinstance(p, CTFParams) for p in params):
            raise InvalidDataError("ctf_params must be CTFParams, one per defocus group")
        if counts.shape != (directions.shape[0], max(len(params), 1)):
            raise ShapeError(f"counts must be (directions, groups) = "
                             f"({directions.shape[0]}, {max(len(params), 1)}), got {counts.shape}")
        if not (np.all(np.isfinite(directions)) and np.all(np.isfinite(counts))
                and np.all(counts >= 0)):
            raise InvalidDataError("directions and counts must be finite and counts non-negative")
        norms = np.linalg.norm(directions, axis=1)
        if np.any(np.abs(norms - 1) > 1e-6):
            raise InvalidDataError("directions must be unit vectors")
        if not self.pixel_size > 0:
            raise InvalidDataError(f"pixel_size must be positive (Å), got {self.pixel_size}")
        object.__setattr__(self, "directions", fold_directions(directions / norms[:, None]))
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "ctf_params", params)
        object.__setattr__(self, "pixel_size", float(self.pixel_size))

    @property
    def n_images(self):
        return float(self.counts.sum())

    @property
    def n_groups(self):
        return self.counts.shape[1]


def fold_directions(directions):
    """Directions ``(n, 3)`` moved onto ``z >= 0`` (``d`` and ``−d`` read one great circle)."""
    directions = np.asarray(directions, dtype=np.float64)
    return np.where(directions[:, 2:3] < 0, -directions, directions)


def hemisphere_grid(spacing_deg):
    """Near-uniform directions on ``z >= 0`` about ``spacing_deg`` apart, and weights.

    The ``z > 0`` half of :func:`.rotations.viewing_grid` with doubled
    quadrature weights, plus its equator ring (if any) with single weights:
    the weights integrate a function even under ``d -> -d`` over the sphere.
    """
    if not spacing_deg > 0:
        raise InvalidDataError(f"the direction grid spacing must be positive, got {spacing_deg}")
    directions, weights = rot.viewing_grid(spacing_deg)
    upper = directions[:, 2] > _EQUATOR
    equator = np.abs(directions[:, 2]) <= _EQUATOR
    return (np.concatenate([directions[upper], directions[equator]]),
            np.concatenate([2 * weights[upper], weights[equator]]))


def _nearest(directions, grid):
    """Index of the grid direction nearest to each direction up to sign."""
    tree = scipy.spatial.cKDTree(np.concatenate([grid, -grid]))
    _, index = tree.query(directions)
    return index % grid.shape[0]


def _bin(directions, group, n_groups, grid, weights=1.0):
    """Counts ``(n_occupied, n_groups)`` on the occupied grid directions, and each input's bin."""
    bins = _nearest(directions, grid)
    occupied, bin_index = np.unique(bins, return_inverse=True)
    counts = np.zeros((occupied.size, n_groups))
    np.add.at(counts, (bin_index, group), weights)
    return grid[occupied], counts, bin_index


def _defocus_groups(ctf_params, tolerance):
    """Group of each particle, and one radial CTFParams per group (mean defocus, tolerance)."""
    defocus = np.array([0.5 * (p.defocus_u + p.defocus_v) for p in ctf_params])
    order = np.argsort(defocus, kind="stable")
    group = np.empty(defocus.size, dtype=int)
    start, current = defocus[order[0]], 0
    for i in order:
        if defocus[i] > start + tolerance:
            start, current = defocus[i], current + 1
        group[i] = current
    params = []
    for g in range(current + 1):
        members = [ctf_params[i] for i in np.flatnonzero(group == g)]
        mean = {name: float(np.mean([getattr(p, name) for p in members]))
                for name in ("voltage", "spherical_aberration", "amplitude_contrast",
                             "phase_shift", "bfactor")}
        value = float(np.mean(defocus[group == g]))
        params.append(CTFParams(value, value, 0.0, **mean))
    return group, tuple(params)


def _assign_particles(rotations, ctf_params, defocus_tolerance, grid_spacing_deg):
    """Folded directions, defocus group of each particle, group CTFs and the direction grid."""
    rotations, _ = rot.validate_poses(rotations)
    directions = fold_directions(rot.projection_directions(rotations))
    if ctf_params is None:
        group, params = np.zeros(len(rotations), dtype=int), ()
    else:
        ctf_params = list(ctf_params)
        if len(ctf_params) != len(rotations):
            raise ShapeError(f"{len(ctf_params)} CTFs for {len(rotations)} particles; "
                             "give one CTF per particle")
        group, params = _defocus_groups(ctf_params, float(defocus_tolerance))
    if grid_spacing_deg is None:
        # Distinct directions up to rounding: the grid is the directions themselves.
        keys = np.round(directions, 12)
        _, first = np.unique(keys, axis=0, return_index=True)
        grid = directions[first]
    else:
        grid, _ = hemisphere_grid(grid_spacing_deg)
    return directions, group, params, grid


def experiment_from_poses(rotations, ctf_params=None, pixel_size=1.0, defocus_tolerance=1000.0,
                          grid_spacing_deg=None, weights=None):
    """The experiment of particles with known poses and CTFs.

    :param rotations: ``(J, 3, 3)`` :mod:`.rotations` matrices.
    :param ctf_params: None, or ``J`` :class:`.ctf.CTFParams`; particles whose mean defocus
        lies within ``defocus_tolerance`` Å of their group's smallest share a radial CTF
        at the group's mean defocus (astigmatism averaged).
    :param pixel_size: Å, of the particles.
    :param grid_spacing_deg: None keeps every distinct (folded) direction; a spacing bins
        them on :func:`hemisphere_grid` (``analyse_soft_modes`` bins anyway, see its
        ``grid_spacing_deg``).
    :param weights: None (every particle counts once) or ``(J,)`` positive per-particle
        precisions relative to the analysis' noise variance (noise marginalisation,
        :func:`.soft_mode_analysis.marginal_noise`).
    """
    directions, group, params, grid = _assign_particles(rotations, ctf_params,
                                                        defocus_tolerance, grid_spacing_deg)
    if weights is None:
        weights = np.ones(len(directions))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(directions),) or not np.all(np.isfinite(weights) & (weights > 0)):
        raise InvalidDataError(f"weights must be {len(directions)} finite positive numbers, one "
                               "per particle")
    directions_out, counts, _ = _bin(directions, group, max(len(params), 1), grid, weights)
    return ViewingExperiment(directions_out, params, counts, pixel_size)


def particle_assignment(rotations, ctf_params=None, defocus_tolerance=1000.0,
                        grid_spacing_deg=None):
    """Each particle's place in :func:`experiment_from_poses` (same arguments).

    :returns: ``(direction, group)``, two ``(J,)`` int arrays: the row of the particle's
        viewing direction in the experiment's ``directions`` (and ``counts``) and its
        defocus group (column of ``counts``, index of ``ctf_params``; 0 without CTF).
        Particle weights do not move particles, so the assignment holds for weighted
        experiments too.
    """
    directions, group, params, grid = _assign_particles(rotations, ctf_params,
                                                        defocus_tolerance, grid_spacing_deg)
    _, _, direction = _bin(directions, group, max(len(params), 1), grid)
    return np.asarray(direction, dtype=int), np.asarray(group, dtype=int)


def viewing_density(kind, directions, spread_deg=20.0):
    """Relative viewing density at directions ``(n, 3)`` (notes §1.9, ``σ = spread``).

    ``polar`` ∝ ``exp(−min(β², (π − β)²) / 2σ²)``, ``equatorial`` ∝
    ``exp(−(β − π/2)² / 2σ²)``, ``uniform`` ∝ 1, with ``β`` the polar angle.
    """
    if kind not in DISTRIBUTION_KINDS:
        raise InvalidDataError(f"unknown viewing distribution {kind!r}; use one of "
                               f"{DISTRIBUTION_KINDS}")
    if not spread_deg > 0:
        raise InvalidDataError(f"spread_deg must be positive, got {spread_deg}")
    beta = np.arccos(np.clip(np.asarray(directions)[:, 2], -1, 1))
    sigma = np.deg2rad(spread_deg)
    if kind == "polar":
        return np.exp(-np.minimum(beta, np.pi - beta) ** 2 / (2 * sigma ** 2))
    if kind == "equatorial":
        return np.exp(-(beta - np.pi / 2) ** 2 / (2 * sigma ** 2))
    return np.ones(beta.size)


def experiment_from_distribution(kind, n_images, spread_deg=20.0, ctf_params=None, pixel_size=1.0,
                                 grid_spacing_deg=None):
    """A planned experiment: ``n_images`` noise-free views from a viewing density.

    Counts are the hemisphere grid's quadrature weights times
    :func:`viewing_density`, scaled to ``n_images`` and shared equally by the
    ``ctf_params`` groups (None: no CTF).
    """
    if not n_images > 0:
        raise InvalidDataError(f"n_images must be positive, got {n_images}")
    grid, weights = hemisphere_grid(grid_spacing_deg or DEFAULT_DISTRIBUTION_SPACING_DEG)
    density = weights * viewing_density(kind, grid, spread_deg)
    keep = density > 1e-12 * density.max()
    params = tuple(ctf_params or ())
    share = float(n_images) * density[keep] / density[keep].sum() / max(len(params), 1)
    counts = np.repeat(share[:, None], max(len(params), 1), axis=1)
    return ViewingExperiment(grid[keep], params, counts, pixel_size)


def rebin(experiment, spacing_deg):
    """The experiment on :func:`hemisphere_grid` ``(spacing_deg)``, and each direction's bin."""
    grid, _ = hemisphere_grid(spacing_deg)
    bins = _nearest(experiment.directions, grid)
    occupied, bin_index = np.unique(bins, return_inverse=True)
    counts = np.zeros((occupied.size, experiment.n_groups))
    np.add.at(counts, bin_index, experiment.counts)
    return (ViewingExperiment(grid[occupied], experiment.ctf_params, counts,
                              experiment.pixel_size), bin_index)


class RealHarmonics:
    """Real harmonics ``h_p`` of the real parametrisation, per shell column (module docstring).

    Columns ``p`` are ``(l, m, kind)`` for ``0 <= m <= l <= L`` (kind ``a``/``b`` for
    ``m > 0``), even degrees first.  ``index[r, p]`` is the position of shell ``r``'s
    parameter ``p`` in the real vectors of ``layout`` (:class:`.soft_modes.RealLayout`),
    ``-1`` beyond the shell's degree limit.
    """

    def __init__(self, shells, layout):
        self.shells = shells
        degrees, orders, kinds = [], [], []
        for degree in range(shells.max_degree + 1):
            degrees.append(degree), orders.append(0), kinds.append(0)
            for order in range(1, degree + 1):
                degrees += [degree, degree]
                orders += [order, order]
                kinds += [1, 2]
        degrees, orders, kinds = map(np.array, (degrees, orders, kinds))
        order = np.argsort(degrees % 2, kind="stable")
        self.degrees, self.orders, self.kinds = degrees[order], orders[order], kinds[order]
        self.n_even = int(np.count_nonzero(self.degrees % 2 == 0))
        # Parameter positions: the documented layout is exact on integers.
        numbered = layout.from_real_vector(np.arange(1.0, layout.n_parameters + 1))
        self.index = np.rint(self.extract(numbered)).astype(int) - 1
        self.size = layout.n_parameters
        valid = self.index >= 0
        self._rows, self._columns = np.nonzero(valid)
        self._positions = self.index[valid]
        self.shell_of_parameter = np.empty(self.size, dtype=int)
        self.shell_of_parameter[self._positions] = self._rows

    def extract(self, coefficients):
        """Real coordinates ``(..., R, P)`` of real-volume coefficients ``(..., R, L + 1, M)``."""
        c = np.asarray(coefficients)
        values = c[..., self.degrees, self.orders]
        phase = 1j ** self.degrees
        return np.where(self.kinds == 0, (values * phase.conj()).real,
                        np.where(self.kinds == 1, np.sqrt(2) * values.real,
                                 np.sqrt(2) * values.imag))

    def to_columns(self, vector):
        """``(R, P)`` shell coordinates of a real vector ``(n,)`` (zeros beyond the limits)."""
        out = np.zeros(self.index.shape)
        out[self._rows, self._columns] = vector[self._positions]
        return out

    def from_columns(self, columns):
        """Transpose of :meth:`to_columns`: ``(R, P)`` -> ``(n,)``."""
        out = np.zeros(self.size)
        out[self._positions] = columns[self._rows, self._columns]
        return out

    def evaluate(self, directions):
        """``(Re h_even, Im h_odd)`` at directions ``(n, 3)``: ``(n, n_even)``, ``(n, rest)``."""
        shells = self.shells
        y = harmonics_at(directions, shells.max_degree, shells.n_orders)
        sign = (-1.0) ** (self.degrees + self.orders)
        plus, minus = y[:, self.degrees, self.orders], y[:, self.degrees, -self.orders]
        h = np.where(self.kinds == 0, 1j ** self.degrees * plus,
                     np.where(self.kinds == 1, (plus + sign * minus) / np.sqrt(2),
                              1j * (plus - sign * minus) / np.sqrt(2)))
        return (np.ascontiguousarray(h[:, :self.n_even].real),
                np.ascontiguousarray(h[:, self.n_even:].imag))


class AccumulatedHessian:
    """The accumulated (expected, noise-free) Hessian of the NLL at a volume (module docstring).

    :param shells: :class:`.spherical.ShellGrid`.
    :param volume_vector: ``(n,)`` real coordinates of the reference volume.
    :param layout: :class:`.soft_modes.RealLayout` of ``shells``.
    :param experiment: :class:`ViewingExperiment` (directions are used as given).
    :param pixel_size: Å per voxel of the volume (sets the CTF's physical frequencies).
    :param noise_sigma2: the likelihood's ``σ²`` (per unit area of the frequency plane in
        cycles per box, :mod:`.soft_modes`).
    :param n_angles: ring samples ``Q`` (even, ``>= 2L + 1``; default ``2L + 2``).
    :param memory_budget: bytes for caching the harmonics (host or device memory); beyond
        it they are recomputed at every product (on the device with ``"cuda"``).
    :param backend: ``"cpu"`` (BLAS), ``"cuda"`` or ``"auto"``
        (:func:`.kernels.resolve_backend`) for the products.
    """

    def __init__(self, shells, volume_vector, layout, experiment, pixel_size, noise_sigma2=1.0,
                 n_angles=None, memory_budget=1 << 30, backend="cpu"):
        self.backend = resolve_backend(backend)
        self.shells = shells
        self.experiment = experiment
        self.noise_sigma2 = float(noise_sigma2)
        degree = shells.max_degree
        self.n_angles = int(n_angles or 2 * degree + 2)
        if self.n_angles % 2 or self.n_angles < 2 * degree + 1:
            raise InvalidDataError(f"n_angles must be even and at least {2 * degree + 1}, "
                                   f"got {self.n_angles}")
        self.half = self.n_angles // 2
        self.harmonics = RealHarmonics(shells, layout)
        rotations = rot.rotations_for_directions(experiment.directions)
        self.rotations = rotations
        psi = 2 * np.pi * np.arange(self.half) / self.n_angles
        # Sample directions R_dᵀ e(ψ_q) of the half rings, (D, Q/2, 3).
        self._samples = (np.cos(psi)[None, :, None] * rotations[:, None, 0, :]
                         + np.sin(psi)[None, :, None] * rotations[:, None, 1, :])
        n_directions = rotations.shape[0]
        per_direction = self.half * self.harmonics.index.shape[1] * 8
        self._block = max(1, min(n_directions, _BLOCK_BYTES // per_direction))
        self._cache = None
        cache = n_directions * per_direction <= memory_budget
        if cache and self.backend == "cpu":
            self._cache = [self._harmonics_block(start) for start in self._starts()]
        # Ring weights 2 (2π/Q) ρ_r: half rings stand for whole ones.
        self._ring_weights = 2 * (2 * np.pi / self.n_angles) * shells.weights / shells.radii
        self.ctf_squared = self._ctf_squared(experiment, shells, pixel_size)  # (G, R)
        self._device = None
        if self.backend == "cuda":
            from ..kernels.soft_modes_cuda import DeviceHessian
            self._device = DeviceHessian(self._samples, self.harmonics, self._block, cache,
                                         self.ctf_squared, experiment.counts,
                                         self._ring_weights, self.noise_sigma2)
        self._setup_poses(layout.rigid_rotation_modes(layout.from_real_vector(volume_vector)))

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def _ctf_squared(experiment, shells, pixel_size):
        if not experiment.ctf_params:
            return np.ones((1, shells.n_shells))
        values = ctf_stack(experiment.ctf_params, shells.radii, np.zeros(shells.n_shells),
                           shells.box, pixel_size)
        return values ** 2

    def _starts(self):
        return range(0, self.rotations.shape[0], self._block)

    def _harmonics_block(self, start):
        samples = self._samples[start:start + self._block].reshape(-1, 3)
        parts = [self.harmonics.evaluate(samples[i:i + _HARMONICS_BLOCK_SAMPLES])
                 for i in range(0, samples.shape[0], _HARMONICS_BLOCK_SAMPLES)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _blocks(self):
        for k, start in enumerate(self._starts()):
            block = self._cache[k] if self._cache is not None else self._harmonics_block(start)
            yield slice(start, start + self._block), block

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

    # ------------------------------------------------------------------ pose blocks
    def _setup_poses(self, rotation_modes):
        """Pose-derivative slices ``U_a = -i Σ_b R[a, b] T(L_b F)`` and the blocks' pinv."""
        modes = [self.harmonics.to_columns(mode) for mode in rotation_modes]
        derivative_re, derivative_im = [], []
        for where, slices in self._mode_slices(modes):  # T(-i L_b F)
            matrices = self.rotations[where]
            derivative_re.append(np.einsum("dab,bdqr->adqr", matrices, np.stack([s[0] for s in slices])))
            derivative_im.append(np.einsum("dab,bdqr->adqr", matrices, np.stack([s[1] for s in slices])))
        self._derivatives = (np.concatenate(derivative_re, axis=1),
                             np.concatenate(derivative_im, axis=1))  # (3, D, Q/2, R)
        u_re, u_im = self._derivatives
        gram = (np.einsum("adqr,bdqr->drab", u_re, u_re)
                + np.einsum("adqr,bdqr->drab", u_im, u_im))
        gram *= self._ring_weights[None, :, None, None]
        # Per (direction, group) blocks without 1/σ² and counts: both cancel in Δτ.
        blocks = np.einsum("gr,drab->dgab", self.ctf_squared, gram)
        blocks = (blocks + blocks.transpose(0, 1, 3, 2)) / 2
        self.pose_blocks = blocks
        self._pose_pinv = np.linalg.pinv(blocks, rcond=POSE_PINV_RCOND, hermitian=True)
        if self._device is not None:
            # The device keeps its own copy; the products never read the host one.
            self._device.set_poses(self._derivatives, self._pose_pinv)
            self._derivatives = None

    def _mode_slices(self, modes):
        """Per block of directions: ``[(Re V, Im V)]`` of each of the shell columns ``modes``."""
        if self._device is None:
            for where, block in self._blocks():
                yield where, [self._slice(block, mode) for mode in modes]
            return
        shells = modes[0].shape[0]
        real, imag = self._device.mode_slices(np.concatenate(modes))  # (D, Q/2, k R)
        for start in self._starts():
            where = slice(start, start + self._block)
            yield where, [(real[where, :, b * shells:(b + 1) * shells],
                           imag[where, :, b * shells:(b + 1) * shells])
                          for b in range(len(modes))]

    def _pose_response(self, v_re, v_im, where):
        """``Δτ`` ``(d, G, 3)`` of the block's directions for the slices ``V`` of ``ΔF``."""
        u_re, u_im = self._derivatives[0][:, where], self._derivatives[1][:, where]
        overlap = (np.einsum("adqr,dqr->dar", u_re, v_re)
                   + np.einsum("adqr,dqr->dar", u_im, v_im)) * self._ring_weights
        coupling = np.einsum("gr,dar->dga", self.ctf_squared, overlap)
        return -np.einsum("dgab,dgb->dga", self._pose_pinv[where], coupling)

    # ------------------------------------------------------------------ products
    def matvec(self, vector, implicit_poses=True):
        """``(n,)`` Hessian-vector product of the NLL (sum over images, ``1/σ²``)."""
        columns = self.harmonics.to_columns(np.asarray(vector, dtype=np.float64))
        if self._device is not None:
            return self.harmonics.from_columns(self._device.matvec(columns, implicit_poses))
        counts = self.experiment.counts
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
        return self.harmonics.from_columns(out)

    def pose_change(self, vector):
        """``(D, G, 3)`` first-order image-frame rotation ``Δτ`` implied by a volume change."""
        columns = self.harmonics.to_columns(np.asarray(vector, dtype=np.float64))
        if self._device is not None:
            return self._device.pose_change(columns)
        parts = [self._pose_response(*self._slice(block, columns), where)
                 for where, block in self._blocks()]
        return np.concatenate(parts)
