"""The images' scale and noise for a soft-mode analysis: fitted from particles, or given.

``docs/methods/hessian_soft_modes.md`` §1.3 (units) and §2.3 (scale, noise estimate,
offset and marginalisation; every § below is a section of that page).  Particles come on
their own scale: :class:`MapScale` fits their amplitude against CTF-modulated projections of
the map at their poses (:func:`..contrast.fit_amplitude`, per defocus group of the
experiment), which stops dark particles and particles that do not show the map, and puts
the map on the particles' scale.  The analysis then needs the noise on that scale:
:class:`NoiseLevel` holds the per-pixel variance ``s²`` and the noise's relative power per
shell, estimated from the residuals of the particles against the scaled projections
(:func:`estimate_noise_variance`, :func:`..noise.shell_noise_power`); white noise is the
special case of a flat spectrum (a given standard deviation, or an SNR for a planned
experiment, :func:`noise_variance_for_snr`).  :func:`marginal_noise` gives per-particle
noise levels.
"""
from dataclasses import dataclass

import numpy as np

from .. import rotations as rot
from ..contrast import SIGNIFICANCE, fit_amplitude
from ..ctf import ctf_stack
from ..errors import InvalidDataError, ShapeError
from ..noise import shell_noise_power, signal_variance
from ..projector import FourierSliceProjector, validate_volume
from ..rotations import validate_poses
from ..storage import StoredFields
from .experiment import experiment_from_poses, particle_assignment

#: (direction, defocus group) pairs projected to turn an SNR into a noise variance.
SNR_SAMPLE = 300


@dataclass(frozen=True)
class MapScale(StoredFields):
    """The particles' amplitude against the map: what puts the map on their scale (§2.3).

    ``map_scale`` the amplitude fitted to all particles at once (the analysed map is the
    input map times it); ``standard_error`` its standard error; ``group_scales`` ``(G,)``
    each defocus group's own amplitude over ``map_scale`` (1 for a group without
    particles in the fit, or whose own fit is within :data:`..contrast.SIGNIFICANCE`
    standard errors of zero); ``how`` a phrase for summaries.
    """
    map_scale: float
    standard_error: float
    group_scales: np.ndarray
    how: str

    @classmethod
    def unit(cls, n_groups, how="the map's own scale (no particles to fit)"):
        return cls(1.0, 0.0, np.ones(max(int(n_groups), 1)), how)

    @classmethod
    def from_particles(cls, volume, particles, n_groups, defocus_tolerance=1000.0,
                       backend="auto"):
        """The amplitude of ``particles`` (images, rotations, shifts, ctfs and pixel_size,
        as :class:`cryohess_plugin.convert.ParticleArrays` holds them) against ``volume``,
        per defocus group of :func:`.experiment.experiment_from_poses` (``n_groups`` of
        them).

        :raises contrast.PolarityError: the particles are dark against the map.
        :raises contrast.AmplitudeFitError: their amplitude is within noise of zero.
        """
        _, group = particle_assignment(particles.rotations, particles.ctfs, defocus_tolerance)
        fit = fit_amplitude(volume, particles.images, particles.rotations, particles.shifts,
                            particles.ctfs, particles.pixel_size, groups=group,
                            backend=backend).check()
        scales = np.ones(max(int(n_groups), 1))
        significant = fit.amplitude >= SIGNIFICANCE * fit.standard_error
        scales[fit.groups[significant]] = fit.amplitude[significant] / fit.amplitude_all
        return cls(fit.amplitude_all, fit.standard_error_all, scales,
                   "fitted to %d particles: amplitude %.4g ± %.2g against the map's "
                   "CTF-modulated projections (%d defocus groups, from %.3g to %.3g of it)"
                   % (len(particles.images), fit.amplitude_all, fit.standard_error_all,
                      fit.groups.size, scales.min(), scales.max()))

    def particle_amplitudes(self, particles, defocus_tolerance=1000.0):
        """``(J,)`` each particle's amplitude: ``map_scale`` times its group's scale."""
        _, group = particle_assignment(particles.rotations, particles.ctfs, defocus_tolerance)
        return self.map_scale * self.group_scales[group]


