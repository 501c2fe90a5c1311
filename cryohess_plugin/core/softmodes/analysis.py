"""Soft modes of a reconstruction for an experiment: what the images barely pin down.

``docs/methods/hessian_soft_modes.md`` §1.9, §§2.5–2.7, §3 and §4 (every § below is a
section of that page).  :func:`analyse_soft_modes` takes a volume and a
:class:`.experiment.ViewingExperiment` (from particles' poses and CTFs, or from a
viewing density) and returns the softest eigenpairs of the Hessian of the negative
log-likelihood in the accumulated form of :mod:`.hessian` (the expected Hessian of the
experiment's views, counts, CTFs and noise around the given map, poses binned by viewing
direction), with everything a user looks at (§4), in a :class:`SoftModeAnalysis` that
owns its file (:meth:`SoftModeAnalysis.save`, :meth:`SoftModeAnalysis.load`,
:meth:`SoftModeAnalysis.write_table`).  Also here: each particle's pose change
(:class:`ParticleAssignment`, :class:`PoseChangeStatistics`) and what a run at a band
costs (:func:`analysis_memory`, :func:`analysis_warnings`).  The noise level it needs is
in :mod:`.noise`.

Units.  The volume's transform is the core's centred, non-unitary one
(:mod:`.fourier`), frequencies in cycles per box.  White image noise of
per-pixel variance ``s²`` has ``E|X(k)|² = N² s²`` at every integer frequency
of an ``N``-pixel image, and ``Σ_x n² = N⁻² Σ_k |X|²``, so the likelihood's
``σ²`` per unit area of the frequency plane (§1.3) is ``σ² = N² s²``, times the
noise's relative power spectrum on each shell when it is coloured; the images must
share the volume's pixel size.

Eigenvalues are of the NLL's Hessian (summed over images, ``1/σ²`` included)
in the chosen metric ``W`` on the real coefficient vector: ``"riesz"``
weights shell ``r`` by ``ρ_r = ∫ f df`` (the authors' choice, §3.1,
without their constant ``(4π)²√(π/2)``), ``"l2"`` by ``∫ f² df`` (the
real-space L2 norm of the band-limited map times ``N³``, Plancherel).  They are
solved for off a null space: the three rigid rotations (implicit poses) and the Fourier
components the views do not sample (:mod:`.sampling`), whose dimension and region are
reported instead of an ``ε``.  Pairs that do not reach the residual tolerance are
flagged and get no ``ε``.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError, SamplingMismatchError, ShapeError
from ..fourier import bandwidth, frequency_for_resolution
from ..progress import Reporter
from ..projector import validate_volume
from ..spherical import ShellGrid, SphericalTransform, shells_to_volume
from .experiment import ViewingExperiment, hemisphere_grid, particle_assignment, rebin
from ..storage import StoredFields, load_fields, save_fields
from .hessian import BLOCK_BYTES, AccumulatedHessian
from .products import COUPLING_DIRECTIONS, factored_bytes
from .layout import RealLayout
from .sampling import (NULL_THRESHOLD, POINT_BLOCK, SampledCoordinates, SamplingSpectrum,
                       sphere_grid)
from .solver import (CLUSTER_GAP, MIN_SEARCH_SPACE, ProjectedOperator, default_guard,
                     per_shell_profile, perturbation_size, soft_variance, softest_modes,
                     stochastic_log_determinant)

__all__ = ["SoftModeAnalysis", "ParticleAssignment", "PoseChangeStatistics",
           "analyse_soft_modes", "analysis_memory", "analysis_warnings", "auto_grid_spacing",
           "particle_pose_changes", "EXPERIMENT_STATEMENT"]

METRICS = ("riesz", "l2")
#: Analysis grid spacing in units of the authors' template spacing ``π / L`` (``0.5 / K``,
#: §1.9); the binning test measures the error this leaves.
AUTO_SPACING_FRACTION = 0.5
#: Pixel sizes closer than this (relative) are the same sampling.
_PIXEL_TOLERANCE = 1e-3
#: Fields of :class:`SoftModeAnalysis` as large as the map, left out by a light load.
VOLUME_FIELDS = ("mode_volumes", "sensitivity")
#: Relative residual every reported pair must reach (§3.1).
DEFAULT_TOLERANCE = 1e-3
#: Residuals the eigensolver adds per iteration (§3.1).
SOLVER_BLOCK = 8
#: Probes and Lanczos steps of the log-determinant (§3.3).
DEFAULT_LOG_DETERMINANT = (4, 30)
#: What the Hessian describes, said wherever its numbers are shown.
EXPERIMENT_STATEMENT = ("The accumulated Hessian describes this experiment (its views, image "
                        "counts, CTFs and noise) around the given map: the modes are the map "
                        "changes these images would distinguish least from it, not errors "
                        "measured in the map.")


@dataclass(frozen=True)
class SoftModeAnalysis:
    """Result of :func:`analyse_soft_modes`.

    ``eigenvalues`` ``(m,)`` of the NLL Hessian in ``metric`` (ascending Ritz values, off
    the null space); ``converged`` where the relative ``residuals`` reach ``tolerance``;
    ``clusters`` ``(m,)`` the soft subspace of each mode (equal labels: eigenvalues too
    close to tell the modes apart, one subspace; ``open_cluster``: the last subspace may
    go on beyond the modes computed); ``perturbation`` ``ε`` at ``log_likelihood_ratio``
    for W-unit modes, NaN where the pair did not converge (no bound) and ``inf`` where the
    eigenvalue is not positive; ``relative_change`` ``‖ε ΔF‖ / ‖F‖`` (real-space L2 of the
    band-limited maps, NaN likewise); ``shell_frequencies`` ``(R,)`` 1/Å; ``shell_profile``
    ``(m, R)`` each W-unit mode's L2 energy per shell; ``pose_changes`` ``(m, D)`` ``|Δτ|``
    in radians per experiment direction at ``ε_i`` (count-weighted RMS over defocus
    groups; zero for fixed poses or without a finite ``ε``); ``group_pose_changes``
    ``(m, D, G)`` the same per defocus group; ``ritz_history`` ``(iterations, n_modes)``
    the wanted Ritz values after every solver iteration; ``products`` Hessian products
    spent; ``log_determinant`` of the Hessian (metric ``W``) on the complement of the null
    space, by stochastic Lanczos quadrature, with ``log_determinant_error`` (NaN when not
    computed) over ``complement_dimension`` parameters; ``null_dimension`` the unsampled
    components (``null_per_shell`` ``(R,)``), in the region ``null_region_fraction`` of
    the directions within ``null_region_half_angle_deg`` of ``null_region_axis``, of
    ``n_parameters`` real parameters;
    ``max_degree`` ``L = 2πK``; ``n_directions`` the analysis grid's occupied directions
    and ``grid_spacing_deg`` its spacing (NaN: the experiment's own directions);
    ``n_images``, ``noise_variance`` (per pixel, white-equivalent), ``noise_power``
    ``(R,)`` the likelihood's ``σ²`` at each shell, ``metric``, ``implicit_poses``,
    ``log_likelihood_ratio`` and ``tolerance`` as the analysis was run; ``map_scale`` the
    factor that put the input map on the images' scale (the analysed map is the input
    times it; ``ε``, the mode volumes and the sensitivity are on that scale);
    ``mode_volumes`` ``(m, N, N, N)`` W-unit modes ``ΔF``; ``sensitivity``
    ``Σ_i ε_i² ΔF_i²`` per voxel over the converged modes (§4.6); these two are None after
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
    clusters: np.ndarray = None
    open_cluster: bool = False
    tolerance: float = DEFAULT_TOLERANCE
    products: int = 0
    log_determinant_error: float = float("nan")
    complement_dimension: int = 0
    null_dimension: int = 0
    n_parameters: int = 0
    null_per_shell: np.ndarray = None
    null_region_fraction: float = 0.0
    null_region_axis: np.ndarray = None
    null_region_half_angle_deg: float = 0.0
    noise_power: np.ndarray = None
    map_scale: float = 1.0
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

    def _subspaces(self):
        """``[(first, last)]`` mode indices (from 0) of each soft subspace of several modes."""
        labels = np.asarray(self.clusters if self.clusters is not None
                            else np.arange(len(self.eigenvalues)))
        spans = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            if members.size > 1:
                spans.append((int(members[0]), int(members[-1])))
        return spans

    def null_text(self):
        """The null space in words."""
        if not self.null_dimension:
            return ("Null space: none; every Fourier component in the band is sampled by "
                    "some view.")
        axis = np.asarray(self.null_region_axis)
        return ("Null space: %d of %d Fourier components (real parameters) are not sampled "
                "by these views (sampling below %.0e of the best-sampled on their shell), in "
                "%.0f %% of the directions of frequency space, within %.0f° of the axis "
                "(%.2f, %.2f, %.2f) at both ends (a missing cone). The data say nothing about "
                "them: no ε is given for them, and the modes below are W-orthogonal to them."
                % (self.null_dimension, self.n_parameters, NULL_THRESHOLD,
                   100 * self.null_region_fraction, self.null_region_half_angle_deg,
                   axis[0], axis[1], axis[2]))

    def spectrum_lines(self):
        """The spectrum in words: what the Hessian describes, poses, metric and threshold,
        the null space, what λ, ε and the relative change mean, then one line per mode
        (unconverged ones without ε) and the soft subspaces."""
        lines = [EXPERIMENT_STATEMENT,
                 "%s poses, %s metric; nearby volumes F ± εΔF at log-likelihood ratio %.4g "
                 "(%.3g times less likely than F)."
                 % ("Implicit" if self.implicit_poses else "Fixed", self.metric_name,
                    self.log_likelihood_ratio, np.exp(self.log_likelihood_ratio)),
                 self.null_text(),
                 "λ: Hessian eigenvalue (smaller: softer, less pinned down by the data); "
                 "ε: size of the nearby volumes along the unit mode ΔF; ‖εΔF‖/‖F‖: how much "
                 "they change the map. Modes converged to a relative residual of %.0e in %d "
                 "Hessian products." % (self.tolerance, self.products)]
        for index, (value, epsilon, change, residual, converged) in enumerate(zip(
                self.eigenvalues, self.perturbation, self.relative_change, self.residuals,
                self.converged)):
            if converged:
                lines.append("Mode %d: λ = %.4g, ε = %.4g, ‖εΔF‖/‖F‖ = %.2f %%"
                             % (index + 1, value, epsilon, 100 * change))
            else:
                lines.append("Mode %d: NOT CONVERGED (relative residual %.2g > %.0e): its Ritz "
                             "value %.4g is no bound and gives no ε; raise the Hessian "
                             "products." % (index + 1, residual, self.tolerance, value))
        for first, last in self._subspaces():
            lines.append("Modes %d-%d form one soft subspace (eigenvalues within %.0f %% of "
                         "each other): only the subspace is determined, not its individual "
                         "modes." % (first + 1, last + 1, 100 * CLUSTER_GAP))
        if self.open_cluster:
            lines.append("The last subspace may go on beyond mode %d: ask for more modes to "
                         "see all of it." % len(self.eigenvalues))
        if np.isfinite(self.log_determinant):
            lines.append("log det H = %.6g ± %.2g over the %d sampled parameters (stochastic "
                         "Lanczos quadrature)." % (self.log_determinant,
                                                  self.log_determinant_error,
                                                  self.complement_dimension))
        return lines

    def nearby_volume(self, reference, index, sign):
        """``F ± ε_i ΔF_i`` on the input map's scale: ``reference`` moved along mode
        ``index`` (from 0) by ``sign`` (+1 or -1) times its ``ε`` (divided by
        ``map_scale``), where the data are ``log_likelihood_ratio`` less likely (§4.4);
        needs the mode volumes and a finite ``ε``."""
        return reference + sign * float(self.perturbation[index]) / self.map_scale \
            * self.mode_volumes[index]

    def write_table(self, path):
        """The eigenvalue table as text: one row per mode (eigenvalue, ε, relative change,
        relative residual, converged, subspace) under a header with the band, images,
        noise, threshold, null space and log-determinant."""
        lines = ["# Hessian soft modes: 2πK = %d, %d images, noise variance %.6g, "
                 "log-likelihood ratio %.6g, tolerance %.0e, %d products"
                 % (self.max_degree, round(self.n_images), self.noise_variance,
                    self.log_likelihood_ratio, self.tolerance, self.products),
                 "# null space: %d unsampled components; log det over the other %d: %.6g "
                 "± %.2g" % (self.null_dimension, self.complement_dimension,
                             self.log_determinant, self.log_determinant_error),
                 "# %4s %14s %14s %14s %14s %9s %8s"
                 % ('mode', 'eigenvalue', 'epsilon', 'rel_change', 'residual', 'converged',
                    'subspace')]
        clusters = (self.clusters if self.clusters is not None
                    else np.arange(len(self.eigenvalues)))
        for index in range(len(self.eigenvalues)):
            lines.append("  %4d %14.6e %14.6e %14.6e %14.6e %9s %8d"
                         % (index + 1, self.eigenvalues[index], self.perturbation[index],
                            self.relative_change[index], self.residuals[index],
                            bool(self.converged[index]), clusters[index] + 1))
        with open(path, "w") as table:
            table.write("\n".join(lines) + "\n")


