"""The accumulated soft-mode Hessian against the per-image one, its algebra, and the API."""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core import rotations, spherical
from cryohess_plugin.core.softmodes import RealLayout, per_image
from cryohess_plugin.core.ctf import CTFParams, ctf_stack, ring_mean_ctf_squared
from cryohess_plugin.core.errors import InvalidDataError, SamplingMismatchError, ShapeError
from cryohess_plugin.core.softmodes.analysis import analyse_soft_modes, particle_pose_changes
from cryohess_plugin.core.softmodes.experiment import (ViewingExperiment,
                                                       experiment_from_distribution,
                                                       experiment_from_poses, hemisphere_grid,
                                                       particle_assignment, rebin)
from cryohess_plugin.core.softmodes.hessian import AccumulatedHessian, RealHarmonics
from cryohess_plugin.core.softmodes.sampling import (NULL_THRESHOLD, SampledCoordinates,
                                                     SamplingSpectrum)
from cryohess_plugin.core.softmodes import products
from cryohess_plugin.core.softmodes.products import degree_bands
from cryohess_plugin.core.softmodes.noise import estimate_noise_variance, marginal_noise

from .method_data import GROUPS, on_grid_poses, relative

#: 2πK = L = 10: 11 shells, 22 ring angles.
BOX, MAX_FREQUENCY, PIXEL_SIZE = 16, 3.1, 4.0


@pytest.fixture(scope="module")
def setup():
    """Shells, the real layout and a smooth real volume's coefficients and vector."""
    shells = spherical.ShellGrid.from_max_frequency(BOX, MAX_FREQUENCY)
    layout = RealLayout(shells)
    rng = np.random.default_rng(0)
    decay = np.exp(-np.arange(shells.max_degree + 1) / 4.0)
    coefficients = layout.from_real_vector(rng.standard_normal(layout.n_parameters))
    coefficients = coefficients * decay[None, :, None]
    return shells, layout, coefficients, layout.to_real_vector(coefficients)


def per_image_problem(shells, coefficients, poses, groups, scale=1.0, sigma2=0.7):
    """SoftModeProblem on noise-free templates at ``poses`` with radial group CTFs × scale."""
    n_angles = 2 * shells.max_degree + 2
    ring = per_image.ring_grid(shells, n_angles)
    ctf = scale * ctf_stack([GROUPS[g] for g in groups], ring.kx, ring.ky, BOX, PIXEL_SIZE)
    ctf = ctf.reshape(len(poses), shells.n_shells, n_angles)
    empty = np.zeros(ctf.shape, dtype=np.complex128)
    templates = per_image.SoftModeProblem(shells, empty, poses, ctf).templates(coefficients)
    return per_image.SoftModeProblem(shells, templates, poses, ctf, noise_sigma=np.sqrt(sigma2))


@pytest.mark.parametrize("product_form", ["factored", "slices"])
@pytest.mark.parametrize("implicit", [True, False])
def test_accumulated_operator_equals_the_per_image_hessian_on_grid_poses(setup, implicit,
                                                                         product_form):
    shells, layout, coefficients, volume_vector = setup
    rng = np.random.default_rng(1)
    poses, groups = on_grid_poses(rng)
    experiment = experiment_from_poses(poses, [GROUPS[g] for g in groups], PIXEL_SIZE)
    # In-plane angles and d / −d collapse: one entry per grid direction, both groups.
    assert experiment.directions.shape[0] == len(poses) // 3
    assert experiment.counts.shape == (len(poses) // 3, 2)
    assert np.array_equal(experiment.counts.sum(axis=0), np.bincount(groups).astype(float))
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE,
                                  noise_sigma2=0.7, product_form=product_form)
    problem = per_image_problem(shells, coefficients, poses, groups)
    for vector in rng.standard_normal((2, layout.n_parameters)):
        expected = problem.hessian_vector(coefficients, vector, implicit_poses=implicit)
        assert relative(operator.matvec(vector, implicit), expected) < 1e-10
    if implicit:
        vector = rng.standard_normal(layout.n_parameters)
        per_image = np.linalg.norm(problem.implied_pose_change(coefficients, vector), axis=1)
        binned = np.linalg.norm(operator.pose_change(vector), axis=-1)  # (D, G)
        index = np.argmax(np.abs(poses[:, 2, :] @ experiment.directions.T), axis=1)
        assert relative(binned[index, groups], per_image) < 1e-10


