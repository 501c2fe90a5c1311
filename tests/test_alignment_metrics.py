"""The radial-SVD paper's landscape metrics (``docs/methods/radial_svd_alignment.md`` §2.6)
against direct computations, and the rank sweeps that feed them."""
import numpy as np
import pytest

from cryohess_plugin.core import rotations
from cryohess_plugin.core.alignment.metrics import (backward_percentiles, image_rank_metrics,
                                                     landscape_metrics, volume_rank_metrics)
from cryohess_plugin.core.alignment.radial_svd import RadialSVDAligner
from cryohess_plugin.core.alignment.volumes import VolumeAligner, rotate_volume
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.polar import PolarGrid, polar_transform

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
    assert same.relative_error == 0.0 and same.backward_error == 1.0
    assert same.correlation == pytest.approx(1.0, abs=1e-12)
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


def test_volume_rank_sweep_is_the_metrics_of_each_rank(volume_pair):
    reference, volume = volume_pair
    aligner = VolumeAligner(reference, backend="cpu")
    full = aligner.shells.max_degree + 1
    low, top = volume_rank_metrics(aligner, volume[None], [2, full + 5])
    exact = aligner.landscape(volume, full_rank=True)[3][None]
    direct = landscape_metrics(aligner.with_ranks(2, 2).landscape(volume)[3][None], exact,
                               angle_axes=3)
    assert low.relative_error == pytest.approx(direct.relative_error, rel=1e-12)
    assert low.correlation == pytest.approx(direct.correlation, rel=1e-12)
    assert low.backward_error == direct.backward_error
    # A rank beyond both full ranks is capped at them: the unreduced landscape itself.
    assert top.relative_error < 1e-10 and top.backward_error == 1.0


def test_image_rank_sweep_is_the_metrics_of_each_rank():
    box = 32
    grid = PolarGrid.from_max_frequency(box, 6.0)
    rng = np.random.default_rng(4)
    y, x = (np.mgrid[:box, :box] - box // 2).astype(np.float64)

    def blobs(count):
        out = np.zeros((count, box, box))
        for image in out:
            for cx, cy, sigma in zip(*rng.uniform(-6, 6, (2, 4)), rng.uniform(2.0, 3.0, 4)):
                image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
        return out

    templates = polar_transform(blobs(6), grid, backend="cpu", dtype=np.float64)
    images = polar_transform(blobs(3), grid, backend="cpu", dtype=np.float64)
    aligner = RadialSVDAligner(grid, templates, exact_zero_frequency=False, dtype=np.float64,
                               backend="cpu")
    low, full = image_rank_metrics(aligner, images, [2, grid.n_rings])
    exact = aligner.landscapes(images, rank=grid.n_rings)
    direct = landscape_metrics(aligner.landscapes(images, rank=2), exact)
    assert (low.relative_error, low.correlation, low.backward_error) == \
        (direct.relative_error, direct.correlation, direct.backward_error)
    assert low.relative_error > 1e-3  # rank 2 is a real approximation here
    assert full.relative_error == 0.0 and full.backward_error == 1.0
    assert full.correlation == pytest.approx(1.0, abs=1e-12)
