"""Soft modes of a reconstruction for an experiment: what the images barely pin down.

``docs/methods/hessian_soft_modes.md`` §1.9, §§2.5–2.7, §3 and §4 (every § below is a
section of that page).  :func:`analyse_soft_modes` takes a volume and a
:class:`.experiment.ViewingExperiment` (from particles' poses and CTFs, or from a
viewing density) and returns the smallest eigenpairs of the Hessian of the negative log-likelihood in the
accumulated form of :mod:`.hessian` (expected Hessian of noise-free templates,
poses binned by viewing direction), with everything a user looks at (§4), in a
:class:`SoftModeAnalysis` that owns its file (:meth:`SoftModeAnalysis.save`,
:meth:`SoftModeAnalysis.load`, :meth:`SoftModeAnalysis.write_table`).  Also here:
each particle's pose change (:class:`ParticleAssignment`, :class:`PoseChangeStatistics`)
and what a run at a band costs (:func:`analysis_memory`, :func:`analysis_warnings`).
The noise level it needs is in :mod:`.noise`.

Units.  The volume's transform is the core's centred, non-unitary one
(:mod:`.fourier`), frequencies in cycles per box.  White image noise of
per-pixel variance ``s²`` has ``E|X(k)|² = N² s²`` at every integer frequency
of an ``N``-pixel image, and ``Σ_x n² = N⁻² Σ_k |X|²``, so the likelihood's
``σ²`` per unit area of the frequency plane (§1.3) is ``σ² = N² s²``; the
images must share the volume's pixel size.

Eigenvalues are of the NLL's Hessian (summed over images, ``1/σ²`` included)
in the chosen metric ``W`` on the real coefficient vector: ``"riesz"``
weights shell ``r`` by ``ρ_r = ∫ f df`` (the authors' choice, §3.1,
without their constant ``(4π)²√(π/2)``), ``"l2"`` by ``∫ f² df`` (the
real-space L2 norm of the band-limited map times ``N³``, Plancherel).  They
are Ritz values of a fixed-length Lanczos run (upper bounds of the true
smallest eigenvalues; ``residuals`` says how far each is from converged).
With implicit poses the three rigid rotations (exact null modes) are
projected out.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError, SamplingMismatchError, ShapeError
from ..fourier import bandwidth, frequency_for_resolution
from ..progress import Reporter
from ..projector import validate_volume
from ..spherical import ShellGrid, SphericalTransform, shells_to_volume
from .experiment import ViewingExperiment, hemisphere_grid, particle_assignment, rebin
from ..storage import load_fields, save_fields
from .hessian import BLOCK_BYTES, AccumulatedHessian
from .layout import RealLayout
from .products import HARMONICS_BLOCK_SAMPLES
from .solver import (lanczos_softest_modes, per_shell_profile, perturbation_size,
                     soft_variance)

__all__ = ["SoftModeAnalysis", "ParticleAssignment", "PoseChangeStatistics",
           "analyse_soft_modes", "analysis_memory", "analysis_warnings", "auto_grid_spacing",
           "particle_pose_changes"]

METRICS = ("riesz", "l2")
#: Analysis grid spacing in units of the authors' template spacing ``π / L`` (``0.5 / K``,
#: §1.9); the binning test measures the error this leaves.
AUTO_SPACING_FRACTION = 0.5
#: Pixel sizes closer than this (relative) are the same sampling.
_PIXEL_TOLERANCE = 1e-3
#: Fields of :class:`SoftModeAnalysis` as large as the map, left out by a light load.
VOLUME_FIELDS = ("mode_volumes", "sensitivity")


@dataclass(frozen=True)
class SoftModeAnalysis:
    """Result of :func:`analyse_soft_modes`.

    ``eigenvalues`` ``(n_modes,)`` of the NLL Hessian in ``metric`` (ascending Ritz values);
    ``perturbation`` ``ε`` at ``log_likelihood_ratio`` for W-unit modes (``inf`` where
    the eigenvalue is not positive); ``relative_change`` ``‖ε ΔF‖ / ‖F‖`` (real-space L2
    of the band-limited maps); ``shell_frequencies`` ``(R,)`` 1/Å; ``shell_profile``
    ``(n_modes, R)`` each W-unit mode's L2 energy per shell; ``pose_changes`` ``(n_modes, D)``
    ``|Δτ|`` in radians per experiment direction at ``ε_i`` (the rotation of that
    direction's images when the map becomes ``F + ε_i ΔF_i``, count-weighted RMS over
    defocus groups; zero for fixed poses or an infinite ``ε``); ``group_pose_changes``
    ``(n_modes, D, G)`` the same per defocus group (a group's images in a direction all
    turn by that amount; groups without images in a direction have the value they would
    have); ``ritz_history`` ``(iterations, iterations)`` NaN-padded; ``residuals``,
    ``converged``, ``log_determinant`` from :func:`.solver.lanczos_softest_modes`;
    ``max_degree`` ``L = 2πK``; ``n_directions`` the analysis grid's occupied directions
    and ``grid_spacing_deg`` its spacing (NaN: the experiment's own directions);
    ``n_images``, ``noise_variance`` (per pixel), ``metric``, ``implicit_poses`` and
    ``log_likelihood_ratio`` as the analysis was run; ``mode_volumes`` ``(n_modes, N, N, N)`` W-unit modes ``ΔF``; ``sensitivity``
    ``Σ_i ε_i² ΔF_i²`` per voxel (§4.6, finite ``ε`` only); these two are None after
    ``load(path, volumes=False)``.
    """
    eigenvalues: np.ndarray
    perturbation: np.ndarray
    relative_change: np.ndarray
    shell_frequencies: np.ndarray
    shell_profile: np.ndarray
    pose_changes: np.ndarray
    ritz_history: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    log_determinant: float
    max_degree: int
    n_images: float
    noise_variance: float
    metric: str
    implicit_poses: bool
    n_directions: int = 0
    grid_spacing_deg: float = float("nan")
    log_likelihood_ratio: float = float(np.log(20))
    group_pose_changes: np.ndarray = None
    mode_volumes: np.ndarray = None
    sensitivity: np.ndarray = None

    def save(self, path):
        """Write every field to the npz ``path`` (atomically: the whole file or none)."""
        save_fields(path, self)

    @classmethod
    def load(cls, path, volumes=True):
        """The analysis :meth:`save` wrote; ``volumes=False`` skips the map-sized fields
        (:data:`VOLUME_FIELDS`), for summaries that read only the spectrum."""
        return load_fields(cls, path, skip=() if volumes else VOLUME_FIELDS)

    @property
    def metric_name(self):
        """The metric as a summary writes it."""
        return {"riesz": "Riesz", "l2": "L2"}.get(self.metric, self.metric)

    def spectrum_lines(self):
        """The spectrum in words: poses, metric and threshold, what λ, ε and the relative
        change mean, then one line per mode."""
        lines = ["%s poses, %s metric; nearby volumes F ± εΔF at log-likelihood ratio %.4g "
                 "(%.3g times less likely than F)."
                 % ("Implicit" if self.implicit_poses else "Fixed", self.metric_name,
                    self.log_likelihood_ratio, np.exp(self.log_likelihood_ratio)),
                 "λ: Hessian eigenvalue per image (smaller: softer, less pinned down by the "
                 "data); ε: size of the nearby volumes along the unit mode ΔF; ‖εΔF‖/‖F‖: how "
                 "much they change the map."]
        for index, (value, epsilon, change, converged) in enumerate(zip(
                self.eigenvalues, self.perturbation, self.relative_change, self.converged)):
            lines.append("Mode %d: λ = %.4g, ε = %.4g, ‖εΔF‖/‖F‖ = %.2f %%%s"
                         % (index + 1, value, epsilon, 100 * change,
                            "" if converged else " (not converged)"))
        return lines

    def nearby_volume(self, reference, index, sign):
        """``F ± ε_i ΔF_i``: ``reference`` moved along mode ``index`` (from 0) by ``sign``
        (+1 or -1) times its ``ε``, where the data are ``log_likelihood_ratio`` less likely
        (§4.4); needs the mode volumes and a finite ``ε``."""
        return reference + sign * float(self.perturbation[index]) * self.mode_volumes[index]

    def write_table(self, path):
        """The eigenvalue table as text: one row per mode (eigenvalue, ε, relative change,
        residual, converged) under a header with the band, images, noise and threshold."""
        lines = ["# Hessian soft modes: 2πK = %d, %d images, noise variance %.6g, "
                 "log-likelihood ratio %.6g"
                 % (self.max_degree, round(self.n_images), self.noise_variance,
                    self.log_likelihood_ratio),
                 "# %4s %14s %14s %14s %14s %9s"
                 % ('mode', 'eigenvalue', 'epsilon', 'rel_change', 'residual', 'converged')]
        for index in range(len(self.eigenvalues)):
            lines.append("  %4d %14.6e %14.6e %14.6e %14.6e %9s"
                         % (index + 1, self.eigenvalues[index], self.perturbation[index],
                            self.relative_change[index], self.residuals[index],
                            bool(self.converged[index])))
        with open(path, "w") as table:
            table.write("\n".join(lines) + "\n")


def auto_grid_spacing(max_degree):
    """Direction spacing (degrees) for band limit ``L``: ``AUTO_SPACING_FRACTION · 180 / L``."""
    return AUTO_SPACING_FRACTION * 180.0 / max_degree


def _validate(volume, pixel_size, experiment, resolution, n_modes, iterations, noise_variance,
              metric, log_likelihood_ratio):
    volume = validate_volume(volume)
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise InvalidDataError(f"pixel_size must be positive (Å), got {pixel_size}")
    if not isinstance(experiment, ViewingExperiment):
        raise InvalidDataError("experiment must be a ViewingExperiment; build it with "
                               "experiment_from_poses or experiment_from_distribution")
    if experiment.directions.shape[0] == 0 or experiment.n_images <= 0:
        raise InvalidDataError("the experiment has no images; give particles with poses or a "
                               "positive number of images")
    if abs(experiment.pixel_size - pixel_size) > _PIXEL_TOLERANCE * pixel_size:
        raise SamplingMismatchError(
            f"the experiment's pixel size {experiment.pixel_size} Å differs from the volume's "
            f"{pixel_size} Å; resample the volume to the particles' pixel size (or build the "
            "experiment with the volume's)")
    if not (np.isfinite(resolution) and resolution >= 2 * pixel_size):
        raise InvalidDataError(f"resolution {resolution} Å is beyond Nyquist ({2 * pixel_size} Å "
                               f"at {pixel_size} Å/px); choose a resolution of at least "
                               f"{2 * pixel_size} Å")
    if not (np.isfinite(noise_variance) and noise_variance > 0):
        raise InvalidDataError(f"noise_variance must be positive, got {noise_variance}; "
                               "estimate it with estimate_noise_variance")
    if metric not in METRICS:
        raise InvalidDataError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 1 <= int(n_modes) <= int(iterations):
        raise InvalidDataError(f"need 1 <= n_modes <= iterations, got {n_modes} modes and "
                               f"{iterations} iterations; raise iterations")
    if not log_likelihood_ratio > 0:
        raise InvalidDataError(f"log_likelihood_ratio must be positive, got {log_likelihood_ratio}")
    return volume


def analyse_soft_modes(volume, pixel_size, experiment, resolution, n_modes=8, iterations=64,
                       noise_variance=1.0, implicit_poses=True, log_likelihood_ratio=np.log(20),
                       metric="riesz", backend="auto", progress=None, grid_spacing_deg="auto",
                       memory_budget=1 << 30, rng=0):
    """Softest modes of ``volume`` for ``experiment`` (module docstring).

    :param volume: ``(N, N, N)`` real map.
    :param pixel_size: Å per voxel; the experiment's images must share it.
    :param experiment: :class:`.experiment.ViewingExperiment`.
    :param resolution: Å; the shells reach ``N · pixel_size / resolution`` cycles per box
        and ``L = 2πK = ceil(π f_max)``.
    :param n_modes: soft modes returned.  :param iterations: Lanczos steps (at most).
    :param noise_variance: per-pixel variance of the images in the volume's units
        (:func:`.noise.estimate_noise_variance`).
    :param implicit_poses: poses follow the volume (reduced Hessian) or stay fixed.
    :param log_likelihood_ratio: threshold of ``ε`` (default ``log 20``).
    :param metric: ``"riesz"`` or ``"l2"`` (module docstring).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the volume transforms and the
        Hessian products (:class:`.hessian.AccumulatedHessian`).
    :param progress: None or a callable taking :class:`.progress.Progress` events.
    :param grid_spacing_deg: ``"auto"`` (:func:`auto_grid_spacing`), a spacing in degrees
        to bin the experiment's directions on, or None to use them as given.
    :param memory_budget: bytes for cached harmonics
        (:class:`.hessian.AccumulatedHessian`).
    :param rng: seed of the Lanczos start vector.
    :returns: :class:`SoftModeAnalysis`.
    """
    volume = _validate(volume, pixel_size, experiment, resolution, n_modes, iterations,
                       noise_variance, metric, log_likelihood_ratio)
    say = Reporter(progress)
    box = volume.shape[0]
    shells = ShellGrid.for_resolution(box, pixel_size, resolution)
    degree = shells.max_degree
    coefficients = SphericalTransform(shells, np.float64, backend).coefficients(volume)
    layout = RealLayout(shells)
    volume_vector = layout.to_real_vector(coefficients)
    say(f"Shells: {shells.n_shells} up to {shells.max_frequency:.2f} cycles/box "
        f"({resolution:.1f} Å), 2πK = L = {degree}, {layout.n_parameters} real parameters")

    spacing = auto_grid_spacing(degree) if grid_spacing_deg == "auto" else grid_spacing_deg
    if spacing is None:
        binned, bins = experiment, np.arange(experiment.directions.shape[0])
    else:
        binned, bins = rebin(experiment, float(spacing))
    sigma2 = box ** 2 * float(noise_variance)
    operator = AccumulatedHessian(shells, volume_vector, layout, binned, pixel_size, sigma2,
                                  memory_budget=memory_budget, backend=backend)
    say(f"Experiment: {experiment.n_images:.0f} images, {experiment.directions.shape[0]} "
        f"directions binned on {binned.directions.shape[0]} grid directions"
        + (f" ({spacing:.2f}°)" if spacing is not None else "")
        + f", {binned.n_groups} defocus group(s)")

    shell_of = operator.harmonics.shell_of_parameter
    l2_weights = shells.weights[shell_of]
    weights = l2_weights / shells.radii[shell_of] if metric == "riesz" else l2_weights
    null_space = layout.rigid_rotation_modes(coefficients) if implicit_poses else None

    def report(event):
        say(f"Lanczos step: smallest Ritz value {event.values[0]:.6g}", event.done,
            event.total, event.values)

    modes = lanczos_softest_modes(lambda v: operator.matvec(v, implicit_poses),
                                  layout.n_parameters, n_modes, iterations=iterations,
                                  null_space=null_space, metric=weights, rng=rng,
                                  progress=report)
    eigenvalues = modes.eigenvalues
    positive = eigenvalues > 0
    epsilon = np.full(eigenvalues.shape, np.inf)
    epsilon[positive] = perturbation_size(eigenvalues[positive], log_likelihood_ratio)
    reference_norm = np.sqrt(volume_vector @ (l2_weights * volume_vector))
    mode_norms = np.sqrt(np.einsum("in,n,in->i", modes.vectors, l2_weights, modes.vectors))
    relative = epsilon * mode_norms / reference_norm

    mode_volumes = np.stack([
        shells_to_volume(layout.from_real_vector(v), shells, box=box, backend=backend)
        for v in modes.vectors]).astype(np.float32)
    # Σ ε_i² ΔF_i² = 2 log LR Σ ΔF_i² / λ_i over the modes with a finite ε (§4.6).
    sensitivity = np.zeros(mode_volumes.shape[1:], dtype=np.float32)
    if positive.any():
        sensitivity[...] = 2 * log_likelihood_ratio * soft_variance(
            mode_volumes[positive].astype(np.float64), eigenvalues[positive])
    profile = np.stack([per_shell_profile(l2_weights * v ** 2, shell_of, shells.n_shells)
                        for v in modes.vectors])

    counts = experiment.counts
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), np.finfo(float).tiny)
    group_changes = np.zeros((len(eigenvalues),) + counts.shape)
    for i, vector in enumerate(modes.vectors if implicit_poses else ()):
        magnitude = np.linalg.norm(operator.pose_change(vector), axis=-1)  # (D_bin, G)
        group_changes[i] = (epsilon[i] if positive[i] else 0.0) * magnitude[bins]
    pose_changes = np.sqrt(np.sum(share[None] * group_changes ** 2, axis=2))

    history = np.full((iterations, iterations), np.nan)
    used = modes.ritz_history.shape[0]
    history[:used, :used] = modes.ritz_history
    say(f"Soft eigenvalues: {np.array2string(eigenvalues, precision=4)}; "
        f"{modes.iterations} operator applications")
    return SoftModeAnalysis(
        eigenvalues=eigenvalues, perturbation=epsilon, relative_change=relative,
        mode_volumes=mode_volumes, sensitivity=sensitivity,
        shell_frequencies=shells.radii / (box * pixel_size), shell_profile=profile,
        pose_changes=pose_changes, group_pose_changes=group_changes, ritz_history=history,
        residuals=modes.residuals,
        converged=modes.converged, log_determinant=modes.log_determinant, max_degree=degree,
        n_images=experiment.n_images, noise_variance=float(noise_variance), metric=metric,
        implicit_poses=bool(implicit_poses), n_directions=binned.directions.shape[0],
        log_likelihood_ratio=float(log_likelihood_ratio),
        grid_spacing_deg=float("nan") if spacing is None else float(spacing))


def particle_pose_changes(group_pose_changes, direction, group):
    """Each particle's largest pose change over the modes, radians.

    A large ``|Δτ_j|`` flags a particle whose alignment a barely detectable change of
    the map (``F ± ε_i ΔF_i``) would move: an untrustworthy pose (the paper's Fig. 9,
    §4.3).

    :param group_pose_changes: ``(n_modes, D, G)`` :attr:`SoftModeAnalysis.group_pose_changes`.
    :param direction, group: ``(J,)`` each particle's experiment direction and defocus group
        (:func:`.experiment.particle_assignment`).
    :returns: ``(J,)`` ``max_i |Δτ_j|`` at ``ε_i``, in radians.
    """
    changes = np.asarray(group_pose_changes, dtype=np.float64)
    direction, group = np.asarray(direction, dtype=int), np.asarray(group, dtype=int)
    if changes.ndim != 3 or changes.shape[0] == 0:
        raise ShapeError(f"group_pose_changes must be (modes, directions, groups), got "
                         f"{changes.shape}")
    if direction.shape != group.shape or direction.ndim != 1:
        raise ShapeError(f"direction and group must be two (J,) arrays, got {direction.shape} "
                         f"and {group.shape}")
    if (direction.size and (direction.min() < 0 or direction.max() >= changes.shape[1]
                            or group.min() < 0 or group.max() >= changes.shape[2])):
        raise InvalidDataError(f"particle directions or groups outside the analysis' "
                               f"{changes.shape[1]} directions and {changes.shape[2]} groups; "
                               "assign the particles with the experiment's own arguments")
    return changes[:, direction, group].max(axis=0)


@dataclass(frozen=True)
class ParticleAssignment:
    """Each particle's place in an experiment from poses, which gives its pose change.

    ``ids`` ``(J,)`` the particles' own ids (e.g. Scipion's object ids); ``direction`` and
    ``group`` ``(J,)`` their experiment direction and defocus group
    (:func:`.experiment.particle_assignment`).
    """
    ids: np.ndarray
    direction: np.ndarray
    group: np.ndarray

    @classmethod
    def from_poses(cls, ids, rotations, ctf_params=None, defocus_tolerance=1000.0):
        """The assignment of particles ``ids`` with the arguments of
        :func:`.experiment.experiment_from_poses`."""
        direction, group = particle_assignment(rotations, ctf_params, defocus_tolerance)
        return cls(np.asarray(ids), direction, group)

    def pose_changes_deg(self, analysis):
        """``(J,)`` each particle's largest pose change over the modes of ``analysis``
        (:func:`particle_pose_changes`), in degrees."""
        return np.rad2deg(particle_pose_changes(analysis.group_pose_changes, self.direction,
                                                self.group))

    def save(self, path):
        save_fields(path, self)

    @classmethod
    def load(cls, path):
        return load_fields(cls, path)


#: A particle whose pose turns by more than this (degrees) at a nearby volume has a
#: fragile alignment.
FRAGILE_POSE_CHANGE_DEG = 1.0


@dataclass(frozen=True)
class PoseChangeStatistics:
    """What a set of particle pose changes (degrees) looks like: ``median``, ``top_percent``
    (the 99th percentile), ``maximum`` and ``fragile_percent``, the percentage of particles
    above ``fragile_deg``."""
    median: float
    top_percent: float
    maximum: float
    fragile_percent: float
    fragile_deg: float

    @classmethod
    def of(cls, changes_deg, fragile_deg=FRAGILE_POSE_CHANGE_DEG):
        changes = np.asarray(changes_deg, dtype=np.float64)
        return cls(float(np.median(changes)), float(np.percentile(changes, 99)),
                   float(changes.max()), 100.0 * float(np.mean(changes > fragile_deg)),
                   float(fragile_deg))


#: Complex ``(samples, P)`` arrays alive while a chunk of harmonics is evaluated (measured).
_HARMONICS_WORK_COPIES = 8
#: Real ``(directions, Q/2, R)`` arrays of one block alive in a product (slices, weighted).
_PRODUCT_WORK_COPIES = 8
#: Copies of a map-sized complex array the volume transforms hold at once (FFT, padding).
_VOLUME_WORK_COPIES = 4
#: Bytes per mode volume while they are built: float64 volumes, their stack, the float32 copy.
_MODE_VOLUME_BYTES = 8 + 8 + 4


def analysis_memory(box, pixel_size, resolution, n_modes=8, iterations=64, n_groups=1,
                    memory_budget=1 << 30):
    """Bytes of memory :func:`analyse_soft_modes` takes at most, from its largest arrays.

    With ``L = 2πK`` the band's degree, ``D ≈ 8 L² / π`` directions of the analysis grid,
    ``Q/2 = L + 1`` ring samples, ``P = (L + 1)²`` harmonics and ``R`` shells: the cached
    harmonics (``D (Q/2) P`` doubles, which grow like ``L⁵``; beyond ``memory_budget`` a
    block of directions is evaluated anew in every product instead) and the work of
    evaluating them; the pose-derivative slices (``6 D (Q/2) R`` doubles, twice while
    they are set up); the Lanczos vectors and products (``2 · iterations · n`` doubles for
    ``n`` real parameters), the mode volumes as they are built and the volume transforms'
    work arrays (``box³`` each).  The largest of the phases that hold them at once.
    """
    shells = ShellGrid.for_resolution(box, pixel_size, resolution)
    degree = shells.max_degree
    directions = hemisphere_grid(auto_grid_spacing(degree))[0].shape[0]
    half, columns = degree + 1, (degree + 1) ** 2
    per_direction = half * columns * 8
    stored = directions * per_direction
    block = min(directions, max(1, BLOCK_BYTES // per_direction)) * per_direction
    work = _HARMONICS_WORK_COPIES * HARMONICS_BLOCK_SAMPLES * columns * 16
    if stored <= memory_budget:
        caching, harmonics, per_product = stored + work, stored, 0
    else:
        caching, harmonics, per_product = 0, 0, block + max(work, block)
    slices = 6 * directions * half * shells.n_shells * 8 + 2 * directions * n_groups * 9 * 8
    # A product's slices of one block of directions and their weighted copies.
    per_product += _PRODUCT_WORK_COPIES * block // columns * shells.n_shells
    parameters = int(np.sum((shells.degree_limits + 1) ** 2))
    lanczos = (2 * min(iterations, parameters) + n_modes) * parameters * 8
    volumes = (n_modes * _MODE_VOLUME_BYTES + _VOLUME_WORK_COPIES * 16) * box ** 3
    setup = harmonics + 2 * slices + per_product
    run = harmonics + slices + per_product + lanczos + volumes
    return int(max(caching, setup, run))


#: Bands below this 2πK say nothing about a map's modes (the authors start at 8).
MIN_USEFUL_DEGREE = 4
#: A run that needs more than this fraction of the machine's memory gets a warning.
MEMORY_FRACTION = 0.5


def analysis_warnings(box, pixel_size, resolution, n_modes=8, iterations=64,
                      available_memory=None):
    """What is wrong, though not fatal, with analysing a ``box``-voxel map of ``pixel_size``
    Å up to ``resolution`` Å: a band too coarse to say anything (``2πK`` below
    :data:`MIN_USEFUL_DEGREE`) and, given the machine's ``available_memory`` in bytes,
    a run that needs more than :data:`MEMORY_FRACTION` of it (:func:`analysis_memory`).

    :returns: messages naming the fix, empty when there is nothing to say.
    """
    degree = bandwidth(frequency_for_resolution(box, pixel_size, resolution))
    warnings = []
    if degree < MIN_USEFUL_DEGREE:
        warnings.append(f"At {resolution:g} Å the band is 2πK = {degree}, too coarse to say "
                        f"anything about the map's modes: choose a finer max resolution (2πK "
                        f"is about π × {box * pixel_size:g} Å / resolution; the authors work "
                        "at 2πK = 8 to 48).")
    if available_memory:
        memory = analysis_memory(box, pixel_size, resolution, n_modes, iterations)
        if memory > MEMORY_FRACTION * available_memory:
            warnings.append(f"At {resolution:g} Å (2πK = {degree}) the analysis needs about "
                            f"{memory / 1e9:.1f} GB of memory, more than "
                            f"{100 * MEMORY_FRACTION:.0f} % of this machine's "
                            f"{available_memory / 1e9:.1f} GB: choose a coarser max "
                            "resolution (the cached harmonics grow like (2πK)^5) or fewer "
                            "modes.")
    return warnings
