"""The noise level of a soft-mode analysis: estimated from particles, or given.

``docs/methods/hessian_soft_modes.md`` §1.3 (units) and §2.3 (estimate, offset and
marginalisation; every § below is a section of that page).  The analysis needs the
per-pixel variance ``s²`` of the images' white noise in the reference's units:
:func:`estimate_noise_variance` from the residuals of particles against projections of
the reference, :func:`marginal_noise` for per-particle noise levels, and
:func:`noise_variance_for_snr` for a planned experiment at a given SNR.
:class:`NoiseLevel` is the result a run keeps, with how it was obtained.
"""
from dataclasses import dataclass

import numpy as np

from .. import rotations as rot
from ..ctf import ctf_stack
from ..errors import InvalidDataError, ShapeError
from ..projector import FourierSliceProjector, validate_volume
from ..rotations import validate_poses
from ..noise import signal_variance
from .experiment import experiment_from_poses
from ..storage import load_fields, save_fields

#: (direction, defocus group) pairs projected to turn an SNR into a noise variance.
SNR_SAMPLE = 300


@dataclass(frozen=True)
class NoiseLevel:
    """The per-pixel noise ``variance`` of an analysis and ``how`` it was obtained (a
    phrase for summaries, e.g. "set from an SNR of 0.1")."""
    variance: float
    how: str

    def save(self, path):
        save_fields(path, self)

    @classmethod
    def load(cls, path):
        return load_fields(cls, path)

    @classmethod
    def from_particles(cls, volume, particles, backend="auto", marginalise=False,
                       defocus_tolerance=1000.0):
        """The noise of ``particles`` (images, rotations, shifts, ctfs and pixel_size, as
        :class:`cryohess_plugin.convert.ParticleArrays` holds them) against ``volume``.

        :returns: ``(NoiseLevel, experiment)``: with ``marginalise`` the harmonic mean of
            the particles' own variances and the experiment in which each particle counts
            by its precision (:func:`marginal_noise`); else one variance and None.
        """
        variances = estimate_noise_variance(
            volume, particles.images, particles.rotations, particles.shifts, particles.ctfs,
            particles.pixel_size, backend=backend, per_image=marginalise)
        if not marginalise:
            return cls(variances, "estimated from the residuals of %d particles against the "
                                  "reference" % len(particles.images)), None
        variance, weights = marginal_noise(variances)
        experiment = experiment_from_poses(particles.rotations, ctf_params=particles.ctfs,
                                           pixel_size=particles.pixel_size,
                                           defocus_tolerance=defocus_tolerance, weights=weights)
        return cls(variance, "marginalised per particle: harmonic mean of %d particles' "
                             "variances, which span %.3g-%.3g"
                   % (len(variances), variances.min(), variances.max())), experiment

    @classmethod
    def from_sigma(cls, sigma):
        return cls(float(sigma) ** 2, "given as a noise standard deviation of %g" % sigma)

    @classmethod
    def from_snr(cls, volume, experiment, snr, backend="auto"):
        """The noise at which the images of ``experiment`` have ``snr``
        (:func:`noise_variance_for_snr`)."""
        return cls(noise_variance_for_snr(volume, experiment, snr, backend=backend),
                   "set from an SNR of %g" % snr)


def estimate_noise_variance(volume, images, rotations, shifts, ctf_params, pixel_size,
                            batch_size=256, backend="auto", per_image=False):
    """Per-pixel variance of ``image − CTF ⊙ projection(volume, pose)`` over all particles.

    Each residual is mean-centred first (a free offset per image, §2.3).
    Projections use :class:`.projector.FourierSliceProjector` in float64.
    With ``per_image`` the result is ``(J,)``: each particle's own noise
    variance ``Σ_x r² / (dof − 1)`` with ``dof = N² − 1`` (the maximiser of
    its noise-marginalised likelihood, §2.3), for :func:`marginal_noise`.

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
    """Noise variance and particle weights of the noise-marginalised likelihood.

    Integrating each image's unknown ``σ`` out gives ``NLL = dof' Σ_j log ℓ_j``
    (``ℓ_j`` half the residual energy, ``dof' = (dof − 1) / 2``); its Hessian is
    ``Σ_j (dof' / ℓ_j) ∇²ℓ_j = Σ_j ∇²ℓ_j / σ̂_j²`` with ``σ̂_j²`` the
    per-image estimate of :func:`estimate_noise_variance` (``per_image=True``),
    up to a rank-one term per image whose expected size is ``2 / dof`` of it.
    So the low-temperature machinery applies with each particle weighted by
    its own precision: returns ``(σ̄², weights)`` with ``σ̄²`` the harmonic mean
    and ``weights = σ̄² / σ̂_j²`` (mean 1) for
    :func:`.experiment.experiment_from_poses` (§2.3).
    """
    variances = np.asarray(per_image_variances, dtype=np.float64)
    if variances.ndim != 1 or variances.size == 0 or not np.all(
            np.isfinite(variances) & (variances > 0)):
        raise InvalidDataError("per-image noise variances must be a non-empty vector of finite "
                               "positive numbers; estimate them with "
                               "estimate_noise_variance(..., per_image=True)")
    mean = 1.0 / np.mean(1.0 / variances)
    return float(mean), mean / variances


def noise_variance_for_snr(volume, experiment, snr, n_samples=SNR_SAMPLE, backend="auto", rng=0):
    """Per-pixel noise variance at which the images of ``experiment`` have ``snr``.

    The SNR is the mean variance over the box of CTF-modulated projections of ``volume``
    divided by the noise variance, as for simulated data
    (:func:`..noise.signal_variance`); the projections are at ``n_samples``
    (direction, defocus group) pairs drawn with the experiment's counts (seed ``rng``).

    :param volume: ``(N, N, N)`` real map.  :param experiment: :class:`.ViewingExperiment`
        with the volume's pixel size.  :param snr: positive.
    """
    volume = validate_volume(volume)
    if not (np.isfinite(snr) and snr > 0):
        raise InvalidDataError(f"the SNR must be a positive number, got {snr}")
    weights = experiment.counts / experiment.counts.sum()
    picks = np.random.default_rng(rng).choice(weights.size, size=n_samples, p=weights.ravel())
    direction, group = np.unravel_index(picks, weights.shape)
    projector = FourierSliceProjector(volume, backend=backend)
    ctfs = None
    if experiment.ctf_params:
        plane = projector.half_plane
        ctfs = ctf_stack([experiment.ctf_params[g] for g in group], plane.kx, plane.ky,
                         volume.shape[0], experiment.pixel_size)
    poses = rot.rotations_for_directions(experiment.directions[direction])
    return signal_variance(projector.project(poses, ctf=ctfs)) / snr
