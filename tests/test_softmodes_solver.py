"""Soft-mode eigensolver, log-determinant, log-20 perturbation size, soft variance and shell
volumes."""
import numpy as np
import pytest
import scipy.linalg

from cryohess_plugin.core import fourier, spherical
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.softmodes.solver import (MetricCoordinates, ProjectedOperator,
                                                   cluster_labels, per_shell_profile,
                                                   perturbation_size, soft_variance,
                                                   softest_modes, stochastic_log_determinant)
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


def operator_of(matrix, metric=None, null_space=None, coordinates=None):
    """:class:`ProjectedOperator` of a dense symmetric ``G`` (rows in, rows out)."""
    size = matrix.shape[0]
    return ProjectedOperator(lambda x: x @ matrix,
                             coordinates or MetricCoordinates(metric, size), null_space)


class EigenCoordinates:
    """Coordinates in a given orthonormal basis of ``W^{1/2} x`` with a given diagonal:
    the interface of :class:`.sampling.SampledCoordinates`, for tests."""

    def __init__(self, basis, metric, diagonal):
        self.basis, self._root, self.diagonal = basis, np.sqrt(metric), diagonal
        self.size = self.dimension = basis.shape[0]

    def embed(self, z):
        return (np.atleast_2d(z) @ self.basis.T) / self._root

    def restrict(self, vectors):
        return (np.atleast_2d(vectors) / self._root) @ self.basis

    def of_volume(self, vectors):
        return (np.atleast_2d(vectors) * self._root) @ self.basis


@pytest.mark.parametrize("block, budget", [(4, SIZE * 3), (8, SIZE * 6)])
def test_softest_modes_are_the_dense_generalised_problems(planted, block, budget):
    """Also checks the Rayleigh–Ritz matrix grown by rows and columns (through restarts):
    the residuals recomputed from scratch are the reported ones.  Blocks of 8 in this
    57-dimensional space restart every few iterations and need a larger budget."""
    operator, null_space, metric = planted
    steps = []
    modes = softest_modes(operator_of(operator, metric, null_space), 10, tolerance=1e-9,
                          max_products=budget, block=block,
                          progress=lambda event: steps.append((event.done, event.values)))
    values, vectors = dense_reference(operator, null_space, metric)
    assert modes.dimension == SIZE - N_NULL
    np.testing.assert_allclose(modes.eigenvalues[:10], values[:10], rtol=1e-10)
    assert modes.converged.all() and modes.residuals.max() <= 1e-9
    # Same vectors up to sign (the spectrum is simple): W-overlaps of ±1.
    count = len(modes.eigenvalues)
    overlaps = modes.vectors @ (metric[:, None] * vectors[:count].T)
    np.testing.assert_allclose(np.abs(np.diagonal(overlaps)), 1.0, atol=1e-8)
    gram = modes.vectors @ (metric[:, None] * modes.vectors.T)
    np.testing.assert_allclose(gram, np.eye(count), atol=1e-10)
    assert np.abs(modes.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    # True relative residuals of the returned vectors, computed here from scratch.
    true = (modes.vectors @ operator - modes.eigenvalues[:, None] * metric * modes.vectors)
    np.testing.assert_allclose(np.linalg.norm(true / np.sqrt(metric), axis=1) / modes.eigenvalues,
                               modes.residuals, rtol=1e-3, atol=1e-12)
    assert modes.history.shape[1] == 10 and len(steps) == modes.history.shape[0]
    np.testing.assert_array_equal(steps[-1][1], modes.history[-1])
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)
    assert steps[-1][0] == modes.products <= budget