@pytest.mark.parametrize("box, max_frequency", [(BOX, MAX_FREQUENCY), (32, 7.5)])
def test_factored_products_equal_the_slices_and_fall_back_beyond_the_budget(
        box, max_frequency, monkeypatch):
    """Off-grid directions with uneven counts, an empty (direction, group), two groups, and
    the coupling built in batches of five directions (the last one short); at L = 10 one
    band of harmonic columns, at L = 24 two per parity."""
    shells = spherical.ShellGrid.from_max_frequency(box, max_frequency)
    layout = RealLayout(shells)
    rng = np.random.default_rng(5)
    decay = np.exp(-np.arange(shells.max_degree + 1) / 4.0)
    volume_vector = layout.to_real_vector(layout.from_real_vector(
        rng.standard_normal(layout.n_parameters)) * decay[None, :, None])
    directions = rng.standard_normal((37, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    counts = rng.uniform(0.5, 3.0, (37, 2))
    counts[1, 0] = 0.0
    experiment = ViewingExperiment(directions, GROUPS, counts, PIXEL_SIZE)
    monkeypatch.setattr(products, "COUPLING_DIRECTIONS", 5)
    forms = {form: AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE,
                                      noise_sigma2=0.7, product_form=form)
             for form in ("factored", "slices")}
    assert isinstance(forms["factored"].products, products.FactoredProducts)
    assert len(forms["factored"].products._bands[0]) == (1 if box == BOX else 2)
    assert type(forms["slices"].products) is products.HostProducts
    vectors = rng.standard_normal((3, layout.n_parameters))
    for implicit in (True, False):
        assert relative(forms["factored"].matmat(vectors, implicit),
                        forms["slices"].matmat(vectors, implicit)) < 1e-12
    assert relative(forms["factored"].pose_changes(vectors),
                    forms["slices"].pose_changes(vectors)) < 1e-12
    needed = products.factored_bytes(shells, 37, 2)
    auto = {budget: AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE,
                                       memory_budget=budget).products
            for budget in (needed, needed - 1)}
    assert isinstance(auto[needed], products.FactoredProducts)
    assert type(auto[needed - 1]) is products.HostProducts
    with pytest.raises(InvalidDataError, match="product_form must be one of"):
        AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE,
                           product_form="dense")


