"""Soft modes of a reconstruction for an experiment: what the images barely pin down (issue 4).

Method notes §§1.9, 2.5-2.7, 3, 4.  :func:`analyse_soft_modes` takes a
volume and a :class:`.soft_mode_experiment.ViewingExperiment` (from
particles' poses and CTFs, or from a viewing density) and returns the
smallest eigenpairs of the Hessian of the negative log-likelihood in the
accumulated form of :mod:`.soft_mode_experiment` (expected Hessian of
noise-free templates, poses binned by viewing direction), with everything
a user looks at (notes §4).

Units.  The volume's transform is the core's centred, non-unitary one
(:mod:`.fourier`), frequencies in cycles per box.  White image noise of
per-pixel variance ``s²`` has ``E|X(k)|² = N² s²`` at every integer frequency
of an ``N``-pixel image, and ``Σ_x n² = N⁻² Σ_k |X|²``, so the likelihood's
``σ²`` per unit area of the frequency plane (:mod:`.soft_modes`) is
``σ² = N² s²``; the images must share the volume's pixel size.

Eigenvalues are of the NLL's Hessian (summed over images, ``1/σ²`` included)
in the chosen metric ``W`` on the real coefficient vector: ``"riesz"``
weights shell ``r`` by ``ρ_r = ∫ f df`` (the authors' choice, notes §3.1,
without their constant ``(4π)²√(π/2)``), ``"l2"`` by ``∫ f² df`` (the
real-space L2 norm of the band-limited map times ``N³``, Plancherel).  They
are Ritz values of a fixed-length Lanczos run (upper bounds of the true
smallest eigenvalues; ``residuals`` says how far each is from converged).
With implicit poses the three rigid rotations (exact null modes) are
projected out.
"""
from dataclasses import dataclass

import numpy as np

from ..ctf import ctf_stack
from ..errors import InvalidDataError, SamplingMismatchError, ShapeError
from ..progress import Reporter
from ..projector import FourierSliceProjector, validate_volume
from .hessian import (AccumulatedHessian, ViewingExperiment, experiment_from_distribution,
                      experiment_from_poses, particle_assignment, rebin)
from .solver import (lanczos_softest_modes, per_shell_profile, perturbation_size,
                     soft_variance)
from .layout import RealLayout
from ..rotations import validate_poses
from ..spherical import ShellGrid, SphericalTransform, shells_to_volume

__all__ = ["ViewingExperiment", "SoftModeAnalysis", "analyse_soft_modes", "auto_grid_spacing",
           "estimate_noise_variance", "experiment_from_distribution", "experiment_from_poses",
           "marginal_noise", "particle_assignment", "particle_pose_changes"]

METRICS = ("riesz", "l2")
#: Analysis grid spacing in units of the notes' template spacing ``π / L`` (``0.5 / K``);
#: the binning test measures the error this leaves.
AUTO_SPACING_FRACTION = 0.5
#: Pixel sizes closer than this (relative) are the same sampling.
_PIXEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SoftModeAnalysis:
    """Result of :func:`analyse_soft_modes`.

    ``eigenvalues`` ``(n_modes,)`` of the NLL Hessian in ``metric`` (ascending Ritz values);
    ``perturbation`` ``ε`` at ``log_likelihood_ratio`` for W-unit modes (``inf`` where
    the eigenvalue is not positive); ``relative_change`` ``‖ε ΔF‖ / ‖F‖`` (real-space L2
    of the band-limited maps); ``mode_volumes`` ``(n_modes, N, N, N)`` W-unit modes ``ΔF``;
    ``sensitivity`` ``Σ_i ε_i² ΔF_i²`` per voxel (notes §4.6, finite ``ε`` only);
    ``shell_frequencies`` ``(R,)`` 1/Å; ``shell_profile`` ``(n_modes, R)`` each W-unit mode's
    L2 energy per shell; ``pose_changes`` ``(n_modes, D)`` ``|Δτ|`` in radians per experiment
    direction at ``ε_i`` (the rotation of that direction's images when the map becomes
    ``F + ε_i ΔF_i``, count-weighted RMS over defocus groups; zero for fixed poses or an
    infinite ``ε``); ``group_pose_changes`` ``(n_modes, D, G)`` the same per defocus group
    (a group's images in a direction all turn by that amount; groups without images in a
    direction have the value they would have); ``ritz_history``
    ``(iterations, iterations)`` NaN-padded; ``residuals``, ``converged``,
    ``log_determinant`` from :func:`.soft_mode_solver.lanczos_softest_modes`;
    ``max_degree`` ``L = 2πK``; ``n_directions`` the analysis grid's occupied directions.
    """
    eigenvalues: np.ndarray
    perturbation: np.ndarray
    relative_change: np.ndarray
    mode_volumes: np.ndarray
    sensitivity: np.ndarray
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
    group_pose_changes: np.ndarray = None


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
    :param experiment: :class:`.soft_mode_experiment.ViewingExperiment`.
    :param resolution: Å; the shells reach ``N · pixel_size / resolution`` cycles per box
        and ``L = 2πK = ceil(π f_max)``.
    :param n_modes: soft modes returned.  :param iterations: Lanczos steps (at most).
    :param noise_variance: per-pixel variance of the images in the volume's units
        (:func:`estimate_noise_variance`).
    :param implicit_poses: poses follow the volume (reduced Hessian) or stay fixed.
    :param log_likelihood_ratio: threshold of ``ε`` (default ``log 20``).
    :param metric: ``"riesz"`` or ``"l2"`` (module docstring).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the volume transforms and the
        Hessian products (:class:`.soft_mode_experiment.AccumulatedHessian`).
    :param progress: None or a callable taking :class:`.progress.Progress` events.
    :param grid_spacing_deg: ``"auto"`` (:func:`auto_grid_spacing`), a spacing in degrees
        to bin the experiment's directions on, or None to use them as given.
    :param memory_budget: bytes for cached harmonics
        (:class:`.soft_mode_experiment.AccumulatedHessian`).
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
    # Σ ε_i² ΔF_i² = 2 log LR Σ ΔF_i² / λ_i over the modes with a finite ε (notes §4.6).
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
        grid_spacing_deg=float("nan") if spacing is None else float(spacing))


