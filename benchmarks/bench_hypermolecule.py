"""Hyper-molecules: recovery of a moving part and time per sweep.

``recovery``: particles of a two-state Gaussian-atom phantom (a domain hinged by 40°,
every particle at its own state ``t ~ U[0, 1]``), 64 px, CTF, whole-box SNR 0.1, known
poses; chains of :mod:`cryohess_plugin.core.hypermolecules` (d = 1, order 3) are run one
after the other and pooled.  Printed: Spearman ρ of the posterior-mean τ against the
truth; the FSC = 0.5 resolution of the maps at three interior states against the true
maps at the matched true states; the same resolution of a single-state run (the mid
state, same particle count, noise and band, a rigid component); the coverage of the 90 %
intervals; split R-hat and ESS; wall time and peak memory.

``aligned``: the same data set, but the poses come from our radial-SVD alignment of the
particles against the middle state's map (the alignment's core API, from this side; the
hyper-molecule core never imports it), and the sampler also moves the rotations.
Printed: the alignment's orientation errors and Spearman ρ.

``pretzel``: the pretzel of :mod:`cryohess_plugin.core.synthetic.pretzel` (ring plus two
C2-related arms with independent states), 48 px, known poses, a composite model (rigid
ring, one arm with d = 1 and its C2 copy sharing the coefficients).  Printed: ρ of each
arm's τ and the mean posterior spread of the maps inside the arms' and the ring's masks.

``calibration``: data drawn from an order-2 hyper-molecule itself (32 px, band 8, the
phantom's two end states as ``V(0)`` and ``V(1)``, CTF, shifts, contrast, white noise at
``--snr``), so the model is exactly right: the coverage of the 90 % intervals of τ without
model error, on the model's own τ scale and through the monotone matching of §7.

``speed``: seconds per sweep (after burn-in: every move, one Langevin step), wall and
process CPU time (the CPU time is what a shared machine does not distort), against the
particle count, the state-basis order (coefficients) and the state dimension d at a fixed
number of coefficients, at 64 px and one 128-px case; peak memory by tracemalloc.

    python benchmarks/bench_hypermolecule.py recovery [--n 5000] [--chains 2] [--sweeps 160]
    python benchmarks/bench_hypermolecule.py aligned [--n 5000]
    python benchmarks/bench_hypermolecule.py pretzel [--n 5000]
    python benchmarks/bench_hypermolecule.py speed
    python benchmarks/bench_hypermolecule.py calibration --n 600 --chains 1 --sweeps 400 --burn-in 200
    python benchmarks/bench_hypermolecule.py recovery --short   (any mode: a quick smoke run)

``--short`` (or ``CRYOHESS_BENCH_SHORT=1``) shrinks every mode to a few hundred particles
and a few sweeps, to check that the script runs; its numbers mean nothing.
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
        recorded = {name: np.mean(values[settings.burn_in:])
                    for name, values in states[-1].traces.items()
                    if name.startswith("acceptance_")}
        print(f"chain {c + 1}: {time.time() - start:.0f} s; acceptance after burn-in "
              + ", ".join(f"{k[11:]} {v:.2f}" for k, v in recorded.items()), flush=True)
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
    settings = hm.SamplerSettings(sweeps=args.sweeps, burn_in=args.burn_in, seed=0,
                                  reparametrise=args.warps,
                                  coefficient_draw=args.draw,
                                  solver_iterations=args.solver_iterations)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", 1)], order=args.order)
    tracemalloc.start()
    start, cpu = time.time(), time.process_time()
    result = run_chains(problem, settings, args.chains)
    elapsed, cpu = time.time() - start, time.process_time() - cpu
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
    print(f"wall time {elapsed:.0f} s ({elapsed / 60:.1f} min), CPU time {cpu:.0f} s, "
          f"peak traced memory {peak:.0f} MiB, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"|Spearman rho| {abs(rho):.3f}")
    for g, t, value in resolutions:
        print(f"map at tau {g:.2f} (true state {t:.2f}): FSC 0.5 at {value:.2f} A")
    print(f"90 % intervals holding the truth: {100 * coverage:.1f} %")
    print("split R-hat:", {k: round(v, 3) for k, v in result.rhat.items() if not k.startswith("tau")},
          "worst (tracked tau included)", round(result.worst_rhat(), 3))
    print("ESS:", {k: f"{v:.0f}" for k, v in result.ess.items() if not k.startswith("tau")},
          flush=True)
    if args.skip_single:
        return
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


def aligned(args):
    from cryohess_plugin.core import polar
    from cryohess_plugin.core.alignment import (RadialSVDAligner, alignment_grid,
                                                projection_templates, rotations_from_alignment,
                                                shift_grid)
    from cryohess_plugin.core.rotations import angular_distance
    a, b = phantom()
    sim = simulate.simulate_particles(a, args.n, BOX, PIXEL, rng=1, heterogeneity=b, snr=SNR,
                                      shift_sigma=1.0, backend="cpu", keep_clean=False)
    start = time.time()
    grid = alignment_grid(BOX, PIXEL)
    templates, template_rotations = projection_templates(truth_map(a, b, 0.5), grid, 5.0)
    aligner = RadialSVDAligner(grid, templates, shifts=shift_grid(3.0, 1.0))
    found = aligner.align(polar.polar_transform(sim.images, grid), ctf_params=sim.ctf_params,
                          pixel_size=PIXEL)
    rotations = rotations_from_alignment(template_rotations, found.template, found.angle)
    errors = angular_distance(rotations, sim.rotations)
    print(f"alignment: {time.time() - start:.0f} s, orientation error median {np.median(errors):.1f}"
          f" deg, {100 * np.mean(errors <= 10):.1f} % within 10 deg", flush=True)
    data = hm.prepare_particles(sim.images, sim.ctf_params, PIXEL, args.band, rotations,
                                found.shift)
    settings = hm.SamplerSettings(sweeps=args.sweeps, burn_in=args.burn_in, seed=0,
                                  sample_rotations=True, reparametrise=args.warps,
                                  coefficient_draw=args.draw,
                                  solver_iterations=args.solver_iterations)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", 1)], order=args.order)
    start = time.time()
    result = run_chains(problem, settings, args.chains)
    errors = angular_distance(result.rotations, sim.rotations)
    print(f"\naligned poses, particles {args.n}, chains {args.chains}, sweeps {args.sweeps}: "
          f"{time.time() - start:.0f} s, load average {os.getloadavg()[0]:.2f}")
    print(f"|Spearman rho| {abs(hm.rank_correlation(result.tau_mean[:, 0], sim.conformation)):.3f}")
    print(f"orientation error after sampling: median {np.median(errors):.1f} deg")


def pretzel(args):
    from cryohess_plugin.core.synthetic.pretzel import C2_Z, pretzel as make_pretzel
    box, pixel = 48, PIXEL
    shape = make_pretzel()
    sim = simulate.simulate_particles(None, args.n, box, pixel, rng=1, heterogeneity=shape,
                                      snr=SNR, backend="cpu", keep_clean=False)
    ring, arm, copy = shape.masks(box, pixel)
    band = box / 4
    data = hm.prepare_particles(sim.images, sim.ctf_params, pixel, band, sim.rotations,
                                sim.shifts)
    components = [hm.Component("ring", 0, ring), hm.Component("arm", 1, arm),
                  hm.Component("arm copy", 1, shares=1, symmetry=C2_Z)]
    problem = hm.HyperMoleculeProblem(data, components, order=args.order)
    settings = hm.SamplerSettings(sweeps=args.sweeps, burn_in=args.burn_in, seed=0,
                                  reparametrise=args.warps,
                                  coefficient_draw=args.draw,
                                  solver_iterations=args.solver_iterations)
    start = time.time()
    result = run_chains(problem, settings, args.chains)
    print(f"\npretzel, particles {args.n}, box {box}, band {band}, chains {args.chains}, "
          f"sweeps {args.sweeps}: {time.time() - start:.0f} s, load average "
          f"{os.getloadavg()[0]:.2f}")
    for j in range(2):
        rho = hm.rank_correlation(result.tau_mean[:, j], sim.conformation[:, j])
        print(f"arm {j + 1}: |Spearman rho| {abs(rho):.3f}")
    spread = result.std_maps.mean(axis=(0, 1))
    for name, mask in (("arm 1", arm), ("arm 2", copy), ("ring", ring)):
        inside = mask > 0.5
        print(f"mean posterior spread of the maps inside the {name}: "
              f"{spread[inside].mean():.3g}")
    print("split R-hat worst", round(result.worst_rhat(), 3))


#: (box, particles, order, d) of the speed mode: particles, coefficients (order), d at a
#: fixed number of coefficient maps (order 4, d = 1 against order 2, d = 2), and 128 px.
SPEED_CASES = [(64, 10000, 3, 1), (64, 5000, 4, 1), (64, 5000, 2, 2), (128, 2500, 3, 1),
               (64, 2500, 3, 1), (64, 5000, 3, 1), (64, 5000, 2, 1), (64, 5000, 5, 1)]
SHORT_SPEED_CASES = [(64, 200, 4, 1), (64, 200, 2, 2)]


def calibration(args):
    from cryohess_plugin.core.ctf import ctf_stack
    box, pixel, band = 32, 4.0, 8.0
    a, b = phantom(box, pixel)
    ends = [truth_map(a, b, t, box, pixel) for t in (0.0, 1.0)]
    # V(τ) = (A + B)/2 + (A - B)/2 cos(πτ): an order-2 model, V(0) = A and V(1) = B.
    truth = hm.HyperMolecule([hm.Component("molecule", 1)], 2, box, band, "linear", "cpu")
    truth.coefficients[0][0] = truth.limit(hm.fourier_resample((ends[0] + ends[1]) / 2,
                                                               truth.size))
    truth.coefficients[0][1] = truth.limit(hm.fourier_resample(
        (ends[0] - ends[1]) / (2 * np.sqrt(2)), truth.size))
    rng = np.random.default_rng(1)
    sim = simulate.simulate_particles(a, args.n, box, pixel, rng=1, snr=None, backend="cpu",
                                      keep_clean=False)
    tau = rng.random((args.n, 1))
    contrast = np.exp(0.1 * rng.normal(size=args.n))
    plane = fourier.HalfPlane.disc(box, band)
    slices = truth.slices(truth.grids(), sim.rotations, plane.kx, plane.ky)
    spectra = (ctf_stack(sim.ctf_params, plane.kx, plane.ky, box, pixel)
               * fourier.shift_phase(np.stack([plane.kx, plane.ky], -1), sim.shifts, box)
               * np.einsum("nq,nqm->nm", truth.term_weights({0: tau}, contrast), slices))
    clean = plane.synthesize(spectra)
    sigma = clean.std() / np.sqrt(args.snr)
    images = clean + sigma * rng.standard_normal(clean.shape)
    data = hm.prepare_particles(images, sim.ctf_params, pixel, band, sim.rotations, sim.shifts)
    problem = hm.HyperMoleculeProblem(data, [hm.Component("molecule", 1)], order=2,
                                      backend="cpu")
    settings = hm.SamplerSettings(sweeps=args.sweeps, burn_in=args.burn_in, seed=0,
                                  reparametrise=args.warps,
                                  coefficient_draw=args.draw,
                                  solver_iterations=args.solver_iterations)
    start, cpu = time.time(), time.process_time()
    result = run_chains(problem, settings, args.chains, log=False)
    mean, interval = result.tau_mean[:, 0], result.tau_interval[:, 0]
    rho = hm.rank_correlation(mean, tau[:, 0])
    direct = tau[:, 0] if rho > 0 else 1 - tau[:, 0]
    print(f"\nwell-specified order-2 model, particles {args.n}, box {box}, band {band}, "
          f"SNR {args.snr}, chains {args.chains}, sweeps {args.sweeps} (burn-in "
          f"{args.burn_in}): {time.time() - start:.0f} s, CPU {time.process_time() - cpu:.0f} s, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"|Spearman rho| {abs(rho):.3f}; median posterior sd of tau "
          f"{np.median(result.tau_std[:, 0]):.3f}")
    print(f"90 % intervals holding the truth: {100 * hm.interval_coverage(interval, mean, tau[:, 0]):.1f} % "
          f"(true state on the sampled scale), "
          f"{100 * np.mean((direct >= interval[:, 0]) & (direct <= interval[:, 1])):.1f} % "
          f"(the model's own scale)")
    print("split R-hat:", {k: round(v, 3) for k, v in result.rhat.items() if not k.startswith("tau")})


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
    start, cpu = time.time(), time.process_time()
    chain.run()
    per_sweep = (time.time() - start) / sweeps
    cpu_per_sweep = (time.process_time() - cpu) / sweeps
    return per_sweep, cpu_per_sweep, chain.model.coefficient_count, data.kx.size, peak


def speed(args):
    cases = SHORT_SPEED_CASES if args.short else SPEED_CASES
    print(f"load average {os.getloadavg()[0]:.2f}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'all')}")
    print("box  n      order d  coefficients  frequencies  s/sweep  CPU s/sweep  peak MiB")
    for box, n, order, dimension in cases:
        band = 16.0 * box / BOX
        seconds, cpu, count, points, peak = sweep_time(n, box, order, dimension, band)
        print(f"{box:<4} {n:<6} {order:<5} {dimension}  {count:<13} {points:<12} "
              f"{seconds:<8.2f} {cpu:<12.2f} {peak:.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("recovery", "aligned", "pretzel", "speed",
                                         "calibration"))
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--sweeps", type=int, default=160)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--band", type=float, default=16.0)
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--snr", type=float, default=1.0, help="calibration mode only")
    parser.add_argument("--skip-single", action="store_true",
                        help="recovery mode: skip the single-state reference run")
    parser.add_argument("--warps", action="store_true",
                        help="make the joint warp moves of states and coefficients")
    parser.add_argument("--draw", choices=("langevin", "exact"), default="langevin",
                        help="coefficient update: a Langevin step or an exact conditional draw")
    parser.add_argument("--solver-iterations", type=int, default=40,
                        help="conjugate-gradient steps of an exact conditional draw")
    parser.add_argument("--short", action="store_true",
                        default=bool(os.environ.get("CRYOHESS_BENCH_SHORT")),
                        help="a quick smoke run: few particles and sweeps")
    args = parser.parse_args()
    if args.short:
        args.n, args.chains, args.sweeps, args.burn_in = 300, 1, 8, 5
    {"recovery": recovery, "aligned": aligned, "pretzel": pretzel, "speed": speed,
     "calibration": calibration}[args.mode](args)


if __name__ == "__main__":
    main()