def test_real_harmonics_expand_the_real_layout_like_the_complex_harmonics(setup):
    """A real vector's transform at directions: Σ_p x_p h_p from the harmonics kernel
    (even degrees real, odd imaginary) equals Σ_lm A_lm Y_lm of its coefficients
    (spherical.harmonics_at), shell by shell; the degree bands of a slice change nothing."""
    shells, layout, coefficients, volume_vector = setup
    harmonics = RealHarmonics(shells, layout)
    directions = np.random.default_rng(13).standard_normal((50, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    even, odd = harmonics.evaluate(directions)
    columns = harmonics.to_columns(volume_vector)  # (R, P)
    values = (even @ columns[:, :harmonics.n_even].T
              + 1j * (odd @ columns[:, harmonics.n_even:].T))  # (50, R)
    expected = np.einsum("dlm,rlm->dr", spherical.harmonics_at(directions, shells.max_degree,
                                                               shells.n_orders),
                         coefficients * shells.coefficient_mask())
    assert relative(values, expected) < 1e-12
    bands = degree_bands(harmonics.degrees[:harmonics.n_even], shells.degree_limits,
                         min_columns=1)
    assert len(bands) > 3 and bands[0][2] == 0
    banded = np.zeros((50, shells.n_shells))
    for start, stop, first in bands:
        banded[:, first:] += even[:, start:stop] @ columns[first:, start:stop].T
    assert relative(banded, values.real) < 1e-13


def test_sampling_operator_diagonalises_the_fixed_pose_hessian(setup):
    """Without CTF, at unit noise and one group, the fixed-pose Hessian in the sampled
    coordinates is exactly their diagonal (the great-circle density integrates every
    product of the band exactly); the coordinates are a W-isometry and restrict is the
    transpose of embed."""
    shells, layout, _, volume_vector = setup
    rng = np.random.default_rng(14)
    directions = rng.standard_normal((25, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    experiment = ViewingExperiment(directions, (), rng.uniform(0.5, 2.0, (25, 1)), PIXEL_SIZE)
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE)
    ring = shells.weights / shells.radii
    metric = ring[operator.harmonics.shell_of_parameter]
    spectrum = SamplingSpectrum(operator.harmonics, experiment.directions,
                                experiment.counts[:, 0])
    coordinates = SampledCoordinates(spectrum, metric, ring)
    assert coordinates.dimension == layout.n_parameters  # 25 directions sample every shell
    basis = coordinates.embed(np.eye(coordinates.dimension))
    np.testing.assert_allclose(basis @ (metric[:, None] * basis.T), np.eye(coordinates.dimension),
                               atol=1e-12)
    hessian = coordinates.restrict(operator.matmat(basis, implicit_poses=False))
    np.testing.assert_allclose(hessian, np.diag(coordinates.diagonal),
                               atol=1e-10 * coordinates.diagonal.max())
    vector = rng.standard_normal(layout.n_parameters)
    z = rng.standard_normal(coordinates.dimension)
    assert coordinates.restrict(vector)[0] @ z == pytest.approx(vector @ coordinates.embed(z)[0],
                                                              rel=1e-12)


def test_null_space_is_what_the_views_leave_unsampled(setup):
    """Views within 25° of the pole: on each shell, the unsampled components are the fixed-
    pose Hessian's eigenvalues below the threshold (dense, shell by shell), around the
    pole; uniform views leave none."""
    shells, layout, _, volume_vector = setup
    poses = simulate.sample_rotations("polar_cap", 400, 15, cap_deg=25.0)
    experiment = experiment_from_poses(poses, pixel_size=PIXEL_SIZE)
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE)
    spectrum = SamplingSpectrum(operator.harmonics, experiment.directions,
                                experiment.counts[:, 0])
    hessian = operator.matmat(np.eye(layout.n_parameters), implicit_poses=False)
    shell_of = operator.harmonics.shell_of_parameter
    expected = []
    for r in range(shells.n_shells):
        block = hessian[np.ix_(shell_of == r, shell_of == r)]
        values = np.linalg.eigvalsh((block + block.T) / 2)
        expected.append(int(np.sum(values <= NULL_THRESHOLD * values.max())))
    assert spectrum.null_counts().tolist() == expected and sum(expected) > 20
    region = spectrum.region()
    assert abs(region.axis[2]) > np.cos(np.deg2rad(10)) and 20 < region.half_angle_deg < 65
    assert 0 < region.fraction < 0.5 and "missing cone" in region.describe()
    uniform = experiment_from_poses(simulate.sample_rotations("uniform", 400, 15),
                                    pixel_size=PIXEL_SIZE)
    full = SamplingSpectrum(operator.harmonics, uniform.directions, uniform.counts[:, 0])
    assert full.null_counts().sum() == 0 and full.region().fraction == 0


def test_unconverged_pairs_are_flagged_and_give_no_bound(phantom):
    """A budget too small for the tolerance: the pairs short of it have no ε, no relative
    change, no share of the sensitivity map, and the summary says so."""
    volume, pixel = phantom
    experiment = experiment_from_distribution("polar", 500, spread_deg=10, pixel_size=pixel)
    result = analyse_soft_modes(volume, pixel, experiment, 32 * pixel / (10 / np.pi),
                                n_modes=4, max_products=10, backend="cpu", log_determinant=None)
    assert result.products == 10 and not result.converged.any()
    assert np.all(np.isnan(result.perturbation)) and np.all(np.isnan(result.relative_change))
    assert np.all(result.sensitivity == 0) and np.all(result.group_pose_changes == 0)
    lines = [line for line in result.spectrum_lines() if line.startswith("Mode ")]
    assert len(lines) == 4 and all("NOT CONVERGED" in line and "no bound" in line
                                   for line in lines)


def ring_average(params, radii, box, pixel, n_angles=720):
    """``(n, R)`` CTF² averaged over ``n_angles`` directions of each ring, directly."""
    angles = 2 * np.pi * np.arange(n_angles) / n_angles
    kx = (np.asarray(radii)[:, None] * np.cos(angles)).ravel()
    ky = (np.asarray(radii)[:, None] * np.sin(angles)).ravel()
    values = ctf_stack(params, kx, ky, box, pixel) ** 2
    return values.reshape(len(params), len(radii), n_angles).mean(axis=-1)


def test_ring_mean_ctf_squared_is_the_direct_average_around_each_ring():
    params = [CTFParams(15000, 14000, 33, 300, 2.7, 0.1),
              CTFParams(20000, 18500, -70, 200, 2.0, 0.07, phase_shift=30, bfactor=50),
              CTFParams(9000, 11000, 10, 300, 2.7, 0.1, phase_flipped=True)]
    radii = np.linspace(0.5, 60.0, 40)
    np.testing.assert_allclose(ring_mean_ctf_squared(params, radii, 128, 1.0),
                               ring_average(params, radii, 128, 1.0), atol=1e-12)


def test_group_ctf_squared_is_the_mean_over_its_particles_not_the_mean_defocus():
    """At 6 Å, 1000 Å astigmatism and a 900 Å defocus spread in a group: the group's CTF²
    is the weighted mean of its particles' ring averages; the CTF² of the mean defocus
    is far off it."""
    rng = np.random.default_rng(11)
    defocus = rng.uniform(14000, 14900, 40)
    params = [CTFParams(d + 500, d - 500, a, 300, 2.7, 0.1)
              for d, a in zip(defocus, rng.uniform(0, 180, 40))]
    params += [CTFParams(30000, 30000, 0, 300, 2.7, 0.1)] * 5  # a second group
    weights = rng.uniform(0.5, 2.0, 45)
    experiment = experiment_from_poses(simulate.uniform_rotations(45, rng), params,
                                       pixel_size=1.0, weights=weights)
    assert experiment.n_groups == 2
    box, radius = 128, 128 / 6.0  # 6 Å
    radii = np.array([radius / 2, radius])
    direct = ring_average(params, radii, box, 1.0)
    expected = [np.average(direct[:40], axis=0, weights=weights[:40]),
                np.average(direct[40:], axis=0, weights=weights[40:])]
    np.testing.assert_allclose(experiment.ctf_squared(radii, box, 1.0), expected, atol=1e-12)
    # A planned experiment's groups are their own CTFs.
    design = experiment_from_distribution("uniform", 100, ctf_params=params[:2], pixel_size=1.0)
    np.testing.assert_allclose(design.ctf_squared(radii, box, 1.0), direct[:2], atol=1e-12)
    # The CTF² of the group's mean defocus, radial: measured 47 % off at 6 Å.
    mean_defocus = experiment.ctf_params[0]
    assert mean_defocus.defocus_u == mean_defocus.defocus_v == pytest.approx(defocus.mean())
    radial = ring_mean_ctf_squared([mean_defocus], radii, box, 1.0)[0]
    assert abs(radial[1] / expected[0][1] - 1) > 0.12
    # The members survive rebinning and the file.
    binned, _ = rebin(experiment, 20.0)
    np.testing.assert_allclose(binned.ctf_squared(radii, box, 1.0), expected, atol=1e-12)


@pytest.mark.parametrize("implicit, bound", [(False, 1e-9), (True, 2e-2)])
def test_accumulated_operator_with_astigmatic_particles_against_the_per_image_hessian(
        setup, implicit, bound):
    """Particles with astigmatic CTFs (1000 Å at 7.7 Å) and three defocus values in their
    group, in every grid direction turned in-plane to each of the Q ring angles (the
    in-plane average that the accumulated form takes in expectation): with fixed poses the
    accumulated Hessian (the group's mean ring-averaged CTF²) is the per-image one with
    each particle's 2-D CTF; with implicit poses it uses the mean CTF² in the pose blocks
    too, which the per-image form takes per particle (measured 1.1e-2)."""
    shells, layout, coefficients, volume_vector = setup
    pixel = 1.5
    directions, _ = hemisphere_grid(30.0)
    base = rotations.rotations_for_directions(directions)
    n_angles = 2 * shells.max_degree + 2
    poses, params = [], []
    for pose in base:
        for mean in (12000.0, 12400.0, 12800.0):
            for k in range(n_angles):
                poses.append(rotations.in_plane_rotations(2 * np.pi * k / n_angles) @ pose)
                params.append(CTFParams(mean + 500, mean - 500, 40.0, 300, 2.7, 0.1))
    poses = np.array(poses)
    experiment = experiment_from_poses(poses, params, pixel)
    assert experiment.n_groups == 1 and experiment.directions.shape[0] == len(base)
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, pixel,
                                  noise_sigma2=0.7)
    rng = np.random.default_rng(12)
    ring = per_image.ring_grid(shells, n_angles)
    ctf = ctf_stack(params, ring.kx, ring.ky, BOX, pixel).reshape(len(poses), shells.n_shells,
                                                                  n_angles)
    empty = np.zeros(ctf.shape, dtype=np.complex128)
    templates = per_image.SoftModeProblem(shells, empty, poses, ctf).templates(coefficients)
    problem = per_image.SoftModeProblem(shells, templates, poses, ctf, noise_sigma=np.sqrt(0.7))
    # The group's CTF² differs from that of its mean defocus by up to 20 % on these shells.
    radial = ring_mean_ctf_squared(experiment.ctf_params, shells.radii, BOX, pixel)
    assert np.max(np.abs(radial / operator.ctf_squared - 1)) > 0.05
    for vector in rng.standard_normal((2, layout.n_parameters)):
        expected = problem.hessian_vector(coefficients, vector, implicit_poses=implicit)
        assert relative(operator.matvec(vector, implicit), expected) < bound


def test_ctf_scale_multiplies_the_hessian_by_its_square(setup):
    shells, layout, coefficients, volume_vector = setup
    rng = np.random.default_rng(2)
    poses, groups = on_grid_poses(rng, spacing=35.0)
    experiment = experiment_from_poses(poses, [GROUPS[g] for g in groups], PIXEL_SIZE)
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE, 0.7)
    scaled = per_image_problem(shells, coefficients, poses, groups, scale=1.7)
    vector = rng.standard_normal(layout.n_parameters)
    assert relative(scaled.hessian_vector(coefficients, vector),
                    1.7 ** 2 * operator.matvec(vector)) < 1e-10