def particle_pose_changes(group_pose_changes, direction, group):
    """Each particle's largest pose change over the modes, radians (notes §4 item 3).

    A large ``|Δτ_j|`` flags a particle whose alignment a barely detectable change of
    the map (``F ± ε_i ΔF_i``) would move: an untrustworthy pose (the paper's Fig. 9).

    :param group_pose_changes: ``(n_modes, D, G)`` :attr:`SoftModeAnalysis.group_pose_changes`.
    :param direction, group: ``(J,)`` each particle's experiment direction and defocus group
        (:func:`.soft_mode_experiment.particle_assignment`).
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


def estimate_noise_variance(volume, images, rotations, shifts, ctf_params, pixel_size,
                            batch_size=256, backend="auto", per_image=False):
    """Per-pixel variance of ``image − CTF ⊙ projection(volume, pose)`` over all particles.

    Each residual is mean-centred first (notes §2.3: a free offset per image).
    Projections use :class:`.projector.FourierSliceProjector` in float64.
    With ``per_image`` the result is ``(J,)``: each particle's own noise
    variance ``Σ_x r² / (dof − 1)`` with ``dof = N² − 1`` (the maximiser of
    its noise-marginalised likelihood, notes §2.3), for :func:`marginal_noise`.

    :param volume: ``(N, N, N)`` real map.  :param images: ``(J, N, N)`` real particles.
    :param rotations: ``(J, 3, 3)``.  :param shifts: ``(J, 2)`` core shifts in pixels, or None.
    :param ctf_params: None or ``J`` :class:`.ctf.CTFParams`.  :param pixel_size: Å.
    """
    volume = validate_volume(volume)
    images = np.asarray(images)
    box = volume.shape[0]
    if images.ndim != 3 or images.shape[1:] != (box, box) or images.shape[0] == 0:
        raise ShapeError(f"images must be a non-empty (J, {box}, {box}) stack matching the "
                         f"volume's box, got {images.shape}; resample the particles or the volume")
    n = images.shape[0]
    rotations, shifts = validate_poses(rotations, shifts, count=n)
    if ctf_params is not None and len(ctf_params) != n:
        raise ShapeError(f"{len(ctf_params)} CTFs for {n} images; give one CTF per image")
    projector = FourierSliceProjector(volume, dtype=np.float64, backend=backend)
    plane = projector.half_plane
    energies = np.empty(n)
    for start in range(0, n, batch_size):
        where = slice(start, min(start + batch_size, n))
        ctf = (None if ctf_params is None else
               ctf_stack(list(ctf_params[where]), plane.kx, plane.ky, box, pixel_size))
        residual = (np.asarray(images[where], dtype=np.float64)
                    - projector.project(rotations[where], shifts[where], ctf))
        if not np.all(np.isfinite(residual)):
            raise InvalidDataError("images contain NaN or infinite values; remove those particles")
        residual -= residual.mean(axis=(1, 2), keepdims=True)
        energies[where] = np.sum(residual ** 2, axis=(1, 2))
    dof = box * box - 1
    if per_image:
        return energies / (dof - 1)
    return float(energies.sum() / (n * dof))


def marginal_noise(per_image_variances):
    """Noise variance and particle weights of the noise-marginalised likelihood (notes §2.3).

    Integrating each image's unknown ``σ`` out gives ``NLL = dof' Σ_j log ℓ_j``
    (``ℓ_j`` half the residual energy, ``dof' = (dof − 1) / 2``); its Hessian is
    ``Σ_j (dof' / ℓ_j) ∇²ℓ_j = Σ_j ∇²ℓ_j / σ̂_j²`` with ``σ̂_j²`` the
    per-image estimate of :func:`estimate_noise_variance` (``per_image=True``),
    up to a rank-one term per image whose expected size is ``2 / dof`` of it.
    So the low-temperature machinery applies with each particle weighted by
    its own precision: returns ``(σ̄², weights)`` with ``σ̄²`` the harmonic mean
    and ``weights = σ̄² / σ̂_j²`` (mean 1) for
    :func:`.soft_mode_experiment.experiment_from_poses`.
    """
    variances = np.asarray(per_image_variances, dtype=np.float64)
    if variances.ndim != 1 or variances.size == 0 or not np.all(
            np.isfinite(variances) & (variances > 0)):
        raise InvalidDataError("per-image noise variances must be a non-empty vector of finite "
                               "positive numbers; estimate them with "
                               "estimate_noise_variance(..., per_image=True)")
    mean = 1.0 / np.mean(1.0 / variances)
    return float(mean), mean / variances
