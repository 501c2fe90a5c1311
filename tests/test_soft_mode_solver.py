"""Soft-mode eigen-solver, log-20 perturbation size, soft variance and shell volumes."""
import numpy as np
import pytest
import scipy.linalg

from cryohess_plugin.core import fourier, spherical
from cryohess_plugin.core.errors import (ConvergenceError, InvalidDataError, ShapeError)
from cryohess_plugin.core.soft_mode_solver import (per_shell_profile, perturbation_size,
                                                   shells_to_volume, soft_variance,
                                                   softest_modes)

SIZE, N_NULL, N_MODES = 60, 3, 5


@pytest.fixture(scope="module")
def planted():
    """SPD operator on the complement of a 3-D null space, and a diagonal metric."""
    rng = np.random.default_rng(1)
    null_space = rng.standard_normal((N_NULL, SIZE))
    complement = np.eye(SIZE) - null_space.T @ np.linalg.solve(null_space @ null_space.T,
                                                                null_space)
    basis, _ = np.linalg.qr(rng.standard_normal((SIZE, SIZE)))
    stiffness = basis @ np.diag(np.geomspace(1e-2, 10, SIZE)) @ basis.T
    operator = complement @ stiffness @ complement  # G N = 0 exactly
    metric = rng.uniform(0.5, 2.0, SIZE)
    return operator, null_space, metric


def dense_reference(operator, null_space, metric):
    """Generalised eigenvalues of G x = λ W x on {x : N W x = 0}."""
    basis = scipy.linalg.null_space(null_space * metric)
    return scipy.linalg.eigh(basis.T @ operator @ basis, basis.T @ (metric[:, None] * basis),
                             eigvals_only=True)


def test_softest_modes_match_the_dense_generalised_problem(planted):
    operator, null_space, metric = planted
    modes = softest_modes(lambda x: operator @ x, SIZE, N_MODES, null_space=null_space,
                          metric=metric)
    reference = dense_reference(operator, null_space, metric)[:N_MODES]
    # Measured: 2e-13 relative, residuals <= 7e-13, 1051 operator applications.
    np.testing.assert_allclose(modes.eigenvalues, reference, rtol=1e-8)
    assert np.all(np.diff(modes.eigenvalues) > 0)
    gram = modes.vectors @ (metric[:, None] * modes.vectors.T)
    np.testing.assert_allclose(gram, np.eye(N_MODES), atol=1e-10)
    assert np.abs(modes.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    # Eigen-equation in the metric, checked directly on the returned vectors.
    lhs = modes.vectors @ operator
    rhs = modes.eigenvalues[:, None] * modes.vectors * metric
    assert np.abs(lhs - rhs).max() < 1e-9
    assert modes.converged.all() and modes.residuals.max() < 1e-10
    assert modes.iterations > N_MODES


def test_softest_modes_without_null_space_or_metric():
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    spectrum = np.geomspace(0.1, 5.0, 30)
    operator = basis @ np.diag(spectrum) @ basis.T
    modes = softest_modes(lambda x: operator @ x, 30, 3, rng=5)
    np.testing.assert_allclose(modes.eigenvalues, spectrum[:3], rtol=1e-8)
    np.testing.assert_allclose(np.abs(modes.vectors @ basis[:, :3]), np.eye(3), atol=1e-7)


def test_softest_modes_reject_bad_input(planted):
    operator, null_space, metric = planted
    apply = lambda x: operator @ x  # noqa: E731
    with pytest.raises(InvalidDataError, match="NaN or infinite"):
        softest_modes(lambda x: np.full(SIZE, np.nan), SIZE, 2)
    with pytest.raises(ShapeError, match="matvec returned shape"):
        softest_modes(lambda x: x[:-1], SIZE, 2)
    with pytest.raises(InvalidDataError, match="n_modes must be between 1 and 56"):
        softest_modes(apply, SIZE, SIZE - N_NULL, null_space=null_space)
    with pytest.raises(ShapeError, match="metric must be the diagonal"):
        softest_modes(apply, SIZE, 2, metric=metric[:-1])
    with pytest.raises(InvalidDataError, match="finite and positive"):
        softest_modes(apply, SIZE, 2, metric=-metric)
    with pytest.raises(ShapeError, match="null_space must have shape"):
        softest_modes(apply, SIZE, 2, null_space=null_space[:, :-1])
    with pytest.raises(InvalidDataError, match="linearly dependent"):
        softest_modes(apply, SIZE, 2, null_space=np.vstack([null_space, null_space[0]]))
    with pytest.raises(ConvergenceError, match="raise max_iterations"):
        softest_modes(apply, SIZE, N_MODES, null_space=null_space, max_iterations=1)


def test_perturbation_size_meets_the_log_likelihood_threshold():
    eigenvalues = np.array([0.27, 10.0])
    epsilon = perturbation_size(eigenvalues)
    np.testing.assert_allclose(0.5 * eigenvalues * epsilon ** 2, np.log(20), rtol=1e-14)
    # Notes 4.4: ε = sqrt(2 σ² log 20 / (J λ)) for a per-image eigenvalue of σ² NLL.
    scaled = perturbation_size(0.27, noise_variance=1 / 7.7e4, n_images=1000)
    assert scaled == pytest.approx(np.sqrt(2 * np.log(20) / (7.7e4 * 1000 * 0.27)), rel=1e-14)
    with pytest.raises(InvalidDataError, match="finite and positive"):
        perturbation_size(0.0)


def test_soft_variance_and_per_shell_profile_closed_forms():
    modes = np.array([[3.0, 4j, 0.0, 1.0],
                      [0.0, 1.0, 2.0, -1.0],
                      [5.0, 5.0, 5.0, 5.0]])
    eigenvalues = np.array([0.5, 2.0, 100.0])
    variance = soft_variance(modes, eigenvalues, count=2)
    np.testing.assert_allclose(variance, [18.0, 32.5, 2.0, 2.5])
    assert soft_variance(modes, eigenvalues)[0] == pytest.approx(18.25)
    profile = per_shell_profile(variance, np.array([1, 0, 1, 1]), n_shells=3)
    np.testing.assert_allclose(profile, [32.5, 22.5, 0.0])
    with pytest.raises(InvalidDataError, match="positive eigenvalues"):
        soft_variance(modes, np.array([0.5, -1.0, 1.0]))
    with pytest.raises(ShapeError):
        per_shell_profile(variance, np.zeros(3, dtype=int))


BOX, MAX_FREQUENCY = 32, 8.0


def gaussian_blobs(blobs, sigma=2.5):
    """Sum of isotropic Gaussians ``(amplitude, (x, y, z) offset from the centre)``."""
    z, y, x = np.meshgrid(*[fourier.frequencies(BOX)] * 3, indexing="ij")
    return sum(a * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
                          / (2 * sigma ** 2)) for a, c in blobs)


