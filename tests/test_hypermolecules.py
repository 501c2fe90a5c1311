"""Hyper-molecule core: forward model, likelihood calibration, gradients, samplers and
diagnostics (docs/methods/hyper_molecules.md)."""
import numpy as np
import pytest

from cryohess_plugin.core import fourier, rotations
from cryohess_plugin.core import hypermolecules as hm
from cryohess_plugin.core.ctf import apply_ctf, ctf_stack
from cryohess_plugin.core.errors import InvalidDataError, MissingMetadataError, ShapeError
from cryohess_plugin.core.projector import SliceOperator
from cryohess_plugin.core.synthetic import AtomModel, gaussian_atom_projection

from .helpers import gaussian_blobs, relative_l2
from .method_data import HYPERMOLECULE_BOX as BOX
from .method_data import HYPERMOLECULE_CTF as CTF
from .method_data import HYPERMOLECULE_PIXEL as PIXEL
from .method_data import model_with_volume, simulated_from_model


def blob_atoms(rng, count=6, spread=2.5):
    """Carbon atoms with a 2-px B-factor blur: Gaussians of sigma ~2.3 px at 2 Å/px."""
    positions = rng.normal(scale=spread * PIXEL, size=(count, 3))
    return AtomModel(positions, ["C"] * count, np.full(count, 1600.0))


# ---------------------------------------------------------------- forward model (§3)
def test_analytic_fourier_transform_of_gaussians_equals_their_line_integrals():
    """The continuous transform of Gaussians sampled on the image grid, with the rotated
    centres, is the DFT of the real-space line integrals (central-slice theorem)."""
    rng = np.random.default_rng(0)
    model = blob_atoms(rng)
    pose = rotations.random_rotations(1, rng)[0]
    image = gaussian_atom_projection(model, pose, BOX, PIXEL)[0]
    plane = fourier.HalfPlane.disc(BOX)
    dft = plane.transform(image[None])[0]
    centred = (model.positions - model.centroid()) @ pose.T / PIXEL
    sigmas = model.sigmas() / PIXEL
    omega = 2 * np.pi * np.stack([plane.kx, plane.ky], -1) / BOX
    analytic = sum(w * np.exp(-0.5 * s ** 2 * np.sum(omega ** 2, -1)
                              - 1j * omega @ c[:2])
                   for w, s, c in zip(model.amplitudes(), sigmas, centred))
    assert relative_l2(dft, analytic) < 1e-6


def test_model_slices_match_analytic_projections_inside_the_band():
    """A hyper-molecule holding a Gaussian map projects, through the shared projector, to
    the analytic line integrals of the Gaussians (band-limited comparison)."""
    rng = np.random.default_rng(1)
    box, band = 32, 10.0
    centres = rng.normal(scale=3.0, size=(5, 3))
    volume = gaussian_blobs(box, centres, np.full(5, 2.0), np.ones(5))
    model = model_with_volume(volume, band)
    poses = rotations.random_rotations(4, rng)
    plane = fourier.HalfPlane.disc(box, band)
    slices = model.slices(model.grids(), poses, plane.kx, plane.ky)[:, 0]
    images = np.zeros((4, box, box))
    for i, pose in enumerate(poses):
        xy = centres @ pose.T
        images[i] = gaussian_blobs(box, xy[:, :2], np.full(5, 2.0), np.full(5, np.sqrt(2 * np.pi) * 2.0))
    assert relative_l2(slices, plane.transform(images)) < 5e-3


def test_shared_component_slices_are_the_rotated_map():
    """A component sharing coefficients under a symmetry G projects as the map rotated by G
    (the maps of :func:`total_map` and the sampler's slices agree)."""
    rng = np.random.default_rng(2)
    box, band = 24, 8.0
    g = rotations.so3_exp(np.array([0.3, -0.5, 0.9]))
    mask = hm.soft_ball(box, 4.0, centre=(4.0, 0.0, 0.0))
    components = [hm.Component("arm", 0, mask), hm.Component("copy", 0, shares=0, symmetry=g)]
    model = hm.HyperMolecule(components, 1, box, band, "cubic", "cpu")
    blobs = gaussian_blobs(box, [(4.0, 0.0, 0.0), (5.0, 2.0, -1.0)], [1.5, 1.5], [1.0, 0.5])
    model.coefficients[0][0] = model.limit(hm.fourier_resample(blobs, model.size))
    poses = rotations.random_rotations(3, rng)
    plane = fourier.HalfPlane.disc(box, band)
    slices = model.slices(model.grids(), poses, plane.kx, plane.ky)
    whole = hm.total_map(model, np.zeros(0))
    operator = SliceOperator(model.size, interpolation="cubic", dtype=np.float32, backend="cpu")
    direct = operator.slices(operator.volume_to_grid(whole.astype(np.float32)), poses,
                             plane.kx, plane.ky) * model.scale
    assert relative_l2(slices.sum(axis=1), direct) < 0.05


