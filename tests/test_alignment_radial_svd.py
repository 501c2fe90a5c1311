"""Radial-SVD alignment engine against independent references
(``docs/methods/radial_svd_alignment.md`` §1-§3, checks listed in §7).

References: the uncompressed Fourier-Bessel landscape written out in the test,
the kernel summed over all ``q != 0`` with complex arithmetic, brute-force
real-space rotations (:mod:`cryohess_plugin.core.alignment.brute_force`), the
projector itself (rotation convention), and the ground truth of simulated
particles.  CUDA kernels are compared with the CPU ones on the
numba simulator in a child interpreter, as in ``test_projector_cuda.py``.
"""
import json

import numpy as np
import pytest

from cryohess_plugin.core.synthetic import simulate
from cryohess_plugin.core import rotations
from cryohess_plugin.core.errors import InvalidDataError, MissingMetadataError, ShapeError
from cryohess_plugin.core.kernels import alignment_cpu, alignment_pruned_cpu
from cryohess_plugin.core.polar import (PolarGrid, ctf_on_grid, polar_transform,
                                        ring_coefficients, shift_phases)
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.alignment.radial_svd import (RadialSVDAligner, choose_rank, group_ctfs,
                                                       radial_kernel, rotations_from_alignment,
                                                       shift_grid)
from cryohess_plugin.core.alignment.brute_force import rotated_inner_products

from .cudasim import run_module_under_simulator
from .helpers import phantom_volume

BOX, PIXEL = 64, 1.5
#: The paper's band, K = 48 radians per half box: R = 49 rings, Q = 98 angles.
MAX_FREQUENCY = 48 / np.pi
#: Spacing of the 993-direction grid (sphere of radius 48 / 2 pi, unit spacing), degrees.
GRID_STEP = np.rad2deg(2 * np.pi / 48)


