"""Translations: the FTK (coarse radial-SVD search, then the factorised translation kernel over
the fine shift disc) against the explicit shift loop, and compression against pruned full rank.

Particles (128 px, 1.5 Å/px, CTF in defocus groups, uniform views, random
shifts of ``--shift-sigma`` px per axis, SNR ``--snr``) are simulated from a
Gaussian-atom phantom and aligned against the 993 projections of the same map
(K = 48: R = 49 rings, Q = 98 angles), in float32, on all numba threads.  In
the same process, on the same data:

* explicit shift loop: :class:`RadialSVDAligner` with every shift of the
  sub-pixel disc (``--max-shift``, ``--step``) as one image row, automatic
  H, pruned search, full-rank refinement of the 4 best templates (the
  project's best exact path over shifts);
* FTK: the same aligner on the coarse lattice (``--coarse-step``) keeps
  ``--candidates`` templates per image (compressed scores, no refinement), then
  :func:`cryohess_plugin.core.alignment.translations.align_translations`
  scores them at full rank over the whole fine disc and every angle.

Agreement: same template, in-plane angle within one step and shift within
1.5 fine steps.  Rates: (image, template) pairs x fine shifts per second and
(image, template, shift) triples per second over all Q angles.

``--compression`` adds the compression-alone rows (no shifts): automatic H
against full rank with the SAME exact pruning (both pruned, same threads),
then the same pair on one thread (best of ``--repeats`` searches each).

    python benchmarks/bench_translations.py [--n 1024] [--max-shift 10] [--step 0.5]
                                            [--explicit-images 1024] [--compression] [--quick]
"""
import argparse
import cProfile
import os
import pstats
import time

import numba
import numpy as np

from cryohess_plugin.core import rotations
from cryohess_plugin.core.polar import PolarGrid, polar_transform
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core.alignment.radial_svd import RadialSVDAligner, shift_grid
from bench_alignment import best_time
from cryohess_plugin.core.alignment.translations import (PolarShifts, TranslationFactorization,
                                                         align_translations, coarse_shift_step)

BOX, PIXEL, BFACTOR = 128, 1.5, 400.0
MAX_FREQUENCY = 48 / np.pi


