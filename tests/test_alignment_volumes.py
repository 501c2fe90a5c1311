"""Volume alignment over SO(3) with the radial- and degree-SVD
(``docs/methods/radial_svd_alignment.md`` §4, checks listed in §7)."""
import json

import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms, phantoms
from cryohess_plugin.core import rotations, spherical
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.alignment.radial_svd import shift_grid
from cryohess_plugin.core.alignment.volumes import (VolumeAligner, VolumeAlignmentResult,
                                                    rotate_volume, table_bytes)

from .cudasim import run_module_under_simulator
from .helpers import gaussian_blobs

BOX, PIXEL = 32, 3.0


class Phantom:
    """A protein-like atomic phantom rendered at any rotation and shift.

    The B-factor gives atoms a width of about one voxel, so the sampled map is
    band-limited and its rotations are exact rotations of one density.
    """

    def __init__(self):
        self.model = phantoms.random_protein_phantom(1500, radius_angstrom=0.3 * BOX * PIXEL,
                                                     rng=3, bfactor=8 * np.pi ** 2 * PIXEL ** 2)
        self.centre = self.model.centroid()

    def render(self, rotation=np.eye(3), shift=np.zeros(3)):
        """Map whose density at ``r`` sits at ``rotation @ r + shift`` (pixels)."""
        positions = (self.model.positions - self.centre) @ rotation.T + self.centre + shift * PIXEL
        moved = atoms.AtomModel(positions, self.model.elements, self.model.bfactors)
        return atoms.gaussian_atom_volume(moved, BOX, PIXEL, center=self.centre)


@pytest.fixture(scope="module")
def phantom():
    return Phantom()


@pytest.fixture(scope="module")
def reference(phantom):
    return phantom.render()


@pytest.fixture(scope="module")
def aligner(reference):
    return VolumeAligner(reference, backend="cpu")


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_full_rank_equals_unreduced_landscape(phantom, reference):
    """H_C = R and H_D = L + 1 reproduce the unreduced landscape."""
    probe = VolumeAligner(reference, max_frequency=6.0, backend="cpu")
    full = VolumeAligner(reference, max_frequency=6.0, backend="cpu",
                         radial_rank=probe.shells.n_shells,
                         degree_rank=probe.shells.max_degree + 1)
    volume = phantom.render(rotations.random_rotations(1, np.random.default_rng(5))[0])
    unreduced = full.landscape(volume, full_rank=True)[3]
    assert relative(full.landscape(volume)[3], unreduced) <= 1e-10
    # At the default ranks the landscape is off by the l = 0 constant and more,
    # but stays strongly correlated and keeps its argmax.
    compressed = probe.landscape(volume)[3]
    assert np.corrcoef(compressed.ravel(), unreduced.ravel())[0, 1] > 0.98
    assert np.argmax(compressed) == np.argmax(probe.landscape(volume, full_rank=True)[3])


def test_unreduced_landscape_matches_real_space_rotations():
    """The landscape is box³ times the real-space product of the rotated map and the reference."""
    rng = np.random.default_rng(6)
    centres, sigmas, amplitudes = rng.uniform(-8, 8, (7, 3)), rng.uniform(2.5, 3.0, 7), \
        rng.uniform(0.5, 1.5, 7)
    reference = gaussian_blobs(BOX, centres, sigmas, amplitudes)
    truth = rotations.random_rotations(1, rng)[0]
    volume = gaussian_blobs(BOX, centres @ truth.T, sigmas, amplitudes)
    aligner = VolumeAligner(reference, max_frequency=8.0, backend="cpu")
    alpha, beta, gamma, values = aligner.landscape(volume, full_rank=True)
    picks = [np.unravel_index(np.argmax(values), values.shape)]
    picks += [tuple(rng.integers(0, n) for n in values.shape) for _ in range(29)]
    errors = []
    for i, j, k in picks:
        rotation = spherical.landscape_rotation(alpha[i], beta[j], gamma[k])
        # rotate_volume(volume, R) moves the blob at R_true c to R R_true c: analytic.
        moved = gaussian_blobs(BOX, centres @ (rotation @ truth).T, sigmas, amplitudes)
        errors.append(abs(values[i, j, k] - BOX ** 3 * np.sum(moved * reference)))
    assert max(errors) <= 1e-2 * values.max()