@dataclass(frozen=True)
class NoiseLevel(StoredFields):
    """The images' noise on their own scale (§2.3): the per-pixel ``variance`` (of white
    noise of the same power), ``how`` it was obtained (a phrase for summaries, e.g. "set
    from an SNR of 0.1") and its ``spectrum``, the relative power ``E|N(k)|² / (D² s²)``
    per integer shell ``0, 1, …`` of frequencies (cycles per box; NaN where no frequency
    falls), or None for white noise."""
    variance: float
    how: str
    spectrum: np.ndarray = None

    @classmethod
    def from_particles(cls, volume, particles, amplitudes=None, backend="auto",
                       marginalise=False, defocus_tolerance=1000.0):
        """The noise of ``particles`` (as :class:`cryohess_plugin.convert.ParticleArrays`
        holds them) against ``amplitudes`` ``(J,)`` times ``volume``'s projections
        (:meth:`MapScale.particle_amplitudes`; None: the map as it is).

        :returns: ``(NoiseLevel, experiment)``: with ``marginalise`` the harmonic mean of
            the particles' own variances and the experiment in which each particle counts
            by its precision (:func:`marginal_noise`); else one variance and None.  The
            spectrum is the residuals' per-shell power either way.
        """
        variances, power = estimate_noise_variance(
            volume, particles.images, particles.rotations, particles.shifts, particles.ctfs,
            particles.pixel_size, backend=backend, per_image=marginalise, amplitudes=amplitudes,
            shell_power=True)
        box = particles.images.shape[-1]
        white = float(np.mean(variances))
        spectrum = power / (box ** 2 * white)
        colour = (" (noise power from %.2f to %.2f of white noise's on the shells)"
                  % (np.nanmin(spectrum[1:]), np.nanmax(spectrum[1:])))
        if not marginalise:
            return cls(variances, "estimated from the residuals of %d particles against the "
                                  "reference%s" % (len(particles.images), colour),
                       spectrum), None
        variance, weights = marginal_noise(variances)
        experiment = experiment_from_poses(particles.rotations, ctf_params=particles.ctfs,
                                           pixel_size=particles.pixel_size,
                                           defocus_tolerance=defocus_tolerance, weights=weights)
        return cls(variance, "marginalised per particle: harmonic mean of %d particles' "
                             "variances, which span %.3g-%.3g%s"
                   % (len(variances), variances.min(), variances.max(), colour),
                   spectrum), experiment

    @classmethod
    def from_sigma(cls, sigma):
        return cls(float(sigma) ** 2, "given as a noise standard deviation of %g (white)" % sigma)

    @classmethod
    def from_snr(cls, volume, experiment, snr, backend="auto"):
        """The white noise at which the images of ``experiment`` have ``snr``
        (:func:`noise_variance_for_snr`)."""
        return cls(noise_variance_for_snr(volume, experiment, snr, backend=backend),
                   "set from an SNR of %g (white)" % snr)


def estimate_noise_variance(volume, images, rotations, shifts, ctf_params, pixel_size,
                            batch_size=256, backend="auto", per_image=False, amplitudes=None,
                            shell_power=False):
    """Per-pixel variance of ``image − a_j CTF ⊙ projection(volume, pose)`` over all particles.

    Each residual is mean-centred first (a free offset per image, §2.3).
    Projections use :class:`.projector.FourierSliceProjector` in float64.
    With ``per_image`` the result is ``(J,)``: each particle's own noise
    variance ``Σ_x r² / (dof − 1)`` with ``dof = N² − 1`` (the maximiser of
    its noise-marginalised likelihood, §2.3), for :func:`marginal_noise`.

    :param volume: ``(N, N, N)`` real map.  :param images: ``(J, N, N)`` real particles.
    :param rotations: ``(J, 3, 3)``.  :param shifts: ``(J, 2)`` core shifts in pixels, or None.
    :param ctf_params: None or ``J`` :class:`.ctf.CTFParams`.  :param pixel_size: Å.
    :param amplitudes: None or ``(J,)`` the particles' amplitudes ``a_j`` (:class:`MapScale`).
    :param shell_power: also return the residuals' power per integer shell
        (:func:`..noise.shell_noise_power`, ``N // 2 + 1`` shells): ``(variance, power)``.
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
    amplitudes = np.ones(n) if amplitudes is None else np.asarray(amplitudes, dtype=np.float64)
    if amplitudes.shape != (n,) or not np.all(np.isfinite(amplitudes)):
        raise ShapeError(f"amplitudes must be {n} finite numbers, one per image")
    projector = FourierSliceProjector(volume, dtype=np.float64, backend=backend)
    plane = projector.half_plane
    energies = np.empty(n)
    power = np.zeros(box // 2 + 1)
    for start in range(0, n, batch_size):
        where = slice(start, min(start + batch_size, n))
        ctf = (None if ctf_params is None else
               ctf_stack(list(ctf_params[where]), plane.kx, plane.ky, box, pixel_size))
        residual = (np.asarray(images[where], dtype=np.float64) - amplitudes[where, None, None]
                    * projector.project(rotations[where], shifts[where], ctf))
        if not np.all(np.isfinite(residual)):
            raise InvalidDataError("images contain NaN or infinite values; remove those particles")
        residual -= residual.mean(axis=(1, 2), keepdims=True)
        energies[where] = np.sum(residual ** 2, axis=(1, 2))
        if shell_power:
            spectra = plane.transform(residual)
            power += np.nan_to_num(shell_noise_power(spectra, plane.kx, plane.ky, box // 2 + 1)) \
                * (where.stop - where.start)
    dof = box * box - 1
    variance = energies / (dof - 1) if per_image else float(energies.sum() / (n * dof))
    if not shell_power:
        return variance
    power /= n
    power[0] = np.nan  # the mean-centred residuals hold nothing at k = 0
    return variance, power


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
