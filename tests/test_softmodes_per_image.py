"""Likelihood, gradient and Hessian-vector products of the slow per-image reference
(softmodes/per_image.py; docs/methods/hessian_soft_modes.md §2 and §6), float64."""
import numpy as np
import pytest

import scipy.linalg

from cryohess_plugin.core import rotations, spherical
from cryohess_plugin.core.softmodes import per_image
from cryohess_plugin.core.ctf import CTFParams, ctf_stack
from cryohess_plugin.core.errors import InvalidDataError
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.softmodes.solver import (MetricCoordinates, ProjectedOperator,
                                                   softest_modes)

from .helpers import gaussian_blobs

#: 2πK = L = 10: 11 shells, degrees up to 10, 22 ring angles.
BOX, MAX_FREQUENCY, N_IMAGES, PIXEL_SIZE = 16, 3.1, 20, 4.0


def shell_grid():
    return spherical.ShellGrid.from_max_frequency(BOX, MAX_FREQUENCY)


def full_ctf(shells, n_angles, rng):
    """Astigmatic CTFs of N_IMAGES particles at the ring samples, ``(J, R, Q)``."""
    grid = per_image.ring_grid(shells, n_angles)
    params = [CTFParams(defocus_u=u, defocus_v=u - 500.0, defocus_angle=a, voltage=300.0,
                        spherical_aberration=2.7, amplitude_contrast=0.1)
              for u, a in zip(rng.uniform(8000, 20000, N_IMAGES), rng.uniform(0, 180, N_IMAGES))]
    values = ctf_stack(params, grid.kx, grid.ky, BOX, PIXEL_SIZE)
    return values.reshape(N_IMAGES, shells.n_shells, n_angles)


def real_coefficients(problem, rng):
    """A real volume's coefficients, decaying with degree like a smooth map."""
    vector = rng.standard_normal(problem.n_parameters)
    coefficients = problem.from_real_vector(vector)
    decay = np.exp(-np.arange(problem.shell_grid.max_degree + 1) / 4.0)
    return coefficients * decay[None, :, None]


def synthetic_problem(rng, noise=0.3, ctf=True, shells=None):
    """Problem with images = templates of a real volume at random poses (+ complex noise).

    :returns: ``(problem, true coefficients)``.
    """
    shells = shell_grid() if shells is None else shells
    n_angles = 2 * shells.max_degree + 2
    poses = rotations.random_rotations(N_IMAGES, rng)
    empty = np.zeros((N_IMAGES, shells.n_shells, n_angles), dtype=np.complex128)
    ctf_values = full_ctf(shells, n_angles, rng) if ctf else None
    problem = per_image.SoftModeProblem(shells, empty, poses, ctf_values, noise_sigma=0.5)
    truth = real_coefficients(problem, rng)
    images = problem.templates(truth)
    scale = np.sqrt(np.mean(np.abs(images) ** 2))
    images = images + noise * scale * (rng.standard_normal(images.shape)
                                       + 1j * rng.standard_normal(images.shape)) / np.sqrt(2)
    return per_image.SoftModeProblem(shells, images, poses, ctf_values, noise_sigma=0.5), truth


def relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b)