def test_ritz_values_are_upper_bounds_and_the_soft_end_converges_fast():
    rng = np.random.default_rng(3)
    metric = rng.uniform(0.5, 2.0, 200)
    spectrum = np.concatenate([[0.05, 0.2, 0.4], np.linspace(1.0, 3.0, 197)])
    operator = spectral_operator(spectrum, metric, rng)
    modes = softest_modes(operator_of(operator, metric), 3, tolerance=1e-8, block=1, guard=4)
    history = modes.history
    # Cauchy interlacing: the i-th smallest Ritz value bounds the i-th eigenvalue from above ...
    assert np.all(history >= spectrum[:3] - 1e-13)
    # ... and decreases as the search space grows (restarts keep the softest Ritz vectors).
    assert np.all(np.diff(history[:, 0]) <= 1e-13)
    np.testing.assert_allclose(modes.eigenvalues, spectrum[:3], rtol=1e-12)
    # Measured: 61 products (7 to start, then one per iteration) for a residual of 1e-8.
    assert modes.products < 80 and modes.converged.all()
    early = softest_modes(operator_of(operator, metric), 1, tolerance=1e-6)
    assert early.converged.all() and early.residuals[0] <= 1e-6
    assert abs(early.eigenvalues[0] - spectrum[0]) < 1e-10


def test_a_cluster_near_zero_converges_with_the_preconditioner_or_is_flagged():
    """Preferred-view-like spectrum: 100 eigenvalues in [1e-6, 1e-3] under a bulk in [1, 10].
    Unpreconditioned, the budget runs out with pairs flagged (Ritz values still bounds);
    with a diagonal preconditioner within 30 % of the operator's own the softest pairs
    meet the tolerance."""
    rng = np.random.default_rng(4)
    spectrum = np.concatenate([np.geomspace(1e-6, 1e-3, 100), np.linspace(1.0, 10.0, 100)])
    basis, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    operator = (basis * spectrum) @ basis.T
    plain = softest_modes(operator_of(operator), 5, max_products=300)
    assert plain.products <= 300 and not plain.converged.all()
    assert np.all(plain.eigenvalues >= spectrum[:len(plain.eigenvalues)] - 1e-15)
    rough = spectrum * rng.uniform(0.7, 1.3, 200)
    coordinates = EigenCoordinates(basis, np.ones(200), rough)
    preconditioned = softest_modes(operator_of(operator, coordinates=coordinates), 5,
                                   max_products=300)
    assert preconditioned.converged.all() and preconditioned.products < 150
    np.testing.assert_allclose(preconditioned.eigenvalues[:5], spectrum[:5], rtol=1e-5)


