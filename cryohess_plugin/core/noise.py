"""Noise and SNR conventions: how a noise level is stated and turned into a variance.

* **SNR** = mean over images of the variance of the clean, CTF-modulated image
  divided by the per-pixel variance of the noise.  Stated over the whole box (the
  default) or **inside a band** ``0 < |k| <= f`` (``max_frequency`` in cycles per
  box): both images are then band-passed to the band first.  The in-band SNR is the
  one an alignment or a reconstruction up to ``f`` sees; for a particle that fills a
  small part of the box it is much higher than the whole-box SNR (``docs/conventions.md``,
  "Noise and SNR").
* **Coloured noise** has a power spectrum ``S(|k|)`` (relative, a function of the
  frequency in cycles per box), normalised so that ``sigma`` stays the per-pixel
  standard deviation of the noise.
* **Per-shell noise power**: ``E|N(k)|²`` per integer shell of the non-unitary
  transform; white noise of per-pixel variance ``s²`` in a ``D``-pixel image has
  ``D² s²`` on every shell.
"""
import numpy as np
import scipy.fft

from . import fourier
from .errors import InvalidDataError, ShapeError


def _radius(box):
    """``|k|`` in cycles per box at the :func:`.fourier.real_filter_frequencies` layout."""
    ky, kx = fourier.real_filter_frequencies(box, box)
    return np.hypot(ky, kx) * box


def _band(box, max_frequency):
    """Mask of the band ``0 < |k| <= max_frequency`` (all ``k != 0`` when None)."""
    radius = _radius(box)
    return (radius > 0) & (radius <= (np.inf if max_frequency is None else max_frequency))


