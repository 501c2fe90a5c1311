"""Helpers the core tests share: error measures, Gaussian blobs and atom phantoms."""
import numpy as np

from cryohess_plugin.core import fourier
from cryohess_plugin.core.ctf import evaluate_ctf
from cryohess_plugin.core.synthetic import atoms, phantoms


def relative_l2(value, reference):
    """``||value - reference|| / ||reference||``."""
    return np.linalg.norm(value - reference) / np.linalg.norm(reference)


def gaussian_blobs(box, centres, sigmas, weights):
    """Sum of isotropic Gaussians in a ``box``-wide image or volume.

    :param centres: ``(k, d)`` offsets from the box centre in pixels, ``(x, y)`` for an
        image (``d = 2``) or ``(x, y, z)`` for a volume (``d = 3``).
    :param sigmas: ``(k,)`` widths in pixels.  :param weights: ``(k,)`` amplitudes.
    """
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))
    dimension = centres.shape[1]
    # Arrays index (z, y, x); reversed, the grid's axes are (x, y[, z]).
    grid = np.meshgrid(*[fourier.frequencies(box)] * dimension, indexing="ij")[::-1]
    out = np.zeros((box,) * dimension)
    for centre, sigma, weight in zip(centres, sigmas, weights):
        squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre))
        out += weight * np.exp(-squared / (2 * sigma ** 2))
    return out


def phantom_model(box, pixel, n_atoms=800, fill=0.3, rng=1, bfactor=400.0):
    """Random Gaussian-atom protein whose atoms reach ``fill`` of the box, like a particle."""
    return phantoms.random_protein_phantom(n_atoms, radius_angstrom=fill * box * pixel, rng=rng,
                                           bfactor=bfactor)


def phantom_volume(box, pixel, **options):
    """The map of :func:`phantom_model` (same options) on a ``box``³ grid."""
    return atoms.gaussian_atom_volume(phantom_model(box, pixel, **options), box, pixel)


def phase_flip(images, ctf_params, pixel_size):
    """``images`` ``(n, D, D)`` multiplied by the sign of their CTFs (one per image), as
    phase-flipping programs write them: their CTF is then ``|CTF|``."""
    images = np.asarray(images)
    ky, kx = fourier.real_filter_frequencies(*images.shape[-2:])
    out = np.empty(images.shape, dtype=np.float64)
    for i, (image, params) in enumerate(zip(images, ctf_params)):
        # Frequencies in cycles per pixel are cycles per box for a box of one pixel.
        out[i] = fourier.filter_real(image, np.sign(evaluate_ctf(params, kx, ky, 1, pixel_size)))
    return out.astype(images.dtype, copy=False)


def random_blob_images(box, count, rng, radius=10.0, blobs=5):
    """Asymmetric blob images whose spectra are below 1e-6 beyond ``box / 4`` cycles.

    A Gaussian of width ``sigma`` pixels falls as ``exp(-2 pi^2 sigma^2 f^2 / D^2)``;
    ``sigma >= 3.5`` and ``f = D / 4`` make that below ``3e-7``.  Centres
    within ``radius`` keep every rotation inside the box.
    """
    rng = np.random.default_rng(rng)
    images = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi, blobs)
        distance = radius * np.sqrt(rng.uniform(0, 1, blobs))
        centres = np.stack([distance * np.cos(angle), distance * np.sin(angle)], axis=1)
        images.append(gaussian_blobs(box, centres, rng.uniform(3.5, 5.0, blobs),
                                     rng.uniform(0.5, 1.5, blobs)))
    return np.array(images)
