"""Polar Fourier transform of images and the Fourier-Bessel landscape
(``docs/methods/radial_svd_alignment.md`` §1, checks listed in §7).

References: the exact direct sum ``sum_x I(x) exp(-2 pi i k.x / D)`` at the
polar nodes, the projector's own polar slices, brute-force real-space
rotations (:mod:`cryohess_plugin.core.alignment.brute_force`) and exact
Fourier shifts.
"""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms
from cryohess_plugin.core import ctf, fourier, polar, rotations
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.polar import (PolarGrid, ctf_on_grid, polar_transform, ring_coefficients,
                                        shift_phases)
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.alignment.brute_force import (brute_force_align, rotate_and_shift,
                                                        rotated_inner_products)
from .helpers import gaussian_blobs, phantom_model, random_blob_images, relative_l2

PIXEL = 1.5



def exact_polar(images, grid):
    """Direct sum over pixels at every node: the independent reference."""
    positions = fourier.frequencies(grid.box)
    along_x = np.exp(-2j * np.pi * np.outer(grid.kx, positions) / grid.box)
    along_y = np.exp(-2j * np.pi * np.outer(grid.ky, positions) / grid.box)
    # sum_y e_y[m, y] sum_x I[y, x] e_x[m, x]: separable phases, O(M D^2).
    values = np.einsum("nyx,mx,my->nm", images, along_x, along_y, optimize=True)
    return values.reshape(len(images), grid.n_rings, grid.n_angles)


def particle_images(box, count, rng=1):
    """Projections of a Gaussian-atom phantom reaching 0.3 box, like real particles."""
    model = phantom_model(box, PIXEL, n_atoms=600, rng=rng)
    poses = rotations.random_rotations(count, np.random.default_rng(rng))
    return model, poses, atoms.gaussian_atom_projection(model, poses, box, PIXEL)


def landscape(a_polar, b_polar, grid):
    """``X(gamma_j) = <A, R_gamma_j B>`` over the grid's angles, in pixel units.

    ``docs/methods/radial_svd_alignment.md`` §1.4: ``X^(q) = 2 pi sum_r w_r conj(a[r, q]) b[r, q]`` and
    ``X(gamma_j) = sum_q X^(q) exp(-i q gamma_j)`` (numpy's forward FFT).  With
    frequencies in cycles per box, Plancherel for the centred non-unitary DFT
    reads ``sum_x A B = D^-2 sum_k conj(A^) B^``; for band-limited images the
    sum over integer ``k`` is the integral ``int d^2k = int f df dpsi``, which
    the Gauss-Jacobi weights (for ``f df``) and the trapezoid rule in ``psi``
    (``2 pi / Q``) evaluate.  Hence ``sum_x A R_gamma B = X(gamma) / D^2``.
    """
    a = ring_coefficients(a_polar)
    b = ring_coefficients(b_polar)
    spectrum = 2 * np.pi * np.einsum("r,...rq,...rq->...q", grid.weights, np.conj(a), b)
    return np.fft.fft(spectrum, axis=-1).real / grid.box ** 2


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("box", [64, 63])
def test_polar_transform_matches_exact_sum_on_particles(box):
    """Measured: 4e-4 in both precisions, even and odd boxes."""
    _, _, images = particle_images(box, 3)
    for max_frequency in (box / 4, 0.45 * box):
        grid = PolarGrid.from_max_frequency(box, max_frequency)
        reference = exact_polar(images, grid)
        for dtype, complex_dtype in [(np.float64, np.complex128), (np.float32, np.complex64)]:
            result = polar_transform(images, grid, backend="cpu", dtype=dtype)
            assert result.dtype == complex_dtype
            assert result.shape == (3, grid.n_rings, grid.n_angles)
            assert relative_l2(result, reference) <= 2e-3


@pytest.mark.parametrize("box", [64, 33])
def test_polar_transform_error_on_box_filling_noise(box):
    """Documents the Keys-kernel limit: content at the box edge errs by a few percent.

    On the 2x grid the cubic kernel's aliasing grows with the distance from
    the centre (7 % per axis at the edge); white noise spread over the whole
    box averages about 3 %.
    """
    images = np.random.default_rng(5).standard_normal((2, box, box))
    grid = PolarGrid.from_max_frequency(box, box / 4)
    error = relative_l2(polar_transform(images, grid, backend="cpu", dtype=np.float64),
                        exact_polar(images, grid))
    assert 1e-2 <= error <= 5e-2


