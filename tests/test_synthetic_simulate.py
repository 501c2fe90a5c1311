"""Viewing distributions, SNR, particle and micrograph simulation."""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic.atoms import (AtomModel, gaussian_atom_projection,
                                                  gaussian_atom_volume)
from cryohess_plugin.core.ctf import apply_ctf, params_from_rows
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom, two_state_phantom
from cryohess_plugin.core.rotations import projection_directions
from cryohess_plugin.core.noise import noise_sigma_for_snr, signal_variance
from cryohess_plugin.core.synthetic.simulate import (PARTICLE_STREAM, STRUCTURE_STREAM,
                                                     ground_truth_maps, place_particles,
                                                     random_ctf_params, sample_rotations,
                                                     simulate_micrographs, simulate_particles,
                                                     stream_seed)
from .helpers import relative_l2



@pytest.fixture(scope="module")
def phantom():
    # B = 150 Å² gives sigma ~ 1.45 Å, about 1 pixel at 1.5 Å: nearly band-limited.
    return random_protein_phantom(600, 14.0, rng=11, bfactor=150.0)


def tilt_degrees(rotations):
    return np.rad2deg(np.arccos(np.clip(projection_directions(rotations)[:, 2], -1, 1)))


def test_uniform_rotations_are_haar():
    rotations = sample_rotations("uniform", 20000, 0)
    assert rotations.shape == (20000, 3, 3)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, 1, 2),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    # E[R] = 0 under the Haar measure; each entry has standard error 1/sqrt(3n) ~ 0.004.
    assert np.abs(rotations.mean(axis=0)).max() < 0.02
    # Projection directions are uniform on the sphere: cos(tilt) is uniform on [-1, 1].
    assert np.mean(projection_directions(rotations)[:, 2]) == pytest.approx(0.0, abs=0.02)
    assert np.var(projection_directions(rotations)[:, 2]) == pytest.approx(1 / 3, abs=0.01)


def test_polar_cap_directions_stay_in_the_cap():
    rotations = sample_rotations("polar_cap", 5000, 1, cap_deg=25.0)
    tilt = tilt_degrees(rotations)
    assert tilt.max() <= 25.0 + 1e-9
    # Uniform by area: cos(tilt) uniform on [cos 25°, 1].
    assert np.mean(np.cos(np.deg2rad(tilt))) == pytest.approx((1 + np.cos(np.deg2rad(25))) / 2,
                                                              abs=2e-3)
    # In-plane angles are uniform: the image x axis (first row) has no preferred direction.
    assert np.abs(rotations[:, 0, :2].mean(axis=0)).max() < 0.05


def test_equatorial_band_tilts():
    tilt = tilt_degrees(sample_rotations("equatorial_band", 5000, 2, band_deg=10.0))
    assert np.abs(tilt - 90.0).max() <= 10.0 + 1e-9
    assert np.abs(tilt - 90.0).max() > 9.0


def test_top_view_preference_fraction():
    n, fraction, cap = 20000, 0.4, 15.0
    tilt = tilt_degrees(sample_rotations("top_view_preference", n, 3, fraction=fraction,
                                         cap_deg=cap))
    expected = fraction + (1 - fraction) * (1 - np.cos(np.deg2rad(cap))) / 2
    assert np.mean(tilt <= cap) == pytest.approx(expected, abs=4 * np.sqrt(expected / n))


def test_samplers_are_deterministic_and_reject_unknown_names():
    for kind in ("uniform", "polar_cap", "equatorial_band", "top_view_preference"):
        a = sample_rotations(kind, 50, 7)
        np.testing.assert_array_equal(a, sample_rotations(kind, 50, np.random.default_rng(7)))
        assert not np.allclose(a, sample_rotations(kind, 50, 8))
    with pytest.raises(ValueError, match="unknown viewing distribution"):
        sample_rotations("sideways", 10, 0)


def test_noise_sigma_formula():
    clean = np.random.default_rng(0).normal(size=(20, 16, 16)) * np.arange(1, 21)[:, None, None]
    sigma = noise_sigma_for_snr(clean, 0.25)
    mean_variance = np.mean([np.var(image) for image in clean])
    assert sigma ** 2 * 0.25 == pytest.approx(mean_variance, rel=1e-12)
    assert signal_variance(clean) == pytest.approx(mean_variance, rel=1e-12)
    with pytest.raises(InvalidDataError):
        noise_sigma_for_snr(clean, 0.0)


