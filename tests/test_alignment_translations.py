"""Translations by the factorised translation kernel (FTK) against independent references
(``docs/methods/radial_svd_alignment.md`` §3; Rangan, Spivak, Andén, Barnett,
Inverse Problems 36 (2020) 024001).

References: the closed-form Fourier transform of shifted Gaussian blobs, the
Bessel functions themselves, landscapes of explicitly shifted images (the
polar samples multiplied by :func:`.polar.shift_phases`, written out here as a
Fourier-Bessel sum), the explicit shift loop of :class:`.RadialSVDAligner`
(every shift one image row) and the ground truth of projections.  The CUDA
kernel is compared with the CPU one in ``test_translations_cuda.py``.
"""
import numpy as np
import pytest
import scipy.special

from cryohess_plugin.core import rotations
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.kernels import translations_cpu
from cryohess_plugin.core.polar import PolarGrid, polar_transform, ring_coefficients, shift_phases
from cryohess_plugin.core.synthetic import simulate
from cryohess_plugin.core.alignment.radial_svd import RadialSVDAligner, radial_kernel, shift_grid
from cryohess_plugin.core.alignment.translations import (
    ParticleSearch, PolarShifts, TranslationFactorization, align_translations,
    coarse_shift_step, angle_landscapes, default_max_shift, direction_spectra,
    resolve_max_shift, shift_weights, translation_aware_kernel, translation_spectra,
    _pruned_best)

# The radial-SVD tests' data: 64 px phantom, the paper's band, the 993 projections (the
# fixtures grid, volume, projector and templates are tests/conftest.py's).
from .alignment_data import BOX, MAX_FREQUENCY, PIXEL, blob_polar


@pytest.fixture(scope="module")
def factorization(grid):
    return TranslationFactorization.build(grid, 5.0)


def weighted_error(grid, value, reference):
    weights = np.sqrt(grid.weights)[:, None]
    return np.linalg.norm(weights * (value - reference)) / np.linalg.norm(weights * reference)


@pytest.mark.parametrize("shift", [(0.3, 0.2), (3.0, -2.5), (-3.5, 3.5), (5.0, 0.0)])
def test_factorised_translation_recentres_shifted_blobs_in_closed_form(grid, factorization,
                                                                       shift):
    shift = np.array(shift)
    moved = ring_coefficients(blob_polar(grid, shift))
    centred = ring_coefficients(blob_polar(grid, 0.0))
    recentred = factorization.translate(moved, shift[None])[0]
    assert weighted_error(grid, recentred, centred) <= 2e-3


def test_factors_reproduce_the_bessel_kernel_within_the_tolerance(grid):
    errors = []
    for tolerance in (1e-2, 1e-3, 1e-4):
        factorization = TranslationFactorization.build(grid, 5.0, tolerance)
        radii = np.linspace(0, 5.0, 23)
        factors = factorization.radial_factors(radii)
        z = 2 * np.pi * np.outer(radii, grid.radii) / grid.box
        worst = 0.0
        for p in range(-25, 26):
            terms = factorization.orders == p
            exact = scipy.special.jv(p, z) * np.sqrt(grid.weights)
            approx = factors[:, terms] @ factorization.ring_vectors[terms]
            worst = max(worst, np.abs(approx - exact).max())
        errors.append(worst)
        assert worst <= 5 * tolerance, (tolerance, worst)
    assert errors[0] > errors[1] > errors[2]


def test_terms_grow_far_slower_than_the_shifts():
    grid = PolarGrid.from_max_frequency(128, MAX_FREQUENCY)
    factorization = TranslationFactorization.build(grid, 10.0)
    shifts = PolarShifts.disc(10.0, 0.5)
    assert len(shifts) > 1000
    assert factorization.n_terms < len(shifts) / 10


def test_polar_shift_disc_covers_the_disc_at_the_step():
    shifts = PolarShifts.disc(4.0, 0.5)
    points = shifts.shifts
    assert len(points) == len(shifts) and np.all(points[0] == 0)
    assert np.hypot(*points.T).max() <= 4.0 + 1e-12
    # Every point of the disc lies within one step of a searched shift.
    rng = np.random.default_rng(0)
    radius, angle = 4.0 * np.sqrt(rng.uniform(size=2000)), rng.uniform(0, 2 * np.pi, 2000)
    probe = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    nearest = np.min(np.linalg.norm(probe[:, None] - points[None], axis=-1), axis=1)
    assert nearest.max() <= 0.5
    assert default_max_shift(128) == pytest.approx(6.4) and default_max_shift(256) == 12.8


def test_coarse_step_is_a_quarter_of_the_band_period(grid):
    assert coarse_shift_step(grid) == pytest.approx(BOX / MAX_FREQUENCY / 4)