def test_polar_transform_matches_projector_polar_slices():
    box = 64
    model, poses, _ = particle_images(box, 4, rng=2)
    volume = atoms.gaussian_atom_volume(model, box, PIXEL)
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    grid = PolarGrid.from_max_frequency(box, box / 4)
    images = projector.project(poses)
    ours = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    slices = projector.project_polar(poses, grid.radii, grid.n_angles)
    assert relative_l2(ours, slices) <= 3e-3


def test_polar_transform_is_independent_of_batching(monkeypatch):
    images = random_blob_images(32, 7, rng=3)
    grid = PolarGrid.from_max_frequency(32, 8)
    whole = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    # A budget below one image forces one image per batch.
    monkeypatch.setattr(polar, "_BATCH_BYTES", 1)
    np.testing.assert_array_equal(polar_transform(images, grid, backend="cpu",
                                                  dtype=np.float64), whole)


def test_polar_transform_float32_matches_float64():
    _, _, images = particle_images(48, 2)
    grid = PolarGrid.from_max_frequency(48, 12)
    single = polar_transform(images.astype(np.float32), grid, backend="cpu")
    double = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    assert relative_l2(single, double) <= 1e-5


def test_antipodal_nodes_are_conjugate():
    images = np.random.default_rng(4).standard_normal((2, 31, 31))
    grid = PolarGrid.from_max_frequency(31, 9)
    values = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    half = grid.n_angles // 2
    np.testing.assert_array_equal(values[..., half:], np.conj(values[..., :half]))


def test_polar_transform_of_no_images():
    grid = PolarGrid.from_max_frequency(16, 4)
    assert polar_transform(np.zeros((0, 16, 16)), grid, backend="cpu").shape == (
        0, grid.n_rings, grid.n_angles)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("images, error", [
    (np.zeros((16, 16)), ShapeError),
    (np.zeros((2, 16, 15)), ShapeError),
    (np.zeros((2, 15, 15)), ShapeError),
    (np.zeros((2, 16, 16), dtype=np.complex128), InvalidDataError),
    (np.full((2, 16, 16), np.nan), InvalidDataError),
])
def test_polar_transform_rejects_bad_images(images, error):
    grid = PolarGrid.from_max_frequency(16, 4)
    with pytest.raises(error):
        polar_transform(images, grid, backend="cpu")


def test_polar_transform_names_the_bad_image():
    images = np.zeros((3, 16, 16))
    images[2, 5, 5] = np.inf
    with pytest.raises(InvalidDataError, match="image 2"):
        polar_transform(images, PolarGrid.from_max_frequency(16, 4), backend="cpu")


@pytest.mark.parametrize("kwargs", [{"dtype": np.int32}, {"backend": "gpu"}])
def test_polar_transform_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        polar_transform(np.zeros((1, 16, 16)), PolarGrid.from_max_frequency(16, 4), **kwargs)