def test_refinement_evaluator_is_the_exact_landscape(phantom, aligner):
    """The trigonometric form used by the refinement equals eq. (101) anywhere in SO(3)."""
    rng = np.random.default_rng(7)
    volume = phantom.render(rotations.random_rotations(1, rng)[0])
    coefficients = aligner.transform.coefficients(volume)
    hat = aligner._unreduced_hat(coefficients)
    trig = aligner._trigonometric_coefficients(hat)
    alpha, beta, gamma, values = aligner.landscape(volume, full_rank=True)
    compressed = aligner.landscape(volume)[3]
    compressed_trig = aligner._trigonometric_coefficients(aligner._compressed_hat(coefficients))
    for i, j, k in [tuple(rng.integers(0, n) for n in values.shape) for _ in range(5)]:
        angles = (alpha[i], beta[j], gamma[k])
        assert aligner._evaluate(trig, angles)[0] == pytest.approx(
            values[i, j, k], abs=1e-10 * np.abs(values).max())
        assert aligner._evaluate(compressed_trig, angles)[0] == pytest.approx(
            compressed[i, j, k], abs=1e-10 * np.abs(compressed).max())
    shells = aligner.shells
    reference = aligner._reference
    for angles in rng.uniform(-np.pi, np.pi, (3, 3)):
        # X = <A, B(R ·)>: eq. (101) summed directly with d(β) from the eigensystem.
        direct = shells.inner(coefficients, spherical.rotate_coefficients(reference, *angles)).real
        value, gradient = aligner._evaluate(trig, angles)
        assert value == pytest.approx(direct, rel=1e-10)
        step = 1e-6
        numeric = [(aligner._evaluate(trig, angles + step * e)[0]
                    - aligner._evaluate(trig, angles - step * e)[0]) / (2 * step)
                   for e in np.eye(3)]
        assert np.allclose(gradient, numeric, rtol=1e-6, atol=1e-8 * abs(value))


def test_local_model_is_the_trigonometric_landscape(phantom, aligner):
    """The refinement's model (no FFT over β) matches _evaluate; its Hessian matches differences."""
    rng = np.random.default_rng(15)
    volume = phantom.render(rotations.random_rotations(1, rng)[0])
    hat = aligner._unreduced_hat(aligner.transform.coefficients(volume))
    trig = aligner._trigonometric_coefficients(hat)
    model = aligner._local_model(hat)
    for angles in rng.uniform(-np.pi, np.pi, (3, 3)):
        value, gradient, hessian = model(angles)
        expected, expected_gradient = aligner._evaluate(trig, angles)
        assert value == pytest.approx(expected, rel=1e-12)
        assert np.allclose(gradient, expected_gradient, rtol=1e-10, atol=1e-12 * abs(value))
        step = 1e-5
        numeric = np.array([(model(angles + step * e)[1] - model(angles - step * e)[1])
                            / (2 * step) for e in np.eye(3)])
        assert np.allclose(hessian, hessian.T)
        assert np.allclose(hessian, numeric, rtol=1e-5, atol=1e-7 * np.abs(hessian).max())


def test_compressed_band_and_coarse_search_grid(phantom, reference, aligner):
    """The kept principal degrees end below L, so the compressed landscape is searched on
    its own coarser grid; those samples are exact values of the same landscape."""
    shells = aligner.shells
    assert aligner.band < shells.max_degree
    assert aligner.search_orders >= 2 * aligner.band + 1
    assert aligner.search_orders < shells.n_orders
    full = VolumeAligner(reference, backend="cpu", radial_rank=shells.n_shells,
                         degree_rank=shells.max_degree + 1)
    assert full.band == shells.max_degree
    volume = phantom.render(rotations.random_rotations(1, np.random.default_rng(16))[0])
    coefficients = aligner.transform.coefficients(volume)
    n = aligner.search_orders
    coarse = aligner._grid_values(aligner._compressed_hat(coefficients, n))  # (β, α, γ)
    trig = aligner._trigonometric_coefficients(aligner._compressed_hat(coefficients))
    rng = np.random.default_rng(17)
    for b, a, g in [tuple(rng.integers(0, k) for k in coarse.shape) for _ in range(5)]:
        angles = 2 * np.pi * np.array([a, b, g]) / n
        assert coarse[b, a, g] == pytest.approx(aligner._evaluate(trig, angles)[0],
                                                abs=1e-10 * np.abs(coarse).max())
    value, angles, _ = aligner._search(coefficients)
    assert value == pytest.approx(coarse.max())


