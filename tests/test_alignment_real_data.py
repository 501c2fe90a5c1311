"""Particle alignment on data as they come (``docs/methods/radial_svd_alignment.md`` §1.6, §7).

Each particle's astigmatic CTF (exact against real-space products with the CTF
applied to every posed template), references from another map than the
particles, shifts off the search lattice, noise stated inside the alignment band
(white and coloured), and the polarity check for particles without poses.
Particles are analytic projections of a Gaussian-atom model; the references are
projections of a map of the same atoms with another B-factor.
"""
import dataclasses

import numpy as np
import pytest

from cryohess_plugin.core import noise, rotations
from cryohess_plugin.core.alignment import (RadialSVDAligner, alignment_grid,
                                            polarity_against_templates, rotations_from_alignment,
                                            shift_grid)
from cryohess_plugin.core.alignment.brute_force import rotated_inner_products
from cryohess_plugin.core.contrast import SIGNIFICANCE, PolarityError
from cryohess_plugin.core.polar import polar_transform
from cryohess_plugin.core.synthetic import simulate

from .alignment_data import BOX, GRID_STEP, PARTICLE_BFACTOR, PIXEL, reference_templates
from .helpers import phantom_model, phase_flip, random_blob_images


@pytest.fixture(scope="module")
def model():
    return phantom_model(BOX, PIXEL, bfactor=PARTICLE_BFACTOR)


def within(result, template_rotations, truth, steps):
    """Per particle: assigned rotation within ``steps`` grid steps of the truth."""
    found = rotations_from_alignment(template_rotations, result.template, result.angle)
    return rotations.angular_distance(found, truth) <= steps * GRID_STEP


def paired_difference(first, second):
    """Mean of ``first - second`` over particles and its standard error (paired binary
    outcomes: only the particles on which they disagree count)."""
    gained, lost = np.sum(first & ~second), np.sum(~first & second)
    return (gained - lost) / first.size, np.sqrt(gained + lost) / first.size


# ------------------------------------------------------ exact CTF against real space
def test_landscape_with_astigmatic_ctf_equals_real_space_products():
    """``<C_i A_i, R_gamma B> = <A_i, C_i R_gamma B>``: the image-side product equals the
    per-particle 2-D CTF applied to every rotated template in real space, and the
    normalised landscape divides by ``||C_i R_gamma B||`` (2e-4: the spline interpolation
    of the reference; 3e-5 measured)."""
    grid = alignment_grid(BOX)
    images, references = random_blob_images(BOX, 3, 10), random_blob_images(BOX, 4, 11)
    ctf_params = simulate.random_ctf_params(3, 4, defocus_range=(8000.0, 12000.0),
                                            astigmatism=2000.0)
    aligner = RadialSVDAligner(grid, polar_transform(references, grid, backend="cpu",
                                                     dtype=np.float64),
                               rank=grid.n_rings, dtype=np.float64, backend="cpu")
    image_polar = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    ours = aligner.landscapes(image_polar, ctf_params=ctf_params, pixel_size=PIXEL)
    brute = rotated_inner_products(images, references, grid.angles, ctf_params=ctf_params,
                                   pixel_size=PIXEL)
    assert np.abs(ours - brute).max() <= 2e-4 * np.abs(brute).max()
    # Without the astigmatism the products differ: the test sees the CTF's direction.
    radial = [dataclasses.replace(p, defocus_v=p.defocus_u) for p in ctf_params]
    assert np.abs(aligner.landscapes(image_polar, ctf_params=radial, pixel_size=PIXEL)
                  - brute).max() >= 0.05 * np.abs(brute).max()
    scores = aligner.landscapes(image_polar, ctf_params=ctf_params, pixel_size=PIXEL,
                                normalized=True)
    norms = np.linalg.norm(images, axis=(1, 2))[:, None, None]
    brute = rotated_inner_products(images, references, grid.angles, ctf_params=ctf_params,
                                   pixel_size=PIXEL, normalized=True) / norms
    assert np.abs(scores - brute).max() <= 2e-4 * np.abs(brute).max()
    # The refined scores of align are these: the best of every image's candidates.
    result = aligner.align(image_polar, ctf_params, PIXEL, top_k=2)
    np.testing.assert_allclose(result.top_score, np.sort(scores.max(axis=2), axis=1)[:, :-3:-1],
                               rtol=1e-10)


