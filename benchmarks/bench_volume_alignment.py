"""Volume alignment over SO(3): radial-/degree-SVD compression against full rank.

One reference and ``--n`` volumes (the reference's atomic phantom at random
rotations, plus white Gaussian noise of ``--noise`` times the reference's
standard deviation), box ``--box``, bandwidth ``K = π f_max = --bandwidth``
(the paper's 48, ``docs/methods/radial_svd_alignment.md`` §5).  Every path runs
in this process on the same volumes:

* ``full, unreduced``: the exact landscape with the ragged sum over degrees
  ``l >= max(|m1|, |m2|)``, our exact baseline (what ``align(full_rank=True)``
  searches);
* ``full, dense``: the compressed code at ``H_C = R, H_D = L + 1``, the
  paper's full-rank baseline (step 2 sums all ``L + 1`` degrees);
* ``compressed``: ranks from the tolerance (``auto``) and fixed ``H_C = H_D = H``.

Columns: set-up (reference transform, kernels C and D, eigendecompositions,
Wigner tables); search, in ms per volume: steps 1-3 of the landscape and its
argmax, on precomputed spherical-harmonic coefficients (their per-volume cost,
shared by all paths, is printed above the table), with the speedup over both
full-rank baselines (the compressed landscape keeps degrees and orders up to
its band ``L_c`` and is searched on its own coarser grid, step ``360 / n`` with
``n >= 2 L_c + 1``; the unreduced one on the ``N``-point grid); the grid
optimum's error against the truth and its angle to the unreduced grid optimum;
the Pearson correlation with the unreduced landscape on the common ``N``-point
grid; ``align`` end to
end in ms per volume (transform, search, exact refinement) and the refined
error.  On a machine shared with other jobs, ``--clock cpu`` with one thread
everywhere (``NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``) gives stable
numbers.

    python benchmarks/bench_volume_alignment.py [--box 64] [--bandwidth 48] [--n 8]
"""
import argparse
import os
import time

import numba
import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms
from cryohess_plugin.core import fourier, rotations, spherical
from cryohess_plugin.core.alignment.volumes import VolumeAligner

PIXEL = 2.0


def add_arguments(parser):
    """Options of this benchmark (shared with benchmarks/bench_alignment.py)."""
    parser.add_argument("--box", type=int, default=64, help="box size in voxels")
    parser.add_argument("--bandwidth", type=float, default=48.0,
                        help="K = pi * f_max (f_max in cycles per box)")
    parser.add_argument("--n", type=int, default=8, help="number of volumes")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="noise standard deviation over the reference's")
    parser.add_argument("--ranks", type=int, nargs="*", default=[4, 8],
                        help="fixed H_C = H_D values to time besides the automatic ranks")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings are the fastest of this many passes (shared machines)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock time, or CPU time of all threads (robust when other "
                             "jobs share the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numba, the FFTs and BLAS alike (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where align's time goes (cProfile) for the exact and "
                             "the automatic-rank path")
    parser.add_argument("--short", action="store_true",
                        help="smoke test: box 32, K = 12, 2 volumes, H = 4 only, one repeat")
    return parser


def limit_threads(threads):
    """Run numba, scipy's FFTs and BLAS on ``threads`` threads (both paths alike)."""
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(threads)
    fourier.set_fft_workers(threads)
    threadpool_limits(threads)


def stage_times(aligner, volumes, full_rank, repeats, clock):
    """ms per volume of align's stages: transform, grid search, refinement (incl. its X̂)."""
    coefficients, transform = fastest(
        lambda: [aligner.shells.analyze(aligner._samples(v)) for v in volumes], repeats, clock)
    found, search = fastest(lambda: [aligner._search(c, full_rank) for c in coefficients],
                            repeats, clock)

    def refine():
        for c, (_, angles, hat) in zip(coefficients, found):
            aligner._refine(hat if full_rank else aligner._unreduced_hat(c), angles)

    _, refinement = fastest(refine, repeats, clock)
    return [1e3 * t / len(volumes) for t in (transform, search, refinement)]


def print_profile(name, aligner, volumes, full_rank):
    import cProfile
    import pstats
    profile = cProfile.Profile()
    profile.enable()
    aligner.align(volumes, full_rank=full_rank)
    profile.disable()
    print(f"\ncProfile of align, {name}, {len(volumes)} volumes (internal time):")
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


