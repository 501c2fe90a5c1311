"""Soft modes at 2πK = 48 for 10 000 particles: converged modes (or the null space) in time.

A Gaussian-atom phantom (box 64, 2 Å/px) is analysed at the resolution that gives
``L = 2πK = 48`` (the authors' largest case) for particles with uniform random poses
(``--views``) and 10 defocus groups
(:func:`cryohess_plugin.core.synthetic.simulate.random_ctf_params`).  One call of
:func:`analyse_soft_modes` runs end to end (spherical transform, binning, the views'
sampling operator and its null space, the preconditioned eigensolver to a relative
residual ``--tolerance`` within ``--products`` Hessian products, mode volumes, pose
changes, the stochastic log-determinant).  Printed: the time of every stage (from the
analysis's progress events, wall and CPU seconds, printed as they come), the modes
converged, the null space, the eigensolver's products with its time per product (wall and
CPU, Rayleigh–Ritz work included), the total, tracemalloc's peak of traced allocations
and the process's maximum resident set size, and whether the 10-minute goal is met.

    python benchmarks/bench_softmodes.py [--degree 48] [--particles 10000] [--modes 16]
                                         [--products 1600] [--tolerance 1e-3]
                                         [--views uniform] [--memory-gib 8]
                                         [--product-form auto] [--quick]

``--quick`` (a smoke test, seconds): 2πK = 16, 1000 particles, 4 modes.  Smaller
``--degree`` and ``--particles`` show the scaling.
"""
import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core.softmodes.analysis import analyse_soft_modes, auto_grid_spacing
from cryohess_plugin.core.softmodes.experiment import experiment_from_poses

BOX, PIXEL = 64, 2.0
GOAL_SECONDS = 600.0


def cpu_seconds():
    """User plus system CPU time of this process (the wall time counts other jobs' too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageClock:
    """Progress callback printing each event as it comes with the wall and CPU seconds
    since the previous one (the stages of a run that does not finish still show)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        #: ``[wall, cpu, products]`` spent by the eigensolver (from the event before its
        #: first one to its last).
        self.solver = [0.0, 0.0, 0]

    def __call__(self, event):
        wall, cpu = time.perf_counter(), cpu_seconds()
        print(f"  {wall - self.wall:8.1f} s wall {cpu - self.cpu:8.1f} s CPU  {event.line()}",
              flush=True)
        if event.message.startswith("Eigensolver"):
            self.solver[0] += wall - self.wall
            self.solver[1] += cpu - self.cpu
            self.solver[2] = event.done
        self.wall, self.cpu = wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=48, help="2πK = L")
    parser.add_argument("--particles", type=int, default=10000)
    parser.add_argument("--modes", type=int, default=16)
    parser.add_argument("--products", type=int, default=None,
                        help="Hessian-product budget of the eigensolver (default 100 per mode)")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--views", default="uniform", help="simulate.sample_rotations kind")
    parser.add_argument("--memory-gib", type=float, default=8.0,
                        help="cached harmonics (GiB) of the Hessian products")
    parser.add_argument("--block", type=int, default=8,
                        help="residuals the eigensolver adds per iteration")
    parser.add_argument("--product-form", default="auto",
                        help="factored, slices or auto (AccumulatedHessian's product_form)")
    parser.add_argument("--quick", action="store_true",
                        help="2πK = 16, 1000 particles, 4 modes (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.degree, args.particles, args.modes = 16, 1000, 4
    resolution = BOX * PIXEL * np.pi / args.degree
    model = phantoms.random_protein_phantom(3000, 50.0, rng=1)
    volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
    poses = simulate.sample_rotations(args.views, args.particles, args.particles)
    groups = simulate.random_ctf_params(10, args.particles)
    ctf = [groups[i * 10 // args.particles] for i in range(args.particles)]
    experiment = experiment_from_poses(poses, ctf, pixel_size=PIXEL)
    print(f"box {BOX}, {PIXEL} Å/px, resolution {resolution:.2f} Å, 2πK = {args.degree}; "
          f"{args.particles} particles ({args.views} views, 10 defocus groups); "
          f"{args.modes} modes to a relative residual {args.tolerance:.0e}; grid "
          f"{auto_grid_spacing(args.degree):.2f}°; {os.cpu_count()} CPUs, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'all')}, "
          f"load {os.getloadavg()[0]:.1f}")

    print("stage times (before each progress line):", flush=True)
    clock = StageClock()
    tracemalloc.start()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    result = analyse_soft_modes(
        volume, PIXEL, experiment, resolution, n_modes=args.modes,
        max_products=args.products, tolerance=args.tolerance, backend="cpu",
        memory_budget=int(args.memory_gib * 2 ** 30), progress=clock,
        product_form=args.product_form, solver_block=args.block)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 30
    tracemalloc.stop()

    converged = int(result.converged.sum())
    print(f"{args.particles} particles, 2πK = {result.max_degree}: {result.n_parameters} real "
          f"parameters, null space {result.null_dimension}, {result.n_directions} occupied "
          f"directions; {converged} of {len(result.eigenvalues)} modes converged "
          f"(max relative residual {result.residuals.max():.1e}) in {result.products} "
          f"products; total {seconds:.1f} s wall, {cpu:.1f} s CPU; load at the end "
          f"{os.getloadavg()[0]:.1f}")
    wall, cpu_solver, products = clock.solver
    print(f"eigensolver: {products} products in {wall:.1f} s wall, {cpu_solver:.1f} s CPU: "
          f"{wall / max(products, 1):.3f} s wall, {cpu_solver / max(products, 1):.3f} s CPU "
          f"per product (Rayleigh–Ritz included); product form {args.product_form}, "
          f"block {args.block}")
    print(f"λ: {np.array2string(result.eigenvalues, precision=4)}")
    print(f"traced peak {peak:.2f} GiB, max resident set size "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    met = seconds <= GOAL_SECONDS and converged >= min(args.modes, len(result.eigenvalues))
    print(f"goal ({args.modes} converged modes or the null space in <= {GOAL_SECONDS:.0f} s): "
          + ("met" if met else "NOT met"))


if __name__ == "__main__":
    main()
