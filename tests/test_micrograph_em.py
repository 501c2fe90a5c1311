"""Micrograph EM, the parts: basis, projection matrices, patch model, E- and M-step against
brute-force sums of the paper's equations, EM driver, picking and the simulator's regime.

``docs/methods/micrograph_em.md`` cites the claims: §2 (basis counts, reality), §3
(projections against our projector), §4 (shifts), §5-§6 (E-step and the A, y identities),
§7 (EM), §8 (picking), §10 (simulator).
"""
import dataclasses

import numpy as np
import pytest
from scipy.special import logsumexp, sph_harm

from cryohess_plugin.core import fourier
from cryohess_plugin.core.errors import InvalidDataError
from cryohess_plugin.core.micrograph_em import (EMSettings, EMState, Model, ProjectionOperator,
                                                SphericalBesselBasis,
                                                cut_patches, empty_f1, expectation,
                                                fourier_bin, initial_noise_variance,
                                                model_snr, nonempty_shifts, pick_centres,
                                                pick_patches, picking_curves, quaternion_grid,
                                                radial_counts, reference_states, run_start,
                                                shift_accuracy, true_states, volume_system)
from cryohess_plugin.core.micrograph_em import patches as patch_model
from cryohess_plugin.core.micrograph_em.basis import max_usable_degree, real_harmonics
from cryohess_plugin.core.micrograph_em.mstep import update_noise
from cryohess_plugin.core.micrograph_em.projection import ctf_image
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.rotations import euler_to_matrix, random_rotations
from cryohess_plugin.core.synthetic.simulate import place_separated

from .helpers import gaussian_blobs, relative_l2
from .method_data import micrograph_model_data


# ----------------------------------------------------------------- counts (§2, §11)
def test_radial_counts_and_sizes_follow_the_nyquist_rule():
    assert radial_counts(11) == (4, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1)
    assert max_usable_degree(11) == 10
    assert [SphericalBesselBasis.create(11, l).size for l in (6, 8, 10)] == [132, 179, 219]
    assert radial_counts(7) == (2, 2, 2, 1, 1, 1)
    assert SphericalBesselBasis.create(7, 5).size == 45
    assert radial_counts(13)[:3] == (5, 5, 5) and max_usable_degree(13) == 13