# ---------------------------------------------------------------- likelihood (§3)
def test_likelihood_at_the_truth_is_chi_square_calibrated():
    """At the true parameters Σ_{k∈H} |r|²/σ² averages one per half-plane point: the
    factor-2 / Hermitian bookkeeping is right."""
    rng = np.random.default_rng(3)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng)
    precision = np.full(data.kx.size, 1.0 / (BOX ** 2 * sigma ** 2))
    likelihood = hm.BandLikelihood(data, data.band, precision, "cpu")
    slices = model.slices(model.grids(), data.rotations, likelihood.kx, likelihood.ky)
    values = likelihood.log_likelihoods(slices, model.term_weights({0: tau}, contrast), shifts)
    points = data.count * data.kx.size
    assert abs(-values.sum() / points - 1.0) < 4.0 / np.sqrt(points)
    wrong = likelihood.log_likelihoods(slices, model.term_weights({0: 1 - tau}, contrast), shifts)
    assert -wrong.sum() / points > 1.0 + 10.0 / np.sqrt(points)


def test_phase_only_shift_update_equals_recomputed_projection():
    """A shift proposal scored with the cached slices and a phase gives the numbers (and so
    the acceptance decisions) of a full projection with the projector's own shift."""
    rng = np.random.default_rng(4)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=50)
    precision = np.full(data.kx.size, 1.0 / (BOX ** 2 * sigma ** 2), np.float32)
    likelihood = hm.BandLikelihood(data, data.band, precision, "cpu")
    weights = model.term_weights({0: tau}, contrast)
    slices = model.slices(model.grids(), data.rotations, likelihood.kx, likelihood.ky)
    proposal = shifts + rng.normal(scale=0.5, size=shifts.shape)
    cached = likelihood.log_likelihoods(slices, weights, proposal)
    # Recomputed: the projector itself applies shift and CTF to every term.
    ctf = ctf_stack([CTF] * data.count, likelihood.kx, likelihood.ky, BOX, PIXEL)
    operator = model.operator
    recomputed_model = 0
    for t, (c, m, q) in enumerate(model.terms):
        grid = model.grids()[(m, q)]
        # The working box is smaller than the particle box: shifts scale with it.
        term = operator.slices(grid, data.rotations, likelihood.kx, likelihood.ky,
                               proposal * model.size / BOX, ctf) * model.scale
        recomputed_model = recomputed_model + weights[:, t, None] * term
    residual = likelihood.spectra - recomputed_model
    recomputed = -np.sum(precision * np.abs(residual) ** 2, axis=1)
    assert np.allclose(cached, recomputed, rtol=2e-5, atol=1e-3)
    current = likelihood.log_likelihoods(slices, weights, shifts)
    uniforms = np.log(rng.random(data.count))
    assert np.array_equal(uniforms < cached - current, uniforms < recomputed - current)


def test_log_posterior_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=150, band=6.0)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      initial_volume=None, interpolation="linear", backend="cpu")
    chain = hm.Chain(problem, hm.SamplerSettings(sweeps=2, burn_in=1), 0)
    chain._build(data.band)
    chain.model.coefficients[0] += 0.1 * chain.model.limit(rng.normal(size=chain.model.coefficients[0].shape))
    chain._refresh_slices()

    def log_posterior(coefficients):
        grids = chain.model.grids(coefficients)
        slices = chain.model.slices(grids, chain.state.rotations, chain.likelihood.kx,
                                    chain.likelihood.ky)
        values = chain.likelihood.log_likelihoods(slices, chain.weights, chain.state.shifts)
        return values.sum() + chain.log_prior(coefficients)

    gradient = chain._posterior_gradient(chain.model.coefficients,
                                         chain._gradient(chain.slices, chain.weights), 1.0)[0]
    direction = chain.model.limit(rng.normal(size=gradient.shape))
    h = 1e-3 * np.abs(chain.model.coefficients[0]).max()
    plus = {0: chain.model.coefficients[0] + h * direction}
    minus = {0: chain.model.coefficients[0] - h * direction}
    numeric = (log_posterior(plus) - log_posterior(minus)) / (2 * h)
    analytic = np.sum(gradient * direction)
    assert abs(numeric - analytic) < 2e-3 * abs(analytic)