def test_random_ctf_params_ranges():
    params = random_ctf_params(200, 0, defocus_range=(8000.0, 20000.0), astigmatism=300.0,
                               voltage=200.0, cs=1.4, amplitude_contrast=0.07)
    mean = np.array([(p.defocus_u + p.defocus_v) / 2 for p in params])
    assert mean.min() >= 8000.0 and mean.max() <= 20000.0
    np.testing.assert_allclose([p.defocus_u - p.defocus_v for p in params], 300.0)
    angles = np.array([p.defocus_angle for p in params])
    assert angles.min() >= 0.0 and angles.max() < 180.0
    assert {(p.voltage, p.spherical_aberration, p.amplitude_contrast) for p in params} == {
        (200.0, 1.4, 0.07)}


def test_particles_from_atoms_match_explicit_projection_and_snr(phantom):
    box, pixel_size, snr = 48, 1.5, 0.05
    sim = simulate_particles(phantom, 300, box, pixel_size, rng=5, shift_sigma=2.0,
                             n_groups=6, astigmatism=500.0, snr=snr)
    assert sim.images.shape == (300, box, box) and sim.images.dtype == np.float32
    assert sim.clean_images.dtype == np.float32
    assert np.all(np.isnan(sim.conformation))
    assert len(sim.ctf_params) == 300 and sorted(set(sim.group_ids)) == list(range(6))
    # Particles of one group share the CTF; groups differ.
    for group in range(6):
        members = np.flatnonzero(sim.group_ids == group)
        assert len({sim.ctf_params[i] for i in members}) == 1
    assert len(set(sim.ctf_params)) == 6
    assert 1.0 < np.std(sim.shifts) < 3.0
    # Clean image i = CTF_i applied to the analytic projection in pose (R_i, t_i).
    for i in (0, 123, 299):
        expected = apply_ctf(gaussian_atom_projection(phantom, sim.rotations[i], box, pixel_size,
                                                      shift=sim.shifts[i]),
                             sim.ctf_params[i], pixel_size)[0]
        assert relative_l2(sim.clean_images[i], expected) < 1e-5
    noise = sim.images.astype(np.float64) - sim.clean_images
    measured = signal_variance(sim.clean_images) / np.var(noise)
    assert measured == pytest.approx(snr, rel=0.05)
    assert np.std(noise) == pytest.approx(sim.noise_sigma, rel=0.01)
    assert abs(np.mean(noise)) < 0.01 * sim.noise_sigma


def test_particles_from_volume_use_the_projector(phantom):
    box, pixel_size = 48, 1.5
    volume = gaussian_atom_volume(phantom, box, pixel_size)
    kwargs = dict(rng=9, shift_sigma=1.5, n_groups=4, snr=0.2)
    from_volume = simulate_particles(volume, 40, box, pixel_size, **kwargs)
    from_atoms = simulate_particles(phantom, 40, box, pixel_size, **kwargs)
    np.testing.assert_array_equal(from_volume.rotations, from_atoms.rotations)
    np.testing.assert_array_equal(from_volume.shifts, from_atoms.shifts)
    assert relative_l2(from_volume.clean_images, from_atoms.clean_images) < 1e-2
    measured = signal_variance(from_volume.clean_images) / np.var(
        from_volume.images.astype(np.float64) - from_volume.clean_images)
    assert measured == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ShapeError):
        simulate_particles(volume, 4, 64, pixel_size)