# ------------------------------------------- landscape against real-space rotations, conventions
def test_fourier_bessel_landscape_equals_real_space_rotations():
    """``X(gamma_j) / D^2 = sum_x A(x) B(R_{-gamma_j} x)`` within 1 %."""
    box = 64
    grid = PolarGrid.from_max_frequency(box, box / 4)
    images = random_blob_images(box, 2, rng=10)
    templates = random_blob_images(box, 2, rng=11)
    a = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    b = polar_transform(templates, grid, backend="cpu", dtype=np.float64)
    fourier_bessel = landscape(a[:, None], b[None], grid)
    brute_force = rotated_inner_products(images, templates, grid.angles)
    error = np.abs(fourier_bessel - brute_force).max() / np.abs(brute_force).max()
    assert error <= 1e-2
    # The half spectrum gives the same real landscape (radial_svd_alignment.md §1.4).
    spectrum = 2 * np.pi * np.einsum("r,rq,rq->q", grid.weights,
                                     np.conj(ring_coefficients(a[0])),
                                     ring_coefficients(b[0]))
    half = np.fft.hfft(spectrum[:grid.n_angles // 2 + 1], grid.n_angles) / box ** 2
    np.testing.assert_allclose(half, fourier_bessel[0, 0], rtol=0, atol=1e-9 * np.abs(half).max())


@pytest.mark.parametrize("step, offset", [(17, 0.0), (40, 0.3)])
def test_landscape_peaks_at_counter_clockwise_rotation(step, offset):
    """An image equal to the template turned by +gamma0 (x towards y) peaks at gamma0."""
    box = 64
    grid = PolarGrid.from_max_frequency(box, box / 4)
    gamma0 = (step + offset) * grid.angular_step
    centres = np.array([[8.0, 0.0], [-3.0, 6.0], [2.0, -9.0]])
    turn = np.array([[np.cos(gamma0), -np.sin(gamma0)], [np.sin(gamma0), np.cos(gamma0)]])
    sigmas, weights = [3.5, 4.0, 4.5], [1.0, 0.6, 0.8]
    template = gaussian_blobs(box, centres, sigmas, weights)
    image = gaussian_blobs(box, centres @ turn.T, sigmas, weights)
    values = landscape(*polar_transform(np.stack([image, template]), grid, backend="cpu",
                                        dtype=np.float64), grid)
    assert values.argmax() == step
    # The brute-force reference turns the same way.
    assert rotated_inner_products(image[None], template[None], grid.angles)[0, 0].argmax() == step
    np.testing.assert_allclose(rotate_and_shift(template, gamma0), image, atol=2e-3)


def test_shift_phases_undo_a_particle_offset():
    box = 64
    grid = PolarGrid.from_max_frequency(box, box / 4)
    image = random_blob_images(box, 1, rng=12, radius=6.0)[0]
    shift = np.array([3.4, -2.7])
    # Exact (Fourier) shift by t: multiply the spectrum by exp(-2 pi i k.t / D).
    ky, kx = np.meshgrid(fourier.frequencies(box), fourier.frequencies(box), indexing="ij")
    phase = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]) / box)
    shifted = fourier.centred_ifftn(fourier.centred_fftn(image) * phase).real
    centred, moved = polar_transform(np.stack([image, shifted]), grid, backend="cpu",
                                     dtype=np.float64)
    assert relative_l2(moved * shift_phases(grid, shift)[0], centred) <= 2e-3
    # The opposite sign doubles the offset instead of undoing it.
    assert relative_l2(moved * shift_phases(grid, -shift)[0], centred) >= 0.5


# --------------------------------------------------------------------------- reference
def test_rotate_and_shift_turns_x_towards_y_then_moves():
    box = 32
    template = gaussian_blobs(box, [[8.0, 0.0]], [2.0], [1.0])
    expected = gaussian_blobs(box, [[0.0 + 3.0, 8.0 - 2.0]], [2.0], [1.0])
    np.testing.assert_allclose(rotate_and_shift(template, np.pi / 2, (3.0, -2.0)), expected,
                               atol=3e-3)


def test_ctf_on_grid_equals_the_ctf_at_the_nodes():
    """Every CTF term (astigmatism, phase plate, envelope, phase flip) at the polar nodes:
    the float64 values are those of ``ctf_stack``, the float32 ones within 1e-6."""
    grid = PolarGrid.from_max_frequency(64, 20.0)
    params = [ctf.CTFParams(21000.0, 19500.0, 37.0, 300.0, 2.7, 0.1),
              ctf.CTFParams(9000.0, 8000.0, 120.0, 200.0, 2.0, 0.07, phase_shift=60.0,
                            bfactor=40.0),
              ctf.CTFParams(15000.0, 14000.0, -20.0, 300.0, 2.7, 0.1, phase_flipped=True)]
    exact = ctf.ctf_stack(params, grid.kx, grid.ky, grid.box, PIXEL)
    values = ctf_on_grid(params, grid, PIXEL)
    np.testing.assert_allclose(values.reshape(3, -1), exact, rtol=0, atol=1e-12)
    single = ctf_on_grid(params, grid, PIXEL, dtype=np.float32)
    assert single.dtype == np.float32
    assert np.abs(single.reshape(3, -1) - exact).max() <= 1e-6
    assert np.all(single[2] >= 0)


