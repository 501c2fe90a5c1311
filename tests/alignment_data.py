"""The data of the radial-SVD and translation tests (``tests/conftest.py`` builds their
fixtures ``grid``, ``volume``, ``projector`` and ``templates`` from it): a 64 px phantom at
1.5 Å/px, the radial-SVD paper's band and its 993 viewing directions; and shifted
Gaussian blobs in closed form."""
import numpy as np

BOX, PIXEL = 64, 1.5
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
