"""Fourier posterior fits: particles per second at 128 px, closed form against minibatch.

Particles (CTF, uniform views, SNR 0.05) are simulated from a Gaussian-atom
phantom.  In the same process and on the same data:

* baseline: one pass of the model (forward slice + adjoint of every particle),
  the unit every fit is made of;
* the closed form (:func:`fit_closed_form` with fixed noise and prior: CG
  iterations plus the sampling density);
* the closed form with EM estimation of the noise per shell (the default) and the
  per-shell prior, and the same with white noise (one variance: the data term,
  sampling density and gridding weights are computed once instead of every round);
* the minibatch variational fit (:func:`fit_variational`, ``--epochs``);
* the baseline pass again with the CTF kept as parameters (:class:`CTFTable`, as the
  particle files hold it: every batch's CTF is evaluated by the CTF kernel when read),
  and the CTF evaluation alone in nanoseconds per value.  ``--passes-only`` stops after
  these rows.

The baseline pass reads a random grid: a grid of zeros from ``np.zeros`` is
backed by the kernel's shared zero page, always in cache, and makes a pass
about 20 % faster than any pass inside a fit (it is printed too, as the
baseline of the results before 2026-11-21's second run).  Fits are timed
without tracemalloc; the peak memory is traced on a separate, truncated
fixed-prior fit (every code path, one CG iteration and one probe iteration).

Rates are particles per second per fit (and per pass), with ratios against
the baseline pass.  "passes" counts every pass over the particles the fit
made (``history["passes"]``): CG iterations and the noise probe's, each a
forward and an adjoint, plus the one-way passes (data term, gridding
weights, probe right-hand side, EM residual power, sampling density) counted
as half a pass each.  Peak memory is tracemalloc's (NumPy arrays included) for
one closed-form fit.  The machine is shared, so the load average is printed.

With ``--memmap`` the spectra are also written to an ``.npy`` in batches
(:func:`write_spectra`) and the fixed closed form and the minibatch fit are
repeated on the memory-mapped problem, which streams batches from the file:
rates and traced peaks beside the in-memory ones (the file is in the page
cache after writing, so this measures the streaming overhead, not the disk).

    python benchmarks/bench_posterior.py [--n 2000] [--box 128] [--epochs 5] [--memmap]
                                         [--passes-only] [--quick]
"""
import argparse
import os
import tempfile
import time
import tracemalloc

import numba
import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core import ctf, fourier
from cryohess_plugin.core.posterior.problem import CTFTable, PosteriorProblem, write_spectra
from cryohess_plugin.core.posterior.fit import fit_closed_form, fit_variational


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def traced(call):
    """``(value, seconds, tracemalloc peak bytes)`` of ``call()``."""
    tracemalloc.start()
    value, seconds = timed(call)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak


def passes(fit):
    """Passes over the particles of a closed-form fit: forward+adjoint ones whole,
    one-way ones (adjoint, forward, density) as halves."""
    counts = fit.history["passes"]
    return counts.get("normal", 0) + 0.5 * sum(v for k, v in counts.items() if k != "normal")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of particles")
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the minibatch fit")
    parser.add_argument("--batch", type=int, default=128, help="minibatch size")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--memmap", action="store_true",
                        help="also fit from spectra memory-mapped from an .npy")
    parser.add_argument("--passes-only", action="store_true",
                        help="stop after the baseline passes (CTF values against parameters)")
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
    # Warm the kernels (compilation) before timing, those of the EM fits too.
    problem.subset(np.arange(4)).normal(grid)
    problem.subset(np.arange(4)).sampling_density()
    for noise_model in ("per_shell", "white"):
        fit_closed_form(problem.subset(np.arange(4)), em_iterations=2, cg_iterations=2,
                        noise_model=noise_model)
    _, zero_pass = timed(lambda: problem.normal(grid))
    noise = np.random.default_rng(3).standard_normal((2,) + grid.shape)
    grid = (noise[0] + 1j * noise[1]) * 1e-2
    _, one_pass = timed(lambda: problem.normal(grid))
    rate = args.n / one_pass
    print(f"box {box}, {args.n} particles, {args.dtype}; spectra prepared in {prepare:.2f} s")
    print(f"{'method':<32}{'time s':>10}{'particles/s':>14}{'passes':>8}{'x pass':>8}")
    print(f"{'baseline: one forward+adjoint':<32}{one_pass:>10.2f}{rate:>14.0f}{1:>8}{1:>8.1f}")
    print(f"{'  (same, grid of zeros)':<32}{zero_pass:>10.2f}{args.n / zero_pass:>14.0f}")
    ctf_table_pass(problem, sim, grid, one_pass, args.dtype)
    if args.passes_only:
        return
    estimated, seconds = timed(lambda: fit_closed_form(problem))
    white, seconds_white = timed(lambda: fit_closed_form(problem, noise_model="white"))
    fixed_prior = fourier.shell_average(estimated.prior_variance)
    fixed, seconds_fixed = timed(lambda: fit_closed_form(problem, estimated.noise_variance,
                                                         fixed_prior))
    _, _, peak = traced(lambda: fit_closed_form(problem, estimated.noise_variance, fixed_prior,
                                                cg_iterations=1, tolerance=0.999))
    print(f"{'closed form (fixed noise, prior)':<32}{seconds_fixed:>10.2f}"
          f"{args.n / seconds_fixed:>14.0f}{passes(fixed):>8.1f}{seconds_fixed / one_pass:>8.1f}")
    print(f"{'closed form + EM, noise per shell':<32}{seconds:>10.2f}{args.n / seconds:>14.0f}"
          f"{passes(estimated):>8.1f}{seconds / one_pass:>8.1f}")
    print(f"{'closed form + EM, white noise':<32}{seconds_white:>10.2f}"
          f"{args.n / seconds_white:>14.0f}{passes(white):>8.1f}"
          f"{seconds_white / one_pass:>8.1f}")
    for label, fit in (("fixed", fixed), ("EM per shell", estimated), ("EM white", white)):
        print(f"  {label}: CG iterations per round "
              f"{[len(r) for r in fit.history['cg_residuals']]}, passes {fit.history['passes']}")
    variational, seconds_vi = timed(lambda: fit_variational(
        problem, fixed.noise_variance, fixed.prior_variance, batch_size=args.batch,
        epochs=args.epochs))
    print(f"{'minibatch variational':<32}{seconds_vi:>10.2f}{args.n * args.epochs / seconds_vi:>14.0f}"
          f"{args.epochs:>8}{seconds_vi / one_pass:>8.1f}   (particles/s per epoch)")
    error = np.linalg.norm(variational.mean - fixed.mean) / np.linalg.norm(fixed.mean)
    print(f"variational mean vs closed form: relative L2 {error:.3f} after {args.epochs} epochs")
    print(f"peak memory of one closed-form fit (tracemalloc): {peak / 2 ** 20:.0f} MiB")
    if args.memmap:
        memmap_comparison(args, sim, values, problem, fixed, fixed_prior)