def test_binning_error_is_small_and_shrinks_with_the_grid_spacing(setup):
    shells, layout, _, volume_vector = setup
    poses = simulate.sample_rotations("uniform", 1500, 3)
    experiment = experiment_from_poses(poses, pixel_size=PIXEL_SIZE)
    assert experiment.directions.shape[0] == 1500
    exact = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3, layout.n_parameters))
    reference = [exact.matvec(v) for v in vectors]
    errors = []
    for fraction in (1.0, 0.5, 0.25):
        binned, bins = rebin(experiment, fraction * 180.0 / shells.max_degree)
        assert binned.n_images == experiment.n_images and bins.shape == (1500,)
        operator = AccumulatedHessian(shells, volume_vector, layout, binned, PIXEL_SIZE)
        errors.append(max(relative(operator.matvec(v), r) for v, r in zip(vectors, reference)))
    # Measured 2.6e-2, 1.3e-2, 7e-3 (L = 10).
    assert errors[0] < 0.05 and errors[1] < 0.02
    assert errors[2] < 0.7 * errors[1] < 0.7 * 0.7 * errors[0]


def test_operator_is_symmetric_psd_and_rigid_rotations_are_null(setup):
    shells, layout, coefficients, volume_vector = setup
    experiment = experiment_from_poses(simulate.sample_rotations("uniform", 300, 4),
                                       [GROUPS[i % 2] for i in range(300)], PIXEL_SIZE)
    operator = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE)
    rng = np.random.default_rng(4)
    u, v = rng.standard_normal((2, layout.n_parameters))
    for implicit in (True, False):
        left, right = u @ operator.matvec(v, implicit), v @ operator.matvec(u, implicit)
        assert abs(left - right) < 1e-12 * abs(left)
        assert v @ operator.matvec(v, implicit) > 0
    for mode in layout.rigid_rotation_modes(coefficients):
        fixed = np.linalg.norm(operator.matvec(mode, False))
        assert np.linalg.norm(operator.matvec(mode)) < 1e-10 * fixed
        assert np.linalg.norm(operator.pose_change(mode)) > 0


