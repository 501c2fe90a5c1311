"""The images' scale and noise spectrum of a soft-mode analysis (docs/methods/hessian_soft_modes.md
§2.3): the map put on the particles' scale by their fitted amplitude, coloured noise per shell,
and the checks that stop dark particles and maps the particles do not show."""
from types import SimpleNamespace

import numpy as np
import pytest

from cryohess_plugin.core import spherical
from cryohess_plugin.core.contrast import AmplitudeFitError, PolarityError
from cryohess_plugin.core.ctf import ctf_stack
from cryohess_plugin.core.softmodes import (MapScale, NoiseLevel, RealLayout, analyse_soft_modes,
                                            experiment_from_poses, per_image)
from cryohess_plugin.core.softmodes.hessian import AccumulatedHessian
from cryohess_plugin.core.synthetic import simulate
from .helpers import phantom_volume
from .method_data import GROUPS, on_grid_poses, relative

BOX, PIXEL = 32, 2.5


def particles_of(simulation, images=None):
    """The arrays a protocol reads (:class:`cryohess_plugin.convert.ParticleArrays`)."""
    return SimpleNamespace(images=simulation.images if images is None else images,
                           rotations=simulation.rotations, shifts=simulation.shifts,
                           ctfs=simulation.ctf_params, pixel_size=simulation.pixel_size)


@pytest.fixture(scope="module")
def simulated():
    volume = phantom_volume(BOX, PIXEL)
    simulation = simulate.simulate_particles(volume, 300, BOX, PIXEL, rng=21, snr=0.5,
                                             shift_sigma=1.0, n_groups=3, backend="cpu")
    return volume, simulation


def analysed(volume, particles, n_groups):
    """The protocol's path: scale, noise on that scale, then the analysis (2πK = 10)."""
    scale = MapScale.from_particles(volume, particles, n_groups, backend="cpu")
    noise, _ = NoiseLevel.from_particles(volume, particles, scale.particle_amplitudes(particles),
                                         backend="cpu")
    experiment = experiment_from_poses(particles.rotations, particles.ctfs, PIXEL)
    analysis = analyse_soft_modes(volume, PIXEL, experiment, BOX * PIXEL / (10 / np.pi),
                                  n_modes=4, backend="cpu", noise_variance=noise.variance,
                                  noise_spectrum=noise.spectrum, map_scale=scale.map_scale,
                                  group_scales=scale.group_scales, log_determinant=None)
    return scale, noise, analysis


def test_map_times_three_gives_the_same_analysis(simulated):
    """The fitted amplitude puts the map on the particles' scale: with the map tripled the
    amplitude is a third, and ε/‖F‖, the sensitivity map, the noise and the eigenvalues
    are the same (measured to 1e-9); the nearby volumes are on each map's own scale."""
    volume, simulation = simulated
    particles = particles_of(simulation)
    groups = experiment_from_poses(simulation.rotations, simulation.ctf_params, PIXEL).n_groups
    scale, noise, analysis = analysed(volume, particles, groups)
    scale3, noise3, analysis3 = analysed(3 * volume, particles, groups)
    assert scale.map_scale == pytest.approx(1.0, abs=0.02)  # simulated on the map's scale
    assert scale3.map_scale == pytest.approx(scale.map_scale / 3, rel=1e-9)
    np.testing.assert_allclose(scale3.group_scales, scale.group_scales, rtol=1e-9)
    assert noise3.variance == pytest.approx(noise.variance, rel=1e-9)
    np.testing.assert_allclose(noise3.spectrum, noise.spectrum, rtol=1e-9)
    assert analysis.converged.all() and analysis3.converged.all()
    count = min(len(analysis.eigenvalues), len(analysis3.eigenvalues))
    for field in ("eigenvalues", "perturbation", "relative_change"):
        np.testing.assert_allclose(getattr(analysis3, field)[:count],
                                   getattr(analysis, field)[:count], rtol=1e-2, err_msg=field)
    assert relative(analysis3.sensitivity, analysis.sensitivity) < 1e-2
    np.testing.assert_allclose(analysis3.nearby_volume(3 * volume, 0, 1),
                               3 * analysis.nearby_volume(volume, 0, 1),
                               atol=1e-2 * np.abs(3 * volume).max())


