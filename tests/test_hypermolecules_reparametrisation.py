"""The joint warp of states and coefficients (docs/methods/hyper_molecules.md §5.5): group
structure, Jacobian against finite differences, a known target sampled, and the move in a
chain against re-projection."""
import numpy as np
import pytest

from cryohess_plugin.core import hypermolecules as hm
from cryohess_plugin.core.hypermolecules import reparametrisation as rp
from cryohess_plugin.core.hypermolecules.basis import reflect_unit

from .method_data import simulated_from_model


@pytest.mark.parametrize("family", rp.FAMILIES)
def test_warps_are_groups_whose_inverse_is_the_negated_parameter(family):
    rng = np.random.default_rng(0)
    tau = rng.random(200)
    there, log_there = rp.warp_states(tau, family, 0.7)
    back, log_back = rp.warp_states(there, family, -0.7)
    assert np.allclose(back, tau, atol=1e-10)
    assert np.allclose(log_there + log_back, 0.0, atol=1e-8)
    assert np.all((there > 0) & (there < 1))
    composed, _ = rp.warp_states(rp.warp_states(tau, family, 0.3)[0], family, 0.4)
    assert np.allclose(composed, there, atol=1e-10)
    h = 1e-6
    slope = (rp.warp_states(tau + h, family, 0.7)[0] - rp.warp_states(tau - h, family, 0.7)[0]) / (2 * h)
    assert np.allclose(np.log(slope), log_there, atol=1e-5)
    basis = hm.StateBasis(2, 3)
    generator = rp.basis_generator(basis, family, 1)
    forward, log_det = rp.coefficient_map(generator, 0.7)
    reverse, log_det_back = rp.coefficient_map(generator, -0.7)
    assert np.allclose(forward @ reverse, np.eye(basis.size), atol=1e-12)
    assert np.isclose(np.log(abs(np.linalg.det(forward))), log_det)
    assert np.isclose(log_det + log_det_back, 0.0)


def test_generator_re_expands_the_warped_map():
    """For a small θ, ``Σ_q (e^{θG} u)_q P_q(φ_θ(τ))`` stays closer to ``W(τ)`` than the
    unchanged coefficients do: the re-expansion follows the warp."""
    basis = hm.StateBasis(1, 6)
    u = np.array([1.0, 0.8, -0.3, 0.1, 0.0, 0.0])
    tau = np.linspace(0.05, 0.95, 50)[:, None]
    original = basis.values(tau) @ u
    for family in rp.FAMILIES:
        [moved], new_u, _, _ = rp.propose_warp([tau], u, basis, family, 0, 0.05, 1)
        followed = np.abs(basis.values(moved) @ new_u - original).max()
        unchanged = np.abs(basis.values(moved) @ u - original).max()
        assert followed < 0.2 * unchanged


def test_joint_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    basis = hm.StateBasis(1, 3)
    n, voxels = 4, 2
    tau = rng.uniform(0.1, 0.9, (n, 1))
    u = rng.normal(size=(3, voxels))

    def joint(x):
        [t], new_u, _, log_jacobian = rp.propose_warp([x[:n, None]], x[n:].reshape(3, voxels),
                                                      basis, "scale", 0, 0.4, voxels)
        return np.concatenate([t[:, 0], new_u.ravel()]), log_jacobian

    x = np.concatenate([tau[:, 0], u.ravel()])
    _, expected = joint(x)
    h = 1e-6
    columns = [(joint(x + h * e)[0] - joint(x - h * e)[0]) / (2 * h) for e in np.eye(x.size)]
    assert np.isclose(np.linalg.slogdet(np.array(columns).T)[1], expected, atol=1e-5)


