"""Hyper-molecules: recovery of a moving part and time per sweep.

``recovery``: particles of a two-state Gaussian-atom phantom (a domain hinged by 40°,
every particle at its own state ``t ~ U[0, 1]``), 64 px, CTF, whole-box SNR 0.1, known
poses; chains of :mod:`cryohess_plugin.core.hypermolecules` (d = 1, order 3) are run one
after the other and pooled.  Printed: Spearman ρ of the posterior-mean τ against the
truth; the FSC = 0.5 resolution of the maps at three interior states against the true
maps at the matched true states; the same resolution of a single-state run (the mid
state, same particle count, noise and band, a rigid component); the coverage of the 90 %
intervals; split R-hat and ESS; wall time and peak memory.

``speed``: seconds per sweep (after burn-in: every move, one Langevin step) against the
particle count, the state-basis order (coefficients) and the state dimension d at a fixed
number of coefficients, at 64 px and one 128-px case; peak memory by tracemalloc.

    python benchmarks/bench_hypermolecule.py recovery [--n 5000] [--chains 2] [--sweeps 160]
    python benchmarks/bench_hypermolecule.py speed
"""
import argparse
import os
import time
import tracemalloc

import numpy as np

from cryohess_plugin.core import fourier
from cryohess_plugin.core import hypermolecules as hm
from cryohess_plugin.core.synthetic import AtomModel, gaussian_atom_volume, phantoms, simulate

BOX, PIXEL, SNR = 64, 2.0, 0.1


def phantom(box=BOX, pixel=PIXEL):
    return phantoms.two_state_phantom(600, 0.3 * box * pixel, rng=3, domain_fraction=0.35,
                                      hinge_angle_deg=40)


def state_model(a, b, t):
    return AtomModel(a.positions + t * (b.positions - a.positions), a.elements, a.bfactors,
                     a.occupancies)


def truth_map(a, b, t, box=BOX, pixel=PIXEL):
    return gaussian_atom_volume(state_model(a, b, t), box, pixel, center=a.centroid())


def resolution(volume, truth, box=BOX, pixel=PIXEL):
    curve = fourier.fourier_shell_correlation(volume, truth)
    frequencies = np.arange(curve.size) / (box * pixel)
    value = fourier.resolution_at(frequencies[1:], curve[1:], 0.5)
    return 2 * pixel if value is None else value


def run_chains(problem, settings, chains, log=True):
    states = []
    for c in range(chains):
        start = time.time()
        chain = hm.Chain(problem, settings, c, progress=(lambda p: print("  ", p.line(), flush=True))
                         if log else None)
        chain.report.interval = 60
        states.append(chain.run())
        print(f"chain {c + 1}: {time.time() - start:.0f} s", flush=True)
    template = problem.validate()
    return hm.summarize_chains(states, hm.map_series(template, settings.map_count),
                               problem.data.box, [c.name for c in problem.components],
                               settings.burn_in)