def test_particles_are_deterministic(phantom):
    a = simulate_particles(phantom, 20, 32, 2.0, rng=3, shift_sigma=1.0, snr=0.1)
    b = simulate_particles(phantom, 20, 32, 2.0, rng=3, shift_sigma=1.0, snr=0.1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert a.ctf_params == b.ctf_params
    # The SNR only scales the noise: poses, shifts and CTFs stay.
    c = simulate_particles(phantom, 20, 32, 2.0, rng=3, shift_sigma=1.0, snr=1.0)
    np.testing.assert_array_equal(a.rotations, c.rotations)
    np.testing.assert_array_equal(a.clean_images, c.clean_images)
    d = simulate_particles(phantom, 20, 32, 2.0, rng=4, shift_sigma=1.0, snr=0.1)
    assert not np.allclose(a.rotations, d.rotations)
    clean = simulate_particles(phantom, 5, 32, 2.0, rng=3, snr=None, keep_clean=False)
    assert clean.noise_sigma == 0.0 and clean.snr == np.inf and clean.clean_images is None


def test_heterogeneous_particles_interpolate_the_two_states():
    state_a, state_b = two_state_phantom(400, 14.0, rng=2, bfactor=150.0)
    box, pixel_size = 40, 1.5
    sim = simulate_particles(state_a, 60, box, pixel_size, rng=1, heterogeneity=state_b,
                             shift_sigma=1.0, snr=0.1)
    t = sim.conformation
    assert t.min() >= 0.0 and t.max() <= 1.0 and t.std() > 0.2
    center = state_a.centroid()
    for i in (0, 59):
        mixed = AtomModel((1 - t[i]) * state_a.positions + t[i] * state_b.positions,
                          state_a.elements, state_a.bfactors)
        expected = apply_ctf(gaussian_atom_projection(mixed, sim.rotations[i], box, pixel_size,
                                                      shift=sim.shifts[i], center=center),
                             sim.ctf_params[i], pixel_size)[0]
        assert relative_l2(sim.clean_images[i], expected) < 1e-5
    with pytest.raises(InvalidDataError, match="same atoms"):
        simulate_particles(state_a, 5, box, pixel_size, heterogeneity=random_protein_phantom(10))
    volume = gaussian_atom_volume(state_a, box, pixel_size)
    with pytest.raises(InvalidDataError, match="two atomic models"):
        simulate_particles(volume, 5, box, pixel_size, heterogeneity=state_b)


def test_place_particles_respects_distance_and_bounds():
    centres = place_particles((300, 400), 25, 32, 40.0, 0)
    assert centres.shape == (25, 2)
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert distance[np.triu_indices(25, 1)].min() >= 40.0
    assert centres[:, 0].min() >= 16 and centres[:, 0].max() <= 400 - 16
    assert centres[:, 1].min() >= 16 and centres[:, 1].max() <= 300 - 16
    with pytest.raises(InvalidDataError, match="lower the density"):
        place_particles((100, 100), 50, 32, 32.0, 0, max_attempts=5000)


def test_micrographs_density_spacing_and_snr(phantom):
    box, pixel_size, shape = 48, 1.5, (400, 500)
    sim = simulate_micrographs(phantom, 3, box, pixel_size, shape=shape, rng=2,
                               area_fraction=0.3, snr=0.1)
    count = round(0.3 * 400 * 500 / box ** 2)
    assert sim.micrographs.shape == (3, 400, 500) and sim.micrographs.dtype == np.float32
    for centres, poses in zip(sim.coordinates, sim.rotations):
        assert centres.shape == (count, 2) and poses.shape == (count, 3, 3)
        distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        assert distance[np.triu_indices(count, 1)].min() >= box
        assert centres[:, 0].max() <= 500 - box // 2 and centres[:, 1].max() <= 400 - box // 2
    assert len(set(sim.defocus)) == 3
    half = box // 2
    windows = np.stack([sim.clean_micrographs[j, y - half:y + half, x - half:x + half]
                        for j, centres in enumerate(sim.coordinates) for x, y in centres])
    noise = sim.micrographs.astype(np.float64) - sim.clean_micrographs
    assert signal_variance(windows) / np.var(noise) == pytest.approx(0.1, rel=0.05)
    fixed = simulate_micrographs(phantom, 1, box, pixel_size, shape=shape, rng=2,
                                 particles_per_micrograph=7, snr=None)
    assert fixed.coordinates[0].shape == (7, 2) and fixed.noise_sigma == 0.0
    again = simulate_micrographs(phantom, 3, box, pixel_size, shape=shape, rng=2,
                                 area_fraction=0.3, snr=0.1)
    np.testing.assert_array_equal(again.micrographs, sim.micrographs)


def test_micrograph_particles_are_pasted_at_their_coordinates(phantom):
    # With zero defocus and Cs the CTF is the constant A, so the clean micrograph
    # is A times the pasted projections; the phantom (radius 14 Å + 6 sigma
    # < box / 2) never reaches a neighbour's window.
    box, pixel_size, amplitude_contrast = 48, 1.5, 0.1
    sim = simulate_micrographs(phantom, 2, box, pixel_size, shape=(256, 320), rng=4,
                               particles_per_micrograph=6, defocus_range=(0.0, 0.0), cs=0.0,
                               amplitude_contrast=amplitude_contrast, snr=None)
    half = box // 2
    for j in range(2):
        expected = amplitude_contrast * gaussian_atom_projection(phantom, sim.rotations[j],
                                                                  box, pixel_size)
        for k, (x, y) in enumerate(sim.coordinates[j]):
            window = sim.micrographs[j, y - half:y - half + box, x - half:x - half + box]
            assert relative_l2(window, expected[k]) < 1e-5
        total = sim.micrographs[j].astype(np.float64).sum()
        # Nothing else is on the micrograph: its sum is A times the particles' mass.
        assert total == pytest.approx(expected.sum(), rel=1e-4)
        assert total == pytest.approx(amplitude_contrast * 6 * phantom.amplitudes().sum(),
                                      rel=1e-4)


def test_cuda_backend_without_a_device_is_refused():
    from cryohess_plugin.core.kernels import BackendUnavailableError, cuda_available
    if cuda_available():
        pytest.skip("a CUDA device is present, so the request is valid here")
    with pytest.raises(BackendUnavailableError, match="GPU option off"):
        simulate_particles(np.zeros((16, 16, 16)), 2, 16, 2.0, backend="cuda")


def test_ground_truth_maps_share_the_images_origin():
    state_a, state_b = two_state_phantom(300, 12.0, rng=8, bfactor=150.0)
    box, pixel_size = 32, 1.5
    map_a, map_b = ground_truth_maps(state_a, state_b, box, pixel_size)
    np.testing.assert_array_equal(map_a, gaussian_atom_volume(state_a, box, pixel_size))
    # Particles of conformation t = 1 show B about A's centroid: so does B's map, whose sum
    # along z is the untilted, unshifted image.
    image_b = gaussian_atom_projection(state_b, np.eye(3), box, pixel_size,
                                       center=state_a.centroid())[0]
    assert relative_l2(map_b.sum(axis=0), image_b) < 1e-8
    about_own_centre = gaussian_atom_projection(state_b, np.eye(3), box, pixel_size)[0]
    assert relative_l2(about_own_centre, image_b) > 0.05
    alone, none = ground_truth_maps(state_a, None, box, pixel_size)
    assert none is None
    np.testing.assert_array_equal(alone, map_a)
    volume, none = ground_truth_maps(map_a, None, box, pixel_size)
    assert volume is map_a and none is None
    with pytest.raises(ShapeError):
        ground_truth_maps(map_a, None, box + 2, pixel_size)


def test_stream_seeds_are_reproducible_and_independent():
    draw = lambda seed, stream: np.random.default_rng(stream_seed(seed, stream)).random(5)
    np.testing.assert_array_equal(draw(3, PARTICLE_STREAM), draw(3, PARTICLE_STREAM))
    assert not np.allclose(draw(3, PARTICLE_STREAM), draw(3, STRUCTURE_STREAM))
    assert not np.allclose(draw(3, PARTICLE_STREAM), draw(4, PARTICLE_STREAM))


def test_truth_arrays_hold_the_ground_truth(phantom):
    sim = simulate_particles(phantom, 12, 32, 2.0, rng=6, n_groups=3, shift_sigma=1.0)
    truth = sim.truth_arrays()
    np.testing.assert_array_equal(truth["rotations"], sim.rotations)
    np.testing.assert_array_equal(truth["shifts"], sim.shifts)
    np.testing.assert_array_equal(truth["groups"], sim.group_ids)
    np.testing.assert_array_equal(truth["conformation"], np.zeros(12))
    assert params_from_rows(truth["ctfs"]) == sim.ctf_params
    assert truth["noiseSigma"] == sim.noise_sigma
    state_a, state_b = two_state_phantom(200, 12.0, rng=1)
    mixed = simulate_particles(state_a, 6, 32, 2.0, rng=1, heterogeneity=state_b)
    np.testing.assert_array_equal(mixed.truth_arrays()["conformation"], mixed.conformation)
    mics = simulate_micrographs(phantom, 2, 32, 2.0, shape=(128, 128),
                                particles_per_micrograph=3, rng=2)
    truth = mics.truth_arrays()
    assert truth["coordinates"].shape == (2, 3, 2) and truth["rotations"].shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(truth["coordinates"][1], mics.coordinates[1])
    assert params_from_rows(truth["ctfs"]) == mics.ctf_params
