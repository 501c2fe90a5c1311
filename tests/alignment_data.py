"""The data of the radial-SVD and translation tests (``tests/conftest.py`` builds their
fixtures ``grid``, ``volume``, ``projector`` and ``templates`` from it): a 64 px phantom at
1.5 Å/px, the radial-SVD paper's band and its 993 viewing directions; shifted Gaussian
blobs in closed form; and the 993-direction references of the real-data alignment tests."""
import numpy as np

from cryohess_plugin.core import rotations
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.synthetic import atoms

from .helpers import phantom_model

BOX, PIXEL = 64, 1.5
#: Spacing of the 993-direction grid, degrees.
GRID_STEP = 7.5
#: B-factor of the particles' atoms (Å²).
PARTICLE_BFACTOR = 50.0
#: The paper's band, K = 48 radians per half box: R = 49 rings, Q = 98 angles.
MAX_FREQUENCY = 48 / np.pi


def blob_polar(grid, offset):
    """Closed-form polar samples of six Gaussian blobs moved by ``offset`` pixels."""
    state = np.random.default_rng(3)
    centres = state.uniform(-12, 12, (6, 2)) + offset
    sigmas, heights = state.uniform(1.5, 3, 6), state.uniform(0.5, 1, 6)
    k = np.stack([grid.kx, grid.ky], -1)
    values = sum(h * 2 * np.pi * s ** 2 * np.exp(-2 * np.pi ** 2 * s ** 2 * (k ** 2).sum(-1)
                                                 / grid.box ** 2)
                 * np.exp(-2j * np.pi * (k @ c) / grid.box)
                 for c, s, h in zip(centres, sigmas, heights))
    return values.reshape(grid.n_rings, grid.n_angles)


def reference_templates(grid, bfactor):
    """Projections on the 993 viewing directions of the map of the particles' atoms at
    another B-factor (a map that is not the particles' own), and their rotations."""
    volume = atoms.gaussian_atom_volume(phantom_model(BOX, PIXEL, bfactor=bfactor), BOX, PIXEL)
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)
    projector = FourierSliceProjector(volume, dtype=np.float32, backend="cpu")
    return template_rotations, projector.project_polar(template_rotations, grid.radii,
                                                       grid.n_angles)
