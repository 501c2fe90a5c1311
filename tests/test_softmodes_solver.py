"""Soft-mode eigen-solver, log-20 perturbation size, soft variance and shell volumes."""
import numpy as np
import pytest
import scipy.linalg

from cryohess_plugin.core import fourier, spherical
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.softmodes.solver import (lanczos_softest_modes, per_shell_profile,
                                                   perturbation_size, soft_variance)
from cryohess_plugin.core.spherical import shells_to_volume
from .helpers import gaussian_blobs

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
    """Eigenpairs of G x = λ W x on {x : N W x = 0}: values, W-orthonormal vectors (n, size)."""
    basis = scipy.linalg.null_space(null_space * metric)
    values, vectors = scipy.linalg.eigh(basis.T @ operator @ basis,
                                        basis.T @ (metric[:, None] * basis))
    return values, (basis @ vectors).T


def spectral_operator(spectrum, metric, rng):
    """G = W^{1/2} U diag(spectrum) Uᵀ W^{1/2}: G x = λ W x has exactly ``spectrum``."""
    basis, _ = np.linalg.qr(rng.standard_normal((spectrum.size, spectrum.size)))
    root = np.sqrt(metric)
    return root[:, None] * (basis * spectrum) @ basis.T * root[None, :]


def test_lanczos_at_full_dimension_is_the_dense_generalised_problem(planted):
    operator, null_space, metric = planted
    steps = []
    modes = lanczos_softest_modes(lambda x: operator @ x, SIZE, SIZE - N_NULL, iterations=1000,
                                  null_space=null_space, metric=metric, tolerance=0.0,
                                  progress=lambda event: steps.append((event.done, event.values)))
    values, vectors = dense_reference(operator, null_space, metric)
    dimension = SIZE - N_NULL
    assert modes.iterations == dimension  # capped at the complement's dimension
    np.testing.assert_allclose(modes.eigenvalues, values, rtol=1e-10)
    # Same vectors up to sign (the spectrum is simple): W-overlaps of ±1.
    overlaps = modes.vectors @ (metric[:, None] * vectors.T)
    np.testing.assert_allclose(np.abs(np.diagonal(overlaps)), 1.0, atol=1e-8)
    gram = modes.vectors @ (metric[:, None] * modes.vectors.T)
    np.testing.assert_allclose(gram, np.eye(dimension), atol=1e-10)
    assert np.abs(modes.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    assert modes.residuals.max() < 1e-12 and not modes.converged.any()  # tolerance 0
    assert modes.log_determinant == pytest.approx(np.sum(np.log(values)), rel=1e-12)
    assert modes.ritz_history.shape == (dimension, dimension)
    np.testing.assert_allclose(modes.ritz_history[-1], values, rtol=1e-10)
    row = modes.ritz_history[3]
    assert np.isnan(row[4:]).all() and not np.isnan(row[:4]).any()
    assert [step for step, _ in steps] == list(range(1, dimension + 1))
    np.testing.assert_array_equal(steps[9][1], modes.ritz_history[9, :10])


def test_lanczos_ritz_values_are_upper_bounds_and_the_soft_end_converges_fast():
    rng = np.random.default_rng(3)
    metric = rng.uniform(0.5, 2.0, 200)
    spectrum = np.concatenate([[0.05, 0.2, 0.4], np.linspace(1.0, 3.0, 197)])
    operator = spectral_operator(spectrum, metric, rng)
    modes = lanczos_softest_modes(lambda x: operator @ x, 200, 3, iterations=40, metric=metric,
                                  tolerance=0.0)
    history = modes.ritz_history
    for step in range(40):
        count = min(step + 1, 3)
        # Cauchy interlacing: the i-th smallest Ritz value bounds the i-th eigenvalue from above.
        assert np.all(history[step, :count] >= spectrum[:count] - 1e-13)
    # ... and decreases as the Krylov space grows.
    assert np.all(np.diff(history[:, 0]) <= 1e-13)
    # Measured relative errors of the softest: 4e-3 at step 10, 4e-7 at 15, 1e-12 at 20.
    assert history[14, 0] / spectrum[0] - 1 < 1e-5
    assert history[19, 0] / spectrum[0] - 1 < 1e-10
    np.testing.assert_allclose(modes.eigenvalues, spectrum[:3], rtol=1e-12)
    # The residual test stops the run early once the requested pair converged.
    early = lanczos_softest_modes(lambda x: operator @ x, 200, 1, iterations=40, metric=metric)
    assert early.iterations < 30 and early.converged.all()
    assert early.residuals[0] <= 1e-6 * early.eigenvalues[0]
    assert abs(early.eigenvalues[0] - spectrum[0]) < 1e-12
    # True residual of the returned vector, computed here from scratch.
    vector = early.vectors[0]
    true_residual = (operator @ vector - early.eigenvalues[0] * metric * vector) / np.sqrt(metric)
    assert np.linalg.norm(true_residual) == pytest.approx(early.residuals[0], rel=1e-6)


def test_lanczos_on_a_cluster_near_zero_returns_after_the_fixed_steps():
    """Polar-cap-like spectrum: 100 eigenvalues in [1e-9, 1e-6] under a bulk in [1, 10]."""
    rng = np.random.default_rng(4)
    spectrum = np.concatenate([np.geomspace(1e-9, 1e-6, 100), np.linspace(1.0, 10.0, 100)])
    operator = spectral_operator(spectrum, np.ones(200), rng)
    modes = lanczos_softest_modes(lambda x: operator @ x, 200, 5, iterations=30)
    assert modes.iterations == 30 and modes.ritz_history.shape == (30, 30)
    assert np.all(np.isfinite(modes.eigenvalues)) and np.all(np.diff(modes.eigenvalues) >= 0)
    assert np.all(modes.eigenvalues >= spectrum[:5] - 1e-13)
    # Measured: the softest Ritz value is 1e-7, inside the cluster, and unconverged.
    assert modes.eigenvalues[0] < 1e-5 and not modes.converged[0]
    assert np.isfinite(modes.log_determinant)


def test_lanczos_never_lets_the_null_space_back_in():
    """The operator does not annihilate the null space; the Ritz vectors still avoid it."""
    rng = np.random.default_rng(5)
    null_space = rng.standard_normal((3, 50))
    metric = rng.uniform(0.5, 2.0, 50)
    operator = spectral_operator(np.geomspace(1e-3, 1.0, 50), metric, rng)
    start = null_space[0] + 1e-3 * rng.standard_normal(50)  # almost in the null space
    modes = lanczos_softest_modes(lambda x: operator @ x, 50, 4, iterations=47,
                                  null_space=null_space, metric=metric, start=start,
                                  tolerance=0.0)
    assert np.abs(modes.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    values, _ = dense_reference(operator, null_space, metric)
    np.testing.assert_allclose(modes.eigenvalues, values[:4], rtol=1e-10)


def test_lanczos_restarts_on_invariant_subspaces_and_finds_repeated_eigenvalues():
    rng = np.random.default_rng(6)
    metric = rng.uniform(0.5, 2.0, 30)
    spectrum = np.repeat([1.0, 2.0, 5.0], 10)  # Krylov spaces of one start have dimension 3
    operator = spectral_operator(spectrum, metric, rng)
    full = lanczos_softest_modes(lambda x: operator @ x, 30, 30, iterations=30, metric=metric,
                                 tolerance=0.0)
    np.testing.assert_allclose(full.eigenvalues, spectrum, rtol=1e-10)
    gram = full.vectors @ (metric[:, None] * full.vectors.T)
    np.testing.assert_allclose(gram, np.eye(30), atol=1e-10)
    assert full.log_determinant == pytest.approx(10 * np.log(10.0), rel=1e-12)
    # The first breakdown is after 3 steps, where only 3 Ritz values exist.
    np.testing.assert_allclose(full.ritz_history[2, :3], [1.0, 2.0, 5.0], rtol=1e-10)
    # After a restart the residual test cannot see missing copies (after 7 steps the
    # pairs 1, 1, 2, 2 are exact), so the run goes on and finds four 1s.
    repeated = lanczos_softest_modes(lambda x: operator @ x, 30, 4, iterations=30, metric=metric)
    assert repeated.iterations == 30 and repeated.converged.all()
    np.testing.assert_allclose(repeated.eigenvalues, 1.0, rtol=1e-10)
    assert repeated.ritz_history[6, 3] == pytest.approx(2.0, rel=1e-10)


def test_lanczos_starts_from_the_given_vector(planted):
    operator, null_space, metric = planted
    values, vectors = dense_reference(operator, null_space, metric)
    modes = lanczos_softest_modes(lambda x: operator @ x, SIZE, 1, iterations=5,
                                  null_space=null_space, metric=metric, start=3.0 * vectors[0])
    # An eigenvector start is an invariant subspace at once: the first Ritz value is exact,
    # and after the restart every step runs.
    assert modes.ritz_history[0, 0] == pytest.approx(values[0], rel=1e-10)
    assert modes.iterations == 5 and modes.converged.all()
    assert modes.eigenvalues[0] == pytest.approx(values[0], rel=1e-10)


def test_lanczos_rejects_bad_input(planted):
    operator, null_space, metric = planted
    apply = lambda x: operator @ x  # noqa: E731
    with pytest.raises(InvalidDataError, match="NaN or infinite"):
        lanczos_softest_modes(lambda x: np.full(SIZE, np.nan), SIZE, 2)
    with pytest.raises(ShapeError, match="matvec returned shape"):
        lanczos_softest_modes(lambda x: x[:-1], SIZE, 2)
    with pytest.raises(InvalidDataError, match="n_modes must be between 1 and 8"):
        lanczos_softest_modes(apply, SIZE, 9, iterations=8)
    with pytest.raises(InvalidDataError, match="n_modes must be between 1 and 57"):
        lanczos_softest_modes(apply, SIZE, 58, iterations=100, null_space=null_space)
    with pytest.raises(InvalidDataError, match="n_modes must be between"):
        lanczos_softest_modes(apply, SIZE, 0)
    with pytest.raises(InvalidDataError, match="iterations must be at least 1"):
        lanczos_softest_modes(apply, SIZE, 1, iterations=0)
    with pytest.raises(InvalidDataError, match="tolerance must be finite"):
        lanczos_softest_modes(apply, SIZE, 1, tolerance=-1.0)
    with pytest.raises(ShapeError, match="metric must be the diagonal"):
        lanczos_softest_modes(apply, SIZE, 2, metric=metric[:-1])
    with pytest.raises(InvalidDataError, match="finite and positive"):
        lanczos_softest_modes(apply, SIZE, 2, metric=-metric)
    with pytest.raises(ShapeError, match="null_space must have shape"):
        lanczos_softest_modes(apply, SIZE, 2, null_space=null_space[:, :-1])
    with pytest.raises(InvalidDataError, match="linearly dependent"):
        lanczos_softest_modes(apply, SIZE, 2,
                              null_space=np.vstack([null_space, null_space[0]]))
    with pytest.raises(ShapeError, match="start must be a vector"):
        lanczos_softest_modes(apply, SIZE, 2, start=np.ones(SIZE + 1))
    with pytest.raises(InvalidDataError, match="start contains NaN"):
        lanczos_softest_modes(apply, SIZE, 2, start=np.full(SIZE, np.nan))
    with pytest.raises(InvalidDataError, match="start lies in the null space"):
        lanczos_softest_modes(apply, SIZE, 2, null_space=null_space, metric=metric,
                              start=null_space[1] - 2 * null_space[2])


def test_perturbation_size_meets_the_log_likelihood_threshold():
    eigenvalues = np.array([0.27, 10.0])
    epsilon = perturbation_size(eigenvalues)
    np.testing.assert_allclose(0.5 * eigenvalues * epsilon ** 2, np.log(20), rtol=1e-14)
    # docs/methods/hessian_soft_modes.md §4.4: ε = sqrt(2 σ² log 20 / (J λ)) for a per-image
    # eigenvalue of σ² NLL.
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


def blobs_volume(blobs, sigma=2.5):
    """Sum of isotropic Gaussians ``(amplitude, (x, y, z) offset from the centre)``."""
    return gaussian_blobs(BOX, [c for _, c in blobs], [sigma] * len(blobs),
                          [a for a, _ in blobs])


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
    volume = blobs_volume([(1.0, (3, -2, 1)), (0.7, (-5, 4, -2)), (-0.5, (0, 6, 5))], sigma)
    rebuilt = shells_to_volume(transform.coefficients(volume), grid)
    expected = low_pass(volume)
    # Measured: 3.0e-3 for sigma 2.5 (transform 5e-4 of its peak at f_max) and 3.7e-2
    # for sigma 1.5 (6e-2 at f_max), where the integer-frequency staircase of the
    # reference's sharp ball differs from the continuous ball the quadrature integrates.
    assert np.linalg.norm(rebuilt - expected) / np.linalg.norm(expected) < bound


def test_soft_variance_map_concentrates_on_a_planted_soft_mode(shells):
    grid, transform = shells
    centres = [(6, -3, 2), (-5, 5, -4), (0, -6, -6)]
    modes = np.stack([transform.coefficients(blobs_volume([(1.0, c)])) for c in centres])
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