def recovery(args):
    a, b = phantom()
    start = time.time()
    sim = simulate.simulate_particles(a, args.n, BOX, PIXEL, rng=1, heterogeneity=b, snr=SNR,
                                      backend="cpu", keep_clean=False)
    data = hm.prepare_particles(sim.images, sim.ctf_params, PIXEL, args.band, sim.rotations,
                                sim.shifts)
    print(f"simulated {args.n} particles in {time.time() - start:.0f} s; {data.kx.size} "
          f"frequencies inside the band {args.band}", flush=True)
    settings = hm.SamplerSettings(sweeps=args.sweeps, burn_in=args.burn_in, seed=0)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", 1)], order=args.order)
    tracemalloc.start()
    start = time.time()
    result = run_chains(problem, settings, args.chains)
    elapsed = time.time() - start
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    tau = result.tau_mean[:, 0]
    rho = hm.rank_correlation(tau, sim.conformation)
    coverage = hm.interval_coverage(result.tau_interval[:, 0], tau, sim.conformation)
    matched = hm.matched_true_states(result.tau_grid, tau, sim.conformation)
    resolutions = []
    for index in (2, 4, 7):
        if np.isfinite(matched[index]):
            resolutions.append((result.tau_grid[index], matched[index], resolution(
                result.mean_maps[0, index], truth_map(a, b, matched[index]))))
    print(f"\nparticles {args.n}, box {BOX}, band {args.band}, order {args.order}, chains "
          f"{args.chains}, sweeps {args.sweeps} (burn-in {args.burn_in})")
    print(f"wall time {elapsed:.0f} s ({elapsed / 60:.1f} min), peak traced memory {peak:.0f} MiB, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"|Spearman rho| {abs(rho):.3f}")
    for g, t, value in resolutions:
        print(f"map at tau {g:.2f} (true state {t:.2f}): FSC 0.5 at {value:.2f} A")
    print(f"90 % intervals holding the truth: {100 * coverage:.1f} %")
    print("split R-hat:", {k: round(v, 3) for k, v in result.rhat.items() if not k.startswith("tau")},
          "worst (tracked tau included)", round(result.worst_rhat(), 3))
    print("ESS:", {k: round(v) for k, v in result.ess.items() if not k.startswith("tau")},
          flush=True)
    # The same particle count, noise and band in a single state (the middle one).
    middle = state_model(a, b, 0.5)
    single = simulate.simulate_particles(middle, args.n, BOX, PIXEL, rng=2, snr=SNR,
                                         backend="cpu", keep_clean=False)
    single_data = hm.prepare_particles(single.images, single.ctf_params, PIXEL, args.band,
                                       single.rotations, single.shifts)
    single_problem = hm.HyperMoleculeProblem(single_data, [hm.Component("molecule", 0)])
    single_settings = hm.SamplerSettings(sweeps=args.sweeps // 2, burn_in=args.burn_in // 2)
    single_result = run_chains(single_problem, single_settings, 1, log=False)
    reference = resolution(single_result.mean_maps[0, 0],
                           gaussian_atom_volume(middle, BOX, PIXEL, center=a.centroid()))
    print(f"single state, same count: FSC 0.5 at {reference:.2f} A; limit 1.5x = "
          f"{1.5 * reference:.2f} A")


def sweep_time(n, box, order, dimension, band, sweeps=3):
    a, b = phantom(box, PIXEL * BOX / box)
    sim = simulate.simulate_particles(a, n, box, PIXEL * BOX / box, rng=1, heterogeneity=b,
                                      snr=SNR, backend="cpu", keep_clean=False)
    data = hm.prepare_particles(sim.images, sim.ctf_params, PIXEL * BOX / box, band,
                                sim.rotations, sim.shifts)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", dimension)], order=order)
    settings = hm.SamplerSettings(sweeps=2 + sweeps, burn_in=1, band_fractions=(1.0,),
                                  warmup=0.0)
    chain = hm.Chain(problem, settings, 0)
    tracemalloc.start()
    settings_short = hm.SamplerSettings(sweeps=2, burn_in=1, band_fractions=(1.0,), warmup=0.0)
    chain.settings = settings_short
    chain.run()
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    chain.settings = settings
    start = time.time()
    chain.run()
    per_sweep = (time.time() - start) / sweeps
    return per_sweep, chain.model.coefficient_count, data.kx.size, peak


def speed(args):
    print(f"load average {os.getloadavg()[0]:.2f}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'all')}")
    print("box  n      order d  coefficients  frequencies  s/sweep  peak MiB")
    cases = [(64, 2500, 3, 1), (64, 5000, 3, 1), (64, 10000, 3, 1), (64, 5000, 2, 1),
             (64, 5000, 5, 1), (64, 5000, 4, 1), (64, 5000, 2, 2), (128, 2500, 3, 1)]
    for box, n, order, dimension in cases:
        band = 16.0 * box / BOX
        seconds, count, points, peak = sweep_time(n, box, order, dimension, band)
        print(f"{box:<4} {n:<6} {order:<5} {dimension}  {count:<13} {points:<12} "
              f"{seconds:<8.2f} {peak:.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("recovery", "speed"))
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--sweeps", type=int, default=160)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--band", type=float, default=16.0)
    parser.add_argument("--order", type=int, default=3)
    args = parser.parse_args()
    recovery(args) if args.mode == "recovery" else speed(args)


if __name__ == "__main__":
    main()
