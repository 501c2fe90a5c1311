"""Noise and SNR conventions (core/noise.py): in-band SNR, coloured noise, shell power."""
import numpy as np
import pytest

from cryohess_plugin.core import fourier
from cryohess_plugin.core.noise import (noise_fraction_in_band, noise_images,
                                        noise_sigma_for_snr, shell_noise_power,
                                        signal_variance, snr_in_band)

from .helpers import gaussian_blobs

BOX = 48


def blob_images(count=20):
    rng = np.random.default_rng(0)
    return np.stack([gaussian_blobs(BOX, rng.uniform(-6, 6, (4, 2)), rng.uniform(2, 4, 4),
                                    np.ones(4)) for _ in range(count)])


def count_in_band(box, band):
    k = fourier.frequencies(box)
    radius = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    return np.count_nonzero((radius > 0) & (radius <= band))


def test_whole_box_and_band_definitions_agree_where_they_should():
    images = blob_images()
    assert signal_variance(images, max_frequency=BOX) == pytest.approx(
        signal_variance(images), rel=1e-12)
    assert noise_fraction_in_band(BOX, 10.0) == pytest.approx(count_in_band(BOX, 10.0) / BOX ** 2,
                                                              rel=1e-12)
    assert noise_sigma_for_snr(images, 0.1) == pytest.approx(
        np.sqrt(np.mean(np.var(images, axis=(1, 2))) / 0.1), rel=1e-12)


def test_noise_at_an_in_band_snr_has_that_snr_in_the_band():
    """Measured on drawn noise band-passed by a direct FFT mask (not the module's)."""
    images = blob_images()
    band = 8.0
    sigma = noise_sigma_for_snr(images, 0.1, max_frequency=band)
    noise = noise_images(1, (400, BOX, BOX), sigma, dtype=np.float64)
    k = fourier.frequencies(BOX)
    radius = np.fft.ifftshift(np.hypot(*np.meshgrid(k, k, indexing="ij")))
    mask = (radius > 0) & (radius <= band)
    passed = np.fft.ifft2(np.fft.fft2(noise) * mask).real
    clean = np.fft.ifft2(np.fft.fft2(images) * mask).real
    measured = np.mean(clean ** 2) / np.mean(passed ** 2)
    assert measured == pytest.approx(0.1, rel=0.03)
    assert snr_in_band(images, sigma, band) == pytest.approx(0.1, rel=1e-12)
    # The whole-box SNR of the same noise is far lower: the blobs fill little of the box.
    assert snr_in_band(images, sigma) < 0.5 * 0.1


def falling_spectrum(k):
    return 1.0 / (1.0 + (k / 6.0) ** 2)


def test_coloured_noise_follows_its_spectrum_and_keeps_sigma():
    spectrum = falling_spectrum
    noise = noise_images(2, (300, BOX, BOX), 1.5, spectrum, dtype=np.float64)
    assert np.var(noise) == pytest.approx(1.5 ** 2, rel=0.02)
    power = fourier.shell_average(np.mean(np.abs(fourier.centred_fftn(noise, axes=(1, 2))) ** 2,
                                          axis=0))
    shells = np.arange(power.size)
    ratio = power[1:BOX // 2] / spectrum(shells[1:BOX // 2])
    assert np.std(ratio) / np.mean(ratio) < 0.05


def test_shell_noise_power_of_white_noise_is_box_squared_sigma_squared():
    noise = noise_images(3, (200, BOX, BOX), 0.7, dtype=np.float64)
    plane = fourier.HalfPlane.disc(BOX)
    power = shell_noise_power(plane.transform(noise), plane.kx, plane.ky, BOX // 2)
    np.testing.assert_allclose(power[1:], BOX ** 2 * 0.7 ** 2, rtol=0.1)


def test_simulated_particles_have_the_requested_in_band_snr():
    from cryohess_plugin.core.synthetic import simulate_particles
    from .helpers import phantom_volume
    volume = phantom_volume(BOX, 3.0, n_atoms=300)
    sim = simulate_particles(volume, 60, BOX, 3.0, rng=4, snr=0.1, snr_band=10.0,
                             noise_spectrum=falling_spectrum, backend="cpu")
    noise = sim.images - sim.clean_images
    assert sim.snr_band == 10.0
    assert np.var(noise) == pytest.approx(sim.noise_sigma ** 2, rel=0.02)
    assert snr_in_band(sim.clean_images, sim.noise_sigma, 10.0, falling_spectrum) == \
        pytest.approx(0.1, rel=1e-6)