# ---------------------------------------------------------------- samplers (§5)
def test_langevin_step_samples_a_gaussian_target():
    """The preconditioned Langevin kernel (with an imperfect preconditioner) samples a
    Gaussian with known mean and variance."""
    rng = np.random.default_rng(6)
    d = 50
    mean, variance = rng.normal(size=d), np.exp(rng.normal(size=d))
    approximate = variance * np.exp(0.3 * rng.normal(size=d))

    def density(point):
        x = point["x"]
        return -0.5 * np.sum((x - mean) ** 2 / variance), {"x": -(x - mean) / variance}

    precondition = {"x": lambda v, power: v * approximate ** power}
    position = {"x": np.zeros(d)}
    current = density(position)
    samples = []
    for sweep in range(4000):
        proposal, accepted, _ = hm.langevin_step(position, current, density, precondition, 0.8, rng)
        if accepted:
            position, current = proposal, density(proposal)
        if sweep >= 500:
            samples.append(position["x"])
    samples = np.array(samples)
    ess = np.array([hm.effective_sample_size(samples[None, :, j]) for j in range(d)])
    z = (samples.mean(0) - mean) / np.sqrt(variance / ess)
    assert np.mean(z ** 2) < 2.0
    ratio = samples.var(0) / variance
    assert abs(ratio.mean() - 1.0) < 0.1


def test_state_moves_sample_the_per_particle_posterior_of_tau():
    """With the coefficients held, the per-particle τ moves (reflected random walk and
    uniform draws) sample each particle's τ posterior, computed on a fine grid."""
    rng = np.random.default_rng(7)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=100, sigma=0.2)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      interpolation="linear", backend="cpu")
    chain = hm.Chain(problem, hm.SamplerSettings(sweeps=2, burn_in=1), 0)
    chain._build(data.band)
    chain.model.coefficients = {0: model.coefficients[0].copy()}
    chain.state.log_contrast = np.log(contrast)
    chain.state.shifts = shifts.copy()
    chain._refresh_slices()
    grid = (np.arange(400) + 0.5) / 400
    scores = np.stack([chain.likelihood.log_likelihoods(
        chain.slices, chain.model.term_weights({0: np.full((data.count, 1), g)}, contrast),
        shifts) for g in grid], 1)
    posterior = np.exp(scores - scores.max(1, keepdims=True))
    posterior /= posterior.sum(1, keepdims=True)
    exact_mean = posterior @ grid
    exact_sd = np.sqrt(posterior @ grid ** 2 - exact_mean ** 2)
    draws = []
    for sweep in range(1500):
        chain._move_states(rng, 1.0)
        if sweep >= 200:
            draws.append(chain.state.states[:, 0].copy())
    draws = np.array(draws)
    ess = np.array([hm.effective_sample_size(draws[None, :, i]) for i in range(data.count)])
    z = (draws.mean(0) - exact_mean) / (exact_sd / np.sqrt(ess))
    assert np.mean(z ** 2) < 2.0
    assert abs(np.median(draws.std(0) / exact_sd) - 1.0) < 0.1