def sample_known_target(with_jacobian, sweeps=3000):
    """States uniform on [0, 1], coefficients Gaussian with variances ``scales²``: exact
    moves of each plus the warp moves of both families."""
    rng = np.random.default_rng(5)
    basis = hm.StateBasis(1, 3)
    n, voxels = 40, 3
    scales = np.array([1.0, 0.5, 0.25])[:, None]
    tau, u = rng.random((n, 1)), scales * rng.normal(size=(3, voxels))

    def log_target(coefficients):
        return -0.5 * np.sum((coefficients / scales) ** 2)

    taus, coefficients, accepted = [], [], []
    for sweep in range(sweeps):
        # Exact for the uniform target: some states drawn afresh, the others a small walk.
        proposal = reflect_unit(tau + 0.02 * rng.standard_normal(tau.shape))
        tau = np.where(rng.random(tau.shape) < 0.1, rng.random(tau.shape), proposal)
        proposal = u + 0.4 * scales * rng.standard_normal(u.shape)
        if np.log(rng.random()) < log_target(proposal) - log_target(u):
            u = proposal
        for family in rp.FAMILIES:
            [new_tau], new_u, _, log_jacobian = rp.propose_warp(
                [tau], u, basis, family, 0, 0.3 * rng.standard_normal(), voxels)
            log_ratio = log_target(new_u) - log_target(u) + (log_jacobian if with_jacobian else 0.0)
            take = np.log(rng.random()) < log_ratio
            accepted.append(take)
            if take:
                tau, u = new_tau, new_u
        if sweep >= 300:
            taus.append(tau[:, 0].copy())
            coefficients.append(u.copy())
    return np.array(taus), np.array(coefficients), scales, float(np.mean(accepted))


def moment_errors(taus, coefficients, scales):
    """Mean squared z-scores of the coefficients' second moments and of the states'
    second moment against their known values (ESS-corrected)."""
    squares = (coefficients / scales) ** 2
    ess = np.array([hm.effective_sample_size(squares[None, :, q, v])
                    for q in range(squares.shape[1]) for v in range(squares.shape[2])])
    # A squared standard normal has variance 2; a squared U[0, 1] has variance 4/45.
    z_coefficients = (squares.mean(0).ravel() - 1.0) / np.sqrt(2.0 / ess)
    second = (taus ** 2).mean(1)
    z_states = (second.mean() - 1 / 3) / np.sqrt(
        4 / 45 / taus.shape[1] / hm.effective_sample_size(second[None]))
    return float(np.mean(z_coefficients ** 2)), float(abs(z_states))


def test_warp_moves_sample_a_known_target():
    """The warp moves, mixed with small random walks, keep states uniform and coefficients
    at their Gaussian variances; dropping the Jacobian visibly biases them."""
    taus, coefficients, scales, rate = sample_known_target(True)
    assert rate > 0.2
    z_coefficients, z_states = moment_errors(taus, coefficients, scales)
    assert z_coefficients < 3.0 and z_states < 4.0
    biased = moment_errors(*sample_known_target(False)[:3])
    assert biased[0] > 10.0 or biased[1] > 6.0


def test_warp_move_in_a_chain_matches_re_projection():
    """The linearly re-combined slices of an accepted warp equal the slices re-projected
    from the warped coefficients, and the chain's cached log-likelihood stays the one
    recomputed from scratch."""
    rng = np.random.default_rng(9)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=120, sigma=0.05)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      interpolation="linear", backend="cpu")
    chain = hm.Chain(problem, hm.SamplerSettings(sweeps=2, burn_in=1, reparametrise=True,
                                                 warp_step=0.02), 0)
    chain._build(data.band)
    chain.model.coefficients = {0: model.coefficients[0].copy()}
    chain.state.states = tau.copy()
    chain.state.log_contrast = np.log(contrast)
    chain.state.shifts = shifts.copy()
    chain._refresh_slices()
    before = chain.state.states.copy()
    rates = [chain._move_warps(rng, 1.0) for _ in range(20)]
    assert np.isfinite(rates).all() and max(rates) > 0
    assert not np.allclose(chain.state.states, before)
    assert np.all(np.argsort(chain.state.states[:, 0]) == np.argsort(before[:, 0]))
    fresh = chain.model.slices(chain.model.grids(), chain.state.rotations, chain.likelihood.kx,
                               chain.likelihood.ky)
    assert np.abs(fresh - chain.slices).max() < 1e-4 * np.abs(fresh).max()
    recomputed = chain.likelihood.log_likelihoods(fresh, chain._weights(
        chain.state.states, chain.state.log_contrast), chain.state.shifts)
    assert np.allclose(recomputed, chain.log_likelihood, rtol=1e-4, atol=1e-2)