@pytest.fixture(scope="module")
def phantom():
    """Box-32 Gaussian-atom phantom, 2.5 Å/px."""
    model = phantoms.random_protein_phantom(800, 25.0, rng=1)
    return atoms.gaussian_atom_volume(model, 32, 2.5), 2.5


def test_eigenvalues_scale_with_images_over_noise_and_epsilon_with_its_root(phantom):
    volume, pixel = phantom
    resolution = 32 * pixel / (10 / np.pi)  # L = 10
    runs = [analyse_soft_modes(volume, pixel, experiment_from_distribution(
                "uniform", count, pixel_size=pixel), resolution, n_modes=3,
                noise_variance=noise, backend="cpu")
            for count, noise in ((500, 1.0), (2000, 2.0))]
    assert np.allclose(runs[1].eigenvalues / runs[0].eigenvalues, 2.0, rtol=1e-9)
    assert np.allclose(runs[1].perturbation / runs[0].perturbation, np.sqrt(0.5), rtol=1e-9)
    assert np.allclose(runs[1].relative_change / runs[0].relative_change, np.sqrt(0.5), rtol=1e-9)
    # ε is the log-20 amplitude of a W-unit mode: ½ λ ε² = log 20.
    assert np.allclose(0.5 * runs[0].eigenvalues * runs[0].perturbation ** 2, np.log(20))