def explicit_landscapes(grid, image_polar, template_polar, shifts, ctf):
    """``<T_-t A, R_gamma (c B)>`` (no factor ``2 pi / D^2``) of explicitly shifted images:
    ``(n_shifts, Q)`` for one image and one template."""
    shifted = ring_coefficients(image_polar[None] * shift_phases(grid, shifts))
    b = ring_coefficients(template_polar) * ctf[:, None]
    xhat = np.einsum("r,srq,rq->sq", grid.weights, shifted.conj(), b)
    return np.fft.fft(xhat, axis=-1).real


def test_ftk_landscapes_equal_explicitly_shifted_landscapes(grid, factorization, projector,
                                                           templates):
    _, template_polar = templates
    rng = np.random.default_rng(5)
    truth = rotations.random_rotations(2, rng)
    image_polar = projector.project_polar(truth, grid.radii, grid.n_angles,
                                          shifts=np.array([[1.7, -2.2], [-3.1, 0.4]]))
    candidates = np.array([[10, 500], [993 - 1, 77]])
    ctf = 0.5 + 0.5 * np.cos(grid.radii / 3)
    coefficients = ring_coefficients(image_polar)
    template_half = ring_coefficients(template_polar)[..., :grid.n_angles // 2].transpose(1, 0, 2)
    spectra = translation_spectra(factorization, coefficients, template_half, candidates,
                                  np.sqrt(grid.weights)[None] * ctf[None], np.complex128)
    shifts = PolarShifts.disc(5.0, 0.5)
    landscapes = angle_landscapes(direction_spectra(spectra, shift_weights(factorization, shifts)))
    for pair, (i, k) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        reference = explicit_landscapes(grid, image_polar[i], template_polar[candidates[i, k]],
                                        shifts.shifts, ctf)
        error = np.abs(landscapes[pair] - reference).max() / np.abs(reference).max()
        assert error <= 3e-3, (pair, error)
    # The pruned maximum (bound, then the angle FFT of the rows that reach the best) is the
    # maximum of all landscapes, with a different scale per pair.
    scale = np.array([1.0, 0.8, 1.3, 0.9])
    directions = direction_spectra(spectra, shift_weights(factorization, shifts))
    score, rank, angle, shift, evaluated = _pruned_best(directions, scale, 2, translations_cpu)
    scaled = (landscapes * scale[:, None, None]).reshape(2, 2, -1, grid.n_angles)
    for i in range(2):
        flat = scaled[i].reshape(-1)
        assert score[i] == pytest.approx(flat.max(), rel=1e-12)
        assert np.unravel_index(flat.argmax(), scaled[i].shape) == (rank[i], shift[i], angle[i])
    assert 4 <= evaluated < 4 * len(shifts) / 2


def test_recovers_subpixel_shifts_of_projections(grid, projector, templates):
    template_rotations, template_polar = templates
    fine = PolarShifts.disc(4.0, 0.5)
    rng = np.random.default_rng(11)
    true_shift = fine.shifts[rng.integers(1, len(fine), 10)]
    picked = rng.integers(0, len(template_rotations), 10)
    images = projector.project_polar(template_rotations[picked], grid.radii, grid.n_angles,
                                     shifts=true_shift)
    coarse = RadialSVDAligner(grid, template_polar, shifts=shift_grid(4.0, 2.0), backend="cpu")
    result = align_translations(coarse, template_polar, images, fine)
    np.testing.assert_array_equal(result.template, picked)
    np.testing.assert_allclose(result.angle, 0.0, atol=1e-12)
    np.testing.assert_allclose(result.shift, true_shift, atol=1e-9)
    np.testing.assert_allclose(result.score, 1.0, atol=2e-3)


def test_particle_search_resolves_the_default_disc_and_finds_subpixel_shifts(
        grid, projector, templates):
    """The protocols' search: -1 is 5 % of the box; its FTK finds the projections'
    sub-pixel shifts, and 0 is the centred radial-SVD search unchanged."""
    template_rotations, template_polar = templates
    assert resolve_max_shift(-1.0, BOX) == pytest.approx(0.05 * BOX)
    assert resolve_max_shift(2.5, BOX) == 2.5
    search = ParticleSearch(grid, template_polar, resolve_max_shift(-1.0, BOX), 0.5,
                            backend="cpu")
    assert search.aligner.refine_candidates == 0
    np.testing.assert_allclose(search.aligner.shifts,
                               shift_grid(0.05 * BOX, coarse_shift_step(grid)))
    rng = np.random.default_rng(12)
    true_shift = search.shifts.shifts[rng.integers(1, len(search.shifts), 8)]
    picked = rng.integers(0, len(template_rotations), 8)
    images = projector.project_polar(template_rotations[picked], grid.radii, grid.n_angles,
                                     shifts=true_shift)
    result = search.align(images)
    np.testing.assert_array_equal(result.template, picked)
    np.testing.assert_allclose(result.shift, true_shift, atol=1e-9)
    centred = projector.project_polar(template_rotations[picked], grid.radii, grid.n_angles)
    unshifted = ParticleSearch(grid, template_polar, 0.0, 0.5, backend="cpu").align(centred)
    plain = RadialSVDAligner(grid, template_polar, backend="cpu").align(centred)
    np.testing.assert_array_equal(unshifted.template, plain.template)
    np.testing.assert_array_equal(unshifted.score, plain.score)
    np.testing.assert_array_equal(unshifted.shift, 0.0)


def test_same_poses_as_the_explicit_shift_loop(grid, volume, templates):
    """Noisy CTF-modulated particles with random shifts: the FTK after the coarse
    search gives the explicit loop's template, angle and fine shift."""
    _, template_polar = templates
    particles = simulate.simulate_particles(volume, 100, BOX, PIXEL, rng=8, n_groups=3,
                                            shift_sigma=2.0, snr=0.1, keep_clean=False,
                                            backend="cpu")
    image_polar = polar_transform(particles.images, grid, backend="cpu")
    fine = PolarShifts.disc(5.0, 0.5)
    explicit = RadialSVDAligner(grid, template_polar, shifts=fine.shifts, backend="cpu").align(
        image_polar, particles.ctf_params, PIXEL)
    coarse = RadialSVDAligner(grid, template_polar, shifts=shift_grid(5.0, coarse_shift_step(grid)),
                              refine_candidates=0, backend="cpu")
    ftk = align_translations(coarse, template_polar, image_polar, fine,
                             ctf_params=particles.ctf_params, pixel_size=PIXEL)
    steps = np.abs(np.round((explicit.angle - ftk.angle) / grid.angular_step)) % grid.n_angles
    same = ((explicit.template == ftk.template)
            & (np.minimum(steps, grid.n_angles - steps) <= 1)
            & (np.linalg.norm(explicit.shift - ftk.shift, axis=1) <= fine.step * 1.5))
    assert same.mean() >= 0.99, same.mean()
    np.testing.assert_array_equal(ftk.group, explicit.group)


def test_bad_input_raises_typed_errors(grid, templates):
    _, template_polar = templates
    with pytest.raises(InvalidDataError, match="maximum shift"):
        PolarShifts.disc(-1.0)
    with pytest.raises(InvalidDataError, match="step"):
        PolarShifts.disc(3.0, 0.0)
    with pytest.raises(InvalidDataError, match="tolerance"):
        TranslationFactorization.build(grid, 3.0, tolerance=0.0)
    small = TranslationFactorization.build(grid, 2.0)
    with pytest.raises(InvalidDataError, match="outside the factorised disc"):
        small.radial_factors([3.0])
    coarse = RadialSVDAligner(grid, template_polar[:20], backend="cpu")
    images = template_polar[:2]
    with pytest.raises(InvalidDataError, match="TranslationFactorization.build"):
        align_translations(coarse, template_polar[:20], images, PolarShifts.disc(3.0), small)
    with pytest.raises(ShapeError, match="template_polar"):
        align_translations(coarse, template_polar[:21], images, PolarShifts.disc(1.0))
    with pytest.raises(TypeError, match="PolarShifts"):
        align_translations(coarse, template_polar[:20], images, np.zeros((3, 2)))


def test_translation_aware_kernel_is_the_shift_average(grid, templates):
    """Against the objective's average over Gaussian shifts by 2-D Gauss-Hermite quadrature
    of explicitly shifted templates, and the plain kernel at zero spread."""
    _, template_polar = templates
    chosen = template_polar[::199]
    sigma = 1.5
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)
    weights = weights / weights.sum()
    offsets = sigma * np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    pair_weights = np.outer(weights, weights).reshape(-1)
    eta = np.sqrt(grid.weights)
    second = np.zeros((grid.n_rings, grid.n_rings), complex)
    mean = np.zeros((len(chosen), grid.n_rings), complex)
    phases = shift_phases(grid, offsets)
    for b, template in enumerate(chosen):
        shifted = ring_coefficients(template[None] * phases) * eta[None, :, None]
        rows = (shifted * np.sqrt(pair_weights)[:, None, None]).transpose(1, 0, 2).reshape(
            grid.n_rings, -1)
        second += rows.conj() @ rows.T
        mean[b] = np.einsum("s,sr->r", pair_weights, shifted[..., 0])
    reference = (second - mean.conj().T @ mean).real / len(chosen)
    kernel = translation_aware_kernel(chosen, grid, sigma)
    assert np.abs(kernel - reference).max() <= 1e-6 * np.abs(reference).max()
    assert np.allclose(kernel, kernel.T) and np.linalg.eigvalsh(kernel).min() >= -1e-10 * np.abs(
        kernel).max()
    plain = radial_kernel(ring_coefficients(chosen), grid.weights)
    unshifted = translation_aware_kernel(chosen, grid, 0.0)
    assert np.abs(unshifted - plain).max() <= 1e-10 * np.abs(plain).max()
