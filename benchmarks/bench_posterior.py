"""Fourier posterior fits: particles per second at 128 px, closed form against minibatch.

Particles (CTF, uniform views, SNR 0.05) are simulated from a Gaussian-atom
phantom.  In the same process and on the same data:

* baseline: one pass of the model (forward slice + adjoint of every particle),
  the unit every fit is made of;
* the closed form (:func:`fit_closed_form` with fixed noise and prior: CG
  iterations plus the sampling density);
* the closed form with EM estimation of noise and per-shell prior;
* the minibatch variational fit (:func:`fit_variational`, ``--epochs``).

Rates are particles per second per fit (and per pass), with ratios against
the baseline pass.  Peak memory is tracemalloc's (NumPy arrays included) for
one closed-form fit.  The machine is shared, so the load average is printed.

    python benchmarks/bench_posterior.py [--n 2000] [--box 128] [--epochs 5] [--quick]
"""
import argparse
import os
import time
import tracemalloc

import numba
import numpy as np

from cryohess_plugin.core import atoms, ctf, fourier, phantoms, simulate
from cryohess_plugin.core.fourier_posterior import (PosteriorProblem, fit_closed_form,
                                                    fit_variational)


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of particles")
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the minibatch fit")
    parser.add_argument("--batch", type=int, default=128, help="minibatch size")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--quick", action="store_true", help="64 px, 300 particles, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.n, args.box, args.epochs = 300, 64, 2
    box, pixel = args.box, 2.0
    print(f"threads {numba.get_num_threads()}, load average {os.getloadavg()}")
    model = phantoms.random_protein_phantom(1500, radius_angstrom=0.3 * box * pixel, rng=1)
    volume = atoms.gaussian_atom_volume(model, box, pixel)
    sim = simulate.simulate_particles(volume, args.n, box, pixel, rng=2, snr=0.05,
                                      shift_sigma=2.0, keep_clean=False)
    kx, ky = PosteriorProblem.ctf_frequencies(box)
    values = ctf.ctf_stack(sim.ctf_params, kx, ky, box, pixel)
    problem, prepare = timed(lambda: PosteriorProblem(sim.images, sim.rotations, sim.shifts,
                                                      values, dtype=np.dtype(args.dtype)))
    grid = np.zeros((box,) * 3, np.complex128)
    # Warm the kernels (compilation) before timing.
    problem.subset(np.arange(4)).normal(grid)
    problem.subset(np.arange(4)).sampling_density()
    _, one_pass = timed(lambda: problem.normal(grid))
    rate = args.n / one_pass
    print(f"box {box}, {args.n} particles, {args.dtype}; spectra prepared in {prepare:.2f} s")
    print(f"{'method':<32}{'time s':>10}{'particles/s':>14}{'passes':>8}{'x pass':>8}")
    print(f"{'baseline: one forward+adjoint':<32}{one_pass:>10.2f}{rate:>14.0f}{1:>8}{1:>8.1f}")
    estimated, seconds = timed(lambda: fit_closed_form(problem))
    fixed_prior = fourier.shell_average(estimated.prior_variance)
    tracemalloc.start()
    fixed, seconds_fixed = timed(lambda: fit_closed_form(problem, estimated.noise_variance,
                                                         fixed_prior))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    passes = sum(len(r) for r in fixed.history["cg_residuals"]) + 2
    print(f"{'closed form (fixed noise, prior)':<32}{seconds_fixed:>10.2f}"
          f"{args.n / seconds_fixed:>14.0f}{passes:>8}{seconds_fixed / one_pass:>8.1f}")
    passes = sum(len(r) for r in estimated.history["cg_residuals"]) + 2
    print(f"{'closed form + EM (noise, prior)':<32}{seconds:>10.2f}{args.n / seconds:>14.0f}"
          f"{passes:>8}{seconds / one_pass:>8.1f}")
    variational, seconds_vi = timed(lambda: fit_variational(
        problem, fixed.noise_variance, fixed.prior_variance, batch_size=args.batch,
        epochs=args.epochs))
    print(f"{'minibatch variational':<32}{seconds_vi:>10.2f}{args.n * args.epochs / seconds_vi:>14.0f}"
          f"{args.epochs:>8}{seconds_vi / one_pass:>8.1f}   (particles/s per epoch)")
    error = np.linalg.norm(variational.mean - fixed.mean) / np.linalg.norm(fixed.mean)
    print(f"variational mean vs closed form: relative L2 {error:.3f} after {args.epochs} epochs")
    print(f"peak memory of one closed-form fit (tracemalloc): {peak / 2 ** 20:.0f} MiB")


if __name__ == "__main__":
    main()
