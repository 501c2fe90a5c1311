"""Limits and estimates of a planned data set against what simulating it really takes."""
import os
import tracemalloc

import numpy as np
import pytest

from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.core.synthetic.planning import (MAX_BOX_AREA_FRACTION, data_set_footprint,
                                                     fraction_past_box_edge,
                                                     max_particles_per_micrograph)
from cryohess_plugin.core.synthetic.simulate import (place_particles, simulate_micrographs,
                                                     simulate_particles)


def peak_bytes(function):
    """Peak of the memory numpy allocates while ``function`` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_disk_estimate_is_the_size_of_the_written_files(tmp_path):
    n, box, micrographs, size = 7, 24, 2, 100
    footprint = data_set_footprint(n, box, n_maps=2, n_micrographs=micrographs,
                                   micrograph_size=size, particles_per_micrograph=3)
    mrc.write_stack(tmp_path / "particles.mrcs", np.zeros((n, box, box), np.float32), 1.0)
    for name in ("a.mrc", "b.mrc"):
        mrc.write_volume(tmp_path / name, np.zeros((box,) * 3, np.float32), 1.0)
    for index in range(micrographs):
        mrc.write_stack(tmp_path / ("mic%d.mrc" % index), np.zeros((1, size, size), np.float32),
                        1.0)
    written = sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path))
    assert footprint.disk_bytes == written


def test_memory_estimate_matches_the_simulators_peak():
    model = random_protein_phantom(200, 10.0, rng=0)
    simulate_micrographs(model, 1, 16, 2.0, shape=(64, 64), particles_per_micrograph=2,
                         keep_clean=False)  # first call: one-time allocations
    n, box = 4000, 32
    measured = peak_bytes(lambda: simulate_particles(model, n, box, 2.0, rng=1,
                                                     keep_clean=False))
    estimate = data_set_footprint(n, box).memory_bytes
    assert 0.8 * measured < estimate < 1.25 * measured
    for count, size, per in ((8, 256, 10), (2, 512, 20)):
        measured = peak_bytes(lambda: simulate_micrographs(
            model, count, 32, 2.0, shape=(size, size), particles_per_micrograph=per, rng=2,
            keep_clean=False))
        estimate = data_set_footprint(1, 32, n_micrographs=count, micrograph_size=size,
                                      particles_per_micrograph=per).memory_bytes
        assert 0.75 * measured < estimate < 1.33 * measured, (count, size, measured, estimate)


@pytest.mark.parametrize("box, radius, sigma", [(64, 13.3, 2.0), (32, 13.3, 2.0),
                                                (32, 0.0, 8.0), (40, 15.0, 3.0)])
def test_fraction_past_the_box_edge_matches_sampled_shifts(box, radius, sigma):
    shifts = sigma * np.random.default_rng(0).standard_normal((200000, 2))
    sampled = np.mean(np.any(np.abs(shifts) > box / 2 - radius, axis=1))
    expected = fraction_past_box_edge(box, radius, sigma)
    assert expected == pytest.approx(sampled, abs=4 * np.sqrt(sampled / 200000) + 1e-6)


def test_fraction_past_the_box_edge_limits():
    assert fraction_past_box_edge(32, 16.0, 0.0) == 1.0
    assert fraction_past_box_edge(32, 20.0, 1.0) == 1.0
    assert fraction_past_box_edge(32, 10.0, 0.0) == 0.0


def test_particles_per_micrograph_limit_is_met_by_the_placement():
    size, box = 160, 32
    limit = max_particles_per_micrograph(size, box)
    assert limit * box ** 2 <= MAX_BOX_AREA_FRACTION * size ** 2
    assert (limit + 1) * box ** 2 > MAX_BOX_AREA_FRACTION * size ** 2
    for seed in range(5):
        place_particles((size, size), limit, box, box, seed)