def auto_grid_spacing(max_degree):
    """Direction spacing (degrees) for band limit ``L``: ``AUTO_SPACING_FRACTION · 180 / L``."""
    return AUTO_SPACING_FRACTION * 180.0 / max_degree


def _validate(volume, pixel_size, experiment, resolution, n_modes, noise_variance, metric,
              log_likelihood_ratio, map_scale):
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
    if int(n_modes) < 1:
        raise InvalidDataError(f"need at least one mode, got {n_modes}")
    if not log_likelihood_ratio > 0:
        raise InvalidDataError(f"log_likelihood_ratio must be positive, got {log_likelihood_ratio}")
    if not (np.isfinite(map_scale) and map_scale > 0):
        raise InvalidDataError(f"map_scale must be positive, got {map_scale}; a negative "
                               "amplitude means dark particles (contrast.fit_amplitude)")
    return volume


def _noise_power(shells, noise_variance, noise_spectrum):
    """``(R,)`` the likelihood's ``σ²`` at the shell radii: ``N² s²`` times the relative
    spectrum (interpolated from its integer shells; white when None)."""
    white = shells.box ** 2 * float(noise_variance)
    if noise_spectrum is None:
        return np.full(shells.n_shells, white)
    spectrum = np.asarray(noise_spectrum, dtype=np.float64)
    known = np.flatnonzero(np.isfinite(spectrum) & (spectrum > 0))
    if spectrum.ndim != 1 or known.size < 2:
        raise InvalidDataError("the noise spectrum needs positive values on at least two "
                               "shells; estimate it with NoiseLevel.from_particles")
    return white * np.interp(shells.radii, known.astype(float), spectrum[known])