def test_tau_intervals_are_calibrated_without_model_error():
    """On particles drawn from an order-2 model itself (a part of the map moving 5 Å) the
    whole chain (spectral start, band marching, tempering, joint sampling) gives 90 %
    intervals of τ that hold the true state, carried to the sampled scale (§7 of
    docs/methods/hyper_molecules.md), for 85-95 % of the particles."""
    rng = np.random.default_rng(12)
    box, band, n = 32, 8.0, 600
    centres = rng.normal(scale=3.0, size=(6, 3))
    volume = gaussian_blobs(box, centres, np.full(6, 2.0), np.ones(6))
    moved = centres.copy()
    moved[:3, 0] += 2.5
    truth = model_with_volume(volume, band, 1, 2, "linear")
    difference = gaussian_blobs(box, moved, np.full(6, 2.0), np.ones(6)) - volume
    truth.coefficients[0][1] = -truth.limit(hm.fourier_resample(difference, truth.size)) / np.sqrt(2)
    poses = rotations.random_rotations(n, rng)
    shifts = rng.normal(scale=1.0, size=(n, 2))
    tau = rng.random((n, 1))
    contrast = np.exp(0.1 * rng.normal(size=n))
    plane = fourier.HalfPlane.disc(box, band)
    slices = truth.slices(truth.grids(), poses, plane.kx, plane.ky)
    spectra = (ctf_stack([CTF] * n, plane.kx, plane.ky, box, PIXEL)
               * fourier.shift_phase(np.stack([plane.kx, plane.ky], -1), shifts, box)
               * np.einsum("nq,nqm->nm", truth.term_weights({0: tau}, contrast), slices))
    images = plane.synthesize(spectra) + rng.standard_normal((n, box, box))
    data = hm.prepare_particles(images, [CTF] * n, PIXEL, band, poses, shifts)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      interpolation="linear", backend="cpu")
    settings = hm.SamplerSettings(sweeps=400, burn_in=200, map_count=5)
    state = hm.run_chain(problem, settings, 0)
    result = hm.summarize_chains([state], hm.map_series(problem.validate(), 5), box, ["all"],
                                 settings.burn_in)
    mean = result.tau_mean[:, 0]
    assert abs(hm.rank_correlation(mean, tau[:, 0])) > 0.9
    assert 0.85 <= hm.interval_coverage(result.tau_interval[:, 0], mean, tau[:, 0]) <= 0.95


def test_split_rhat_and_effective_sample_size():
    rng = np.random.default_rng(8)
    independent = rng.normal(size=(4, 2000))
    assert abs(hm.split_rhat(independent) - 1.0) < 0.01
    assert 6000 < hm.effective_sample_size(independent) < 10000
    shifted = independent + np.array([0, 0, 0, 2.0])[:, None]
    assert hm.split_rhat(shifted) > 1.1
    phi = 0.9
    ar = np.zeros((8, 8000))
    ar[:, 0] = rng.normal(size=8) / np.sqrt(1 - phi ** 2)
    for t in range(1, 8000):
        ar[:, t] = phi * ar[:, t - 1] + rng.normal(size=8)
    expected = ar.size * (1 - phi) / (1 + phi)
    assert 0.75 * expected < hm.effective_sample_size(ar) < 1.25 * expected


def test_state_basis_is_orthonormal_and_reverses_with_signs():
    basis = hm.StateBasis(2, 3)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    nodes, weights = (nodes + 1) / 2, weights / 2
    tau = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    w = np.outer(weights, weights).ravel()
    values = basis.values(tau)
    assert np.allclose(values.T @ (w[:, None] * values), np.eye(9), atol=1e-12)
    assert np.allclose(basis.values(1 - tau), values * basis.reversal_signs())


def test_work_per_sweep_does_not_depend_on_the_state_dimension(monkeypatch):
    """At a fixed number of coefficient maps (d = 1, Q = 4 against d = 2, Q = 2) a sweep after
    burn-in makes the same kernel passes over the same numbers of values: the cost of the
    sampler does not grow with d (docs/methods/hyper_molecules.md §8)."""
    rng = np.random.default_rng(11)
    images = rng.normal(size=(220, 16, 16))
    data = hm.prepare_particles(images, [CTF] * 220, PIXEL, 5.0,
                                rotations.random_rotations(220, rng))
    work = {}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            out = function(*args, **kwargs)
            work.setdefault(name, []).append(np.size(out))
            return out
        return wrapper

    counts = {}
    for dimension, order in ((1, 4), (2, 2)):
        problem = hm.HyperMoleculeProblem(data, [hm.Component("all", dimension)], order=order,
                                          backend="cpu")
        settings = hm.SamplerSettings(sweeps=3, burn_in=2, band_fractions=(1.0,))
        chain = hm.Chain(problem, settings, 0)
        chain.run()
        with monkeypatch.context() as patch:
            for owner, name in ((hm.BandLikelihood, "log_likelihoods"),
                                (hm.BandLikelihood, "weighted_residuals"),
                                (hm.HyperMolecule, "slices"), (hm.HyperMolecule, "gradient")):
                patch.setattr(owner, name, counted(name, getattr(owner, name)))
            work.clear()
            chain.settings = hm.SamplerSettings(sweeps=4, burn_in=2, band_fractions=(1.0,))
            chain.run()
        counts[dimension] = {name: sorted(sizes) for name, sizes in work.items()}
    assert counts[1] == counts[2]
    assert counts[1]["log_likelihoods"]


