"""The experiment behind a soft-mode analysis: image counts per viewing direction and defocus group.

The authors do not sum over noisy particles: they use noise-free templates on a viewing
grid weighted by the viewing density, i.e. the expected (Fisher) Hessian at the reference,
where the particle count ``J`` and the noise ``σ²`` are scale factors
(``docs/methods/hessian_soft_modes.md`` §1.9, the paper's §18).  This module describes a
real or planned experiment that way: :class:`ViewingExperiment` from particles' poses and
CTFs (:func:`experiment_from_poses`, with each particle's place in it,
:func:`particle_assignment`) or from a viewing density (:func:`experiment_from_distribution`),
and its directions binned on a grid (:func:`rebin`).  An image's term of the accumulated
Hessian depends only on its viewing direction and its CTF (§2.5), so ``d`` and ``−d`` are
folded onto one hemisphere and particles are grouped by defocus.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.spatial

from .. import rotations as rot
from ..ctf import CTFParams, params_from_rows, params_to_rows, ring_mean_ctf_squared
from ..errors import InvalidDataError, ShapeError
from ..storage import load_fields, save_fields

#: Spacing of the direction grid of a viewing density when none is given, degrees.
DEFAULT_DISTRIBUTION_SPACING_DEG = 3.0
#: Directions whose ``|z|`` is below this lie on the equator (both halves kept).
_EQUATOR = 1e-12
DISTRIBUTION_KINDS = ("uniform", "polar", "equatorial")

@dataclass(frozen=True)
class ViewingExperiment:
    """Image counts per viewing direction and defocus group.

    :param directions: ``(D, 3)`` unit viewing directions (image-plane normals
        ``R_jᵀ e_z``), folded onto the hemisphere ``z >= 0``.
    :param ctf_params: ``G`` :class:`.ctf.CTFParams` (one per defocus group: a planned
        group's CTF, or a radial CTF at the mean defocus of a group of particles), or ``()``.
    :param counts: ``(D, max(G, 1))`` non-negative image counts (or viewing-density
        weights scaled to the number of images).
    :param pixel_size: Å, of the images whose CTF and noise this is.
    :param member_ctfs: for an experiment of particles, every particle's own
        :class:`.ctf.CTFParams` (astigmatism included), else ``()``; with
        ``member_groups`` ``(J,)`` their defocus groups and ``member_weights`` ``(J,)``
        their weights in ``counts``, they give each group's exact mean ``CTF²``
        (:meth:`ctf_squared`).
    """
    directions: np.ndarray
    ctf_params: tuple
    counts: np.ndarray
    pixel_size: float
    member_ctfs: tuple = ()
    member_groups: np.ndarray = None
    member_weights: np.ndarray = None

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
        self._set_members(params)

    def _set_members(self, params):
        members = tuple(self.member_ctfs or ())
        count = len(members)
        groups = (np.zeros(count, dtype=np.int64) if self.member_groups is None
                  else np.asarray(self.member_groups, dtype=np.int64).reshape(-1))
        weights = np.ones(count) if self.member_weights is None else np.asarray(
            self.member_weights, dtype=np.float64).reshape(-1)
        if count and not (params and all(isinstance(p, CTFParams) for p in members)):
            raise InvalidDataError("member_ctfs need CTFParams and the experiment's group CTFs")
        if groups.shape != (count,) or weights.shape != (count,):
            raise ShapeError(f"member_groups and member_weights must have one entry per member "
                             f"CTF ({count}), got {groups.shape} and {weights.shape}")
        if count and (groups.min() < 0 or groups.max() >= len(params)
                      or not np.all(np.isfinite(weights) & (weights > 0))):
            raise InvalidDataError("member groups must index the group CTFs and member weights "
                                   "must be positive")
        object.__setattr__(self, "member_ctfs", members)
        object.__setattr__(self, "member_groups", groups)
        object.__setattr__(self, "member_weights", weights)

    @property
    def n_images(self):
        return float(self.counts.sum())

    @property
    def n_groups(self):
        return self.counts.shape[1]

    def ctf_squared(self, radii, box, pixel_size):
        """``(G, R)`` each defocus group's mean ``CTF²`` around the rings ``|k| = radii``
        (cycles per ``box``-voxel box of ``pixel_size`` Å): the weighted mean over the
        group's particles of their ring-mean ``CTF²`` (:func:`.ctf.ring_mean_ctf_squared`,
        astigmatism included), or the group CTF's own for a planned experiment; ones
        without CTF.  Not the ``CTF²`` of the group's mean defocus
        (``docs/methods/hessian_soft_modes.md`` §2.5).
        """
        radii = np.asarray(radii, dtype=np.float64)
        if not self.ctf_params:
            return np.ones((1, radii.size))
        if not self.member_ctfs:
            return ring_mean_ctf_squared(self.ctf_params, radii, box, pixel_size)
        values = ring_mean_ctf_squared(self.member_ctfs, radii, box, pixel_size)
        totals = np.zeros((len(self.ctf_params), radii.size))
        np.add.at(totals, self.member_groups, self.member_weights[:, None] * values)
        weights = np.bincount(self.member_groups, self.member_weights,
                              minlength=len(self.ctf_params))
        return totals / np.maximum(weights, np.finfo(float).tiny)[:, None]

    def save(self, path):
        """Write the experiment to the npz ``path`` (the CTFs as :func:`.ctf.params_to_rows`)."""
        save_fields(path, self, ctf_params=params_to_rows(self.ctf_params),
                    member_ctfs=params_to_rows(self.member_ctfs))

    @classmethod
    def load(cls, path):
        """The experiment :meth:`save` wrote to ``path``."""
        rows = lambda values: tuple(params_from_rows(values))  # noqa: E731
        return load_fields(cls, path, ctf_params=rows, member_ctfs=rows)


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
        lies within ``defocus_tolerance`` Å of their group's smallest form a defocus group,
        whose ``CTF²`` is the mean of its particles' ring-mean ``CTF²``
        (:meth:`ViewingExperiment.ctf_squared`; the group's ``ctf_params`` entry, a radial
        CTF at its mean defocus, only names it).
    :param pixel_size: Å, of the particles.
    :param grid_spacing_deg: None keeps every distinct (folded) direction; a spacing bins
        them on :func:`hemisphere_grid` (``analyse_soft_modes`` bins anyway, see its
        ``grid_spacing_deg``).
    :param weights: None (every particle counts once) or ``(J,)`` positive per-particle
        precisions relative to the analysis' noise variance (noise marginalisation,
        :func:`.analysis.marginal_noise`).
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
    members = tuple(ctf_params) if params else ()
    return ViewingExperiment(directions_out, params, counts, pixel_size, member_ctfs=members,
                             member_groups=group if members else None,
                             member_weights=weights if members else None)


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
    """Relative viewing density at directions ``(n, 3)``, ``σ = spread``.

    The form of the authors' code (``docs/methods/hessian_soft_modes.md`` §1.9):
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
    return (dataclasses.replace(experiment, directions=grid[occupied], counts=counts),
            bin_index)