def test_rotated_inner_products_with_each_images_ctf():
    """With CTFs, every posed template is multiplied by the image's CTF (apply_ctf) before
    the product, and ``normalized`` divides by the norm of that product's template."""
    images = random_blob_images(32, 2, rng=6, radius=4.0)
    templates = random_blob_images(32, 2, rng=7, radius=4.0)
    params = [ctf.CTFParams(12000.0, 10000.0, 30.0, 300.0, 2.7, 0.1),
              ctf.CTFParams(20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1)]
    scores = rotated_inner_products(images, templates, [0.7], ctf_params=params,
                                    pixel_size=PIXEL, normalized=True)
    for i, j in np.ndindex(2, 2):
        posed = ctf.apply_ctf(rotate_and_shift(templates[j], 0.7), params[i], PIXEL)
        np.testing.assert_allclose(scores[i, j, 0],
                                   np.sum(images[i] * posed) / np.linalg.norm(posed))
    with pytest.raises(ShapeError, match="one per image"):
        rotated_inner_products(images, templates, [0.7], ctf_params=params[:1], pixel_size=PIXEL)


def test_rotated_inner_products_shapes_and_values():
    images = random_blob_images(32, 2, rng=6, radius=4.0)
    templates = random_blob_images(32, 3, rng=7, radius=4.0)
    angles = np.array([0.0, 1.0])
    shifts = np.array([[0.0, 0.0], [1.5, -2.0]])
    without = rotated_inner_products(images, templates, angles)
    with_shifts = rotated_inner_products(images, templates, angles, shifts)
    assert without.shape == (2, 3, 2) and with_shifts.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(with_shifts[..., 0], without)
    # At angle 0 the spline reproduces the pixels up to its boundary handling.
    np.testing.assert_allclose(without[:, :, 0],
                               images.reshape(2, -1) @ templates.reshape(3, -1).T, rtol=1e-4)
    posed = rotate_and_shift(templates[2], 1.0, shifts[1])
    np.testing.assert_allclose(with_shifts[1, 2, 1, 1], np.sum(images[1] * posed))


def test_brute_force_align_recovers_template_angle_and_shift():
    box = 32
    templates = random_blob_images(box, 3, rng=8, radius=5.0, blobs=3)
    angles = np.arange(24) * 2 * np.pi / 24
    shifts = np.array([[0.0, 0.0], [2.0, 1.0], [-1.0, 2.0]])
    truth = [(2, 5, 1), (0, 17, 2), (1, 0, 0)]
    images = np.stack([rotate_and_shift(templates[t], angles[a], shifts[s]) for t, a, s in truth])
    # Normalised scores: by Cauchy-Schwarz the posed template itself scores highest.
    weights = 1 / np.linalg.norm(templates, axis=(1, 2))
    result = brute_force_align(images, templates, angles, shifts, template_weights=weights)
    np.testing.assert_array_equal(result.template, [t for t, _, _ in truth])
    np.testing.assert_allclose(result.angle, [angles[a] for _, a, _ in truth])
    np.testing.assert_allclose(result.shift, [shifts[s] for _, _, s in truth])
    scores = rotated_inner_products(images, templates, angles, shifts) * weights[:, None, None]
    np.testing.assert_allclose(result.score, scores.reshape(3, -1).max(axis=1))
    raw = brute_force_align(images, templates, angles, shifts)
    np.testing.assert_allclose(raw.score, (scores / weights[:, None, None]).reshape(3, -1).max(1))


@pytest.mark.parametrize("call", [
    lambda: rotated_inner_products(np.zeros((1, 8, 8)), np.zeros((1, 9, 9)), [0.0]),
    lambda: rotated_inner_products(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), [0.0], [1.0, 2.0]),
    lambda: brute_force_align(np.zeros((8, 8)), np.zeros((1, 8, 8)), [0.0]),
    lambda: rotate_and_shift(np.zeros((1, 8, 8)), 0.0),
    lambda: brute_force_align(np.zeros((1, 8, 8)), np.zeros((2, 8, 8)), [0.0],
                              template_weights=[1.0]),
])
def test_reference_rejects_bad_shapes(call):
    with pytest.raises(ShapeError):
        call()


def test_reference_rejects_non_finite_images():
    images = np.zeros((1, 8, 8))
    images[0, 1, 1] = np.nan
    with pytest.raises(InvalidDataError):
        rotated_inner_products(images, np.zeros((1, 8, 8)), [0.0])
