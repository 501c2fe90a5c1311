"""Radial-SVD alignment of simulated particles: speed against full rank and brute force, accuracy.

Particles (128 px, CTF in several defocus groups, uniform views) are simulated
from a Gaussian-atom phantom with :func:`cryohess_plugin.core.synthetic.simulate.simulate_particles`
and aligned against projections of the same map on the 993 viewing directions
of the radial-SVD paper (K = 48: R = 49 rings, Q = 98 in-plane angles).  In the
same process and on the same data:

* radial-SVD at the automatic rank, end to end: aligner construction (ring
  coefficients, kernel, eigen-decomposition, template compression per CTF
  group) plus the search (image compression, landscapes, reduction, full-rank
  refinement of the best candidates);
* the full-rank path (``H = R``, same code, exact);
* brute-force real-space search (:mod:`cryohess_plugin.core.alignment.brute_force`:
  spline rotation of every template at every angle, then inner products),
  run on all images against a few templates and extrapolated linearly to all
  templates (its cost is exactly linear in the number of templates).

Timings are the best of ``--repeats`` runs; the machine is shared with other
jobs, so the load average is printed.  Accuracy: agreement with full rank
(same template, in-plane angle within one step) and the fraction of particles
whose assigned rotation is within one grid step (7.5°) of the truth, per SNR.

With ``--volumes`` the volume alignment table of ``bench_volume_alignment.py``
(compressed against full-rank SO(3) search) follows.

    python benchmarks/bench_alignment.py [--n 1024] [--groups 10] [--snr inf 0.1 0.03] [--quick]
                                         [--volumes]
"""
import argparse
import os
import time
import tracemalloc

import numba
import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core import rotations
from cryohess_plugin.core.polar import PolarGrid, polar_transform
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.alignment.radial_svd import (RadialSVDAligner, rotations_from_alignment,
                                                       shift_grid)
from cryohess_plugin.core.alignment.brute_force import rotated_inner_products

BOX, PIXEL, BFACTOR = 128, 1.5, 400.0
#: The paper's band: K = 48 radians per half box.
MAX_FREQUENCY = 48 / np.pi
#: Spacing of the 993-direction grid, degrees.
GRID_STEP = np.rad2deg(2 * np.pi / 48)


def best_time(function, repeats):
    """Smallest wall time of ``repeats`` calls, and the last result."""
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def pose_agreement(first, second, n_angles):
    step = np.abs(np.round((first.angle - second.angle) * n_angles / (2 * np.pi))) % n_angles
    return float(np.mean((first.template == second.template)
                         & (np.minimum(step, n_angles - step) <= 1)))