def make_data(box, n, noise, seed):
    """Reference map, noisy rotated copies and the rotations that align them."""
    model = phantoms.random_protein_phantom(4000, radius_angstrom=0.3 * box * PIXEL, rng=seed,
                                            bfactor=8 * np.pi ** 2 * PIXEL ** 2)
    centre = model.centroid()
    reference = atoms.gaussian_atom_volume(model, box, PIXEL, center=centre)
    rng = np.random.default_rng(seed)
    truths = rotations.random_rotations(n, rng)
    volumes = []
    for rotation in truths:
        moved = atoms.AtomModel((model.positions - centre) @ rotation.T + centre,
                                model.elements, model.bfactors)
        volume = atoms.gaussian_atom_volume(moved, box, PIXEL, center=centre)
        volumes.append(volume + noise * reference.std() * rng.standard_normal(volume.shape))
    # rotate_volume(volume_i, R_iᵀ) is the reference.
    return reference, np.stack(volumes), np.transpose(truths, (0, 2, 1))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def fastest(task, repeats, clock="wall"):
    """Result of ``task()`` and the shortest of ``repeats`` times (s) on ``clock``."""
    now = CLOCKS[clock]
    times = []
    for _ in range(repeats):
        start = now()
        result = task()
        times.append(now() - start)
    return result, min(times)


def set_up(reference, ranks, options, clock):
    """An aligner at fixed ``ranks`` (or the tolerance's) and its set-up time (s)."""
    spherical.wigner_eigensystem.cache_clear()  # every set-up pays for its own Wigner tables
    now = CLOCKS[clock]
    start = now()
    aligner = VolumeAligner(reference, radial_rank=ranks and ranks[0],
                            degree_rank=ranks and ranks[1], **options)
    return aligner, now() - start


def time_search(aligner, coefficients, full_rank, repeats, clock):
    """Landscapes on the ``N`` grid, grid optima (as rotations), search step (°) and s per volume.

    The timed search is what ``align`` runs before the refinement
    (``VolumeAligner._search``): the unreduced landscape on its ``N``-point
    grid, the compressed one on its own ``search_orders``-point grid (its band
    ``L_c`` is below ``L``).  The landscapes for the correlation column are
    evaluated afterwards on the common ``N``-point grid, untimed.
    """
    aligner._search(coefficients[0], full_rank)  # compile and warm up outside the timing

    def search():
        return [aligner._search(c, full_rank)[1] for c in coefficients]

    optima, elapsed = fastest(search, repeats, clock)
    elapsed /= len(coefficients)
    hat = aligner._unreduced_hat if full_rank else aligner._compressed_hat
    landscapes = [aligner._grid_values(hat(c)) for c in coefficients]
    matrices = np.stack([spherical.landscape_rotation(*angles) for angles in optima])
    n = aligner.shells.n_orders if full_rank else aligner.search_orders
    return landscapes, matrices, 360.0 / n, elapsed


