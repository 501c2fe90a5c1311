"""pytest set-up: a headless Scipion environment in a temporary folder.

pyworkflow reads its configuration when first imported, so the environment is
configured here, before pytest imports any test module.
"""
import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

from cryohess_plugin.headless import configure_environment

from .alignment_data import BOX, MAX_FREQUENCY, PIXEL

_SCIPION_DIR = tempfile.mkdtemp(prefix="cryohess_scipion_")
configure_environment(_SCIPION_DIR, override=True)
if not os.environ.get("CRYOHESS_KEEP_TEST_DATA"):
    atexit.register(shutil.rmtree, _SCIPION_DIR, ignore_errors=True)


# Fixtures of the radial-SVD and translation tests (tests/alignment_data.py): built per
# module, imported lazily so that the environment above is configured first.
@pytest.fixture(scope="module")
def grid():
    """The polar grid of the paper's band on the 64 px box."""
    from cryohess_plugin.core.polar import PolarGrid
    return PolarGrid.from_max_frequency(BOX, MAX_FREQUENCY)


@pytest.fixture(scope="module")
def volume():
    """The alignment tests' phantom map."""
    from .helpers import phantom_volume
    return phantom_volume(BOX, PIXEL)


@pytest.fixture(scope="module")
def projector(volume):
    from cryohess_plugin.core.projector import FourierSliceProjector
    return FourierSliceProjector(volume, dtype=np.float64, backend="cpu")


@pytest.fixture(scope="module")
def templates(grid, projector):
    """Projections on the 993 viewing directions of the paper, and their rotations."""
    from cryohess_plugin.core import rotations
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)
    return template_rotations, projector.project_polar(template_rotations, grid.radii,
                                                       grid.n_angles)