def gaussian_toy(rng, dimension=30):
    """A Gaussian target with an ill-conditioned precision ``Q`` and mean ``Q⁻¹b``."""
    basis, _ = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    precision = basis @ np.diag(np.logspace(0, 2, dimension)) @ basis.T
    return precision, rng.normal(size=dimension)


@pytest.mark.parametrize("iterations, mismatch", [(40, 0.0), (12, 0.0), (40, 0.05)])
def test_reflection_step_samples_a_known_gaussian(iterations, mismatch):
    """Exact whatever the solver's accuracy (12 CG steps of a condition-100 system) and
    whether or not the auxiliary precision equals the target's (diagonal 5 % off): sample mean and covariance
    agree with the closed form; with a converged solve every proposal is accepted."""
    rng = np.random.default_rng(11)
    precision, linear = gaussian_toy(rng)
    target = precision * (1.0 + mismatch * np.eye(len(linear)))
    mean = np.linalg.solve(target, linear)
    covariance = np.linalg.inv(target)
    factor = np.linalg.cholesky(precision)

    def log_target(x):
        return -0.5 * x @ target @ x + linear @ x

    def solve(c):
        return hm.conjugate_gradient(lambda v: precision @ v, c, lambda r: r / np.diag(precision),
                                     iterations)

    x, log_x = np.zeros(len(linear)), 0.0
    samples, rates = [], []
    for step in range(4000):
        x_new, log_new, accepted, rate = hm.reflection_step(
            x, log_x, log_target, lambda v: precision @ v, linear,
            lambda g: factor @ g.standard_normal(len(linear)), solve, rng)
        rates.append(rate)
        if accepted:
            x, log_x = x_new, log_new
        if step >= 200:
            samples.append(x)
    samples = np.array(samples)
    if iterations == 40 and mismatch == 0:
        assert min(rates) > 0.999
    ess = np.array([hm.effective_sample_size(samples[None, :, j]) for j in range(len(linear))])
    z = (samples.mean(0) - mean) / np.sqrt(np.diag(covariance) / ess)
    assert np.mean(z ** 2) < 2.5
    ratio = np.diag(np.cov(samples.T)) / np.diag(covariance)
    assert abs(ratio.mean() - 1.0) < 0.1
    projected = samples @ np.linalg.eigh(covariance)[1][:, -1]
    assert abs(projected.var() / np.linalg.eigh(covariance)[0][-1] - 1.0) < 0.2


def test_exact_coefficient_draw_in_a_chain_matches_its_gaussian():
    """In a chain: the perturbation noise has the covariance of the precision product
    (``Var vᵀw = vᵀQv``), and with a converged solve the reflected draw is accepted almost
    surely, which holds only if ``Q``, ``b`` and the noise match the chain's own
    log-posterior."""
    rng = np.random.default_rng(13)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=120, sigma=0.05)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      interpolation="linear", backend="cpu")
    settings = hm.SamplerSettings(sweeps=2, burn_in=1, coefficient_draw="exact",
                                  solver_iterations=60)
    chain = hm.Chain(problem, settings, 0)
    chain._build(data.band)
    chain.state.states = tau.copy()
    chain.state.log_contrast = np.log(contrast)
    chain.state.shifts = shifts.copy()
    chain._refresh_slices()
    chain._precondition()
    beta = 0.7
    probe = chain._vector({0: chain.model.limit(rng.standard_normal(
        chain.model.coefficients[0].shape))})
    expected = probe @ chain._precision_product(probe, beta)
    projections = [probe @ chain._conditional_noise(rng, beta) for _ in range(150)]
    assert abs(np.var(projections) / expected - 1.0) < 0.3
    rates = [chain._move_coefficients_exact(rng, beta) for _ in range(3)]
    assert min(rates) > 0.9