def analyse_soft_modes(volume, pixel_size, experiment, resolution, n_modes=8, max_products=None,
                       tolerance=DEFAULT_TOLERANCE, noise_variance=1.0, noise_spectrum=None,
                       implicit_poses=True, log_likelihood_ratio=np.log(20), metric="riesz",
                       backend="auto", progress=None, grid_spacing_deg="auto",
                       memory_budget=1 << 30, rng=0, null_threshold=NULL_THRESHOLD,
                       log_determinant=DEFAULT_LOG_DETERMINANT, map_scale=1.0,
                       group_scales=None, product_form="auto", solver_block=SOLVER_BLOCK):
    """Softest modes of ``volume`` for ``experiment`` (module docstring).

    :param volume: ``(N, N, N)`` real map.
    :param pixel_size: Å per voxel; the experiment's images must share it.
    :param experiment: :class:`.experiment.ViewingExperiment`.
    :param resolution: Å; the shells reach ``N · pixel_size / resolution`` cycles per box
        and ``L = 2πK = ceil(π f_max)``.
    :param n_modes: soft modes wanted (more come back when the last one's subspace goes on).
    :param max_products: budget of Hessian products of the eigensolver (default
        ``100 n_modes``); pairs short of ``tolerance`` when it is spent are flagged.
    :param tolerance: relative residual of a converged pair.
    :param noise_variance: per-pixel variance of the images (white-equivalent) on the
        images' scale (:class:`.noise.NoiseLevel`).
    :param noise_spectrum: None (white noise) or the noise's relative power per integer
        shell ``0, 1, …`` in cycles per box (:attr:`.noise.NoiseLevel.spectrum`).
    :param implicit_poses: poses follow the volume (reduced Hessian) or stay fixed.
    :param log_likelihood_ratio: threshold of ``ε`` (default ``log 20``).
    :param metric: ``"riesz"`` or ``"l2"`` (module docstring).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the volume transforms and the
        Hessian products (:class:`.hessian.AccumulatedHessian`).
    :param progress: None or a callable taking :class:`.progress.Progress` events.
    :param grid_spacing_deg: ``"auto"`` (:func:`auto_grid_spacing`), a spacing in degrees
        to bin the experiment's directions on, or None to use them as given.
    :param memory_budget: bytes for the factored products' factors, or else the cached
        harmonics (:class:`.hessian.AccumulatedHessian`).
    :param rng: seed of the eigensolver's start vectors and the log-determinant's probes.
    :param null_threshold: relative sampling below which a component is unsampled
        (:mod:`.sampling`).
    :param log_determinant: ``(probes, steps)`` of the log-determinant, or None to skip it.
    :param map_scale: the images' amplitude over the map's (:func:`.contrast.fit_amplitude`):
        the analysis runs on ``map_scale · volume``, the images' scale.
    :param group_scales: None or ``(G,)`` each defocus group's fitted amplitude over
        ``map_scale``; its CTF² is multiplied by the square.
    :param product_form: how the Hessian products are formed
        (:data:`.hessian.PRODUCT_FORMS`; the same operator to round-off).
    :param solver_block: residuals the eigensolver adds per iteration
        (:func:`.solver.softest_modes`' ``block``).
    :returns: :class:`SoftModeAnalysis`.
    """
    volume = _validate(volume, pixel_size, experiment, resolution, n_modes, noise_variance,
                       metric, log_likelihood_ratio, map_scale)
    say = Reporter(progress)
    box = volume.shape[0]
    shells = ShellGrid.for_resolution(box, pixel_size, resolution)
    degree = shells.max_degree
    coefficients = SphericalTransform(shells, np.float64, backend).coefficients(
        float(map_scale) * volume)
    layout = RealLayout(shells)
    volume_vector = layout.to_real_vector(coefficients)
    say(f"Shells: {shells.n_shells} up to {shells.max_frequency:.2f} cycles/box "
        f"({resolution:.1f} Å), 2πK = L = {degree}, {layout.n_parameters} real parameters")

    spacing = auto_grid_spacing(degree) if grid_spacing_deg == "auto" else grid_spacing_deg
    if spacing is None:
        binned, bins = experiment, np.arange(experiment.directions.shape[0])
    else:
        binned, bins = rebin(experiment, float(spacing))
    noise_power = _noise_power(shells, noise_variance, noise_spectrum)
    operator = AccumulatedHessian(shells, volume_vector, layout, binned, pixel_size, noise_power,
                                  memory_budget=memory_budget, backend=backend,
                                  group_scales=group_scales, product_form=product_form)
    say(f"Experiment: {experiment.n_images:.0f} images, {experiment.directions.shape[0]} "
        f"directions binned on {binned.directions.shape[0]} grid directions"
        + (f" ({spacing:.2f}°)" if spacing is not None else "")
        + f", {binned.n_groups} defocus group(s)")

    shell_of = operator.harmonics.shell_of_parameter
    l2_weights = shells.weights[shell_of]
    ring = shells.weights / shells.radii
    weights = ring[shell_of] if metric == "riesz" else l2_weights
    counts = binned.counts
    share = counts.sum(axis=0) / counts.sum()
    spectrum = SamplingSpectrum(operator.harmonics, binned.directions, counts.sum(axis=1),
                                null_threshold, grams=operator.sampling_grams)
    coordinates = SampledCoordinates(spectrum, weights, ring * (share @ operator.shell_weights))
    null_per_shell = spectrum.null_counts()
    region = spectrum.region()
    null_space = layout.rigid_rotation_modes(coefficients) if implicit_poses else None
    projected = ProjectedOperator(lambda x: operator.matmat(x, implicit_poses), coordinates,
                                  null_space)
    say(f"Null space: {int(null_per_shell.sum())} unsampled components"
        + (f" ({region.describe()})" if null_per_shell.sum() else "")
        + f"; {projected.dimension} sampled parameters")

    def report(event):
        say(event.message, event.done, event.total, event.values)

    modes = softest_modes(projected, n_modes, tolerance=tolerance, max_products=max_products,
                          block=solver_block, rng=rng, progress=report)
    eigenvalues, converged = modes.eigenvalues, modes.converged
    usable = converged & (eigenvalues > 0)
    epsilon = np.where(converged, np.inf, np.nan)
    epsilon[usable] = perturbation_size(eigenvalues[usable], log_likelihood_ratio)
    reference_norm = np.sqrt(volume_vector @ (l2_weights * volume_vector))
    mode_norms = np.sqrt(np.einsum("in,n,in->i", modes.vectors, l2_weights, modes.vectors))
    relative = epsilon * mode_norms / reference_norm

    mode_volumes = np.stack([
        shells_to_volume(layout.from_real_vector(v), shells, box=box, backend=backend)
        for v in modes.vectors]).astype(np.float32)
    # Σ ε_i² ΔF_i² = 2 log LR Σ ΔF_i² / λ_i over the converged modes (§4.6).
    sensitivity = np.zeros(mode_volumes.shape[1:], dtype=np.float32)
    if usable.any():
        sensitivity[...] = 2 * log_likelihood_ratio * soft_variance(
            mode_volumes[usable].astype(np.float64), eigenvalues[usable])
    profile = np.stack([per_shell_profile(l2_weights * v ** 2, shell_of, shells.n_shells)
                        for v in modes.vectors])

    counts_in = experiment.counts
    share_in = counts_in / np.maximum(counts_in.sum(axis=1, keepdims=True), np.finfo(float).tiny)
    group_changes = np.zeros((len(eigenvalues),) + counts_in.shape)
    if implicit_poses and usable.any():
        magnitudes = np.linalg.norm(operator.pose_changes(modes.vectors[usable]), axis=-1)
        group_changes[usable] = epsilon[usable, None, None] * magnitudes[:, bins]
    pose_changes = np.sqrt(np.sum(share_in[None] * group_changes ** 2, axis=2))

    determinant, determinant_error = float("nan"), float("nan")
    if log_determinant is not None:
        estimate = stochastic_log_determinant(projected, *log_determinant, rng=rng)
        determinant, determinant_error = estimate.value, estimate.standard_error
        say(f"log det H = {determinant:.6g} ± {determinant_error:.2g} over "
            f"{projected.dimension} parameters ({estimate.probes} probes, {estimate.steps} "
            "Lanczos steps)")
    say(f"Soft eigenvalues: {np.array2string(eigenvalues, precision=4)}; "
        f"{int(converged.sum())} of {len(eigenvalues)} converged in {modes.products} products")
    return SoftModeAnalysis(
        eigenvalues=eigenvalues, perturbation=epsilon, relative_change=relative,
        mode_volumes=mode_volumes, sensitivity=sensitivity,
        shell_frequencies=shells.radii / (box * pixel_size), shell_profile=profile,
        pose_changes=pose_changes, group_pose_changes=group_changes,
        ritz_history=modes.history, residuals=modes.residuals, converged=converged,
        clusters=modes.clusters, open_cluster=modes.open_cluster, tolerance=float(tolerance),
        products=int(modes.products), log_determinant=determinant,
        log_determinant_error=determinant_error, complement_dimension=int(projected.dimension),
        null_dimension=int(null_per_shell.sum()), n_parameters=int(layout.n_parameters),
        null_per_shell=null_per_shell,
        null_region_fraction=region.fraction, null_region_axis=region.axis,
        null_region_half_angle_deg=region.half_angle_deg, max_degree=degree,
        n_images=experiment.n_images, noise_variance=float(noise_variance),
        noise_power=noise_power, metric=metric, implicit_poses=bool(implicit_poses),
        n_directions=binned.directions.shape[0], log_likelihood_ratio=float(log_likelihood_ratio),
        grid_spacing_deg=float("nan") if spacing is None else float(spacing),
        map_scale=float(map_scale))


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
class ParticleAssignment(StoredFields):
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