def run(args):
    """Run the benchmark for parsed ``args`` (see :func:`add_arguments`); returns the rows."""
    if args.short:
        args.box, args.bandwidth, args.n, args.ranks, args.repeats = 32, 12.0, 2, [4], 1
    if args.threads:
        limit_threads(args.threads)
    dtype = np.dtype(args.dtype)
    reference, volumes, truths = make_data(args.box, args.n, args.noise, args.seed)
    f_max = args.bandwidth / np.pi
    common = dict(max_frequency=f_max, dtype=dtype, backend=args.backend)

    # Load or compile every numba kernel on a small map first, so no set-up pays for it.
    VolumeAligner(reference, max_frequency=2.0, dtype=dtype, backend=args.backend).align(
        volumes[0])
    exact, exact_setup = set_up(reference, None, common, args.clock)
    shells = exact.shells
    full = (shells.n_shells, shells.max_degree + 1)
    coefficients, transform = fastest(lambda: [exact.transform.coefficients(v) for v in volumes],
                                      args.repeats, args.clock)
    transform_ms = 1e3 * transform / len(volumes)
    print(f"box {args.box}, K = {args.bandwidth:g} (f_max {f_max:.2f} cycles/box): R = "
          f"{shells.n_shells} shells, L = {shells.max_degree}, grid {shells.n_orders} x "
          f"{exact.beta.size} x {shells.n_orders} (step {360 / shells.n_orders:.2f}°); "
          f"{args.n} volumes, noise {args.noise:g} x reference s.d., {args.dtype}, "
          f"backend {exact.backend}, threads: numba {numba.get_num_threads()}, FFT "
          f"{fourier.fft_workers()}, {args.clock} clock, fastest of {args.repeats}; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"spherical-harmonic transform of one volume (shared by all rows): "
          f"{transform_ms:.1f} ms")

    configs = [("full, unreduced", None, True), ("full, dense", full, False),
               ("compressed, auto", None, False)]
    configs += [(f"compressed, H = {h}", (min(h, full[0]), min(h, full[1])), False)
                for h in args.ranks]
    rows, baseline = [], {}
    for name, ranks, full_rank in configs:
        if full_rank:
            aligner, setup = exact, exact_setup
        else:
            aligner, setup = set_up(reference, ranks, common, args.clock)
        landscapes, grid_rotations, step, search = time_search(aligner, coefficients,
                                                               full_rank, args.repeats,
                                                               args.clock)
        aligner.align(volumes[:1], full_rank=full_rank)  # warm up the refinement
        result, end_to_end = fastest(lambda: aligner.align(volumes, full_rank=full_rank),
                                     args.repeats, args.clock)
        end_to_end /= len(volumes)
        stages = stage_times(aligner, volumes, full_rank, args.repeats, args.clock)
        if args.profile and name in ("full, unreduced", "compressed, auto"):
            print_profile(name, aligner, volumes, full_rank)
        if full_rank:
            baseline = dict(landscapes=landscapes, optima=grid_rotations)
        row = dict(
            name=name, ranks=(shells.n_shells, shells.max_degree + 1) if full_rank
            else aligner.ranks, band=shells.max_degree if full_rank else aligner.band,
            step_deg=step, setup_s=setup, search_ms=1e3 * search,
            grid_error_deg=rotations.angular_distance(grid_rotations, truths),
            argmax_offset_deg=rotations.angular_distance(grid_rotations, baseline["optima"]),
            correlation=np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1]
                                 for a, b in zip(landscapes, baseline["landscapes"])]),
            align_ms=1e3 * end_to_end, stages_ms=stages,
            refined_error_deg=rotations.angular_distance(result.rotation, truths),
            score=result.score)
        rows.append(row)
    for row in rows:
        row["speedup_unreduced"] = rows[0]["search_ms"] / row["search_ms"]
        row["speedup_dense"] = rows[1]["search_ms"] / row["search_ms"]
        row["align_speedup"] = rows[0]["align_ms"] / row["align_ms"]

    print()
    print("| path | H_C, H_D | band L_c | grid step ° | set-up s | search ms/vol | vs unreduced | "
          "vs dense | grid error ° (median / max) | off exact grid optimum ° (max) | corr. | "
          "align ms/vol | align vs exact | refined error ° (median / max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['ranks'][0]}, {row['ranks'][1]} | {row['band']} | "
              f"{row['step_deg']:.2f} | {row['setup_s']:.2f} | "
              f"{row['search_ms']:.2f} | {row['speedup_unreduced']:.2f}x | "
              f"{row['speedup_dense']:.2f}x | {np.median(row['grid_error_deg']):.2f} / "
              f"{row['grid_error_deg'].max():.2f} | {row['argmax_offset_deg'].max():.2f} | "
              f"{row['correlation']:.4f} | {row['align_ms']:.1f} | "
              f"{row['align_speedup']:.2f}x | "
              f"{np.median(row['refined_error_deg']):.3f} / "
              f"{row['refined_error_deg'].max():.3f} |")
    print("\nWhere align's time goes (ms per volume; each stage timed alone):\n")
    print("| path | transform (samples + analysis) | grid search | refinement (its X̂ + "
          "Newton) | sum |")
    print("|---|---|---|---|---|")
    for row in rows:
        transform, search, refinement = row["stages_ms"]
        print(f"| {row['name']} | {transform:.1f} | {search:.1f} | {refinement:.1f} | "
              f"{transform + search + refinement:.1f} |")
    return rows


def main():
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
