"""Micrograph EM recovers a model-consistent volume from whole micrographs (the paper's
second generation method, ``docs/methods/micrograph_em.md`` §11) with the noise estimated.

The CI-sized case: L = 7 (l_max 5, 45 coefficients), 299 rotations, a 420² micrograph
(3600 patches) at SNR 3.5 by Eq. (4), frequency marching 3 → 4 → 5 on 20 % minibatches,
three random starts; then four micrographs with their own CTF (defocus 1-2.5 µm).  The
paper's size (L = 11, l_max 10, 552 rotations) runs in ``benchmarks/bench_micrograph_em.py
recovery``; its numbers are in benchmarks/RESULTS.md.
"""
import numpy as np
import pytest

from cryohess_plugin.core.micrograph_em import (EMSettings, align_coefficients, ctf_image,
                                                cut_patches, pairwise_fsc, run_start)

from .method_data import micrograph_model_data

BOX = 7
SETTINGS = EMSettings(schedule=(3, 4, 5), iterations=(10, 8, 8), batch_fraction=0.2,
                      rotation_resolution=20, held_out=300, patience=3)


def _true_empty_mass(sim):
    """``1 - γ ((2L - 1) / L)²``: the prior mass of "empty" under uniform placement at the
    simulator's actual density (``docs/methods/micrograph_em.md`` §4)."""
    return 1 - sim.density() * ((2 * BOX - 1) / BOX) ** 2


@pytest.fixture(scope="module")
def without_ctf():
    basis, truth, sim = micrograph_model_data(box=BOX, degree=5, snr=3.5, size=420, seed=1)
    patch_set = cut_patches(sim.micrographs, BOX, 2.5)
    states = [run_start(patch_set, SETTINGS, start, seed=0) for start in range(3)]
    return basis, truth, sim, states


@pytest.fixture(scope="module")
def with_ctf():
    basis, truth, sim = micrograph_model_data(box=BOX, degree=5, snr=3.5, size=210, seed=2, ctf=True,
                                    pixel=10.0, count=4)
    patch_set = cut_patches(sim.micrographs, BOX, 10.0)
    ctfs = [ctf_image(params, BOX, 10.0) for params in sim.ctf_params]
    return basis, truth, sim, run_start(patch_set, SETTINGS, 0, seed=0, ctfs=ctfs)


def test_the_best_start_recovers_the_volume(without_ctf):
    basis, truth, sim, states = without_ctf
    best = states[int(np.argmax([s.best_heldout for s in states]))]
    fsc = align_coefficients(basis, truth, best.coefficients, 20).fsc
    assert np.all(fsc[:3] >= 0.5), fsc  # shells 0-2 of 0-3, as 0-4 of 0-5 at L = 11
    assert all(s.history["degree"][-1] == 5 for s in states)


def test_random_starts_agree(without_ctf):
    basis, _, _, states = without_ctf
    assert pairwise_fsc(basis, [s.coefficients for s in states], 20).min() >= 0.5


def test_empty_mass_and_noise_are_recovered(without_ctf):
    _, _, sim, states = without_ctf
    for state in states:
        assert abs(state.empty_mass - _true_empty_mass(sim)) < 0.05
        assert abs(state.noise_variance[0] / sim.noise_sigma ** 2 - 1) < 0.05


def test_recovery_with_a_ctf_per_micrograph(with_ctf):
    basis, truth, sim, state = with_ctf
    fsc = align_coefficients(basis, truth, state.coefficients, 20).fsc
    assert np.all(fsc[:3] >= 0.5), fsc
    assert abs(state.empty_mass - _true_empty_mass(sim)) < 0.05
    np.testing.assert_allclose(state.noise_variance, sim.noise_sigma ** 2, rtol=0.05)