def test_refinement_evaluator_on_an_odd_grid(phantom, reference):
    """The half-period extension over β also holds when N is odd (no β = π row)."""
    aligner = VolumeAligner(reference, max_frequency=4.0, max_degree=12, backend="cpu")
    assert aligner.shells.n_orders % 2 == 1
    volume = phantom.render(rotations.random_rotations(1, np.random.default_rng(14))[0])
    alpha, beta, gamma, values = aligner.landscape(volume, full_rank=True)
    trig = aligner._trigonometric_coefficients(
        aligner._unreduced_hat(aligner.transform.coefficients(volume)))
    for i, j, k in [(0, 0, 0), (3, 5, 7), (24, 12, 1), (10, 11, 20)]:
        assert aligner._evaluate(trig, (alpha[i], beta[j], gamma[k]))[0] == pytest.approx(
            values[i, j, k], abs=1e-12 * np.abs(values).max())


def test_recovers_rotations_of_a_noisy_map(phantom, reference, aligner):
    rng = np.random.default_rng(8)
    truths = rotations.random_rotations(3, rng)
    noise = reference.std()  # per-voxel SNR 1 over the whole box
    volumes = np.stack([phantom.render(r) + noise * rng.standard_normal(reference.shape)
                        for r in truths])
    expected = np.transpose(truths, (0, 2, 1))  # rotate_volume(volume_i, R_iᵀ) = reference
    step = 360.0 / aligner.shells.n_orders
    calls = []
    aligner.refine = False
    try:
        grid = aligner.align(volumes, progress=lambda event: calls.append((event.done, event.total)))
    finally:
        aligner.refine = True
    refined = aligner.align(volumes)
    full = aligner.align(volumes, full_rank=True)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(refined, VolumeAlignmentResult)
    assert refined.rotation.shape == (3, 3, 3) and refined.shift.shape == (3, 3)
    assert np.all(refined.shift == 0) and refined.ranks == aligner.ranks
    assert np.all(rotations.angular_distance(grid.rotation, expected) <= step)
    assert np.all(rotations.angular_distance(refined.rotation, expected) < 1.0)
    assert np.all(rotations.angular_distance(full.rotation, refined.rotation) < 1e-3)
    assert np.all(refined.score >= grid.score) and np.all(refined.score < 1)
    assert np.all(refined.score > 0.9)


def test_noise_free_refinement_is_exact(phantom, aligner):
    truth = rotations.random_rotations(1, np.random.default_rng(9))[0]
    result = aligner.align(phantom.render(truth))
    assert rotations.angular_distance(result.rotation[0], truth.T) < 0.01
    assert result.score[0] > 0.9999


def test_translation_search_recovers_the_shift(phantom, reference):
    aligner = VolumeAligner(reference, max_frequency=6.0, max_shift=2.0, backend="cpu")
    assert len(aligner.shifts) == 33 and np.all(aligner.shifts[0] == 0)
    truth = rotations.random_rotations(1, np.random.default_rng(10))[0]
    offset = np.array([1.0, -1.0, 1.0])
    volume = phantom.render(truth, offset)
    result = aligner.align(volume)
    assert rotations.angular_distance(result.rotation[0], truth.T) < 0.05
    assert np.abs(result.shift[0] - (-truth.T @ offset)).max() < 0.02
    restored = rotate_volume(volume, result.rotation[0], result.shift[0])
    assert np.corrcoef(restored.ravel(), reference.ravel())[0, 1] > 0.999


