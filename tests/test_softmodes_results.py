"""What a soft-mode run keeps and what it costs: result files, noise for an SNR, the memory
estimate against the traced peak, and the warnings before a run."""
import dataclasses
import tracemalloc

import numpy as np
import pytest

from cryohess_plugin.core.ctf import CTFParams
from cryohess_plugin.core.softmodes import (
    EXPERIMENT_STATEMENT, NoiseLevel, ParticleAssignment, PoseChangeStatistics, SoftModeAnalysis, ViewingExperiment,
    analyse_soft_modes, analysis_memory, analysis_warnings, experiment_from_distribution,
    experiment_from_poses, noise_variance_for_snr, particle_pose_changes)
from cryohess_plugin.core.synthetic import simulate
from .helpers import gaussian_blobs, phantom_volume

BOX, PIXEL = 32, 2.5
GROUPS = [CTFParams(12000, 12000, 0, 300, 2.7, 0.1), CTFParams(20000, 20000, 0, 300, 2.7, 0.1)]


@pytest.fixture(scope="module")
def run():
    """A small analysis of 200 particles in two defocus groups (2πK = 10)."""
    volume = phantom_volume(BOX, PIXEL)
    poses = simulate.sample_rotations("uniform", 200, 3)
    ctfs = [GROUPS[i % 2] for i in range(200)]
    experiment = experiment_from_poses(poses, ctfs, pixel_size=PIXEL)
    analysis = analyse_soft_modes(volume, PIXEL, experiment, BOX * PIXEL / (10 / np.pi),
                                  n_modes=3, log_likelihood_ratio=2.5,
                                  backend="cpu")
    return volume, poses, ctfs, experiment, analysis


def assert_same_fields(loaded, original, skip=()):
    for field in dataclasses.fields(original):
        value, expected = getattr(loaded, field.name), getattr(original, field.name)
        if field.name in skip:
            assert value is None, field.name
        elif isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(value, expected, err_msg=field.name)
        else:
            assert value == expected and type(value) is type(expected), field.name


def test_analysis_round_trips_through_its_file(run, tmp_path):
    analysis = run[4]
    path = str(tmp_path / "analysis.npz")
    analysis.save(path)
    assert_same_fields(SoftModeAnalysis.load(path), analysis)
    assert analysis.log_likelihood_ratio == 2.5
    # A light load leaves the map-sized fields out.
    light = SoftModeAnalysis.load(path, volumes=False)
    assert_same_fields(light, analysis, skip=("mode_volumes", "sensitivity"))
    assert list(tmp_path.iterdir()) == [tmp_path / "analysis.npz"]  # no temporary left