def test_analysis_outputs_are_consistent(phantom):
    volume, pixel = phantom
    poses = simulate.sample_rotations("uniform", 400, 5)
    experiment = experiment_from_poses(poses, pixel_size=pixel)
    lines = []
    result = analyse_soft_modes(volume, pixel, experiment, 32 * pixel / (10 / np.pi), n_modes=3,
                                backend="cpu",
                                progress=lambda event: lines.append(event.line()))
    assert result.max_degree == 10 and result.mode_volumes.shape == (3, 32, 32, 32)
    assert result.mode_volumes.dtype == np.float32 and result.sensitivity.shape == (32, 32, 32)
    assert np.all(np.diff(result.eigenvalues) >= 0) and result.eigenvalues[0] > 0
    assert result.pose_changes.shape == (3, 400) and np.all(result.pose_changes > 0)
    assert result.ritz_history.shape[1] == 3 and result.converged.all()
    assert result.shell_profile.shape == (3, result.shell_frequencies.size)
    expected = np.tensordot(result.perturbation ** 2,
                            result.mode_volumes.astype(np.float64) ** 2, axes=1)
    assert relative(result.sensitivity, expected) < 1e-6
    assert any(line.startswith("Eigensolver:") for line in lines)
    assert any(line.startswith("Null space: 0 unsampled") for line in lines)
    assert any("binned on" in line for line in lines)
    fixed = analyse_soft_modes(volume, pixel, experiment, 32 * pixel / (10 / np.pi), n_modes=2,
                               implicit_poses=False, metric="l2", backend="cpu")
    assert not fixed.implicit_poses and fixed.metric == "l2"
    assert np.all(fixed.pose_changes == 0) and fixed.eigenvalues[0] > 0


def test_experiment_groups_defocus_and_folds_directions():
    pose = rotations.euler_to_matrix(30.0, 40.0, 0.0)
    flipped = np.diag([1.0, -1.0, -1.0]) @ pose
    poses = np.stack([pose, flipped, rotations.in_plane_rotations(1.0) @ pose])
    params = [CTFParams(10000, 10400, 20, 300, 2.7, 0.1), CTFParams(10600, 10600, 0, 300, 2.7, 0.1),
              CTFParams(15000, 15000, 0, 300, 2.7, 0.1)]
    experiment = experiment_from_poses(poses, params, pixel_size=1.5, defocus_tolerance=1000)
    assert experiment.directions.shape == (1, 3) and experiment.directions[0, 2] > 0
    assert np.array_equal(experiment.counts, [[2.0, 1.0]])
    assert [p.defocus_u for p in experiment.ctf_params] == [10400.0, 15000.0]
    assert all(p.defocus_u == p.defocus_v for p in experiment.ctf_params)