def test_coloured_noise_is_estimated_per_shell():
    """Particles with noise of relative power 1 / (1 + (k/6)²): the estimated spectrum has
    that shape (within 10 % on shells 2-14, measured 4 %), white noise a flat one, and the
    per-pixel variance is the simulated one."""
    volume = phantom_volume(BOX, PIXEL)

    def shape(k):
        return 1.0 / (1.0 + (np.asarray(k) / 6.0) ** 2)

    for spectrum in (shape, None):
        simulation = simulate.simulate_particles(volume, 200, BOX, PIXEL, rng=22, snr=0.5,
                                                 n_groups=2, noise_spectrum=spectrum,
                                                 backend="cpu")
        noise, _ = NoiseLevel.from_particles(volume, particles_of(simulation), backend="cpu")
        assert noise.variance == pytest.approx(simulation.noise_sigma ** 2, rel=0.03)
        shells = np.arange(2, 15)
        measured = noise.spectrum[shells] / noise.spectrum[shells].mean()
        expected = np.ones(shells.size) if spectrum is None else shape(shells)
        np.testing.assert_allclose(measured, expected / expected.mean(), rtol=0.1)
    assert "noise power from" in noise.how and np.isnan(noise.spectrum[0])
    assert NoiseLevel.from_sigma(0.5).spectrum is None


def test_noise_per_shell_in_the_hessian_is_the_per_image_likelihood_of_scaled_ctfs():
    """σ²_r per shell: the accumulated Hessian equals the per-image one whose CTF on each
    shell is divided by σ_r (at unit noise), with implicit poses, on grid poses."""
    shells = spherical.ShellGrid.from_max_frequency(16, 3.1)
    layout = RealLayout(shells)
    rng = np.random.default_rng(23)
    coefficients = layout.from_real_vector(rng.standard_normal(layout.n_parameters))
    coefficients *= np.exp(-np.arange(shells.max_degree + 1) / 4.0)[None, :, None]
    poses, groups = on_grid_poses(rng)
    experiment = experiment_from_poses(poses, [GROUPS[g] for g in groups], 4.0)
    sigma2 = rng.uniform(0.5, 2.0, shells.n_shells)
    operator = AccumulatedHessian(shells, layout.to_real_vector(coefficients), layout,
                                  experiment, 4.0, noise_sigma2=sigma2)
    n_angles = 2 * shells.max_degree + 2
    ring = per_image.ring_grid(shells, n_angles)
    ctf = ctf_stack([GROUPS[g] for g in groups], ring.kx, ring.ky, 16, 4.0)
    ctf = ctf.reshape(len(poses), shells.n_shells, n_angles) / np.sqrt(sigma2)[None, :, None]
    empty = np.zeros(ctf.shape, dtype=np.complex128)
    templates = per_image.SoftModeProblem(shells, empty, poses, ctf).templates(coefficients)
    problem = per_image.SoftModeProblem(shells, templates, poses, ctf)
    for vector in rng.standard_normal((2, layout.n_parameters)):
        assert relative(operator.matvec(vector),
                        problem.hessian_vector(coefficients, vector)) < 1e-10


def test_dark_particles_and_a_map_they_do_not_show_stop_with_the_fix(simulated):
    volume, simulation = simulated
    with pytest.raises(PolarityError, match="look dark against this map.*invert their contrast"):
        MapScale.from_particles(volume, particles_of(simulation, -simulation.images), 3,
                                backend="cpu")
    unrelated = np.random.default_rng(24).standard_normal(volume.shape)
    with pytest.raises(AmplitudeFitError, match="do not show this map"):
        MapScale.from_particles(unrelated, particles_of(simulation), 3, backend="cpu")