# ------------------------------------------------------------- astigmatism, accuracy
def test_astigmatism_does_not_cost_accuracy(model):
    """1000 Å of astigmatism at 6 Å: the accuracy equals that without astigmatism within
    the test's statistical error, while the same particles aligned with their U and V
    defoci swapped (a CTF turned by 90°) lose measurably.

    1000 particles in 20 defocus groups, references from the map at B = 100 Å² (the
    particles' atoms have 50 Å²), shifts of 0.5 px standard deviation searched to
    1.5 px, in-band SNR 0.15 (6 Å band, white noise). Paired comparisons of the same
    poses and noise seed; the standard error counts the particles on which two runs
    disagree.  (Measured: 0.822 without astigmatism, 0.816 with it, 0.732 swapped; the
    former ring-averaged CTF gave 0.806, 2.6 standard errors below, and failed here.)
    """
    grid = alignment_grid(BOX, PIXEL, 6.0)
    template_rotations, templates = reference_templates(grid, 100.0)
    aligner = RadialSVDAligner(grid, templates, shifts=shift_grid(1.5, 1.0), backend="cpu")
    outcomes = {}
    for astigmatism in (0.0, 1000.0):
        particles = simulate.simulate_particles(
            model, 1000, BOX, PIXEL, rng=6, n_groups=20, astigmatism=astigmatism, snr=0.15,
            snr_band=grid.max_frequency, shift_sigma=0.5, defocus_range=(10000.0, 25000.0),
            keep_clean=False, backend="cpu")
        image_polar = polar_transform(particles.images, grid, backend="cpu")
        outcomes[astigmatism] = within(aligner.align(image_polar, particles.ctf_params, PIXEL),
                                       template_rotations, particles.rotations, 1)
    swapped = [dataclasses.replace(p, defocus_u=p.defocus_v, defocus_v=p.defocus_u)
               for p in particles.ctf_params]
    outcomes["swapped"] = within(aligner.align(image_polar, swapped, PIXEL), template_rotations,
                                 particles.rotations, 1)
    assert 0.7 <= np.mean(outcomes[0.0]) <= 0.95  # neither saturated nor lost
    difference, error = paired_difference(outcomes[1000.0], outcomes[0.0])
    assert abs(difference) <= 2 * error, (difference, error)
    loss, error = paired_difference(outcomes[1000.0], outcomes["swapped"])
    assert loss >= 3 * error and loss >= 0.03, (loss, error)


# --------------------------------------------------------- the realistic regime
def coloured_spectrum(frequency):
    """Noise power falling from the centre, ``1 / (1 + (|k| / (0.1 D))^2)``."""
    return 1.0 / (1.0 + (frequency / (0.1 * BOX)) ** 2)


@pytest.mark.parametrize("spectrum, rotations_found, shifts_found",
                         [(None, 0.9, 0.85), (coloured_spectrum, 0.6, 0.6)])
def test_mismatched_map_astigmatism_shifts_in_band_snr(model, spectrum, rotations_found,
                                                       shifts_found):
    """Projection matching as data demand: references from the map at B = 300 Å² for
    particles at 50 Å², 1000 Å astigmatism, picks off-centre (1.2 px per axis) searched on
    a 1 px lattice to 3 px, in-band SNR 0.1 in a 5 Å alignment band (about 0.03 over the
    whole box for white noise, 0.07 for the coloured noise).  White noise: >= 90 % within
    two grid steps (15°); coloured noise, which the white-noise score does not weight,
    costs accuracy (>= 60 %).  (Measured over seeds 7-12: white 94-96 % of rotations and
    90-97 % of shifts, coloured 64-71 % and 65-71 %.  In the paper's 6.3 Å band the same
    in-band SNR leaves these small particles at 85 % on average, from 78 to 91 %.)
    """
    grid = alignment_grid(BOX, PIXEL, 5.0)
    template_rotations, templates = reference_templates(grid, 300.0)
    particles = simulate.simulate_particles(
        model, 300, BOX, PIXEL, rng=7, n_groups=20, astigmatism=1000.0, snr=0.1,
        snr_band=grid.max_frequency, noise_spectrum=spectrum, shift_sigma=1.2,
        defocus_range=(10000.0, 25000.0), keep_clean=True, backend="cpu")
    whole_box = noise.snr_in_band(particles.clean_images, particles.noise_sigma, None, spectrum)
    assert 0.02 <= whole_box <= (0.04 if spectrum is None else 0.1)
    shifts = shift_grid(3.0, 1.0)
    result = RadialSVDAligner(grid, templates, shifts=shifts, backend="cpu").align(
        polar_transform(particles.images, grid, backend="cpu"), particles.ctf_params, PIXEL)
    assert np.mean(within(result, template_rotations, particles.rotations, 2)) >= rotations_found
    # Shifts off the lattice are found to its nearest points.
    error = np.linalg.norm(result.shift - particles.shifts, axis=1)
    assert np.mean(error <= 1.0) >= shifts_found


# -------------------------------------------------------------------------- polarity
@pytest.fixture(scope="module")
def polarity_case(model):
    grid = alignment_grid(BOX)
    _, templates = reference_templates(grid, 300.0)
    particles = simulate.simulate_particles(
        model, 48, BOX, PIXEL, rng=8, n_groups=4, astigmatism=500.0, snr=0.1,
        snr_band=grid.max_frequency, shift_sigma=0.6, keep_clean=False, backend="cpu")
    aligner = RadialSVDAligner(grid, templates, shifts=shift_grid(2.0, 1.0), backend="cpu")
    return grid, aligner, particles


def test_polarity_of_white_dark_and_phase_flipped_particles(polarity_case):
    """White particles match the references better than their negatives; the same images
    negated (dark, contrast not inverted at extraction) stop with the message naming
    the fix; phase-flipped images with |CTF| are white too; noise alone raises nothing."""
    grid, aligner, particles = polarity_case

    def polarity(images, ctf_params=particles.ctf_params):
        return polarity_against_templates(aligner, polar_transform(images, grid, backend="cpu"),
                                          ctf_params, PIXEL)

    assert polarity(particles.images).check().z_score >= 2 * SIGNIFICANCE
    with pytest.raises(PolarityError, match="look dark against these references.*invert their"
                                            " contrast"):
        polarity(-particles.images).check()
    flipped = [dataclasses.replace(p, phase_flipped=True) for p in particles.ctf_params]
    images = phase_flip(particles.images, particles.ctf_params, PIXEL)
    assert polarity(images, flipped).check().z_score >= 2 * SIGNIFICANCE
    pure_noise = np.random.default_rng(9).standard_normal(particles.images.shape)
    assert abs(polarity(pure_noise).z_score) < SIGNIFICANCE