def relative_max(value, reference):
    return float(np.abs(value - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def grid():
    return PolarGrid.from_max_frequency(BOX, MAX_FREQUENCY)


@pytest.fixture(scope="module")
def volume():
    return phantom_volume(BOX, PIXEL)


@pytest.fixture(scope="module")
def projector(volume):
    return FourierSliceProjector(volume, dtype=np.float64, backend="cpu")


@pytest.fixture(scope="module")
def templates(grid, projector):
    """Projections on the 993 viewing directions of the paper, and their rotations."""
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)
    return template_rotations, projector.project_polar(template_rotations, grid.radii,
                                                       grid.n_angles)


def fourier_bessel_landscape(grid, image_polar, template_polar):
    """Uncompressed ``<A, R_gamma B>`` over the grid's angles
    (``docs/methods/radial_svd_alignment.md`` §1.4)."""
    a = ring_coefficients(image_polar)
    b = ring_coefficients(template_polar)
    xhat = 2 * np.pi * np.einsum("r,arq,brq->abq", grid.weights, a.conj(), b) / grid.box ** 2
    landscape = np.fft.fft(xhat, axis=-1)
    assert np.abs(landscape.imag).max() <= 1e-12 * np.abs(landscape).max()
    return landscape.real


def pose_agreement(first, second, n_angles):
    """Same template and in-plane angle within one step (circular)."""
    step = np.abs(np.round((first.angle - second.angle) * n_angles / (2 * np.pi)))
    step = np.minimum(step % n_angles, n_angles - step % n_angles)
    return (first.template == second.template) & (step <= 1)


# ------------------------------------------------- full rank against the Fourier-Bessel sum
@pytest.mark.parametrize("centring, exact_zero", [("template", True), ("template", False),
                                                  ("population", True)])
def test_full_rank_reproduces_fourier_bessel_landscape(grid, projector, templates, centring,
                                                       exact_zero):
    _, template_polar = templates
    subset = template_polar[::20]
    poses = rotations.random_rotations(6, np.random.default_rng(3))
    images = projector.project_polar(poses, grid.radii, grid.n_angles)
    aligner = RadialSVDAligner(grid, subset, rank=grid.n_rings, dtype=np.float64,
                               kernel_centring=centring, exact_zero_frequency=exact_zero,
                               backend="cpu")
    assert relative_max(aligner.landscapes(images),
                        fourier_bessel_landscape(grid, images, subset)) <= 1e-10
    # With astigmatic CTFs: every image multiplied by its own CTF, whatever its group.
    ctf_params = simulate.random_ctf_params(3, 2, astigmatism=1000.0) * 2
    ctf = ctf_on_grid(ctf_params, grid, PIXEL)
    assert relative_max(aligner.landscapes(images, ctf_params=ctf_params, pixel_size=PIXEL),
                        fourier_bessel_landscape(grid, ctf * images, subset)) <= 1e-10


def test_align_returns_the_maximum_of_the_normalised_landscape(grid, projector, templates):
    _, template_polar = templates
    poses = rotations.random_rotations(8, np.random.default_rng(4))
    images = projector.project_polar(poses, grid.radii, grid.n_angles)
    aligner = RadialSVDAligner(grid, template_polar[::7], rank=8, dtype=np.float64,
                               block_size=32, refine_candidates=0, backend="cpu")
    scores = aligner.landscapes(images, normalized=True)
    result = aligner.align(images, top_k=4)
    flat = scores.reshape(len(images), -1)
    best = flat.argmax(axis=1)
    np.testing.assert_array_equal(result.template, best // grid.n_angles)
    np.testing.assert_allclose(result.angle, grid.angles[best % grid.n_angles])
    np.testing.assert_allclose(result.score, flat.max(axis=1), rtol=1e-12)
    # Top-k: the k best templates, each at its own best angle, in order.
    per_template = scores.max(axis=2)
    order = np.argsort(-per_template, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(result.top_template, order)
    np.testing.assert_allclose(result.top_score, np.take_along_axis(per_template, order, 1),
                               rtol=1e-12)
    assert np.all(np.diff(result.top_score, axis=1) <= 0)
    np.testing.assert_array_equal(result.top_template[:, 0], result.template)


def test_refinement_gives_full_rank_scores_of_the_candidates(grid, projector, templates):
    _, template_polar = templates
    poses = rotations.random_rotations(8, np.random.default_rng(12))
    shifts = shift_grid(1.0, 1.0)
    images = projector.project_polar(poses, grid.radii, grid.n_angles, shifts=[0.6, -0.3])
    aligner = RadialSVDAligner(grid, template_polar[::7], rank=4, shifts=shifts,
                               refine_candidates=6, dtype=np.float64, block_size=40,
                               backend="cpu")
    result = aligner.align(images, top_k=3)
    exact = np.stack([aligner.landscapes(images, rank=grid.n_rings, shifts=shift,
                                         normalized=True) for shift in shifts], axis=-1)
    pose = np.round(result.top_angle * grid.n_angles / (2 * np.pi)).astype(int)
    shift_index = [[np.flatnonzero((shifts == s).all(axis=1))[0] for s in row]
                   for row in result.top_shift]
    rows = np.arange(len(images))[:, None]
    np.testing.assert_allclose(result.top_score,
                               exact[rows, result.top_template, pose, shift_index], rtol=1e-10)
    per_candidate = exact[rows, result.top_template].reshape(len(images), 3, -1)
    np.testing.assert_allclose(result.top_score, per_candidate.max(axis=-1), rtol=1e-10)
    best = exact.transpose(0, 1, 3, 2).reshape(len(images), -1).argmax(axis=1)
    np.testing.assert_array_equal(result.template, best // (len(shifts) * grid.n_angles))


# ----------------------------------------------------------------------------- the kernel
def test_kernel_is_real_symmetric_psd_and_factorises_with_ctf(grid, templates):
    _, template_polar = templates
    subset = template_polar[::5]
    aligner = RadialSVDAligner(grid, subset, dtype=np.float64, backend="cpu")
    b = ring_coefficients(subset)
    eta = np.sqrt(grid.weights)
    # All q != 0 (both signs) with complex arithmetic: the imaginary part must vanish.
    nonzero = np.arange(grid.n_angles) != 0
    y = eta[None, :, None] * b[:, :, nonzero]
    full = np.einsum("brq,bsq->rs", y.conj(), y) / len(subset)
    assert np.abs(full.imag).max() <= 1e-12 * np.abs(full.real).max()

    rings = aligner.principal_rings()
    kernel = rings.kernel
    np.testing.assert_allclose(kernel, full.real, rtol=0, atol=1e-12 * np.abs(full).max())
    np.testing.assert_allclose(kernel, kernel.T, rtol=0, atol=1e-14 * np.abs(kernel).max())
    assert rings.eigenvalues.min() >= -1e-12 * rings.eigenvalues[0]
    assert np.all(np.diff(rings.eigenvalues) <= 0)

    ctf = group_ctfs(simulate.random_ctf_params(1, 5, astigmatism=800.0), grid, PIXEL).profiles[0]
    from_multiplied = radial_kernel(ctf[None, :, None] * b, grid.weights)
    np.testing.assert_allclose(aligner.principal_rings(ctf).kernel, from_multiplied, rtol=0,
                               atol=1e-12 * np.abs(from_multiplied).max())

    # Centring on the population adds the covariance of the rotational averages (q = 0)
    # over templates.
    zero = eta[None] * b[:, :, 0].real
    covariance = np.cov(zero, rowvar=False, bias=True)
    np.testing.assert_allclose(radial_kernel(b, grid.weights, centring="population"),
                               full.real + covariance, rtol=0, atol=1e-12 * np.abs(full).max())


def test_rank_follows_the_tolerance():
    eigenvalues = np.array([1.0, 0.5, 0.2, 0.05, 0.011, 0.009, 1e-4])
    assert choose_rank(eigenvalues, 1e-2, min_rank=1) == 5
    assert choose_rank(eigenvalues, 1e-2, min_rank=6) == 6
    assert choose_rank(eigenvalues, 0.3, min_rank=1) == 2
    assert choose_rank(eigenvalues, 1e-2, min_rank=10) == 7


# ----------------------------------------------------------- against real-space rotations
def blob_images(count, rng):
    """Asymmetric Gaussian blobs (sigma >= 3.5 px): negligible spectrum beyond the grid's band."""
    rng = np.random.default_rng(rng)
    y, x = (np.mgrid[:BOX, :BOX] - BOX // 2).astype(np.float64)
    images = np.zeros((count, BOX, BOX))
    for image in images:
        for _ in range(5):
            cx, cy = rng.uniform(-10, 10, 2)
            sigma = rng.uniform(3.5, 5.0)
            image += rng.uniform(0.5, 1.5) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2)
                                                    / (2 * sigma ** 2))
    return images


@pytest.mark.parametrize("shift", [(0.0, 0.0), (2.5, -1.5)])
def test_landscape_equals_real_space_rotated_inner_products(grid, shift):
    images, references = blob_images(3, 10), blob_images(4, 11)
    aligner = RadialSVDAligner(grid, polar_transform(references, grid, backend="cpu",
                                                     dtype=np.float64),
                               rank=grid.n_rings, dtype=np.float64, backend="cpu")
    image_polar = polar_transform(images, grid, backend="cpu", dtype=np.float64)
    ours = aligner.landscapes(image_polar, shifts=shift)
    brute = rotated_inner_products(images, references, grid.angles, shifts=[shift])[..., 0]
    assert relative_max(ours, brute) <= 1e-3
    # Four references leave little for rings beyond the eighth: H = 8 is as close.
    compressed = aligner.landscapes(image_polar, rank=8, shifts=shift)
    assert relative_max(compressed, brute) <= 1e-3


# ----------------------------------------------------------------------------- poses
def test_rotations_from_alignment_reproduce_the_rotated_template(grid, projector, templates):
    template_rotations, template_polar = templates
    rng = np.random.default_rng(5)
    index = rng.integers(0, len(template_rotations), 12)
    steps = rng.integers(0, grid.n_angles, 12)
    poses = rotations_from_alignment(template_rotations, index, grid.angles[steps])
    projected = projector.project_polar(poses, grid.radii, grid.n_angles)
    # R_gamma B at node (r, psi_j) is B at (r, psi_j - gamma): a roll by the angle index.
    rolled = np.stack([np.roll(template_polar[i], s, axis=-1) for i, s in zip(index, steps)])
    assert relative_max(projected, rolled) <= 1e-10


def test_recovers_random_rotations_within_one_grid_step(grid, projector, templates):
    template_rotations, template_polar = templates
    truth = rotations.random_rotations(40, np.random.default_rng(6))
    images = projector.project_polar(truth, grid.radii, grid.n_angles)
    result = RadialSVDAligner(grid, template_polar, backend="cpu").align(images)
    found = rotations_from_alignment(template_rotations, result.template, result.angle)
    error = rotations.angular_distance(found, truth)
    assert error.max() <= GRID_STEP, error.max()


def test_recovers_shifts_on_the_search_grid(grid, projector, templates):
    template_rotations, template_polar = templates
    shifts = shift_grid(2.0, 1.0)
    rng = np.random.default_rng(7)
    truth = rotations.random_rotations(12, rng)
    true_shift = shifts[rng.integers(1, len(shifts), 12)]
    images = projector.project_polar(truth, grid.radii, grid.n_angles, shifts=true_shift)
    result = RadialSVDAligner(grid, template_polar[::3], shifts=shifts, backend="cpu").align(images)
    np.testing.assert_array_equal(result.shift, true_shift)


@pytest.fixture(scope="module")
def simulated(volume, grid):
    """300 noise-free particles, 5 defocus groups, uniform views, CTF, from pixels."""
    particles = simulate.simulate_particles(volume, 300, BOX, PIXEL, rng=8, n_groups=5,
                                            snr=None, keep_clean=False, backend="cpu")
    return particles, polar_transform(particles.images, grid, backend="cpu")


def test_simulated_particles_at_automatic_rank(grid, templates, simulated):
    template_rotations, template_polar = templates
    particles, image_polar = simulated
    aligner = RadialSVDAligner(grid, template_polar, backend="cpu")
    automatic = aligner.align(image_polar, particles.ctf_params, PIXEL)
    full = aligner.align(image_polar, particles.ctf_params, PIXEL, rank=grid.n_rings)
    assert len(automatic.ranks) == 5 and np.all(automatic.ranks < grid.n_rings // 2)
    np.testing.assert_array_equal(automatic.group, particles.group_ids)
    assert np.mean(pose_agreement(automatic, full, grid.n_angles)) >= 0.99
    found = rotations_from_alignment(template_rotations, automatic.template, automatic.angle)
    error = rotations.angular_distance(found, particles.rotations)
    assert np.mean(error <= GRID_STEP) >= 0.99


# ----------------------------------------------------------------------------- groups
def test_ctf_groups_by_ring_power(grid):
    base = simulate.random_ctf_params(3, 9, astigmatism=600.0)
    nudged = [type(p)(p.defocus_u + 1.0, p.defocus_v + 1.0, p.defocus_angle, p.voltage,
                      p.spherical_aberration, p.amplitude_contrast) for p in base]
    params = [base[0], base[1], nudged[0], base[2], base[1], nudged[2]]
    groups = group_ctfs(params, grid, PIXEL)
    np.testing.assert_array_equal(groups.labels, [0, 1, 0, 2, 1, 2])
    ctf = ctf_on_grid(params, grid, PIXEL)
    np.testing.assert_array_equal(groups.tables[groups.index], ctf)
    power = np.mean(ctf ** 2, axis=-1)
    np.testing.assert_allclose(groups.profiles[0], np.sqrt(power[[0, 2]].mean(axis=0)))
    np.testing.assert_allclose(groups.profiles[1], np.sqrt(power[1]))
    separate = group_ctfs(params, grid, PIXEL, tolerance=0.0)
    assert separate.profiles.shape[0] == 5


def test_shift_grid():
    shifts = shift_grid(2.0, 1.0)
    assert shifts.shape == (13, 2)
    np.testing.assert_array_equal(shifts[0], [0, 0])
    assert np.all(np.hypot(*shifts.T) <= 2.0)
    assert np.all(np.diff(np.hypot(*shifts.T)) >= 0)
    np.testing.assert_array_equal(shift_grid(0.0, 1.0), [[0.0, 0.0]])
    assert len(shift_grid(1.0, 0.5)) == 13


def test_progress_reports_every_block(grid, templates):
    _, template_polar = templates
    calls = []
    RadialSVDAligner(grid, template_polar[:20], block_size=4, backend="cpu").align(
        template_polar[:10], progress=lambda event: calls.append((event.done, event.total)))
    assert calls[-1] == (10, 10) and len(calls) == 3


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_typed_errors(grid, templates):
    _, template_polar = templates
    small = template_polar[:5]
    with pytest.raises(InvalidDataError, match="exceeds the 49 rings"):
        RadialSVDAligner(grid, small, rank=grid.n_rings + 1)
    with pytest.raises(ShapeError, match="match the polar grid"):
        RadialSVDAligner(grid, small[:, :, :-2])
    with pytest.raises(InvalidDataError, match="empty"):
        RadialSVDAligner(grid, small[:0])
    aligner = RadialSVDAligner(grid, small, backend="cpu")
    with pytest.raises(InvalidDataError, match="empty"):
        aligner.align(small[:0])
    with pytest.raises(ShapeError, match="match the polar grid"):
        aligner.align(small[:, :-1])
    broken = small.copy()
    broken[2, 3, 4] = np.nan
    with pytest.raises(InvalidDataError, match="index 2"):
        aligner.align(broken)
    with pytest.raises(InvalidDataError, match="exceeds"):
        aligner.align(small, rank=grid.n_rings + 1)
    ctfs = simulate.random_ctf_params(5, 0)
    with pytest.raises(MissingMetadataError, match="pixel size"):
        aligner.align(small, ctf_params=ctfs)
    with pytest.raises(ShapeError, match="one CTF per image"):
        aligner.align(small, ctf_params=ctfs[:3], pixel_size=PIXEL)
    with pytest.raises(InvalidDataError, match="top_k"):
        aligner.align(small, top_k=6)


# ----------------------------------------------------------------------------- CUDA
def _cuda_comparison():
    """CPU and CUDA (simulator) results on tiny random problems, as JSON-able numbers."""
    from cryohess_plugin.core.kernels import resolve_backend

    grid = PolarGrid.from_max_frequency(16, 2.2)  # R = 8 rings, Q = 16 angles
    rng = np.random.default_rng(11)
    images = rng.standard_normal((5, 16, 16))
    references = rng.standard_normal((7, 16, 16))
    out = {"backend": resolve_backend("auto")}
    for dtype in (np.float64, np.float32):
        template_polar = polar_transform(references, grid, backend="cpu", dtype=dtype)
        image_polar = polar_transform(images, grid, backend="cpu", dtype=dtype)
        results = {}
        for backend in ("cpu", "cuda"):
            aligner = RadialSVDAligner(grid, template_polar, rank=3, min_rank=1,
                                       shifts=shift_grid(1.0, 1.0), dtype=dtype,
                                       refine_candidates=0, backend=backend, block_size=3)
            results[backend] = aligner.align(image_polar, top_k=3)
        cpu, gpu = results["cpu"], results["cuda"]
        name = np.dtype(dtype).name
        out[name] = {
            "score": relative_max(gpu.top_score, cpu.top_score),
            "same_poses": bool(np.array_equal(gpu.top_template, cpu.top_template)
                               and np.array_equal(gpu.top_angle, cpu.top_angle)
                               and np.array_equal(gpu.top_shift, cpu.top_shift)),
        }
    return out


@pytest.fixture(scope="module")
def cuda_simulated():
    return run_module_under_simulator(__name__)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
def test_cuda_matches_cpu_under_simulator(cuda_simulated, dtype, tolerance):
    assert cuda_simulated["backend"] == "cuda"
    assert cuda_simulated[dtype]["same_poses"]
    assert cuda_simulated[dtype]["score"] <= tolerance


if __name__ == "__main__":
    print(json.dumps(_cuda_comparison()))


@pytest.mark.parametrize("snr", [None, 0.05])
@pytest.mark.parametrize("rank", [None, 16])
def test_pruned_search_equals_dense_search(grid, volume, templates, snr, rank):
    """The bound is exact: the pruned kernel keeps the top-k of evaluating every pair (the
    dense GEMM kernel) while it evaluates the angle DFT of only a few pairs, noisy or not."""
    _, template_polar = templates
    particles = simulate.simulate_particles(volume, 40, BOX, PIXEL, rng=11, n_groups=1,
                                            shift_sigma=1.0, snr=snr, keep_clean=False,
                                            backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    shifts = shift_grid(2.0, 1.0)
    aligner = RadialSVDAligner(grid, template_polar, rank=rank, shifts=shifts, backend="cpu",
                               dtype=np.float64)
    groups = aligner._groups(particles.ctf_params, PIXEL, len(images))
    images = images * groups.tables[groups.index]
    rings = aligner.principal_rings(groups.profiles[0])
    assert 2 * rings.rank <= grid.n_rings
    scale = aligner._template_scale(rings.ctf)
    phases = shift_phases(grid, shifts)
    rows = [aligner._compress(images * phase, aligner._projections(rings)) for phase in phases]
    coefficients = np.stack([c for c, _ in rows], axis=1).reshape((-1,) + rows[0][0].shape[1:])
    zero = np.stack([z for _, z in rows], axis=1).reshape(-1, rows[0][1].shape[1])
    tops = []
    for kernels in (alignment_cpu, alignment_pruned_cpu):
        prepared = aligner._prepare_templates(rings, kernels, len(coefficients), scale)
        top = [np.full((len(images), 5), -np.inf), *np.zeros((3, len(images), 5), np.int64)]
        statistics = kernels.search(prepared, coefficients, zero, len(shifts), *top)
        tops.append(top)
    (dense_score, *dense_pose), (pruned_score, *pruned_pose) = tops
    for dense, pruned in zip(dense_pose, pruned_pose):
        np.testing.assert_array_equal(pruned, dense)
    np.testing.assert_allclose(pruned_score, dense_score, rtol=1e-12)
    seen, evaluated = statistics.pairs, statistics.evaluated
    assert seen == len(coefficients) * aligner.n_templates
    assert evaluated < 0.15 * seen


@pytest.mark.parametrize("refine", [0, 4])
def test_pruning_always_gives_the_full_rank_assignments_of_the_dense_search(grid, volume,
                                                                            templates, refine):
    """``pruning="always"`` at full rank (the exact baseline of the compression) keeps every
    pose of evaluating every pair (``"never"``) on noisy, astigmatic, shifted particles in two
    CTF groups, while it evaluates the angle DFT of a few pairs only; the default prunes
    only below ``H = R / 2``."""
    _, template_polar = templates
    particles = simulate.simulate_particles(volume, 24, BOX, PIXEL, rng=13, n_groups=2,
                                            shift_sigma=1.0, snr=0.1, astigmatism=800.0,
                                            keep_clean=False, backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    results = {}
    for pruning in ("always", "never", "auto"):
        aligner = RadialSVDAligner(grid, template_polar, rank=grid.n_rings, pruning=pruning,
                                   shifts=shift_grid(1.0, 1.0), refine_candidates=refine,
                                   backend="cpu", dtype=np.float64)
        results[pruning] = aligner.align(images, particles.ctf_params, PIXEL, top_k=3)
    pruned, dense = results["always"], results["never"]
    for name in ("top_template", "top_angle", "top_shift"):
        np.testing.assert_array_equal(getattr(pruned, name), getattr(dense, name))
    np.testing.assert_allclose(pruned.top_score, dense.top_score, rtol=1e-12)
    assert dense.statistics.evaluated == dense.statistics.pairs
    assert pruned.statistics.evaluated < 0.2 * pruned.statistics.pairs
    assert results["auto"].statistics.evaluated == results["auto"].statistics.pairs
    with pytest.raises(ValueError, match="pruning"):
        RadialSVDAligner(grid, template_polar[:4], pruning="sometimes")


def test_automatic_pruning_turns_dense_without_changing_the_poses(grid, volume, templates,
                                                                monkeypatch):
    """``pruning="auto"`` runs a call's later CTF groups dense once a pruned group evaluated
    more than its share of pairs; the poses stay those of either search."""
    from cryohess_plugin.core.alignment import radial_svd
    _, template_polar = templates
    particles = simulate.simulate_particles(volume, 30, BOX, PIXEL, rng=15, n_groups=3,
                                            snr=0.05, keep_clean=False, backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    monkeypatch.setattr(radial_svd, "_PRUNED_SHARE", 0.0)
    results = {pruning: RadialSVDAligner(grid, template_polar, pruning=pruning,
                                         refine_candidates=0, ctf_tolerance=0, backend="cpu",
                                         dtype=np.float64).align(images, particles.ctf_params,
                                                                 PIXEL, top_k=3)
               for pruning in ("auto", "always", "never")}
    assert len(results["auto"].ranks) > 1
    for name in ("top_template", "top_angle", "top_shift"):
        np.testing.assert_array_equal(getattr(results["auto"], name),
                                      getattr(results["never"], name))
        np.testing.assert_array_equal(getattr(results["always"], name),
                                      getattr(results["never"], name))
    evaluated = {pruning: result.statistics.evaluated for pruning, result in results.items()}
    assert evaluated["always"] < evaluated["auto"] < evaluated["never"]


def test_search_band_keeps_the_energy_of_the_compressed_templates(grid, volume, templates):
    """The compressed search's angular band leaves out at most ``band_tolerance`` of the
    compressed templates' energy, full rank keeps every frequency; the kernels (dense and
    pruned) then compute exactly the band-limited landscape on all ``Q`` angles."""
    _, template_polar = templates
    aligner = RadialSVDAligner(grid, template_polar, backend="cpu", dtype=np.float64)
    rings = aligner.principal_rings()
    compressed, zero = aligner._compressed_templates([rings])[0]
    half = grid.n_angles // 2
    band = aligner._search_band(compressed, rings.rank)
    assert 2 <= band < half
    energy = np.sum(np.abs(compressed[:, :, 1:]) ** 2, axis=(0, 1))
    assert energy[band - 1:].sum() <= aligner.band_tolerance * energy.sum()
    assert energy[band - 2:].sum() > aligner.band_tolerance * energy.sum()
    assert aligner._search_band(compressed, grid.n_rings) == half
    unbanded = RadialSVDAligner(grid, template_polar[:4], band_tolerance=0, backend="cpu")
    assert unbanded._search_band(compressed, rings.rank) == half

    particles = simulate.simulate_particles(volume, 9, BOX, PIXEL, rng=14, n_groups=1,
                                            snr=0.1, keep_clean=False, backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    projections = aligner._projections(rings)
    coefficients, image_zero = aligner._compress(images, projections, band)
    assert coefficients.shape[-1] == band - 1
    scale = np.ones(aligner.n_templates)
    prepared = aligner._prepare_templates(rings, alignment_cpu, len(images), scale,
                                          (compressed, zero), band)
    landscapes = alignment_cpu.landscapes(prepared, coefficients, image_zero)
    # The band-limited sum written out: q = 0 and 2 Re over 1 <= q < band.
    xhat = np.einsum("ihq,hbq->ibq", coefficients.conj(), compressed[:, :, 1:band])
    gamma = grid.angles
    q = np.arange(1, band)
    expected = (image_zero @ zero.T)[..., None] + 2 * np.einsum(
        "ibq,qj->ibj", xhat, np.exp(-1j * q[:, None] * gamma[None])).real
    assert relative_max(landscapes, aligner._factor * expected) <= 1e-10
    tops = []
    for kernels in (alignment_cpu, alignment_pruned_cpu):
        prepared = aligner._prepare_templates(rings, kernels, len(images), scale,
                                              (compressed, zero), band)
        top = [np.full((len(images), 3), -np.inf), *np.zeros((3, len(images), 3), np.int64)]
        kernels.search(prepared, coefficients, image_zero, 1, *top)
        tops.append(top)
    for dense, pruned in zip(*tops):
        np.testing.assert_allclose(pruned, dense, rtol=1e-12)


@pytest.mark.parametrize("tail", [0.0, 1.0])
def test_pruned_search_is_exact_for_any_split_of_the_bound(grid, volume, templates, tail,
                                                           monkeypatch):
    """The bound's exact frequencies and its Cauchy-Schwarz tail may be split anywhere (all
    exact, all Cauchy-Schwarz) without changing the top-k; image rows not a multiple of the
    kernel's row block go through the single-row path."""
    _, template_polar = templates
    monkeypatch.setattr(alignment_pruned_cpu, "_BOUND_TAIL", tail)
    particles = simulate.simulate_particles(volume, 7, BOX, PIXEL, rng=12, n_groups=1,
                                            snr=0.05, keep_clean=False, backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    aligner = RadialSVDAligner(grid, template_polar, backend="cpu", dtype=np.float64)
    groups = aligner._groups(particles.ctf_params, PIXEL, len(images))
    rings = aligner.principal_rings(groups.profiles[0])
    assert 2 * rings.rank <= grid.n_rings
    scale = aligner._template_scale(rings.ctf)
    images = images * groups.tables[groups.index]
    coefficients, zero = aligner._compress(images, aligner._projections(rings))
    assert len(coefficients) % alignment_pruned_cpu._ROWS != 0
    tops = []
    for kernels in (alignment_cpu, alignment_pruned_cpu):
        prepared = aligner._prepare_templates(rings, kernels, len(coefficients), scale)
        if kernels is alignment_pruned_cpu:
            n_freq = grid.n_angles // 2 - 1
            assert prepared.exact == (0 if tail == 1.0 else n_freq)
        top = [np.full((len(images), 3), -np.inf), *np.zeros((3, len(images), 3), np.int64)]
        kernels.search(prepared, coefficients, zero, 1, *top)
        tops.append(top)
    (dense_score, *dense_pose), (pruned_score, *pruned_pose) = tops
    for dense, pruned in zip(dense_pose, pruned_pose):
        np.testing.assert_array_equal(pruned, dense)
    np.testing.assert_allclose(pruned_score, dense_score, rtol=1e-12)


def test_result_files_batches_and_search_statistics(tmp_path, grid, templates):
    """Batches of one particle set give the poses of one run; a saved result loads back
    field by field; the search reports the pairs it compared."""
    _, template_polar = templates
    aligner = RadialSVDAligner(grid, template_polar[:60], shifts=shift_grid(1.0, 1.0),
                               backend="cpu", dtype=np.float64)
    images = template_polar[100:106]
    ctfs = simulate.random_ctf_params(2, 3) * 3
    whole = aligner.align(images, ctfs, PIXEL, top_k=2)
    batches = [aligner.align(images[:4], ctfs[:4], PIXEL, top_k=2),
               aligner.align(images[4:], ctfs[4:], PIXEL, top_k=2)]
    for batch, ids in zip(batches, (np.arange(4), np.arange(4, 6))):
        batch.ids = ids
    joined = type(whole).concatenate(batches)
    np.testing.assert_array_equal(joined.ids, np.arange(6))
    for name in ("template", "angle", "shift", "top_template"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name))
    # Blocks of other sizes, and group means of other counts, round differently.
    np.testing.assert_allclose(joined.top_score, whole.top_score, rtol=1e-12)
    np.testing.assert_array_equal(joined.ranks[joined.group], whole.ranks[whole.group])
    np.testing.assert_allclose(joined.eigenvalues[joined.group], whole.eigenvalues[whole.group],
                               rtol=1e-10, atol=1e-12 * whole.eigenvalues.max())
    assert joined.statistics == whole.statistics
    assert whole.statistics.pairs == len(images) * 5 * 60
    assert 0 < whole.statistics.evaluated <= whole.statistics.pairs

    path = str(tmp_path / "batch.npz")
    whole.ids = np.arange(10, 16)
    whole.save(path)
    loaded = type(whole).load(path)
    assert loaded.statistics == whole.statistics
    for name in ("template", "angle", "shift", "score", "group", "ranks", "eigenvalues",
                 "group_ctf", "top_template", "top_angle", "top_shift", "top_score", "ids"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(whole, name))