#: Real ``(rows, k, R)`` arrays of one block of directions alive in a product (slices,
#: weighted slices, their band products).
_PRODUCT_WORK_COPIES = 6
#: Copies of a map-sized complex array the volume transforms hold at once (FFT, padding).
_VOLUME_WORK_COPIES = 4
#: Bytes per mode volume while they are built: float64 volumes, their stack, the float32 copy.
_MODE_VOLUME_BYTES = 8 + 8 + 4


def analysis_memory(box, pixel_size, resolution, n_modes=8, n_groups=1, memory_budget=1 << 30,
                    log_determinant=DEFAULT_LOG_DETERMINANT):
    """Bytes of memory :func:`analyse_soft_modes` takes at most, from its largest arrays.

    With ``L = 2πK`` the band's degree, ``D ≈ 8 L² / π`` directions of the analysis grid,
    ``Q/2 = L + 1`` ring samples, ``P = (L + 1)²`` harmonics, ``R`` shells and ``n`` real
    parameters: the cached harmonics (``D (Q/2) P`` doubles, which grow like ``L⁵``; beyond
    ``memory_budget`` a block of directions is evaluated anew in every product instead);
    the pose-derivative slices (``6 D (Q/2) R`` doubles, twice while they are set up); a
    product's work on a block of directions for the eigensolver's first block of vectors;
    the sampling operator (its sphere grid's harmonics, the density's harmonics of degree
    ``2L``, and the eigenvectors of every degree limit, kept twice); the eigensolver's
    search space and products (``2 max(6 (n_modes + guard), 160) n`` doubles), the
    log-determinant's Lanczos vectors, and, after the products, the mode volumes and the
    volume transforms' work arrays (``box³`` each).  The largest of the phases that hold
    them at once.  When the factored products' factors fit ``memory_budget``
    (:func:`.products.factored_bytes`, ``3 D n`` doubles and the per-shell matrices) they
    replace the harmonics, which are then evaluated one block at a time while the factors
    are set up, and the sampling operators' grid harmonics stay.
    """
    shells = ShellGrid.for_resolution(box, pixel_size, resolution)
    degree, radii = shells.max_degree, shells.n_shells
    directions = hemisphere_grid(auto_grid_spacing(degree))[0].shape[0]
    half, columns = degree + 1, (degree + 1) ** 2
    per_direction = half * columns * 8
    stored = directions * per_direction
    rows = min(directions, max(1, BLOCK_BYTES // per_direction)) * half
    harmonics = stored if stored <= memory_budget else 0
    recomputed = 0 if harmonics else rows * columns * 8
    slices = 6 * directions * half * radii * 8 + 2 * directions * n_groups * 9 * 8
    wanted = n_modes + default_guard(n_modes)
    product = _PRODUCT_WORK_COPIES * rows * wanted * radii * 8
    parameters = int(np.sum((shells.degree_limits + 1) ** 2))
    grid = sphere_grid(4 * degree)[0].shape[0]
    density = 2 * POINT_BLOCK * (2 * degree + 1) * (4 * degree + 1) * 16
    even = np.arange(0, degree + 1, 2)
    bases = 0
    for limit in np.unique(shells.degree_limits):
        size_even = int(np.sum(2 * even[even <= limit] + 1))
        bases += 2 * 8 * (size_even ** 2 + ((limit + 1) ** 2 - size_even) ** 2)
    sampling = grid * columns * 8 + max(density, columns ** 2 * 8 // 2 + bases)
    probes, steps = log_determinant or (0, 0)
    solver = (2 * max(6 * wanted, MIN_SEARCH_SPACE) + probes * steps) * parameters * 8
    volumes = (wanted * _MODE_VOLUME_BYTES + _VOLUME_WORK_COPIES * 16) * box ** 3
    if factored_bytes(shells, directions, n_groups) > memory_budget:
        setup = harmonics + 2 * slices + recomputed + product
        run = harmonics + slices + recomputed + max(product, volumes) + bases + solver
        return int(max(setup, harmonics + slices + sampling, run))
    # Factored products (.products.FactoredProducts): the sampling operators of the
    # groups (and the harmonics on their grid, kept), then the coupling built from the
    # pose-derivative slices with one block of harmonics evaluated at a time.
    factors = factored_bytes(shells, directions, n_groups)
    tables = grid * columns * 8
    grams = 2 * tables + max(density, n_groups * columns ** 2 * 8 // 2)
    batch = 2 * COUPLING_DIRECTIONS * columns * 3 * radii * 8
    mode_slices = 4 * rows * 3 * radii * 8
    setup = factors + tables + 2 * slices + rows * columns * 8 + batch + mode_slices
    blocks = 2 * directions * n_groups * 9 * 8
    product = 4 * wanted * (3 * directions * radii + 3 * directions * n_groups) * 8
    run = factors + tables + blocks + max(product, volumes) + bases + solver
    return int(max(grams, setup, run))


#: Bands below this 2πK say nothing about a map's modes (the authors start at 8).
MIN_USEFUL_DEGREE = 4
#: A run that needs more than this fraction of the machine's memory gets a warning.
MEMORY_FRACTION = 0.5


def analysis_warnings(box, pixel_size, resolution, n_modes=8, available_memory=None):
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
        memory = analysis_memory(box, pixel_size, resolution, n_modes)
        if memory > MEMORY_FRACTION * available_memory:
            warnings.append(f"At {resolution:g} Å (2πK = {degree}) the analysis needs about "
                            f"{memory / 1e9:.1f} GB of memory, more than "
                            f"{100 * MEMORY_FRACTION:.0f} % of this machine's "
                            f"{available_memory / 1e9:.1f} GB: choose a coarser max "
                            "resolution (the cached harmonics grow like (2πK)^5) or fewer "
                            "modes.")
    return warnings