def test_paper_sizes():
    """The paper's patch counts, minibatch, grid size and empty shifts."""
    patches = 4 * (2992 // 11) ** 2
    assert patches == 295936 and int(np.floor(0.05 * patches)) == 14796
    assert [quaternion_grid(r).shape[0] for r in (15, 20, 25, 50)] == [76, 299, 552, 4484]
    for box in (5, 7, 11):
        shifts = patch_model.all_shifts(box)
        empty = patch_model.is_empty_shift(shifts, box)
        assert empty.sum() == 4 * box - 1
        assert len(nonempty_shifts(box)) == (2 * box - 1) ** 2
        projection = np.random.default_rng(box).standard_normal((box, box))
        assert all(not patch_model.shift_patch(projection, s).any() for s in shifts[empty])
        assert all(patch_model.shift_patch(projection, s).any() for s in shifts[~empty])


def test_grid_is_made_of_rotations():
    grid = quaternion_grid(25)
    np.testing.assert_allclose(grid @ grid.transpose(0, 2, 1), np.broadcast_to(np.eye(3),
                                                                               grid.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(grid), 1.0, atol=1e-12)


def test_bad_patch_sizes_are_refused():
    with pytest.raises(InvalidDataError, match="odd and at least 7"):
        SphericalBesselBasis.create(5, 2)
    with pytest.raises(InvalidDataError, match="highest is 10"):
        SphericalBesselBasis.create(11, 11)


# ----------------------------------------------------------------- basis (§2)
def test_real_harmonics_are_scipys_complex_ones_made_real():
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((20, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    theta, phi = np.arccos(directions[:, 2]), np.arctan2(directions[:, 1], directions[:, 0])
    real = real_harmonics(6, directions)
    for l in range(7):
        for m in range(-l, l + 1):
            complex_value = sph_harm(abs(m), l, phi, theta)
            expected = (complex_value.real if m == 0 else np.sqrt(2) * (-1) ** m
                        * (complex_value.real if m > 0 else complex_value.imag))
            np.testing.assert_allclose(real[:, l * l + l + m], expected, atol=1e-12)


def test_every_coefficient_vector_is_a_real_volume_and_fits_back():
    basis = SphericalBesselBasis.create(11, 10)
    coefficients = np.random.default_rng(1).standard_normal(basis.size)
    spectrum = (basis.evaluate(basis.grid_points()) @ coefficients).reshape((11,) * 3)
    volume = fourier.centred_ifftn(spectrum)
    assert np.abs(volume.imag).max() < 1e-14 * np.abs(volume.real).max()
    np.testing.assert_allclose(basis.from_volume(volume.real), coefficients, atol=1e-12)
    matrix, _ = basis.fit_matrix()
    assert 1.3 < np.linalg.cond(matrix) < 1.45  # nearly orthonormal on the grid


def test_rotation_and_reflection_of_coefficients():
    basis = SphericalBesselBasis.create(9, 7)
    rng = np.random.default_rng(2)
    coefficients = rng.standard_normal(basis.size)
    rotation = random_rotations(1, rng)[0]
    points = rng.uniform(-3, 3, (30, 3))
    rotated = basis.rotate(coefficients, rotation)
    np.testing.assert_allclose(basis.evaluate(points) @ rotated,
                               basis.evaluate(points @ rotation) @ coefficients, atol=1e-11)
    mirrored = basis.to_volume(basis.reflect(coefficients))
    np.testing.assert_allclose(mirrored, basis.to_volume(coefficients)[::-1, ::-1, ::-1],
                               atol=1e-12)


# ----------------------------------------------------------------- projections (§3)
def test_identity_and_right_angle_projections_are_exact_sums():
    basis = SphericalBesselBasis.create(11, 10)
    coefficients = np.random.default_rng(3).standard_normal(basis.size)
    volume = basis.to_volume(coefficients)
    quarter_x = euler_to_matrix(90.0, 90.0, -90.0)  # a 90° turn about x
    operator = ProjectionOperator(basis, np.stack([np.eye(3), quarter_x]))
    projections = operator.project(coefficients)
    assert relative_l2(projections[0], volume.sum(axis=0)) < 1e-14
    # R maps volume point r to image (R r)[:2]; build that rotated grid and sum along z.
    rotated = np.zeros_like(volume)
    centre = 5
    for z, y, x in np.ndindex(volume.shape):
        u, v, w = quarter_x @ np.array([x - centre, y - centre, z - centre])
        rotated[int(round(w)) + centre, int(round(v)) + centre, int(round(u)) + centre] = \
            volume[z, y, x]
    assert relative_l2(projections[1], rotated.sum(axis=0)) < 1e-14
    flat = operator.matrices()
    np.testing.assert_allclose(flat @ coefficients, projections.reshape(2, -1), atol=1e-12)


def test_projection_matrices_agree_with_our_fourier_slice_projector():
    box = 11
    centres = np.array([[1.0, -0.5, 0.3], [-1.2, 0.8, -0.6], [0.4, 1.1, 1.0]])
    volume = gaussian_blobs(box, centres, [1.4, 1.6, 1.5], [1.0, 0.7, 0.5])
    basis = SphericalBesselBasis.create(box, 10)
    band_limited = basis.to_volume(basis.from_volume(volume))
    rotations = random_rotations(8, np.random.default_rng(4))
    ours = ProjectionOperator(basis, rotations).project(basis.from_volume(volume))
    reference = FourierSliceProjector(band_limited, dtype=np.float64).project(rotations)
    errors = [relative_l2(a, b) for a, b in zip(ours, reference)]
    assert max(errors) < 0.01  # the projector's own interpolation error is a few 1e-3


def test_ctf_multiplies_the_slice():
    basis = SphericalBesselBasis.create(9, 7)
    coefficients = np.random.default_rng(5).standard_normal(basis.size)
    rotations = random_rotations(3, np.random.default_rng(6))
    operator = ProjectionOperator(basis, rotations)
    from cryohess_plugin.core.ctf import CTFParams, apply_ctf
    params = CTFParams(15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1)
    ctf = ctf_image(params, 9, 8.0)
    np.testing.assert_allclose(operator.project(coefficients, ctf),
                               apply_ctf(operator.project(coefficients), params, 8.0), atol=1e-12)
    np.testing.assert_allclose(operator.matrices(ctf) @ coefficients,
                               operator.project(coefficients, ctf).reshape(3, -1), atol=1e-12)


# ----------------------------------------------------------------- patches (§4)
def test_patch_operators_against_their_definition():
    box = 5
    rng = np.random.default_rng(7)
    projections = rng.standard_normal((3, box, box))
    stack = patch_model.shifted_stack(projections, np.float64)
    patches = rng.standard_normal((4, box, box))
    moved = patch_model.back_shifted_patches(patches)
    energies = patch_model.visible_energies(projections)
    for s, shift in enumerate(nonempty_shifts(box)):
        for k in range(3):
            direct = patch_model.shift_patch(projections[k], shift)
            np.testing.assert_allclose(stack[k, s], direct, atol=1e-15)
            assert np.isclose(energies[k, s], np.sum(direct ** 2))
            for p in range(4):  # back-shift is the adjoint of the shift
                assert np.isclose(np.sum(moved[p, s] * projections[k]), np.sum(patches[p] * direct))
    weights = rng.random((3, (2 * box - 1) ** 2))
    masks = patch_model.visibility_weights(weights, box)
    direct = np.zeros((3, box, box))
    for s, shift in enumerate(nonempty_shifts(box)):
        visible = patch_model.shift_patch(np.ones((box, box)), shift)  # in patch frame
        direct += weights[:, s, None, None] * patch_model.back_shifted_patches(visible[None])[0, s]
    np.testing.assert_allclose(masks, direct, atol=1e-12)


def test_cutting_binning_and_true_states():
    micrograph = np.random.default_rng(8).standard_normal((40, 52))
    patch_set = cut_patches([micrograph], 7, 1.0)
    assert patch_set.count == 5 * 7
    np.testing.assert_array_equal(patch_set.patches[8], micrograph[7:14, 7:14].astype(np.float32))
    flat = fourier_bin(np.full((64, 64), 3.0), 2.0)
    assert flat.shape == (32, 32) and np.allclose(flat, 3.0)
    with pytest.raises(InvalidDataError, match="micrograph 1 has 1 NaN"):
        bad = micrograph.copy()
        bad[3, 3] = np.nan
        cut_patches([bad], 7, 1.0)
    # A particle whose box starts 2 rows above and 3 columns left of a patch shows its
    # rows 2.. and columns 3.. there: shift (2, 3); the patch left of it sees its first
    # columns from patch column 4 on: shift (2, 2L - 4); a far patch sees nothing.
    states = true_states(np.array([[5, 4]]), np.array([[7, 7], [7, 0], [14, 14]]), 7)
    np.testing.assert_array_equal(states, [[2, 3], [2, 10], [7, 7]])


# ----------------------------------------------------------------- E- and M-step (§5, §6)
def _tiny_problem(ctf=False):
    rng = np.random.default_rng(9)
    box = 7
    basis = SphericalBesselBasis.create(box, 3)
    operator = ProjectionOperator(basis, quaternion_grid(15)[:5])
    micrographs = [rng.standard_normal((2 * box, 2 * box)), rng.standard_normal((box, 2 * box))]
    patch_set = cut_patches(micrographs, box, 1.0)
    shifts = (2 * box - 1) ** 2
    prior = rng.random(shifts)
    model = Model(rng.standard_normal(basis.size), 0.6 * prior / prior.sum(), 0.4,
                  np.array([0.7, 1.3]))
    ctfs = None
    if ctf:
        from cryohess_plugin.core.ctf import CTFParams
        ctfs = [ctf_image(CTFParams(d, d, 0.0, 300.0, 2.7, 0.1), box, 6.0)
                for d in (12000.0, 21000.0)]
    return box, basis, operator, patch_set, model, ctfs


def _brute_force(box, basis, operator, patch_set, model, ctfs):
    """The paper's Eqs. (23)-(24), (30)-(31) and (37) over all (2L)² shifts, by definition."""
    shifts = patch_model.all_shifts(box)
    empty = patch_model.is_empty_shift(shifts, box)
    index = {tuple(s): i for i, s in enumerate(nonempty_shifts(box))}
    rho = np.array([model.empty_mass / (4 * box - 1) if e else model.shift_prior[index[tuple(s)]]
                    for s, e in zip(shifts, empty)])
    count = operator.count
    matrix = np.zeros((basis.size, basis.size))
    vector = np.zeros(basis.size)
    log_likelihood, rho_new = [], np.zeros(len(shifts))
    for p, image in enumerate(patch_set.patches.astype(np.float64)):
        m = patch_set.micrograph[p]
        ctf = None if ctfs is None else ctfs[m]
        projections = operator.project(model.coefficients, ctf)
        phi = operator.matrices(ctf)
        variance = model.noise_variance[m]
        log_weight = np.array([[np.log(rho[i] / count)
                                - np.sum((image - patch_model.shift_patch(projections[k], s)) ** 2)
                                / (2 * variance) for k in range(count)]
                               for i, s in enumerate(shifts)])
        total = logsumexp(log_weight)
        log_likelihood.append(total - 0.5 * box * box * np.log(2 * np.pi * variance))
        posterior = np.exp(log_weight - total)
        rho_new += posterior.sum(axis=1)
        for i, s in enumerate(shifts):
            for k in range(count):
                b = np.stack([patch_model.shift_patch(phi[k][:, c].reshape(box, box), s).ravel()
                              for c in range(basis.size)], 1)
                matrix += posterior[i, k] * b.T @ b
                vector += posterior[i, k] * b.T @ image.ravel()
    return np.array(log_likelihood), matrix, vector, rho_new / patch_set.count, empty, shifts


@pytest.mark.parametrize("ctf", [False, True])
def test_estep_and_linear_system_match_brute_force_sums(ctf):
    box, basis, operator, patch_set, model, ctfs = _tiny_problem(ctf)
    result = expectation(patch_set, np.arange(patch_set.count), operator, model, ctfs,
                         dtype=np.float64)
    log_likelihood, matrix, vector, rho, empty, shifts = _brute_force(
        box, basis, operator, patch_set, model, ctfs)
    np.testing.assert_allclose(result.log_likelihood, log_likelihood, rtol=1e-12)
    ours_matrix, ours_vector = volume_system(operator, result.statistics, ctfs)
    assert np.abs(ours_matrix - matrix).max() <= 1e-12 * np.abs(matrix).max()
    assert np.abs(ours_vector - vector).max() <= 1e-12 * np.abs(vector).max()
    from cryohess_plugin.core.micrograph_em import update_shift_prior
    shift_prior, empty_mass = update_shift_prior(result.statistics)
    assert np.isclose(empty_mass, rho[empty].sum(), rtol=1e-12)
    index = {tuple(s): i for i, s in enumerate(shifts)}
    np.testing.assert_allclose(shift_prior, [rho[index[tuple(s)]] for s in nonempty_shifts(box)],
                               rtol=1e-10)


def test_noise_update_is_the_expected_residual_energy():
    box, basis, operator, patch_set, model, ctfs = _tiny_problem(True)
    result = expectation(patch_set, np.arange(patch_set.count), operator, model, ctfs,
                         dtype=np.float64)
    new = np.random.default_rng(10).standard_normal(basis.size)
    ours = update_noise(operator, new, result.statistics, model.noise_variance, ctfs)
    shifts = nonempty_shifts(box)
    for m in range(2):
        mine = np.flatnonzero(patch_set.micrograph == m)
        part = expectation(patch_set, mine, operator, model, ctfs, dtype=np.float64,
                           maximum_a_posteriori=False)
        projections = operator.project(new, ctfs[m])
        # Σ_p [π_empty |I|² + Σ_{k,s} π |I - shifted P|²] by brute force over the posteriors.
        total = 0.0
        for p in mine:
            image = patch_set.patches[p].astype(np.float64)
            one = expectation(patch_set, [p], operator, model, ctfs, dtype=np.float64)
            stats = one.statistics[m]
            weights = stats.weights
            total += one.empty[0] * np.sum(image ** 2)
            for k in range(operator.count):
                for s, shift in enumerate(shifts):
                    total += weights[k, s] * np.sum(
                        (image - patch_model.shift_patch(projections[k], shift)) ** 2)
        assert part.statistics[m].count == mine.size
        assert np.isclose(ours[m], total / (mine.size * box * box), rtol=1e-10)


def test_float32_correlations_agree_with_float64():
    box, basis, operator, patch_set, model, ctfs = _tiny_problem()
    exact = expectation(patch_set, np.arange(patch_set.count), operator, model, dtype=np.float64)
    fast = expectation(patch_set, np.arange(patch_set.count), operator, model, dtype=np.float32)
    np.testing.assert_allclose(fast.log_likelihood, exact.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(fast.statistics[0].back_projection,
                               exact.statistics[0].back_projection, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------- EM driver (§7)
def test_noise_starts_from_the_empty_patches():
    _, _, sim = micrograph_model_data(snr=3.5, size=350)
    patch_set = cut_patches(sim.micrographs, 7, 2.5)
    assert abs(initial_noise_variance(patch_set)[0] / sim.noise_sigma ** 2 - 1) < 0.1


def test_a_stopped_start_continues_from_its_last_iteration(tmp_path):
    _, _, sim = micrograph_model_data(size=140)
    patch_set = cut_patches(sim.micrographs, 7, 2.5)
    settings = EMSettings(schedule=(2, 3), iterations=(2, 2), batch_fraction=0.5,
                          rotation_resolution=15, held_out=40)
    whole = run_start(patch_set, settings, seed=4)
    saved = []

    def stop_after_three(state):
        state.save(tmp_path / "state.npz")
        saved.append(state.iteration)
        if state.iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_start(patch_set, settings, seed=4, checkpoint=stop_after_three)
    resumed = run_start(patch_set, settings, seed=4, state=EMState.load(tmp_path / "state.npz"))
    assert saved == [1, 2, 3] and resumed.iteration == whole.iteration == 4
    np.testing.assert_allclose(resumed.coefficients, whole.coefficients, rtol=1e-6)
    assert whole.history["degree"] == [2.0, 2.0, 3.0, 3.0]
    assert len(whole.history["heldout_loglik"]) == 4


def test_stage_stops_when_the_held_out_score_stalls():
    _, _, sim = micrograph_model_data(size=140)
    patch_set = cut_patches(sim.micrographs, 7, 2.5)
    settings = EMSettings(schedule=(2,), iterations=(50,), batch_fraction=0.5,
                          rotation_resolution=15, held_out=40, tolerance=1e6, patience=2)
    state = run_start(patch_set, settings, seed=4)
    # The first iteration sets the score; no later one gains 1e6 nats, so two stale
    # iterations after it end the stage.
    assert state.iteration == 3


def test_settings_are_checked():
    with pytest.raises(InvalidDataError, match="highest is 5"):
        EMSettings(schedule=(4, 6), iterations=(1, 1)).check(7)
    with pytest.raises(InvalidDataError, match="must not decrease"):
        EMSettings(schedule=(4, 3), iterations=(1, 1)).check(7)
    with pytest.raises(InvalidDataError, match="one per stage"):
        EMSettings(schedule=(3, 4), iterations=(1, 1), batch_fraction=(0.5,)).check(7)
    with pytest.raises(InvalidDataError, match=r"must lie in \(0, 1\]"):
        EMSettings(schedule=(3, 4), iterations=(1, 1), batch_fraction=(0.5, 1.5)).check(7)
    assert EMSettings(schedule=(3, 4), iterations=(1, 1),
                      batch_fraction=0.2).stage_fractions() == (0.2, 0.2)


def test_a_full_batch_stage_is_one_em_step_on_every_training_patch():
    """With fraction 1 the iteration's M-step reads every training patch: the volume is
    the solution of the system of the E-step on all of them at the previous model."""
    _, _, sim = micrograph_model_data(size=140)
    patch_set = cut_patches(sim.micrographs, 7, 2.5)
    settings = EMSettings(schedule=(2, 3), iterations=(1, 1), batch_fraction=(0.3, 1.0),
                          rotation_resolution=15, held_out=40, estimate_noise=False,
                          dtype="float64")
    saved = []
    run_start(patch_set, settings, seed=4, checkpoint=lambda s: saved.append(
        EMState(**{k: getattr(s, k) for k in s.__dataclass_fields__})))
    from cryohess_plugin.core.micrograph_em.em import split_patches
    from cryohess_plugin.core.micrograph_em.mstep import solve_volume
    training, _ = split_patches(patch_set.count, 40, 4)
    first = saved[0]
    basis = SphericalBesselBasis.create(7, 3)
    operator = ProjectionOperator(basis, quaternion_grid(15))
    grown = np.zeros(basis.size)
    grown[:first.coefficients.size] = first.coefficients
    model = Model(grown, first.shift_prior, first.empty_mass, first.noise_variance)
    expected = expectation(patch_set, training, operator, model, dtype=np.float64)
    matrix, vector = volume_system(operator, expected.statistics)
    np.testing.assert_allclose(saved[1].coefficients, solve_volume(matrix, vector)[0],
                               rtol=1e-8, atol=1e-10 * np.abs(grown).max())


# ----------------------------------------------------------------- picking (§8)
def test_picking_finds_the_particles_at_high_snr():
    box = 7
    basis, truth, sim = micrograph_model_data(snr=100.0, size=280, seed=5)
    patch_set = cut_patches(sim.micrographs, box, 2.5)
    # On this 36° grid (299 rotations) a partial view of the continuous rotations is best
    # matched 2 px off in about 1 patch of 15; 2483 rotations bring that to 1 of 40
    # (benchmarks/RESULTS.md has the curves over SNR).
    operator = ProjectionOperator(basis, quaternion_grid(20))
    true = true_states(sim.top_left(0), patch_set.origins(), box)
    is_empty = np.all(true == box, axis=1)
    shifts = (2 * box - 1) ** 2
    nonempty = 1 - is_empty.mean()
    model = Model(truth, np.full(shifts, nonempty / shifts), 1 - nonempty,
                  np.array([sim.noise_sigma ** 2]))
    picks = pick_patches(patch_set, operator, model)
    # A particle fills the ball, not the box: a patch that shows only a corner of its box
    # holds almost no signal and reads as empty, which caps the F1 of "empty" against the
    # geometric truth (about a fifth of the non-empty patches hold under 3 σ² of signal).
    clean = cut_patches(sim.clean_micrographs, box, 2.5).patches.astype(np.float64)
    signal = np.sum(clean ** 2, axis=(1, 2)) / sim.noise_sigma ** 2
    assert np.mean(picks.picked[signal > 10]) > 0.95
    assert np.mean(picks.picked[is_empty]) < 0.03
    assert empty_f1(~picks.picked, is_empty) > 0.8
    assert shift_accuracy(picks.states(box), true, box) > 0.85
    centres = pick_centres(patch_set, picks)
    found = np.array([np.min(np.hypot(*(centres[:, 1:3] - c).T)) for c in sim.coordinates[0]])
    assert np.mean(found <= 1.5) > 0.9 and len(centres) < 1.3 * len(sim.coordinates[0])


def test_picking_curves_fall_with_the_snr():
    """Algorithm 2 scored against the simulator's centres given as reference coordinates
    (original pixels of a micrograph binned by 2): high at the data's SNR, near chance
    after noise lowers it ten-thousandfold."""
    box = 7
    basis, truth, sim = micrograph_model_data(snr=100.0, size=280, seed=5)
    # As if cut from a micrograph of twice the sampling binned by 2.
    patch_set = dataclasses.replace(cut_patches(sim.micrographs, box, 2.5), binning=2.0)
    states = reference_states(patch_set, [2 * np.asarray(sim.coordinates[0])])
    np.testing.assert_array_equal(states, true_states(sim.top_left(0), patch_set.origins(),
                                                      box))
    operator = ProjectionOperator(basis, quaternion_grid(20))
    nonempty = 1 - np.mean(np.all(states == box, axis=1))
    shifts = (2 * box - 1) ** 2
    model = Model(truth, np.full(shifts, nonempty / shifts), 1 - nonempty,
                  np.array([sim.noise_sigma ** 2]))
    assert model_snr(operator, model) == pytest.approx(100.0, rel=0.1)  # Eq. (4)
    curves = picking_curves(patch_set, operator, model, states, factors=(1.0, 1e4),
                            limit=1000)
    assert curves.patches == 1000
    np.testing.assert_allclose(curves.snr[0] / curves.snr[1], 1e4)
    assert curves.f1_nonempty[0] > 0.8 and curves.shift_accuracy[0] > 0.85
    assert curves.f1_empty[0] > 0.8
    assert curves.shift_accuracy[1] < 0.2
    assert curves.f1_nonempty[1] < curves.f1_nonempty[0] - 0.1
    assert curves.f1_empty[1] < curves.always_empty_f1


def test_picking_scores():
    truth = np.array([True, True, False, False])
    assert empty_f1(np.array([True, False, False, False]), truth) == pytest.approx(2 / 3)
    assert empty_f1(np.ones(4, bool), truth) == pytest.approx(2 * 0.5 / 1.5)
    true = np.array([[0, 0], [1, 12], [6, 6], [7, 0]])
    found = np.array([[1, 1], [3, 12], [6, 6], [7, 7]])
    # Half-visible: (0, 0) and (1, 12) qualify on both axes; (6, 6) shows 1 row; (7, .) empty.
    assert shift_accuracy(found, true, 7) == 0.5


# ----------------------------------------------------------------- simulator (§10)
def test_separation_rule_leaves_one_particle_per_patch():
    box = 11
    centres = place_separated((990, 990), 3240, box, 2 * box - 1, np.random.default_rng(0))
    corners = centres - box // 2
    gaps = np.abs(corners[:, None, :] - corners[None, :, :]).max(axis=2)
    np.fill_diagonal(gaps, 10 ** 6)
    assert gaps.min() >= 2 * box - 1
    density = len(centres) * box ** 2 / 990 ** 2
    assert 0.11 < density < 0.16  # random sequential placement saturates near 0.13
    patches_y, patches_x = np.meshgrid(np.arange(90) * box, np.arange(90) * box, indexing="ij")
    origins = np.stack([patches_y.ravel(), patches_x.ravel()], -1)
    overlaps = np.zeros(len(origins), dtype=int)
    for corner in corners[:, ::-1]:
        overlaps += np.all(np.abs(corner - origins) < box, axis=1)
    assert overlaps.max() == 1
    assert 0.4 < np.mean(overlaps > 0) < 0.6


def test_arbitrary_spacing_shares_patches():
    box = 11
    centres = place_separated((990, 990), 3240, box, box, np.random.default_rng(0))
    corners = (centres - box // 2)[:, ::-1]
    patches_y, patches_x = np.meshgrid(np.arange(90) * box, np.arange(90) * box, indexing="ij")
    origins = np.stack([patches_y.ravel(), patches_x.ravel()], -1)
    overlaps = np.zeros(len(origins), dtype=int)
    for corner in corners:
        overlaps += np.all(np.abs(corner - origins) < box, axis=1)
    assert len(centres) > 0.6 * 3240
    shared = np.mean(overlaps[overlaps > 0] > 1)
    assert 0.3 < shared < 0.65  # about half of the non-empty patches, as the paper reports


def test_simulated_snr_is_eq4_and_the_ctf_is_per_micrograph():
    basis, truth, sim = micrograph_model_data(snr=2.0, size=140, ctf=True, count=2, pixel=10.0)
    windows = [sim.clean_micrographs[j, y - 3:y + 4, x - 3:x + 4]
               for j, centres in enumerate(sim.coordinates) for x, y in centres]
    energy = np.mean([np.sum(w ** 2) for w in windows])
    assert np.isclose(energy / (49 * sim.noise_sigma ** 2), 2.0, rtol=1e-6)
    assert sim.ctf_applied and len({p.defocus_u for p in sim.ctf_params}) == 2
    assert all(10000 <= d <= 25000 for d in sim.defocus)