@pytest.mark.parametrize("spacing", [None, 12.0])
def test_particle_assignment_rebuilds_the_experiment(spacing):
    """Each particle's direction and group: the experiment's counts are the particles'
    tallies, and its direction is the particle's folded one (or the nearest grid one)."""
    rng = np.random.default_rng(3)
    poses = simulate.uniform_rotations(150, rng)
    flip = np.diag([1.0, -1.0, -1.0])
    poses = np.concatenate([poses, flip @ poses[:20], rotations.in_plane_rotations(0.7)
                            @ poses[20:30]])  # the same directions, flipped and turned
    params = [GROUPS[k % 2] for k in range(len(poses))]
    experiment = experiment_from_poses(poses, params, PIXEL_SIZE, grid_spacing_deg=spacing)
    direction, group = particle_assignment(poses, params, grid_spacing_deg=spacing)
    assert direction.shape == group.shape == (len(poses),)
    tally = np.zeros(experiment.counts.shape)
    np.add.at(tally, (direction, group), 1.0)
    np.testing.assert_array_equal(tally, experiment.counts)
    assert [experiment.ctf_params[g].defocus_u for g in group[:2]] == [12000, 22000]
    views = rotations.projection_directions(poses)
    folded = np.where(views[:, 2:3] < 0, -views, views)
    cosine = np.einsum("jk,jk->j", folded, experiment.directions[direction])
    if spacing is None:
        np.testing.assert_allclose(cosine, 1.0, atol=1e-12)
        assert np.array_equal(direction[150:170], direction[:20])
    else:
        grid, _ = hemisphere_grid(spacing)
        best = np.abs(folded @ grid.T).max(axis=1)
        np.testing.assert_allclose(np.abs(cosine), best, atol=1e-12)
    assert np.array_equal(direction[170:180], direction[20:30])


def test_particle_pose_changes_are_their_directions_values(phantom):
    """Per particle: the largest over the modes of its direction's (and group's) |Δτ|."""
    volume, pixel = phantom
    poses = simulate.sample_rotations("uniform", 200, 6)
    params = [GROUPS[k % 3 == 0] for k in range(len(poses))]
    experiment = experiment_from_poses(poses, params, pixel_size=pixel, grid_spacing_deg=15.0)
    result = analyse_soft_modes(volume, pixel, experiment, 32 * pixel / (10 / np.pi), n_modes=2,
                                backend="cpu")
    changes = result.group_pose_changes
    assert len(result.eigenvalues) >= 2 and result.converged.all()
    assert changes.shape == (len(result.eigenvalues),) + experiment.counts.shape
    assert np.all(changes > 0)
    share = experiment.counts / experiment.counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.sqrt(np.sum(share * changes ** 2, axis=2)),
                               result.pose_changes, rtol=1e-12)
    direction, group = particle_assignment(poses, params, grid_spacing_deg=15.0)
    values = particle_pose_changes(changes, direction, group)
    assert values.shape == (200,) and np.all(np.isfinite(values) & (values > 0))
    np.testing.assert_array_equal(values, changes[:, direction, group].max(axis=0))
    # A direction whose images share one group: the particle's value is the direction's.
    alone = np.count_nonzero(experiment.counts[direction], axis=1) == 1
    assert alone.sum() > 20
    np.testing.assert_allclose(values[alone],
                               result.pose_changes[:, direction[alone]].max(axis=0), rtol=1e-12)
    with pytest.raises(InvalidDataError, match="outside"):
        particle_pose_changes(changes, direction + changes.shape[1], group)
    with pytest.raises(ShapeError):
        particle_pose_changes(changes[0], direction, group)


def test_distribution_counts_and_density():
    polar = experiment_from_distribution("polar", 1000, spread_deg=15, ctf_params=GROUPS)
    assert abs(polar.n_images - 1000) < 1e-9
    assert np.allclose(polar.counts[:, 0], polar.counts[:, 1])
    near_pole = polar.directions[:, 2] > np.cos(np.deg2rad(30))
    assert polar.counts[near_pole].sum() > 0.85 * 1000
    uniform = experiment_from_distribution("uniform", 1000)
    cap = uniform.directions[:, 2] > np.cos(np.deg2rad(30))
    # The cap within 30° of either pole holds 1 − cos 30° of the sphere.
    assert abs(uniform.counts[cap].sum() / 1000 - (1 - np.cos(np.deg2rad(30)))) < 0.02


def test_noise_variance_estimate_recovers_the_simulated_noise(phantom):
    volume, pixel = phantom
    simulation = simulate.simulate_particles(volume, 150, 32, pixel, rng=6, snr=0.5,
                                             shift_sigma=1.5, n_groups=3, backend="cpu")
    estimate = estimate_noise_variance(volume, simulation.images, simulation.rotations,
                                       simulation.shifts, simulation.ctf_params, pixel,
                                       backend="cpu")
    assert abs(estimate / simulation.noise_sigma ** 2 - 1) < 0.03


