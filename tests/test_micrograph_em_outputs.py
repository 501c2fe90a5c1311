"""What the micrograph-EM protocol writes: the contour level of the map's ChimeraX surface
and the picks in the original micrographs' pixels."""
import numpy as np
import pytest

from cryohess_plugin.core.micrograph_em import (Picks, cut_patches, original_pixel_centres,
                                                pick_centres, surface_level)


def test_surface_level_is_two_standard_deviations_above_the_mean():
    # A map of 1000 voxels, 100 of them at 1 and the rest 0: mean 0.1, sd 0.3.
    volume = np.zeros((10, 10, 10))
    volume[:1] = 1.0
    assert surface_level(volume) == pytest.approx(0.1 + 2 * 0.3, rel=1e-12)
    assert surface_level(volume, sigmas=1.0) == pytest.approx(0.4, rel=1e-12)
    # The level lies between the solvent and the particle.
    assert 0.0 < surface_level(volume) < 1.0


@pytest.mark.parametrize("binning", [1.0, 2.0, 2.5])
def test_picks_scale_to_the_original_micrograph_pixels(binning):
    box = 7
    micrograph = np.random.default_rng(3).standard_normal((60, 80))
    patch_set = cut_patches([micrograph], box, 1.0, binning=binning)
    assert patch_set.binning == binning
    # One pick in the patch at binned origin (7, 7), its projection's corner 2 rows above and
    # 3 columns left of the patch (shift (2, 3)): centre at row 7 - 2 + 3 = 8 and column
    # 7 - 3 + 3 = 7 binned pixels, i.e. (x, y) = (7, 8) times the binning in the original.
    index = int(np.flatnonzero(np.all(patch_set.origins() == [7, 7], axis=1))[0])
    count = patch_set.count
    picked = np.zeros(count, bool)
    picked[index] = True
    shift = np.zeros((count, 2), np.int64)
    shift[index] = (2, 3)
    empty = np.full(count, 0.9)
    empty[index] = 0.25
    picks = Picks(empty=empty, shift=shift, shift_posterior=np.zeros(count),
                  rotation=np.zeros(count, np.int64), picked=picked)
    np.testing.assert_allclose(pick_centres(patch_set, picks), [[0, 7, 8, 0.75]])
    np.testing.assert_allclose(original_pixel_centres(patch_set, picks),
                               [[0, 7 * binning, 8 * binning, 0.75]])