def ctf_table_pass(problem, sim, grid, one_pass, dtype):
    """The baseline pass with the CTF as parameters (evaluated per batch), beside the pass
    with the values in memory, and the CTF evaluation of all particles alone."""
    table = CTFTable(ctf.params_to_rows(sim.ctf_params), problem.box, sim.pixel_size)
    from_parameters = PosteriorProblem(problem.spectra, sim.rotations, sim.shifts, table,
                                       dtype=np.dtype(dtype))
    from_parameters.subset(np.arange(4)).normal(grid)
    np.asarray(table[:4])
    _, seconds = timed(lambda: from_parameters.normal(grid))
    values, evaluation = timed(lambda: np.asarray(table, np.dtype(dtype)))
    print(f"{'  (same, CTF from parameters)':<32}{seconds:>10.2f}{len(table) / seconds:>14.0f}"
          f"{1:>8}{seconds / one_pass:>8.2f}")
    print(f"  CTF kernel: {values.size} values in {evaluation:.3f} s, "
          f"{1e9 * evaluation / values.size:.1f} ns per value")


def memmap_comparison(args, sim, values, problem, fixed, fixed_prior):
    """Fixed closed form and minibatch fit in memory and from a memory map."""
    n, dtype = args.n, np.dtype(args.dtype)
    spectra_mib = problem.spectra.nbytes / 2 ** 20
    with tempfile.TemporaryDirectory() as folder:
        path, written = timed(lambda: write_spectra(os.path.join(folder, "spectra.npy"),
                                                    sim.images, dtype=dtype))
        np.save(os.path.join(folder, "ctf.npy"), values)
        mapped = PosteriorProblem(path, sim.rotations, sim.shifts,
                                  os.path.join(folder, "ctf.npy"), dtype=dtype)
        print(f"\nspectra {spectra_mib:.0f} MiB ({mapped.spectra.dtype}), CTF "
              f"{values.nbytes / 2 ** 20:.0f} MiB; written to .npy in {written:.2f} s")
        print(f"{'fit':<32}{'source':>8}{'time s':>10}{'particles/s':>14}{'peak MiB':>10}")
        rows = []
        for label, source in (("memory", problem), ("memmap", mapped)):
            closed, seconds, peak = traced(lambda: fit_closed_form(
                source, fixed.noise_variance, fixed_prior))
            rows.append(closed)
            print(f"{'closed form (fixed noise, prior)':<32}{label:>8}{seconds:>10.2f}"
                  f"{n / seconds:>14.0f}{peak / 2 ** 20:>10.0f}")
        for label, source in (("memory", problem), ("memmap", mapped)):
            _, seconds, peak = traced(lambda: fit_variational(
                source, fixed.noise_variance, fixed.prior_variance, batch_size=args.batch,
                epochs=args.epochs))
            print(f"{'minibatch variational':<32}{label:>8}{seconds:>10.2f}"
                  f"{n * args.epochs / seconds:>14.0f}{peak / 2 ** 20:>10.0f}")
        print(f"(peaks are traced during the fit; the in-memory problem also holds its "
              f"{spectra_mib:.0f} MiB of spectra throughout, the memmap none)")
        error = np.linalg.norm(rows[1].mean - rows[0].mean) / np.linalg.norm(rows[0].mean)
        print(f"memmap closed-form mean vs in memory: relative L2 {error:.1e}")
        del mapped


if __name__ == "__main__":
    main()