def test_the_null_space_never_comes_back():
    """The operator does not annihilate the null space; the Ritz vectors still avoid it."""
    rng = np.random.default_rng(5)
    null_space = rng.standard_normal((3, 50))
    metric = rng.uniform(0.5, 2.0, 50)
    operator = spectral_operator(np.geomspace(1e-3, 1.0, 50), metric, rng)
    start = null_space[0] + 1e-3 * rng.standard_normal(50)  # almost in the null space
    modes = softest_modes(operator_of(operator, metric, null_space), 4, tolerance=1e-9,
                          start=start)
    assert np.abs(modes.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    values, _ = dense_reference(operator, null_space, metric)
    np.testing.assert_allclose(modes.eigenvalues[:4], values[:4], rtol=1e-10)


def test_repeated_eigenvalues_are_found_and_reported_as_one_subspace():
    rng = np.random.default_rng(6)
    metric = rng.uniform(0.5, 2.0, 30)
    spectrum = np.repeat([1.0, 2.0, 5.0], 10)  # Krylov spaces of one start have dimension 3
    operator = spectral_operator(spectrum, metric, rng)
    # Ten copies of 1 under 14 computed pairs: the whole subspace is reported.
    ten = softest_modes(operator_of(operator, metric), 10, guard=4, tolerance=1e-9)
    np.testing.assert_allclose(ten.eigenvalues, 1.0, rtol=1e-10)
    assert len(ten.eigenvalues) == 10 and not ten.open_cluster
    assert np.all(ten.clusters == ten.clusters[0])
    gram = ten.vectors @ (metric[:, None] * ten.vectors.T)
    np.testing.assert_allclose(gram, np.eye(10), atol=1e-10)
    # Four wanted, eight computed: the subspace of 1 goes on beyond them, and says so.
    four = softest_modes(operator_of(operator, metric), 4, guard=4)
    np.testing.assert_allclose(four.eigenvalues, 1.0, rtol=1e-10)
    assert len(four.eigenvalues) == 4 and four.open_cluster
    assert cluster_labels([1.0, 1.001, 1.5, 1.501, 1.502, 3.0]).tolist() == [0, 0, 1, 1, 1, 2]


def test_softest_modes_start_from_the_given_vector(planted):
    operator, null_space, metric = planted
    values, vectors = dense_reference(operator, null_space, metric)
    modes = softest_modes(operator_of(operator, metric, null_space), 1, guard=0,
                          start=3.0 * vectors[0])
    # An eigenvector start is converged at once: one product.
    assert modes.products == 1 and modes.converged.all()
    assert modes.eigenvalues[0] == pytest.approx(values[0], rel=1e-10)


def test_softest_modes_reject_bad_input(planted):
    operator, null_space, metric = planted
    apply = operator_of(operator)
    with pytest.raises(InvalidDataError, match="NaN or infinite"):
        softest_modes(ProjectedOperator(lambda x: np.full(x.shape, np.nan),
                                        MetricCoordinates(None, SIZE)), 2)
    with pytest.raises(ShapeError, match="matmat returned shape"):
        softest_modes(ProjectedOperator(lambda x: x[:, :-1], MetricCoordinates(None, SIZE)), 2)
    with pytest.raises(InvalidDataError, match="n_modes must be between 1 and 57"):
        softest_modes(operator_of(operator, metric, null_space), 58)
    with pytest.raises(InvalidDataError, match="n_modes must be between"):
        softest_modes(apply, 0)
    with pytest.raises(InvalidDataError, match="cannot even start"):
        softest_modes(apply, 4, max_products=5)
    with pytest.raises(InvalidDataError, match="tolerance must be a positive"):
        softest_modes(apply, 1, tolerance=-1.0)
    with pytest.raises(ShapeError, match="metric must be the diagonal"):
        MetricCoordinates(metric[:-1], SIZE)
    with pytest.raises(InvalidDataError, match="finite and positive"):
        MetricCoordinates(-metric, SIZE)
    with pytest.raises(ShapeError, match="null_space must have shape"):
        operator_of(operator, null_space=null_space[:, :-1])
    with pytest.raises(ShapeError, match="start must be a vector"):
        softest_modes(apply, 2, start=np.ones(SIZE + 1))
    with pytest.raises(InvalidDataError, match="start contains NaN"):
        softest_modes(apply, 2, start=np.full(SIZE, np.nan))
    with pytest.raises(InvalidDataError, match="start lies in the null space"):
        softest_modes(operator_of(operator, metric, null_space), 2,
                      start=null_space[1] - 2 * null_space[2])


def test_stochastic_log_determinant_of_a_known_spectrum():
    """Within 2 % of Σ log λ on 1500 eigenvalues spread over three decades (measured 0.3 %,
    standard error 0.5 %); exact where every probe's Krylov space is invariant."""
    rng = np.random.default_rng(7)
    spectrum = np.geomspace(1e-3, 1.0, 1500)
    metric = rng.uniform(0.5, 2.0, 1500)
    operator = spectral_operator(spectrum, metric, rng)
    estimate = stochastic_log_determinant(operator_of(operator, metric), probes=8, steps=40,
                                          rng=1)
    exact = np.sum(np.log(spectrum))
    assert abs(estimate.value / exact - 1) < 0.02
    assert estimate.standard_error < 0.02 * abs(exact)
    assert estimate.dimension == 1500 and (estimate.probes, estimate.steps) == (8, 40)
    # The estimate weighs each log θ by its squared first component, not the mean of log θ.
    three = spectral_operator(np.repeat([0.01, 1.0, 100.0], [10, 70, 20]), np.ones(100), rng)
    exact = np.sum(np.log(np.repeat([0.01, 1.0, 100.0], [10, 70, 20])))
    estimate = stochastic_log_determinant(operator_of(three), probes=3, steps=20)
    assert abs(estimate.value - exact) < 0.3 * 10 * np.log(100)  # sampling spread only
    with pytest.raises(InvalidDataError, match="at least one probe"):
        stochastic_log_determinant(operator_of(three), probes=0)


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