@pytest.fixture(scope="module")
def shells():
    grid = spherical.ShellGrid.from_max_frequency(BOX, MAX_FREQUENCY)
    return grid, spherical.SphericalTransform(grid)


def low_pass(volume):
    spectrum = fourier.centred_fftn(volume)
    return fourier.centred_ifftn(spectrum * (fourier.radius_grid(spectrum.shape)
                                             < MAX_FREQUENCY)).real


@pytest.mark.parametrize("sigma, bound", [(2.5, 6e-3), (1.5, 5e-2)])
def test_shells_to_volume_recovers_the_low_passed_volume(shells, sigma, bound):
    grid, transform = shells
    volume = gaussian_blobs([(1.0, (3, -2, 1)), (0.7, (-5, 4, -2)), (-0.5, (0, 6, 5))], sigma)
    rebuilt = shells_to_volume(transform.coefficients(volume), grid)
    expected = low_pass(volume)
    # Measured: 3.0e-3 for sigma 2.5 (transform 5e-4 of its peak at f_max) and 3.7e-2
    # for sigma 1.5 (6e-2 at f_max), where the integer-frequency staircase of the
    # reference's sharp ball differs from the continuous ball the quadrature integrates.
    assert np.linalg.norm(rebuilt - expected) / np.linalg.norm(expected) < bound


def test_soft_variance_map_concentrates_on_a_planted_soft_mode(shells):
    grid, transform = shells
    centres = [(6, -3, 2), (-5, 5, -4), (0, -6, -6)]
    modes = np.stack([transform.coefficients(gaussian_blobs([(1.0, c)])) for c in centres])
    eigenvalues = np.array([1e-3, 1.0, 2.0])  # only the first mode is soft
    volumes = np.stack([shells_to_volume(mode, grid) for mode in modes])
    variance_map = soft_variance(volumes, eigenvalues)
    assert variance_map.min() >= 0
    z, y, x = np.meshgrid(*[fourier.frequencies(BOX)] * 3, indexing="ij")
    peak = np.array(np.unravel_index(np.argmax(variance_map), variance_map.shape)) - BOX // 2
    assert np.array_equal(peak[::-1], centres[0])
    near = (x - 6) ** 2 + (y + 3) ** 2 + (z - 2) ** 2 <= 5 ** 2
    # Measured: 0.951 of the map lies within 5 voxels of the soft blob (0.96 for an
    # ideal squared Gaussian of this width), and the stiff blobs' centres are 1e-3 of the peak.
    assert variance_map[near].sum() / variance_map.sum() > 0.9
    for cx, cy, cz in centres[1:]:
        stiff = variance_map[cz + BOX // 2, cy + BOX // 2, cx + BOX // 2]
        assert stiff < 1e-2 * variance_map.max()
    shell_index = np.indices(modes.shape[1:])[0]
    profile = per_shell_profile(soft_variance(modes, eigenvalues), shell_index, grid.n_shells)
    assert profile.shape == (grid.n_shells,) and profile[0] > profile[-1] >= 0


def test_shells_to_volume_rejects_bad_coefficients(shells):
    grid, _ = shells
    with pytest.raises(ShapeError, match="coefficients must have shape"):
        shells_to_volume(np.zeros((2, 3, 4)), grid)
    bad = np.zeros((grid.n_shells, grid.max_degree + 1, grid.n_orders), dtype=complex)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        shells_to_volume(bad, grid)
