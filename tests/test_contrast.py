"""Polarity and scale of particles against a map (core/contrast.py).

The particles are analytic projections of Gaussian atoms (independent of the
Fourier-slice projector the fit uses), white with Scipion's CTF.
"""
import numpy as np
import pytest

from cryohess_plugin.core.contrast import (AmplitudeFitError, PolarityError, fit_amplitude,
                                           polarity_from_scores)
from cryohess_plugin.core.synthetic import gaussian_atom_volume, simulate_particles

from .helpers import phantom_model

BOX, PIXEL = 32, 3.0


@pytest.fixture(scope="module")
def data():
    model = phantom_model(BOX, PIXEL, n_atoms=400)
    sim = simulate_particles(model, 120, BOX, PIXEL, rng=2, shift_sigma=1.5, n_groups=3,
                             astigmatism=800.0, snr=0.5, backend="cpu")
    return gaussian_atom_volume(model, BOX, PIXEL), sim


def fit(volume, sim, images=None, **options):
    return fit_amplitude(volume, sim.images if images is None else images, sim.rotations,
                         sim.shifts, sim.ctf_params, PIXEL, groups=sim.group_ids,
                         backend="cpu", **options)


def test_white_particles_fit_the_map_with_amplitude_one(data):
    volume, sim = data
    result = fit(volume, sim).check()
    assert result.amplitude_all == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(result.amplitude, 1.0, atol=0.06)
    assert list(result.counts) == [40, 40, 40] and result.z_score > 50
    # The standard error describes the scatter of the group amplitudes.
    assert np.all(np.abs(result.amplitude - 1.0) < 5 * result.standard_error + 0.03)


def test_the_fitted_amplitude_follows_the_scale_of_the_map_and_the_particles(data):
    volume, sim = data
    assert fit(3 * volume, sim).amplitude_all == pytest.approx(
        fit(volume, sim).amplitude_all / 3, rel=1e-10)
    assert fit(volume, sim, images=2.5 * sim.images).amplitude_all == pytest.approx(
        2.5 * fit(volume, sim).amplitude_all, rel=1e-6)


def test_dark_particles_are_refused_with_the_fix(data):
    volume, sim = data
    result = fit(volume, sim, images=-sim.images)
    assert result.amplitude_all == pytest.approx(-1.0, abs=0.03)
    with pytest.raises(PolarityError, match="look dark against this map.*invert their contrast"):
        result.check()


def test_particles_without_the_map_are_not_significant(data):
    volume, sim = data
    noise = np.random.default_rng(5).standard_normal(sim.images.shape)
    with pytest.raises(AmplitudeFitError, match="within noise of zero"):
        fit(volume, sim, images=noise).check()


def test_polarity_from_scores():
    rng = np.random.default_rng(1)
    better = rng.normal(1.0, 0.3, 200)
    worse = better - rng.normal(0.2, 0.3, 200)
    assert polarity_from_scores(better, worse).check().z_score > 5
    with pytest.raises(PolarityError, match="negated images match them better"):
        polarity_from_scores(worse, better).check()