def test_rotate_volume_direction(phantom, reference):
    rng = np.random.default_rng(11)
    rotation = rotations.random_rotations(1, rng)[0]
    shift = np.array([1.5, -0.5, 2.0])
    rotated = rotate_volume(reference, rotation, shift)
    assert relative(rotated, phantom.render(rotation, shift)) < 2e-2
    # Projected at R0, the output is the input projected at R0 @ R, shifted by (R0 t)[:2].
    poses = rotations.random_rotations(2, rng)
    output_images = FourierSliceProjector(rotated, dtype=np.float64, backend="cpu").project(poses)
    input_images = FourierSliceProjector(reference, dtype=np.float64, backend="cpu").project(
        poses @ rotation, shifts=(poses @ shift)[:, :2])
    assert relative(output_images, input_images) < 2e-2


def test_kernels_and_ranks(aligner):
    """C and D are PSD; ranks follow the tolerance and never drop below 4."""
    for values in (aligner.radial_eigenvalues, aligner.degree_eigenvalues):
        assert np.all(np.diff(values) <= 1e-12 * values[0])
        assert values[-1] >= -1e-12 * values[0]
    h_c, h_d = aligner.ranks
    assert h_c == max(4, np.count_nonzero(aligner.radial_eigenvalues
                                          > 1e-2 * aligner.radial_eigenvalues[0]))
    assert h_d == max(4, np.count_nonzero(aligner.degree_eigenvalues
                                          > 1e-2 * aligner.degree_eigenvalues[0]))
    assert np.count_nonzero(aligner.degree_eigenvalues) <= aligner.shells.max_degree
    assert shift_grid(0.0, 1.0, dimensions=3).shape == (1, 3)


def test_table_size_estimate_is_the_table(aligner, reference, tmp_path):
    """The size the protocol warns about is the table the aligner keeps; a result saved
    by its fields loads back."""
    assert table_bytes(aligner.shells) == aligner._ragged_table.nbytes
    result = aligner.align(reference)
    result.save(str(tmp_path / "result.npz"))
    loaded = VolumeAlignmentResult.load(str(tmp_path / "result.npz"))
    assert loaded.ranks == result.ranks
    for name in ("rotation", "shift", "score", "radial_eigenvalues", "degree_eigenvalues"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name))


def test_resolution_sets_the_band_limit(reference):
    aligner = VolumeAligner(reference, resolution=16.0, pixel_size=PIXEL, backend="cpu")
    assert aligner.shells.max_frequency == pytest.approx(BOX * PIXEL / 16.0)
    assert aligner.shells.max_degree == int(np.ceil(np.pi * BOX * PIXEL / 16.0))
    with pytest.raises(InvalidDataError):
        VolumeAligner(reference, resolution=5.0, pixel_size=PIXEL)  # finer than Nyquist
    with pytest.raises(InvalidDataError):
        VolumeAligner(reference, resolution=16.0, pixel_size=PIXEL, max_frequency=4.0)


def test_single_precision_agrees(phantom, reference, aligner):
    truth = rotations.random_rotations(1, np.random.default_rng(12))[0]
    volume = phantom.render(truth)
    single = VolumeAligner(reference, dtype=np.float32, backend="cpu")
    assert single.ranks == aligner.ranks
    a = single.align(volume.astype(np.float32))
    b = aligner.align(volume)
    assert rotations.angular_distance(a.rotation[0], b.rotation[0]) < 0.05
    assert a.score[0] == pytest.approx(b.score[0], abs=1e-4)


@pytest.mark.parametrize("case", ["non-cubic reference", "volume box", "nan volume",
                                  "radial rank", "degree rank", "resolution without pixel",
                                  "beyond nyquist", "no volumes"])