def agreement(first, second, n_angles, tolerance):
    """Share of ``second``'s particles with ``first``'s template, angle (one step), shift."""
    count = second.template.size
    steps = (np.abs(np.round((first.angle[:count] - second.angle) * n_angles / (2 * np.pi)))
             % n_angles)
    return float(np.mean((first.template[:count] == second.template)
                         & (np.minimum(steps, n_angles - steps) <= 1)
                         & (np.linalg.norm(first.shift[:count] - second.shift, axis=1)
                            <= tolerance)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="particles")
    parser.add_argument("--groups", type=int, default=10, help="defocus groups")
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--max-shift", type=float, default=10.0)
    parser.add_argument("--step", type=float, default=0.5, help="fine shift step, px")
    parser.add_argument("--coarse-step", type=float, default=None,
                        help="coarse lattice step, px (default: coarse_shift_step of the grid)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--shift-sigma", type=float, default=3.5)
    parser.add_argument("--explicit-images", type=int, default=None,
                        help="run the explicit loop on the first N particles only and "
                             "extrapolate its time linearly (default: all)")
    parser.add_argument("--compression", action="store_true",
                        help="also the compression-alone rows (no shifts)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="compression rows: best of this many searches")
    parser.add_argument("--quick", action="store_true",
                        help="64 particles, 100 templates, 5 px disc: a smoke test")
    args = parser.parse_args()
    n_templates = None
    if args.quick:
        args.n, args.groups, args.max_shift, args.shift_sigma, n_templates = 64, 2, 5.0, 1.5, 100

    model = phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * BOX * PIXEL, rng=0,
                                            bfactor=BFACTOR)
    volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
    grid = PolarGrid.from_max_frequency(BOX, MAX_FREQUENCY)
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)[:n_templates]
    projector = FourierSliceProjector(volume, dtype=np.float32)
    template_polar = projector.project_polar(template_rotations, grid.radii, grid.n_angles)
    particles = simulate.simulate_particles(volume, args.n, BOX, PIXEL, rng=1,
                                            n_groups=args.groups, shift_sigma=args.shift_sigma,
                                            snr=args.snr, keep_clean=False)
    image_polar = polar_transform(particles.images, grid)
    ctf = particles.ctf_params
    fine = PolarShifts.disc(args.max_shift, args.step)
    args.coarse_step = args.coarse_step or coarse_shift_step(grid)
    coarse_shifts = shift_grid(args.max_shift, args.coarse_step)
    n_b = len(template_rotations)
    print(f"{args.n} particles x {n_b} templates, {BOX} px at {PIXEL} Å, SNR {args.snr:g}, "
          f"{args.groups} defocus groups, R = {grid.n_rings}, Q = {grid.n_angles}; fine disc "
          f"{args.max_shift:g} px every {args.step:g} px ({len(fine)} shifts), coarse lattice "
          f"{args.coarse_step:g} px ({len(coarse_shifts)} shifts), {args.candidates} candidates; "
          f"float32, numba threads {numba.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # Compile outside the timings.
    warm = RadialSVDAligner(grid, template_polar, shifts=coarse_shifts, refine_candidates=0)
    align_translations(warm, template_polar, image_polar[:4], fine, candidates=args.candidates,
                       ctf_params=ctf[:4], pixel_size=PIXEL)

    factorization_time, factorization = best_time(
        lambda: TranslationFactorization.build(grid, args.max_shift), 1, time.perf_counter)
    coarse_build, coarse = best_time(
        lambda: RadialSVDAligner(grid, template_polar, shifts=coarse_shifts, refine_candidates=0),
        1, time.perf_counter)
    ftk_search, ftk = best_time(lambda: align_translations(
        coarse, template_polar, image_polar, fine, factorization, args.candidates, ctf, PIXEL),
        1, time.perf_counter)
    ftk_total = factorization_time + coarse_build + ftk_search

    count = min(args.n, args.explicit_images or args.n)
    explicit_build, explicit_aligner = best_time(
        lambda: RadialSVDAligner(grid, template_polar, shifts=fine.shifts), 1, time.perf_counter)
    explicit_search, explicit = best_time(lambda: explicit_aligner.align(
        image_polar[:count], ctf[:count], PIXEL), 1, time.perf_counter)
    explicit_total = explicit_build + explicit_search * args.n / count

    pairs = args.n * n_b
    coarse_search, _ = best_time(
        lambda: coarse.align(image_polar, ctf, PIXEL, top_k=args.candidates), 1, time.perf_counter)
    print(f"\nFTK: factorisation {factorization.n_terms} terms ({factorization_time:.2f} s); "
          f"coarse aligner {coarse_build:.2f} s; search (coarse + FTK) {ftk_search:.2f} s, of "
          f"which the coarse search alone {coarse_search:.2f} s (timed again separately); "
          f"FTK angle FFTs for {ftk.statistics.evaluated / ftk.statistics.pairs:.2%} of the "
          "(image, candidate, shift) rows")
    print("\n| method | total (s) | pairs x shifts / s | triples / s (all angles) | "
          "speed-up | agreement with explicit |")
    print("|---|---|---|---|---|---|")
    same = agreement(ftk, explicit, grid.n_angles, 1.5 * args.step)
    for name, total, share in (
            (f"explicit shift loop ({len(fine)} rows per image)"
             + (f", extrapolated from {count} particles" if count < args.n else ""),
             explicit_total, 1.0),
            (f"FTK ({len(coarse_shifts)}-shift coarse search + FTK on {args.candidates} "
             "candidates)", ftk_total, same)):
        rate = pairs * len(fine) / total
        print(f"| {name} | {total:.1f} | {rate:.3g} | {rate * grid.n_angles:.3g} | "
              f"{explicit_total / total:.2f}x | {share:.4f} |")
    truth = np.linalg.norm(ftk.shift - particles.shifts, axis=1)
    print(f"\nFTK shift error against the simulated shifts: median {np.median(truth):.2f} px, "
          f"90th percentile {np.percentile(truth, 90):.2f} px")
    if args.compression:
        compression_rows(grid, template_polar, image_polar, ctf, args.repeats)


def compression_rows(grid, template_polar, image_polar, ctf, repeats):
    print("\n| threads | method | search (s) | pairs/s | compression factor | "
          "pruning factor | identical assignments |")
    print("|---|---|---|---|---|---|---|")
    threads = numba.get_num_threads()
    for count in sorted({threads, 1}, reverse=True):
        numba.set_num_threads(count)
        automatic = RadialSVDAligner(grid, template_polar)
        full_pruned = RadialSVDAligner(grid, template_polar, rank=grid.n_rings, pruning="always")
        full_dense = RadialSVDAligner(grid, template_polar, rank=grid.n_rings, pruning="never")
        for aligner in (automatic, full_pruned, full_dense):
            aligner.align(image_polar[:8], ctf[:8], PIXEL)
        times = {}
        for name, aligner in (("automatic H, pruned", automatic),
                              ("full rank, pruned", full_pruned),
                              ("full rank, dense", full_dense)):
            times[name] = best_time(lambda: aligner.align(image_polar, ctf, PIXEL), repeats,
                                    time.perf_counter)
        reference = times["full rank, pruned"]
        pairs = image_polar.shape[0] * automatic.n_templates
        for name, (seconds, result) in times.items():
            compression = (f"{reference[0] / seconds:.2f}x" if name.startswith("automatic")
                           else "-")
            pruning = (f"{times['full rank, dense'][0] / seconds:.2f}x"
                       if name == "full rank, pruned" else "-")
            same = np.mean((result.template == reference[1].template)
                           & (result.angle == reference[1].angle))
            print(f"| {count} | {name} | {seconds:.2f} | {pairs / seconds:.3g} | "
                  f"{compression} | {pruning} | {same:.4f} |")
    numba.set_num_threads(threads)
    time_split(automatic, image_polar, ctf)


def time_split(aligner, image_polar, ctf):
    """Where the automatic-H search spends its time (cProfile, own time per function)."""
    profile = cProfile.Profile()
    profile.runcall(aligner.align, image_polar, ctf, PIXEL)
    stats = pstats.Stats(profile).stats
    total = sum(entry[2] for entry in stats.values())
    rows = sorted(((entry[2], f"{name[2]} ({os.path.basename(name[0])})")
                   for name, entry in stats.items()), reverse=True)[:8]
    print(f"\nautomatic H, time split of one search ({total:.2f} s of own time, cProfile):")
    for seconds, name in rows:
        print(f"  {seconds / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
