"""The radial-SVD paper's landscape metrics (``docs/methods/radial_svd_alignment.md`` §2.6)
against direct computations, and the rank sweeps that feed them."""
import numpy as np
import pytest

from cryohess_plugin.core.alignment.metrics import backward_percentiles, landscape_metrics
from cryohess_plugin.core.alignment.volumes import VolumeAligner
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core import rotations
from cryohess_plugin.core.alignment.volumes import rotate_volume

from .helpers import phantom_volume


def direct_percentile(estimate, exact):
    """The paper's eq. (88) for one pair, by a loop over the rotations."""
    chosen = exact.ravel()[int(np.argmax(estimate))]
    return sum(1 for value in exact.ravel() if value <= chosen) / exact.size


@pytest.mark.parametrize("shape, angle_axes", [((3, 5, 12), 1), ((4, 6, 3, 6), 3)])
def test_metrics_equal_direct_numpy(shape, angle_axes):
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(shape)
    estimate = 0.7 * exact + 0.3 * rng.standard_normal(shape) + 2.0
    metrics = landscape_metrics(estimate, exact, angle_axes)

    difference = np.sqrt(np.sum((estimate - exact) ** 2) / np.sum(exact ** 2))
    assert metrics.relative_error == pytest.approx(difference, rel=1e-12)
    assert metrics.correlation == pytest.approx(np.corrcoef(estimate.ravel(), exact.ravel())[0, 1],
                                                rel=1e-12)
    lead = shape[:len(shape) - angle_axes]
    expected = np.array([direct_percentile(estimate[index], exact[index])
                         for index in np.ndindex(*lead)]).reshape(lead)
    np.testing.assert_allclose(metrics.percentiles, expected, rtol=0, atol=1e-15)
    assert metrics.backward_error == pytest.approx(expected.mean(), rel=1e-12)
    # Some pairs miss the exact argmax, so the test distinguishes f from 1.
    assert expected.min() < 1


def test_metrics_of_the_exact_landscape_and_a_shifted_scaled_one():
    exact = np.random.default_rng(1).standard_normal((5, 7, 10))
    same = landscape_metrics(exact, exact)
    assert (same.relative_error, same.correlation, same.backward_error) == (0.0, 1.0, 1.0)
    # Dropping a constant (the l = 0 / q = 0 term) and rescaling: large error, same ranking.
    moved = landscape_metrics(0.2 * exact - 5.0, exact)
    assert moved.relative_error > 1
    assert moved.correlation == pytest.approx(1.0, abs=1e-12)
    assert moved.backward_error == 1.0
    # The compressed argmax at the exact minimum gives the smallest percentile.
    assert backward_percentiles(-exact[:1, :1], exact[:1, :1])[0, 0] == pytest.approx(1 / 10)


def test_bad_landscapes_raise_typed_errors():
    exact = np.ones((2, 3, 4))
    with pytest.raises(ShapeError, match="differ in shape"):
        landscape_metrics(np.ones((2, 3, 5)), exact)
    with pytest.raises(ShapeError, match="pair axis"):
        landscape_metrics(np.ones(4), np.ones(4))
    bad = exact.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        landscape_metrics(bad, exact)
    with pytest.raises(InvalidDataError, match="all zero"):
        landscape_metrics(exact, np.zeros_like(exact))


@pytest.fixture(scope="module")
def volume_pair():
    reference = phantom_volume(24, 4.0)
    rotation = rotations.random_rotations(1, np.random.default_rng(2))[0]
    return reference, rotate_volume(reference, rotation)


def test_rank_sweep_aligner_is_the_aligner_at_those_ranks(volume_pair):
    reference, volume = volume_pair
    aligner = VolumeAligner(reference, backend="cpu")
    shells = aligner.shells
    exact = aligner.landscape(volume, full_rank=True)[3]
    full = aligner.with_ranks(shells.n_shells, shells.max_degree + 1)
    assert full.ranks == (shells.n_shells, shells.max_degree + 1)
    np.testing.assert_allclose(full.landscape(volume)[3], exact, rtol=0,
                               atol=1e-10 * np.abs(exact).max())
    swept = aligner.with_ranks(2, 3)
    built = VolumeAligner(reference, radial_rank=2, degree_rank=3, backend="cpu")
    assert swept.ranks == built.ranks == (2, 3) and swept.band == built.band
    np.testing.assert_allclose(swept.landscape(volume)[3], built.landscape(volume)[3], rtol=0,
                               atol=1e-12 * np.abs(exact).max())
    assert aligner.ranks != (2, 3)  # the sweep leaves the original aligner alone
    # The paper's Fig. 11 shape: dropping the l = 0 term makes the Frobenius error large
    # while the correlation and the backward error stay high.
    metrics = landscape_metrics(swept.landscape(volume)[3][None], exact[None], angle_axes=3)
    assert metrics.relative_error > 0.3
    assert metrics.correlation > 0.8
    assert metrics.backward_error > 0.99
    with pytest.raises(InvalidDataError, match="radial rank"):
        aligner.with_ranks(shells.n_shells + 1, 2)
