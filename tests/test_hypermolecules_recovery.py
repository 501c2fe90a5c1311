"""Recovery of a moving part by the hyper-molecule sampler (docs/methods/hyper_molecules.md §7).

A smaller version of the benchmark's recovery run (benchmarks/bench_hypermolecule.py):
1 500 particles of 64 px of a phantom whose domain swings 40° (every particle at its own
state), CTF, whole-box SNR 0.1, known poses, one chain.
"""
import numpy as np
import pytest

from cryohess_plugin.core import fourier
from cryohess_plugin.core import hypermolecules as hm
from cryohess_plugin.core.synthetic import AtomModel, gaussian_atom_volume, phantoms, simulate

BOX, PIXEL, SNR, BAND = 64, 2.0, 0.1, 12.0


def resolution(volume, truth):
    curve = fourier.fourier_shell_correlation(volume, truth)
    frequencies = np.arange(curve.size) / (BOX * PIXEL)
    value = fourier.resolution_at(frequencies[1:], curve[1:], 0.5)
    return 2 * PIXEL if value is None else value


@pytest.fixture(scope="module")
def recovery():
    a, b = phantoms.two_state_phantom(600, 0.3 * BOX * PIXEL, rng=3, domain_fraction=0.35,
                                      hinge_angle_deg=40)
    sim = simulate.simulate_particles(a, 1500, BOX, PIXEL, rng=1, heterogeneity=b, snr=SNR,
                                      backend="cpu", keep_clean=False)
    data = hm.prepare_particles(sim.images, sim.ctf_params, PIXEL, BAND, sim.rotations,
                                sim.shifts)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", 1)], order=3,
                                      backend="cpu")
    settings = hm.SamplerSettings(sweeps=60, burn_in=40, map_count=10)
    state = hm.run_chain(problem, settings, 0)
    result = hm.summarize_chains([state], hm.map_series(problem.validate(), 10), BOX,
                                 ["molecule"], settings.burn_in)
    return a, b, sim, result


def test_states_are_recovered_by_rank(recovery):
    _, _, sim, result = recovery
    # 0.934 at 2 000 particles, band 16, 100 sweeps (benchmarks/RESULTS.md).
    assert abs(hm.rank_correlation(result.tau_mean[:, 0], sim.conformation)) >= 0.75


def test_maps_at_matched_states_resolve_the_band(recovery):
    """The maps at interior states reach FSC 0.5 within 1.5x the band's resolution against
    the true maps at the matched true states, and the moving part is where they differ."""
    a, b, sim, result = recovery
    tau = result.tau_mean[:, 0]
    matched = hm.matched_true_states(result.tau_grid, tau, sim.conformation)
    limit = 1.5 * BOX * PIXEL / BAND
    for index in (2, 5, 7):
        t = matched[index]
        assert np.isfinite(t)
        state = AtomModel(a.positions + t * (b.positions - a.positions), a.elements,
                          a.bfactors, a.occupancies)
        truth = gaussian_atom_volume(state, BOX, PIXEL, center=a.centroid())
        assert resolution(result.mean_maps[0, index], truth) <= limit