def _relative_power(box, spectrum):
    """Noise power at every frequency of the rfft layout, normalised to mean 1 over the
    full ``box x box`` spectrum (so the per-pixel variance stays ``sigma²``)."""
    if spectrum is None:
        return np.ones((box, box // 2 + 1))
    power = np.broadcast_to(np.asarray(spectrum(_radius(box)), dtype=np.float64),
                            (box, box // 2 + 1))
    if not (np.all(np.isfinite(power)) and np.all(power >= 0) and power.max() > 0):
        raise InvalidDataError("the noise spectrum must be finite, non-negative and not zero")
    # The rfft layout holds columns 1 .. (W-1)/2 once for two frequencies (k and -k).
    multiplicity = np.full(box // 2 + 1, 2.0)
    multiplicity[0] = 1.0
    if box % 2 == 0:
        multiplicity[-1] = 1.0
    return power * (box * box / np.sum(power * multiplicity[None, :]))


def signal_variance(clean_images, max_frequency=None):
    """Mean over images of the per-image variance, ``mean_i var(c_i)``, over the whole box
    or (``max_frequency`` in cycles per box) of the images band-passed to ``0 < |k| <= f``.

    :param clean_images: ``(n, box, box)`` (or ``(box, box)``) clean images.
    """
    clean = np.asarray(clean_images, dtype=np.float64)
    clean = clean.reshape((-1,) + clean.shape[-2:])
    if max_frequency is None:
        return float(np.mean(np.var(clean, axis=(-2, -1))))
    box = clean.shape[-1]
    if clean.shape[-2] != box:
        raise ShapeError(f"an in-band SNR needs square images, got {clean.shape[-2:]}")
    band = fourier.filter_real(clean, _band(box, max_frequency))
    return float(np.mean(np.mean(band ** 2, axis=(-2, -1))))


def noise_fraction_in_band(box, max_frequency=None, spectrum=None):
    """Share of the noise's per-pixel variance inside the band ``0 < |k| <= f``."""
    if max_frequency is None:
        return 1.0
    power = _relative_power(box, spectrum)
    band = _band(box, max_frequency)
    multiplicity = np.full(box // 2 + 1, 2.0)
    multiplicity[0] = 1.0
    if box % 2 == 0:
        multiplicity[-1] = 1.0
    return float(np.sum((power * multiplicity[None, :])[band]) / (box * box))


def noise_sigma_for_snr(clean_images, snr, max_frequency=None, spectrum=None):
    """Per-pixel standard deviation of the noise that gives ``snr``.

    :param clean_images: ``(n, box, box)`` clean (CTF-modulated) images.
    :param snr: requested SNR, positive.
    :param max_frequency: state the SNR inside ``0 < |k| <= f`` (cycles per box);
        None: over the whole box, ``sigma = sqrt(mean_i var(c_i) / snr)``.
    :param spectrum: relative noise power ``S(|k|)`` (cycles per box), None for white.
    """
    if not (np.isfinite(snr) and snr > 0):
        raise InvalidDataError(f"SNR must be a positive finite number, got {snr}")
    box = np.shape(clean_images)[-1]
    fraction = noise_fraction_in_band(box, max_frequency, spectrum)
    return float(np.sqrt(signal_variance(clean_images, max_frequency) / (snr * fraction)))


def snr_in_band(clean_images, sigma, max_frequency=None, spectrum=None):
    """The SNR of noise of per-pixel standard deviation ``sigma`` on these images, over
    the whole box or inside a band (the inverse of :func:`noise_sigma_for_snr`)."""
    box = np.shape(clean_images)[-1]
    fraction = noise_fraction_in_band(box, max_frequency, spectrum)
    return signal_variance(clean_images, max_frequency) / (float(sigma) ** 2 * fraction)


def noise_images(rng, shape, sigma, spectrum=None, dtype=np.float32):
    """Gaussian noise images ``shape = (..., box, box)`` of per-pixel standard deviation
    ``sigma``, white or with the relative power spectrum ``spectrum(|k|)``."""
    rng = np.random.default_rng(rng)
    box = shape[-1]
    white = rng.standard_normal(shape, dtype=np.float32 if dtype == np.float32 else np.float64)
    if spectrum is None:
        return (white * sigma).astype(dtype, copy=False)
    shaped = scipy.fft.irfft2(scipy.fft.rfft2(white, workers=fourier.fft_workers())
                              * np.sqrt(_relative_power(box, spectrum)), s=shape[-2:],
                              workers=fourier.fft_workers())
    return (shaped * sigma).astype(dtype, copy=False)


def shell_noise_power(residual_spectra, kx, ky, n_shells, extra_power=None):
    """Per integer shell, the mean of ``|R(k)|²`` over residual spectra (the noise power
    ``E|N(k)|²`` of the non-unitary transform; ``D² s²`` everywhere for white noise).

    :param residual_spectra: ``(n, m)`` complex residuals (data minus model) at the
        frequencies ``(kx, ky)`` ``(m,)`` in cycles per box (e.g. a half plane).
    :param n_shells: shells ``0 .. n_shells - 1``; shells without points get NaN.
    :param extra_power: ``(n, m)`` power added to each ``|R(k)|²``, or None: e.g. the
        variance an uncertain model adds, for the *expected* residual power under a
        posterior.
    """
    residual_spectra = np.asarray(residual_spectra)
    if residual_spectra.ndim != 2 or residual_spectra.shape[1] != np.size(kx):
        raise ShapeError(f"residual spectra must be (n, {np.size(kx)}), got "
                         f"{residual_spectra.shape}")
    if extra_power is not None and np.shape(extra_power) != residual_spectra.shape:
        raise ShapeError(f"extra power must have the residuals' shape "
                         f"{residual_spectra.shape}, got {np.shape(extra_power)}")
    shells = np.rint(np.hypot(kx, ky)).astype(np.int64)
    inside = shells < n_shells
    power = np.abs(residual_spectra[:, inside]) ** 2
    if extra_power is not None:
        power = power + np.asarray(extra_power)[:, inside]
    power = np.mean(power, axis=0)
    sums = np.bincount(shells[inside], power, n_shells)
    counts = np.bincount(shells[inside], minlength=n_shells)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