def orientation_accuracy(result, template_rotations, truth):
    found = rotations_from_alignment(template_rotations, result.template, result.angle)
    return float(np.mean(rotations.angular_distance(found, truth) <= GRID_STEP))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="number of particles")
    parser.add_argument("--groups", type=int, default=10, help="defocus groups (micrographs)")
    parser.add_argument("--snr", type=float, nargs="+", default=[np.inf, 0.1, 0.03],
                        help="SNRs to measure accuracy at (inf: no noise); timings use the first")
    parser.add_argument("--max-shift", type=float, default=0.0,
                        help="search shifts up to this many pixels (0: no shift search)")
    parser.add_argument("--shift-step", type=float, default=1.0)
    parser.add_argument("--shift-sigma", type=float, default=0.0,
                        help="standard deviation of the simulated shifts, pixels")
    parser.add_argument("--brute-templates", type=int, default=2,
                        help="templates the brute-force search runs on before extrapolation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true",
                        help="256 particles, 4 groups, SNR inf only, one repeat")
    parser.add_argument("--volumes", action="store_true",
                        help="also run the volume benchmark (bench_volume_alignment.py) "
                             "with its defaults")
    args = parser.parse_args()
    if args.quick:
        args.n, args.groups, args.snr, args.repeats, args.brute_templates = 256, 4, [np.inf], 1, 1

    model = phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * BOX * PIXEL, rng=0,
                                            bfactor=BFACTOR)
    volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
    grid = PolarGrid.from_max_frequency(BOX, MAX_FREQUENCY)
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)
    projector = FourierSliceProjector(volume, dtype=np.float32)
    template_polar = projector.project_polar(template_rotations, grid.radii, grid.n_angles)
    shifts = shift_grid(args.max_shift, args.shift_step)
    n_pairs = args.n * len(template_rotations)

    datasets = []
    for snr in args.snr:
        particles = simulate.simulate_particles(
            volume, args.n, BOX, PIXEL, rng=1, n_groups=args.groups,
            shift_sigma=args.shift_sigma, snr=None if np.isinf(snr) else snr, keep_clean=False)
        datasets.append((snr, particles, polar_transform(particles.images, grid)))

    def aligner(**options):
        return RadialSVDAligner(grid, template_polar, shifts=shifts,
                                block_size=args.block_size, **options)

    def end_to_end(particles, image_polar, **options):
        return aligner(**options).align(image_polar, particles.ctf_params, PIXEL)

    def warm_up(particles, image_polar):
        """Compile the kernels outside the timings."""
        aligner().align(image_polar[:8], particles.ctf_params[:8], PIXEL)

    print(f"{args.n} particles x {len(template_rotations)} templates, {BOX} px at {PIXEL} Å, "
          f"{args.groups} defocus groups, R = {grid.n_rings} rings, Q = {grid.n_angles} angles, "
          f"{len(shifts)} shift(s); numba threads {numba.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    _, particles, image_polar = datasets[0]
    warm_up(particles, image_polar)
    timings = {}
    for name, options in (("radial-SVD, automatic H", {}),
                          ("radial-SVD, no refinement", dict(refine_candidates=0)),
                          ("full rank (H = R)", dict(rank=grid.n_rings))):
        construct, built = best_time(lambda: aligner(**options), args.repeats)
        search, result = best_time(
            lambda: built.align(image_polar, particles.ctf_params, PIXEL), args.repeats)
        timings[name] = (construct, search, result)

    brute_images = projector.project(template_rotations[:args.brute_templates])
    particle_images = particles.images.astype(np.float64)
    brute_time, _ = best_time(lambda: rotated_inner_products(
        particle_images, brute_images, grid.angles, shifts=shifts), 1)
    brute_total = brute_time * len(template_rotations) / args.brute_templates

    full_time = sum(timings["full rank (H = R)"][:2])
    print("\n| method | construction (s) | search (s) | total (s) | image-template pairs/s "
          "(search, all angles and shifts) | speed-up vs full rank | speed-up vs brute force |")
    print("|---|---|---|---|---|---|---|")
    for name, (construct, search, _) in timings.items():
        total = construct + search
        print(f"| {name} | {construct:.3f} | {search:.3f} | {total:.3f} | "
              f"{n_pairs / search:.3g} | {full_time / total:.2f}x | {brute_total / total:.0f}x |")
    print(f"| brute force, real space (extrapolated from {args.brute_templates} of "
          f"{len(template_rotations)} templates) | - | - | {brute_total:.1f} | "
          f"{n_pairs / brute_total:.3g} | {full_time / brute_total:.3f}x | 1x |")

    ranks = timings["radial-SVD, automatic H"][2].ranks
    print(f"\nautomatic H per CTF group: {', '.join(str(h) for h in ranks)} (R = {grid.n_rings})")
    # Real multiply-adds per (image row, template) pair: step 1 (4 per principal
    # ring and frequency q = 1 .. M - 1, plus R for q = 0) and the angle DFT
    # (M // 2 + 1 table rows times 2M - 1 columns), which does not shrink with H.
    half = grid.n_angles // 2
    dft = (half // 2 + 1) * (2 * half - 1)

    def step_one(rank):
        return 4 * rank * (half - 1) + grid.n_rings

    typical = int(np.median(ranks))
    print(f"multiply-adds per pair: step 1 {step_one(typical)} at H = {typical}, "
          f"{step_one(grid.n_rings)} at H = R; angle DFT {dft} for both; op-count bound on "
          f"the speed-up {(step_one(grid.n_rings) + dft) / (step_one(typical) + dft):.1f}x")

    tracemalloc.start()
    statistics = end_to_end(particles, image_polar).statistics
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if statistics.evaluated < statistics.pairs:
        print(f"pruned search (H <= R / 2, CPU): angle DFT evaluated for "
              f"{statistics.evaluated / statistics.pairs:.2%} of the (image, shift, template) "
              f"pairs; the others were skipped on their bound")
    print(f"peak memory of one radial-SVD run (tracemalloc, arrays included): {peak / 2 ** 20:.0f} "
          f"MiB; input polar samples {image_polar.nbytes / 2 ** 20:.0f} MiB")

    print("\n| SNR | method | agreement with full rank | orientation within "
          f"{GRID_STEP:.1f}° of truth |")
    print("|---|---|---|---|")
    for snr, particles, image_polar in datasets:
        full = end_to_end(particles, image_polar, rank=grid.n_rings)
        for name, options in (("radial-SVD, automatic H", {}),
                              ("radial-SVD, no refinement", dict(refine_candidates=0)),
                              ("paper form (q = 0 compressed, no refinement)",
                               dict(refine_candidates=0, exact_zero_frequency=False)),
                              ("full rank (H = R)", None)):
            result = full if options is None else end_to_end(particles, image_polar, **options)
            print(f"| {snr:g} | {name} | {pose_agreement(result, full, grid.n_angles):.4f} | "
                  f"{orientation_accuracy(result, template_rotations, particles.rotations):.4f} |")
    if args.volumes:
        run_volume_benchmark()


def run_volume_benchmark():
    """The volume alignment table: compressed against full-rank SO(3) search."""
    import bench_volume_alignment
    volume_args = bench_volume_alignment.add_arguments(argparse.ArgumentParser()).parse_args([])
    print()
    bench_volume_alignment.run(volume_args)


if __name__ == "__main__":
    main()