def test_real_vector_space_is_an_isometry_with_the_shell_metric():
    rng = np.random.default_rng(0)
    problem, truth = synthetic_problem(rng)
    x, y = rng.standard_normal((2, problem.n_parameters))
    ax, ay = problem.from_real_vector(x), problem.from_real_vector(y)
    assert relative(problem.to_real_vector(ax), x) < 1e-14
    assert relative(problem.from_real_vector(problem.to_real_vector(truth)), truth) < 1e-14
    # Reality: A_{l,-m} = (-1)^{l+m} conj(A_{l,m}) is V(-k) = conj(V(k)), a real volume.
    shells = problem.shell_grid
    directions = rng.standard_normal((7, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    values = [np.einsum("dlm,rlm->rd", spherical.harmonics_at(sign * directions, shells.max_degree,
                                                             shells.n_orders), ax)
              for sign in (1, -1)]
    assert relative(values[1], values[0].conj()) < 1e-13
    assert abs(x @ y - np.vdot(ax, ay).real) < 1e-12 * abs(x @ y)
    inner = problem.shell_grid.inner(ax, ay).real
    assert abs(x @ (problem.metric_weights() * y) - inner) < 1e-12 * np.abs(inner)


def test_templates_adjoint_passes_the_dot_product_test():
    rng = np.random.default_rng(1)
    problem, _ = synthetic_problem(rng)
    shells = problem.shell_grid
    shape = (shells.n_shells, shells.max_degree + 1, shells.n_orders)
    a = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * shells.coefficient_mask()
    values = rng.standard_normal(problem.images_polar.shape) + 1j * rng.standard_normal(
        problem.images_polar.shape)
    left = np.vdot(problem.templates(a), values)
    right = np.vdot(a, problem.templates_adjoint(values))
    assert abs(left - right) < 1e-12 * abs(left)


def test_slice_matches_the_fourier_slice_projector():
    """Same pose convention as FourierSliceProjector.project_polar (Xmipp passive R)."""
    box = 32
    rng = np.random.default_rng(2)
    volume = gaussian_blobs(box, rng.uniform(-5, 5, (5, 3)), rng.uniform(1.8, 2.5, 5), np.ones(5))
    shells = spherical.ShellGrid.from_max_frequency(box, 4.0)
    coefficients = spherical.SphericalTransform(shells, backend="cpu").coefficients(volume)
    n_angles = 2 * shells.max_degree + 2
    poses = rotations.random_rotations(4, rng)
    problem = per_image.SoftModeProblem(
        shells, np.zeros((4, shells.n_shells, n_angles)), poses)
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    expected = projector.project_polar(poses, shells.radii, n_angles)
    # Cubic interpolation of the padded transform on both sides: ~3e-3.
    assert relative(problem.templates(coefficients), expected) < 5e-3


def test_two_dimensional_and_volumetric_likelihoods_agree():
    rng = np.random.default_rng(3)
    problem, truth = synthetic_problem(rng)
    terms = problem.accumulated_terms()
    for coefficients in (truth, real_coefficients(problem, rng)):
        planar = problem.negative_log_likelihood(coefficients)
        volumetric = problem.volumetric_negative_log_likelihood(coefficients, terms)
        assert abs(planar - volumetric) < 1e-10 * planar


def test_gradient_and_fixed_pose_hessian_match_finite_differences():
    rng = np.random.default_rng(4)
    problem, truth = synthetic_problem(rng)
    point = truth + 0.1 * real_coefficients(problem, rng)
    x = problem.to_real_vector(point)
    direction = rng.standard_normal(problem.n_parameters)
    step = 1e-3
    nll = lambda v: problem.negative_log_likelihood(problem.from_real_vector(v))  # noqa: E731
    finite = (nll(x + step * direction) - nll(x - step * direction)) / (2 * step)
    assert abs(problem.gradient(point) @ direction - finite) < 1e-8 * abs(finite)
    gradient_change = (problem.gradient(problem.from_real_vector(x + step * direction))
                       - problem.gradient(problem.from_real_vector(x - step * direction))) / (2 * step)
    product = problem.hessian_vector(point, direction, implicit_poses=False)
    assert relative(product, gradient_change) < 1e-9


def test_pose_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    problem, truth = synthetic_problem(rng)
    omega = rng.standard_normal((N_IMAGES, 3))
    step = 1e-5
    values = [per_image.SoftModeProblem(problem.shell_grid, problem.images_polar,
                                         rotations.perturb(problem.rotations, sign * step * omega),
                                         problem.ctf, problem.noise_sigma)
              .negative_log_likelihood(truth) for sign in (1, -1)]
    finite = (values[0] - values[1]) / (2 * step)
    assert abs(np.sum(problem.pose_gradient(truth) * omega) - finite) < 1e-6 * abs(finite)


def test_reduced_hessian_matches_finite_differences_of_the_profile_gradient():
    """With poses re-optimised at every volume, d(gradient) = H_red v (envelope theorem)."""
    rng = np.random.default_rng(6)
    problem, truth = synthetic_problem(rng)
    problem = problem.refine_poses(truth, iterations=6)
    assert np.abs(problem.pose_gradient(truth)).max() < 1e-9 * np.abs(
        problem.gradient(truth)).max()
    direction = problem.to_real_vector(real_coefficients(problem, rng))
    step = 1e-4
    gradients = []
    for sign in (1, -1):
        moved = problem.from_real_vector(problem.to_real_vector(truth) + sign * step * direction)
        gradients.append(problem.refine_poses(moved, iterations=4).gradient(moved))
    finite = (gradients[0] - gradients[1]) / (2 * step)
    reduced = problem.hessian_vector(truth, direction)
    fixed = problem.hessian_vector(truth, direction, implicit_poses=False)
    assert relative(reduced, finite) < 1e-6
    assert relative(fixed, finite) > 1e-3  # the pose coupling is not negligible here
    other = rng.standard_normal(problem.n_parameters)
    assert abs(other @ reduced - direction @ problem.hessian_vector(truth, other)) < 1e-10 * abs(
        other @ reduced)


def test_rigid_rotations_are_null_modes_of_the_reduced_hessian():
    rng = np.random.default_rng(7)
    problem, truth = synthetic_problem(rng, noise=0.0)
    assert np.abs(problem.gradient(truth)).max() < 1e-12 * np.abs(
        problem.to_real_vector(truth)).max()
    modes = problem.rigid_rotation_modes(truth)
    for mode in modes:
        reduced = problem.hessian_vector(truth, mode)
        fixed = problem.hessian_vector(truth, mode, implicit_poses=False)
        assert np.linalg.norm(reduced) < 1e-8 * np.linalg.norm(fixed)
        # The implied pose change undoes the rotation image by image.
        assert np.linalg.norm(problem.implied_pose_change(truth, mode)) > 0
    generic = rng.standard_normal(problem.n_parameters)
    assert generic @ problem.hessian_vector(truth, generic) > 0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rigid_rotation_mode_is_the_derivative_of_rotated_coefficients(axis):
    """-i L_a A is d/dt of the coefficients of V(expm(-t [e_a]) k)."""
    rng = np.random.default_rng(8)
    problem, truth = synthetic_problem(rng, noise=0.0, ctf=False)
    shells = problem.shell_grid
    nodes = np.stack([component[0] for component in shells.frequencies()], -1)
    nodes /= np.linalg.norm(nodes, axis=-1, keepdims=True)
    step = 1e-6
    rotated = []
    for sign in (1, -1):
        # Sample k -> V(expm(-t [e_a]) k) at the shell nodes and analyse (exact, band-limited).
        moved = nodes @ rotations.so3_exp(-sign * step * np.eye(3)[axis]).T
        harmonics = spherical.harmonics_at(moved, shells.max_degree, shells.n_orders)
        samples = np.einsum("tplm,rlm->rtp", harmonics, truth * shells.coefficient_mask())
        rotated.append(shells.analyze(samples))
    finite = problem.to_real_vector((rotated[0] - rotated[1]) / (2 * step))
    assert relative(problem.rigid_rotation_modes(truth)[axis], finite) < 1e-8


def test_rotation_invariance_identity_holds_with_noise_away_from_the_optimum():
    """The profile NLL is invariant under rigid rotations, so H_red (O_a F) = O_a g exactly.

    ``O_a = -i L_a`` is antisymmetric in the real vector space; with noisy data,
    a volume that is not the least-squares one (g != 0) and poses refined to
    their optimum, this exercises the residual terms that vanish when r = 0.
    """
    rng = np.random.default_rng(9)
    problem, truth = synthetic_problem(rng)
    point = truth + 0.2 * real_coefficients(problem, rng)
    problem = problem.refine_poses(point, iterations=8)
    gradient = problem.from_real_vector(problem.gradient(point))
    for axis, mode in enumerate(problem.rigid_rotation_modes(point)):
        rotated_gradient = problem.to_real_vector(-1j * spherical.angular_momentum(gradient, axis))
        assert relative(problem.hessian_vector(point, mode), rotated_gradient) < 1e-10


def blocked_copy(problem, max_cache_bytes):
    return per_image.SoftModeProblem(problem.shell_grid, problem.images_polar, problem.rotations,
                                      problem.ctf, problem.noise_sigma,
                                      max_cache_bytes=max_cache_bytes)


@pytest.mark.parametrize("budget_in_images, blocks, kept", [(0, 20, 0), (16, 10, 7)])
def test_image_blocks_within_a_cache_budget_give_the_cached_results(budget_in_images, blocks,
                                                                     kept):
    rng = np.random.default_rng(10)
    problem, truth = synthetic_problem(rng)
    shells = problem.shell_grid
    bytes_per_image = problem.n_angles * (shells.max_degree + 1) * shells.n_orders * 16
    budget = budget_in_images * bytes_per_image
    blocked = blocked_copy(problem, budget)
    # 0: one image per block, all recomputed; 16 images: blocks of 2 (an eighth), 7 kept.
    assert len(blocked._blocks) == blocks and len(blocked._kept_harmonics) == kept
    kept_bytes = sum(harmonics.nbytes for harmonics in blocked._kept_harmonics)
    assert kept_bytes + bytes_per_image * blocked._blocks[0].stop <= max(budget, bytes_per_image)
    point = truth + 0.1 * real_coefficients(problem, rng)
    direction = rng.standard_normal(problem.n_parameters)
    values = problem.images_polar * rng.standard_normal(problem.images_polar.shape)
    pairs = [(problem.templates(point), blocked.templates(point)),
             (problem.templates_adjoint(values), blocked.templates_adjoint(values)),
             (problem.gradient(point), blocked.gradient(point)),
             (problem.pose_gradient(point), blocked.pose_gradient(point)),
             (problem.hessian_vector(point, direction), blocked.hessian_vector(point, direction)),
             (problem.hessian_vector(point, direction, implicit_poses=False),
              blocked.hessian_vector(point, direction, implicit_poses=False)),
             (problem.implied_pose_change(point, direction),
              blocked.implied_pose_change(point, direction)),
             (problem.refine_poses(point, 2).rotations, blocked.refine_poses(point, 2).rotations)]
    terms, blocked_terms = problem.accumulated_terms(), blocked.accumulated_terms()
    pairs += [(getattr(terms, name), getattr(blocked_terms, name))
              for name in ("m20", "m11", "m02")]
    for cached_result, blocked_result in pairs:
        assert relative(blocked_result, cached_result) < 1e-12
    assert abs(blocked.negative_log_likelihood(point)
               - problem.negative_log_likelihood(point)) < 1e-12 * problem.negative_log_likelihood(
        point)
    assert blocked.refine_poses(point, 1).max_cache_bytes == budget
    with pytest.raises(InvalidDataError, match="max_cache_bytes"):
        blocked_copy(problem, -1)


def test_softest_modes_of_the_reduced_hessian_match_its_dense_eigenvalues():
    """The eigensolver on hessian_vector, rigid rotations removed, W metric: the dense
    problem's values; a short budget leaves upper bounds, flagged."""
    rng = np.random.default_rng(11)
    shells = spherical.ShellGrid.from_max_frequency(BOX, 1.6)  # L = 6, 7 shells, 209 reals
    problem, truth = synthetic_problem(rng, noise=0.0, shells=shells)
    size = problem.n_parameters
    null_space = problem.rigid_rotation_modes(truth)
    metric = problem.metric_weights()
    hessian = np.stack([problem.hessian_vector(truth, column) for column in np.eye(size)], 1)
    assert np.abs(hessian - hessian.T).max() < 1e-10 * np.abs(hessian).max()
    complement = scipy.linalg.null_space(null_space * metric)
    reference = scipy.linalg.eigh(complement.T @ (hessian + hessian.T) / 2 @ complement,
                                  complement.T @ (metric[:, None] * complement), eigvals_only=True)

    def operator():
        return ProjectedOperator(
            lambda x: np.stack([problem.hessian_vector(truth, v) for v in x]),
            MetricCoordinates(metric, size), null_space)

    full = softest_modes(operator(), 7, tolerance=1e-9, max_products=600)
    assert full.dimension == size - 3 and full.converged.all()
    np.testing.assert_allclose(full.eigenvalues[:7], reference[:7], rtol=1e-10)
    assert reference[0] > 0  # positive definite off the rigid rotations
    assert np.abs(full.vectors @ (metric[:, None] * null_space.T)).max() < 1e-10
    short = softest_modes(operator(), 3, max_products=12, rng=1)
    assert short.products == 12 and not short.converged.all()
    assert np.all(short.eigenvalues >= reference[:len(short.eigenvalues)] * (1 - 1e-12))
