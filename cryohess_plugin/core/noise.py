"""Noise and SNR conventions: how a noise level is stated and turned into a variance.

* SNR = mean over images of the variance of the clean, CTF-modulated image over the
  whole box, divided by the per-pixel variance of the noise
  (``docs/conventions.md``, "Noise and SNR").
"""
import numpy as np

from .errors import InvalidDataError


def signal_variance(clean_images):
    """Mean over images of the per-image variance over all pixels, ``mean_i var(c_i)``.

    :param clean_images: ``(n, box, box)`` (or ``(box, box)``) clean images.
    """
    clean = np.asarray(clean_images, dtype=np.float64)
    return float(np.mean(np.var(clean.reshape((-1,) + clean.shape[-2:]), axis=(-2, -1))))


def noise_sigma_for_snr(clean_images, snr):
    """Standard deviation of white noise giving ``SNR = mean_i var(c_i) / sigma^2``.

    :param clean_images: ``(n, box, box)`` clean (CTF-modulated) images.
    :param snr: requested SNR, positive.
    :returns: ``sigma = sqrt(mean_i var(c_i) / snr)``.
    """
    if not (np.isfinite(snr) and snr > 0):
        raise InvalidDataError(f"SNR must be a positive finite number, got {snr}")
    return float(np.sqrt(signal_variance(clean_images) / snr))
