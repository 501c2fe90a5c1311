"""Local pose refinement by Levenberg-Marquardt on the likelihood
(``docs/methods/fourier_slice_posterior.md`` §3.4, §5)."""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core import ctf, rotations
from cryohess_plugin.core.errors import InvalidDataError, MissingMetadataError, ShapeError
from cryohess_plugin.core.polar import PolarGrid, polar_transform
from cryohess_plugin.core.pose_refinement import pose_errors, refine_candidates, refine_poses
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.alignment.radial_svd import RadialSVDAligner, rotations_from_alignment
from .helpers import phantom_model


def offset_poses(sim, degrees, pixels, rng):
    """Poses ``degrees`` (random axis) and ``pixels`` (random direction) from the truth."""
    rng = np.random.default_rng(rng)
    n = sim.rotations.shape[0]
    axis = rng.standard_normal((n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    direction = rng.standard_normal((n, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    degrees = np.broadcast_to(np.asarray(degrees, float), (n,))[:, None]
    return (rotations.perturb(sim.rotations, axis * np.deg2rad(degrees)),
            sim.shifts + pixels * direction)


def particles(box, pixel, n, snr, bfactor, model=None, rng=3, shift_sigma=2.0):
    model = model or phantom_model(box, pixel, n_atoms=1500, fill=0.35, bfactor=bfactor)
    volume = atoms.gaussian_atom_volume(model, box, pixel)
    sim = simulate.simulate_particles(volume, n, box, pixel, rng=rng, snr=snr,
                                      shift_sigma=shift_sigma, backend="cpu")
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    hp = projector.half_plane
    return sim, projector, ctf.ctf_stack(sim.ctf_params, hp.kx, hp.ky, box, pixel)


def test_noise_free_refinement_returns_to_the_truth():
    sim, projector, values = particles(48, 2.0, 12, None, 100.0)
    start_rot, start_shift = offset_poses(sim, 5.0, 2.0, 0)
    result = refine_poses(projector, sim.images, start_rot, start_shift, values)
    angle, shift = pose_errors(result.rotations, result.shifts, sim.rotations, sim.shifts)
    assert angle.max() <= 1e-3 and shift.max() <= 1e-3
    assert np.all(result.loss <= result.loss_start)


def test_refinement_at_snr_0_1_from_5_degrees_and_2_pixels():
    """96 px, SNR 0.1 (simulator's definition), CTF: the likelihood optimum itself is
    within 1° here; at 64 px it is not (median 0.56°, 93 % within 1°, measured)."""
    sim, projector, values = particles(96, 2.0, 40, 0.1, 50.0)
    start_rot, start_shift = offset_poses(sim, 5.0, 2.0, 0)
    result = refine_poses(projector, sim.images, start_rot, start_shift, values)
    angle, shift = pose_errors(result.rotations, result.shifts, sim.rotations, sim.shifts)
    assert np.mean((angle <= 1.0) & (shift <= 0.5)) >= 0.95, (np.percentile(angle, 95),
                                                               np.percentile(shift, 95))


def test_c7_local_refinement_fails_from_far_and_global_search_fixes_it():
    """Symmetry mates (paper §6.4, Fig. 6; fourier_slice_posterior.md §5.3).  Error is
    measured modulo the C7 group."""
    box, pixel = 48, 3.0
    model = phantoms.cyclic_phantom(7, 150, radius_angstrom=0.35 * box * pixel, rng=1,
                                    bfactor=100.0)
    sim, projector, values = particles(box, pixel, 40, 1.0, None, model, shift_sigma=0.0)
    symmetry = rotations.in_plane_rotations(2 * np.pi * np.arange(7) / 7)

    def error(found):
        return np.min([rotations.angular_distance(found, sim.rotations @ s) for s in symmetry],
                      axis=0)

    far, _ = offset_poses(sim, np.random.default_rng(1).uniform(30, 60, 40), 0.0, 0)
    local = refine_poses(projector, sim.images, far, None, values)
    assert np.mean(error(local.rotations) <= 2.0) <= 0.5

    grid = PolarGrid.from_max_frequency(box, 0.3 * box)
    directions, _ = rotations.viewing_grid(6.0)
    template_rotations = rotations.rotations_for_directions(directions)
    templates = projector.project_polar(template_rotations, grid.radii, grid.n_angles)
    found = RadialSVDAligner(grid, templates, backend="cpu").align(
        polar_transform(sim.images, grid, backend="cpu"), sim.ctf_params, pixel, top_k=4)
    candidates = rotations_from_alignment(template_rotations, found.top_template, found.top_angle)
    refined = refine_candidates(projector, sim.images, candidates, None, values)
    # Measured: 92.5 % (3 of 40 particles keep a wrong global candidate at SNR 1).
    assert np.mean(error(refined.rotations) <= 2.0) >= 0.85


def test_bad_input_raises_typed_errors():
    volume = np.zeros((16, 16, 16))
    images = np.zeros((3, 16, 16))
    poses = rotations.random_rotations(3, np.random.default_rng(0))
    with pytest.raises(MissingMetadataError, match="global alignment"):
        refine_poses(volume, images, None)
    with pytest.raises(ShapeError, match="reference box"):
        refine_poses(volume, np.zeros((3, 12, 12)), poses)
    with pytest.raises(ShapeError, match="rotations"):
        refine_poses(volume, images, poses[:2])
    with pytest.raises(ShapeError, match="ctf"):
        refine_poses(volume, images, poses, ctf=np.ones((3, 5)))
    bad = images.copy()
    bad[0, 1, 1] = np.inf
    with pytest.raises(InvalidDataError, match="NaN"):
        refine_poses(volume, bad, poses)
    with pytest.raises(ShapeError, match="candidates"):
        refine_candidates(volume, images, poses)