def test_bad_input_raises_typed_errors(reference, case):
    small = VolumeAligner(reference, max_frequency=4.0, backend="cpu")
    errors = {
        "non-cubic reference": (ShapeError, lambda: VolumeAligner(reference[:, :, :-2])),
        "volume box": (ShapeError, lambda: small.align(reference[:-2, :-2, :-2])),
        "nan volume": (InvalidDataError, lambda: small.align(
            np.where(reference > reference.max() / 2, np.nan, reference))),
        "radial rank": (InvalidDataError, lambda: VolumeAligner(reference, max_frequency=4.0,
                                                                radial_rank=100)),
        "degree rank": (InvalidDataError, lambda: VolumeAligner(reference, max_frequency=4.0,
                                                                degree_rank=0)),
        "resolution without pixel": (InvalidDataError, lambda: VolumeAligner(reference,
                                                                             resolution=10.0)),
        "beyond nyquist": (InvalidDataError, lambda: VolumeAligner(reference, max_frequency=17.0)),
        "no volumes": (ShapeError, lambda: small.align(np.zeros((0,) + reference.shape))),
    }
    error, call = errors[case]
    with pytest.raises(error):
        call()


# ---------------------------------------------------------------------- CUDA (simulator)
def _simulated_differences():
    """CUDA against CPU kernels and aligners; run in a child with the simulator on."""
    from cryohess_plugin.core.kernels import volume_cpu, volume_cuda

    rng = np.random.default_rng(13)
    result = {}
    for name, real, complex_ in [("float64", np.float64, np.complex128),
                                 ("float32", np.float32, np.complex64)]:
        n_beta, n_z, n_i, n_j, degrees = 3, 2, 5, 3, 3
        table = rng.standard_normal((n_beta, n_z, n_i, n_j)).astype(real)
        coefficients = (rng.standard_normal((n_z, n_i, n_j))
                        + 1j * rng.standard_normal((n_z, n_i, n_j))).astype(complex_)
        outs = [np.empty((n_beta, n_i, n_j), complex_) for _ in range(2)]
        volume_cpu.degree_sum(table, coefficients, outs[0])
        volume_cuda.degree_sum(volume_cuda.upload(table), coefficients, outs[1])
        result[f"degree_sum-{name}"] = relative(outs[1], outs[0])

        first = rng.integers(0, degrees + 1, (n_i, n_j))
        counts = degrees - first
        offsets = np.concatenate([[0], np.cumsum(counts.ravel())[:-1]]).reshape(counts.shape)
        ragged = rng.standard_normal((counts.sum(), n_beta)).astype(real)
        coefficients = (rng.standard_normal((n_i, n_j, degrees))
                        + 1j * rng.standard_normal((n_i, n_j, degrees))).astype(complex_)
        volume_cpu.wigner_sum(ragged, offsets, first, coefficients, outs[0])
        volume_cuda.wigner_sum(*[volume_cuda.upload(a) for a in (ragged, offsets, first)],
                               coefficients, outs[1])
        result[f"wigner_sum-{name}"] = relative(outs[1], outs[0])

    volume = gaussian_blobs(10, rng.uniform(-2, 2, (3, 3)), [1.5, 1.8, 2.0], [1.0, 0.7, 0.5])
    moved = gaussian_blobs(10, rng.uniform(-2, 2, (3, 3)), [1.5, 1.8, 2.0], [1.0, 0.7, 0.5])
    cpu, gpu = (VolumeAligner(volume, max_frequency=1.5, backend=backend)
                for backend in ("cpu", "cuda"))
    result["backend"] = gpu.backend
    for full_rank in (False, True):
        result[f"landscape-{full_rank}"] = relative(gpu.landscape(moved, full_rank)[3],
                                                    cpu.landscape(moved, full_rank)[3])
    result["align"] = float(rotations.angular_distance(gpu.align(moved).rotation[0],
                                                       cpu.align(moved).rotation[0]))
    return result


@pytest.fixture(scope="module")
def simulated():
    return run_module_under_simulator(__name__)


def test_cuda_kernels_match_cpu_under_simulator(simulated):
    assert simulated["backend"] == "cuda"
    for name in ("degree_sum", "wigner_sum"):
        assert simulated[f"{name}-float64"] <= 1e-12
        assert simulated[f"{name}-float32"] <= 1e-5
    assert simulated["landscape-False"] <= 1e-10
    assert simulated["landscape-True"] <= 1e-10
    assert simulated["align"] < 1e-4  # degrees; arccos resolves about 1e-6 near 0


if __name__ == "__main__":
    print(json.dumps(_simulated_differences()))