def test_pretzel_arms_are_c2_copies_that_swing_independently():
    from cryohess_plugin.core.synthetic import simulate
    from cryohess_plugin.core.synthetic.pretzel import C2_Z, pretzel
    shape = pretzel(swing_deg=50.0)
    states = np.array([[0.0, 1.0], [0.3, 0.3]])
    positions = shape.positions_at(states)
    ring, arms = shape.ring.shape[0], shape.arm.shape[0]
    first, second = positions[:, ring:ring + arms], positions[:, ring + arms:]
    # Same state: the second arm is the first one turned by C2.
    assert np.allclose(second[1], first[1] @ C2_Z.T)
    # The swing between t = 0 and t = 1 is 50 degrees about the hinge.
    ends = shape.arm_positions(np.array([0.0, 1.0])) - shape.hinge
    cosine = np.sum(ends[0, -1] * ends[1, -1]) / np.linalg.norm(ends[0, -1]) ** 2
    assert np.isclose(np.degrees(np.arccos(cosine)), 50.0)
    sim = simulate.simulate_particles(None, 4, 32, 2.0, rng=0, heterogeneity=shape, snr=None,
                                      backend="cpu")
    assert sim.conformation.shape == (4, 2)
    model = shape.model(sim.conformation[0])
    direct = apply_ctf(gaussian_atom_projection(model, sim.rotations[0], 32, 2.0,
                                                center=shape.reference.centroid()),
                       sim.ctf_params[0], 2.0)[0]
    assert relative_l2(sim.clean_images[0], direct) < 1e-5
    masks = shape.masks(32, 2.0)
    assert all(mask.shape == (32,) * 3 and mask.max() == 1.0 for mask in masks)


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_messages_naming_the_fix():
    rng = np.random.default_rng(9)
    images = rng.normal(size=(20, 16, 16))
    poses = rotations.random_rotations(20, rng)
    with pytest.raises(MissingMetadataError, match="no CTF"):
        hm.prepare_particles(images, None, PIXEL, 6.0, poses)
    data = hm.prepare_particles(images, [CTF] * 20, PIXEL, 6.0, poses)
    with pytest.raises(ShapeError, match="resample the mask to 16 px"):
        hm.HyperMoleculeProblem(data, [hm.Component("arm", 1, np.ones((24,) * 3))]).validate()
    with pytest.raises(InvalidDataError, match="state dimension must be 0 to 3"):
        hm.HyperMoleculeProblem(data, [hm.Component("all", 4)]).validate()
    with pytest.raises(InvalidDataError, match="cannot support a state basis of order 3"):
        hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=3).validate()


def test_a_stopped_chain_continues_from_its_checkpoint_exactly(tmp_path):
    rng = np.random.default_rng(10)
    model, data, tau, contrast, shifts, sigma = simulated_from_model(rng, n=120, band=6.0)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("all", 1)], order=2,
                                      interpolation="linear", backend="cpu")
    settings = hm.SamplerSettings(sweeps=8, burn_in=4, checkpoint_every=3)
    whole = hm.run_chain(problem, settings, 0, checkpoint=str(tmp_path / "whole.npz"))
    stopped = hm.SamplerSettings(sweeps=6, burn_in=4, checkpoint_every=3)
    hm.run_chain(problem, stopped, 0, checkpoint=str(tmp_path / "part.npz"))
    continued = hm.run_chain(problem, settings, 0, checkpoint=str(tmp_path / "part.npz"))
    assert continued.sweep == whole.sweep == 8
    assert np.allclose(continued.states, whole.states)
    assert np.allclose(continued.coefficients, whole.coefficients)
    assert np.allclose(continued.map_sum, whole.map_sum)