def test_eigenvalue_table_and_nearby_volumes(run, tmp_path):
    volume, analysis = run[0], run[4]
    analysis.write_table(str(tmp_path / "table.txt"))
    table = np.loadtxt(tmp_path / "table.txt", usecols=(0, 1, 2, 3, 4))
    np.testing.assert_array_equal(table[:, 0], [1, 2, 3])
    np.testing.assert_allclose(table[:, 1], analysis.eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(table[:, 2], analysis.perturbation, rtol=1e-6)
    header = (tmp_path / "table.txt").read_text().splitlines()[0]
    assert "2πK = 10, 200 images" in header and "log-likelihood ratio 2.5" in header
    nearby = analysis.nearby_volume(volume, 1, -1)
    np.testing.assert_array_equal(
        nearby, volume - analysis.perturbation[1] * analysis.mode_volumes[1])
    lines = analysis.spectrum_lines()
    assert lines[0] == EXPERIMENT_STATEMENT
    assert lines[1].startswith("Implicit poses, Riesz metric")
    assert lines[2].startswith("Null space: none")
    modes = [line for line in lines if line.startswith("Mode ")]
    assert len(modes) == 3 and modes[-1].startswith("Mode 3: λ = ")
    assert lines[-1].startswith("log det H = ")


@pytest.mark.parametrize("ctf", [True, False])
def test_experiment_round_trips_through_its_file(tmp_path, ctf):
    experiment = experiment_from_distribution("polar", 300, spread_deg=15.0,
                                              ctf_params=GROUPS if ctf else None, pixel_size=PIXEL)
    path = str(tmp_path / "experiment.npz")
    experiment.save(path)
    loaded = ViewingExperiment.load(path)
    # Loading normalises the directions again: equal to rounding.
    np.testing.assert_allclose(loaded.directions, experiment.directions, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(loaded.counts, experiment.counts)
    assert loaded.ctf_params == experiment.ctf_params and loaded.pixel_size == PIXEL
    assert len(loaded.ctf_params) == (2 if ctf else 0)


def test_particle_assignment_gives_each_particle_its_pose_change(run, tmp_path):
    _, poses, ctfs, experiment, analysis = run
    ids = np.arange(1, 201) * 3
    assignment = ParticleAssignment.from_poses(ids, poses, ctfs)
    path = str(tmp_path / "particles.npz")
    assignment.save(path)
    loaded = ParticleAssignment.load(path)
    assert_same_fields(loaded, assignment)
    changes = loaded.pose_changes_deg(analysis)
    expected = np.rad2deg(particle_pose_changes(analysis.group_pose_changes,
                                                assignment.direction, assignment.group))
    np.testing.assert_array_equal(changes, expected)
    assert changes.shape == (200,) and np.all(changes > 0)
    statistics = PoseChangeStatistics.of([0.5, 2.0, 0.1, 3.0], fragile_deg=1.0)
    assert statistics.median == 1.25 and statistics.maximum == 3.0
    assert statistics.fragile_percent == 50.0
    assert statistics.top_percent == pytest.approx(np.percentile([0.1, 0.5, 2.0, 3.0], 99))


def test_noise_for_an_snr_matches_the_analytic_projection_of_a_gaussian():
    """A centred Gaussian of width s projects, along every direction, to s √(2π) times the
    2-D Gaussian; the noise at SNR 0.5 is twice that image's variance over the box."""
    sigma = 2.5
    volume = gaussian_blobs(BOX, [(0.0, 0.0, 0.0)], [sigma], [1.0])
    image = sigma * np.sqrt(2 * np.pi) * gaussian_blobs(BOX, [(0.0, 0.0)], [sigma], [1.0])
    experiment = experiment_from_distribution("uniform", 500, pixel_size=PIXEL)
    variance = noise_variance_for_snr(volume, experiment, 0.5, backend="cpu")
    # Measured: 2e-3 relative (the projector's cubic interpolation).
    assert variance == pytest.approx(image.var() / 0.5, rel=1e-2)
    noise = NoiseLevel.from_snr(volume, experiment, 0.5, backend="cpu")
    assert noise.variance == variance and noise.how == "set from an SNR of 0.5 (white)"


def test_noise_level_round_trips_through_its_file(tmp_path):
    noise = NoiseLevel.from_sigma(0.5)
    assert noise.variance == 0.25
    noise.save(str(tmp_path / "noise.npz"))
    assert NoiseLevel.load(str(tmp_path / "noise.npz")) == noise


def traced_peak(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("resolution, budget", [(16.0, 1 << 30), (25.0, 1 << 20)])
def test_memory_estimate_bounds_the_traced_peak(resolution, budget):
    """Cached harmonics at 2πK = 16, and recomputed ones (a 1 MiB budget) at 2πK = 11."""
    volume = np.random.default_rng(0).standard_normal((BOX,) * 3).astype(np.float32)
    experiment = experiment_from_distribution("uniform", 500, ctf_params=GROUPS[:1],
                                              pixel_size=PIXEL)
    peak = traced_peak(lambda: analyse_soft_modes(
        volume, PIXEL, experiment, resolution, n_modes=4, backend="cpu",
        memory_budget=budget))
    estimate = analysis_memory(BOX, PIXEL, resolution, n_modes=4,
                               memory_budget=budget)
    # Measured: estimate / peak = 1.01 and 1.12.
    assert peak <= 1.05 * estimate and estimate <= 1.5 * peak


def test_warnings_for_a_coarse_band_and_a_run_beyond_the_memory():
    assert analysis_warnings(BOX, PIXEL, 20.0, available_memory=64 << 30) == []
    coarse = analysis_warnings(BOX, PIXEL, 100.0, available_memory=64 << 30)
    assert len(coarse) == 1 and "2πK = 3, too coarse" in coarse[0]
    needed = analysis_memory(BOX, PIXEL, 20.0)
    heavy = analysis_warnings(BOX, PIXEL, 20.0, available_memory=needed)
    assert len(heavy) == 1 and "needs about" in heavy[0] and "coarser max resolution" in heavy[0]
    assert analysis_warnings(BOX, PIXEL, 20.0, available_memory=3 * needed) == []