def test_bad_input_raises_typed_errors_naming_the_fix(phantom):
    volume, pixel = phantom
    experiment = experiment_from_distribution("uniform", 100, pixel_size=pixel)
    with pytest.raises(InvalidDataError, match="beyond Nyquist.*resolution of at least"):
        analyse_soft_modes(volume, pixel, experiment, 1.5 * pixel)
    bad = volume.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(InvalidDataError, match="NaN.*fix or mask"):
        analyse_soft_modes(bad, pixel, experiment, 20.0)
    with pytest.raises(ShapeError, match="cubic.*pad it"):
        analyse_soft_modes(volume[:, :, :30], pixel, experiment, 20.0)
    empty = ViewingExperiment(experiment.directions, (), np.zeros_like(experiment.counts), pixel)
    with pytest.raises(InvalidDataError, match="no images"):
        analyse_soft_modes(volume, pixel, empty, 20.0)
    with pytest.raises(SamplingMismatchError, match="resample"):
        analyse_soft_modes(volume, 2 * pixel, experiment, 20.0)
    with pytest.raises(ShapeError, match="ALIGN_PROJ"):
        experiment_from_poses(np.zeros((0, 3, 3)))
    with pytest.raises(ShapeError, match="one CTF per particle"):
        experiment_from_poses(np.eye(3)[None], GROUPS)
    with pytest.raises(ShapeError, match="resample"):
        estimate_noise_variance(volume, np.zeros((2, 16, 16)), np.stack([np.eye(3)] * 2),
                                None, None, pixel)


def test_marginalised_noise_weights_each_particle_by_its_own_noise(setup, phantom):
    """Two noise levels: per-image estimates find them, and the weighted experiment's
    Hessian is the sum of each half's Hessian at its own noise variance."""
    volume, pixel = phantom
    simulation = simulate.simulate_particles(volume, 80, 32, pixel, rng=7, snr=None,
                                             n_groups=2, backend="cpu")
    noise = np.where(np.arange(80) < 40, 0.5, 1.5)
    rng = np.random.default_rng(8)
    images = simulation.images + noise[:, None, None] * rng.standard_normal(
        simulation.images.shape)
    variances = estimate_noise_variance(volume, images, simulation.rotations, simulation.shifts,
                                        simulation.ctf_params, pixel, backend="cpu",
                                        per_image=True)
    assert variances.shape == (80,)
    # One image's estimate has relative spread sqrt(2 / dof) ≈ 4.4 %; a half's mean ≈ 0.7 %.
    np.testing.assert_allclose(variances, noise ** 2, rtol=0.2)
    np.testing.assert_allclose([variances[:40].mean(), variances[40:].mean()], [0.25, 2.25],
                               rtol=0.03)
    mean, weights = marginal_noise(variances)
    assert np.isclose(np.mean(weights), 1.0)
    assert np.isclose(mean, 1 / np.mean(1 / variances))
    assert 7 < weights[:40].mean() / weights[40:].mean() < 11  # (1.5 / 0.5)² = 9

    shells, layout, _, volume_vector = setup
    poses = simulate.uniform_rotations(80, np.random.default_rng(9))
    weighted = experiment_from_poses(poses, pixel_size=PIXEL_SIZE, weights=weights)
    halves = [experiment_from_poses(poses[part], pixel_size=PIXEL_SIZE)
              for part in (slice(0, 40), slice(40, 80))]
    operator = AccumulatedHessian(shells, volume_vector, layout, weighted, PIXEL_SIZE, mean)
    parts = [AccumulatedHessian(shells, volume_vector, layout, half, PIXEL_SIZE, variance)
             for half, variance in zip(halves, (variances[0], variances[40]))]
    vector = rng.standard_normal(layout.n_parameters)
    # Within each half the estimates differ slightly; compare with the exact per-half weights.
    exact = experiment_from_poses(poses, pixel_size=PIXEL_SIZE, weights=np.where(
        np.arange(80) < 40, mean / variances[0], mean / variances[40]))
    exact_operator = AccumulatedHessian(shells, volume_vector, layout, exact, PIXEL_SIZE, mean)
    assert relative(exact_operator.matvec(vector), sum(p.matvec(vector) for p in parts)) < 1e-10
    assert relative(operator.matvec(vector), exact_operator.matvec(vector)) < 0.1
    with pytest.raises(InvalidDataError, match="per_image=True"):
        marginal_noise([1.0, np.nan])
    with pytest.raises(InvalidDataError, match="one per particle"):
        experiment_from_poses(poses, weights=np.ones(3))
