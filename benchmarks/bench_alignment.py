"""Radial-SVD alignment of particles as data come: speed against full rank, accuracy.

Particles (128 px, 1.5 Å/px) are analytic projections of a Gaussian-atom
phantom (6000 atoms, B = 200 Å²) with CTFs of 1000 Å astigmatism in
``--groups`` defocus groups (1-2.5 µm) and sub-pixel shifts (Gaussian,
``--shift-sigma`` px per axis); the references are the projections on the
993 viewing directions of the radial-SVD paper of a map that is not theirs,
the same atoms at B = 500 Å² (K = 48: R = 49 rings, Q = 98 in-plane angles,
12.6 Å).  Noise is stated as the SNR inside the alignment band (the whole-box
SNR of the same noise is printed next to it), white or coloured (power
``1 / (1 + (|k| / 0.1 D)^2)``, more at low frequency, at the same per-pixel
variance).

Speed, on ``--n`` noise-free particles, shifts searched to ``--max-shift`` px
(the protocol's default 3 px, 29 shifts), in the same process:

* radial-SVD at the automatic rank, end to end: aligner construction (ring
  coefficients, kernel) plus ``align`` (each particle's CTF on the grid, CTF
  groups, kernels, eigenvectors, compressed templates, image compression, the
  pruned search, the full-rank re-scoring of the best candidates with each
  particle's CTF);
* the same without re-scoring, and the full-rank path (``H = R``, exact), with
  the same exact pruning as the compressed search (``pruning="always"``) and
  dense (``pruning="never"``);
* the per-particle 2-D CTF on the templates' side: each rotated template
  multiplied by the particle's CTF, ``C_i (R_gamma B)``, then the inner
  product, all rings; the same landscape as multiplying the image by its CTF
  once (the relative difference is printed), measured on ``--template-side``
  particles against all templates at one shift and extrapolated (its cost is
  linear in particles and shifts);
* brute-force real-space search (spline rotation of every template at every
  angle and shift, no CTF), on ``--brute-templates`` templates, extrapolated.

Compression alone, on ``--n`` particles at in-band SNR 0.1 (white noise),
searched at the zero shift only: the automatic rank against full rank with the
same exact pruning and dense, threads equal on both sides (all numba threads and
FFT workers, then one), best of ``--repeats``; the assignments (template and
angle) must be identical.  Then where the automatic rank's time goes (cProfile,
own time per function).

Accuracy, on ``--accuracy-n`` particles per in-band SNR and noise colour,
shifts searched on a 1 px lattice to ``--accuracy-shift`` px (the issue's
+-8 px at 128 px: 197 shifts): the fraction of particles whose rotation is
within one and two grid steps (7.5°) of the truth and whose shift is within
1 px, for the automatic rank and without re-scoring.

``--clock cpu`` times process CPU time instead of wall time: with one thread
everywhere (``NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1``) it is stable on a
machine shared with other jobs.

    python benchmarks/bench_alignment.py [--n 1024] [--snr inf 0.1 0.03] [--quick]
                                         [--clock wall|cpu] [--no-accuracy] [--volumes]
"""
import argparse
import cProfile
import os
import pstats
import time
import tracemalloc

import numba
import numpy as np

from threadpoolctl import threadpool_limits

from cryohess_plugin.core import noise, rotations
from cryohess_plugin.core.fourier import fft_workers, set_fft_workers
from cryohess_plugin.core.alignment.brute_force import rotated_inner_products
from cryohess_plugin.core.alignment.radial_svd import (RadialSVDAligner, alignment_grid,
                                                       rotations_from_alignment, shift_grid)
from cryohess_plugin.core.polar import ctf_on_grid, polar_transform
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.synthetic import atoms, phantoms, simulate

BOX, PIXEL = 128, 1.5
#: B-factors (Å²) of the particles' atoms and of the reference map's.
PARTICLE_BFACTOR, REFERENCE_BFACTOR = 200.0, 500.0
ASTIGMATISM = 1000.0
DEFOCUS_RANGE = (10000.0, 25000.0)
#: Spacing of the 993-direction grid, degrees.
GRID_STEP = np.rad2deg(2 * np.pi / 48)


def coloured_spectrum(frequency):
    """Relative noise power at ``|k|`` cycles per box: more at low frequency."""
    return 1.0 / (1.0 + (frequency / (0.1 * BOX)) ** 2)


def best_time(function, repeats, clock):
    """Smallest time of ``repeats`` calls, and the last result."""
    best, result = np.inf, None
    for _ in range(repeats):
        start = clock()
        result = function()
        best = min(best, clock() - start)
    return best, result


def template_side_landscapes(grid, image_polar, ctf, template_polar):
    """``X[i, b, j] = <A_i, C_i R_{gamma_j} B_b>`` by multiplying every rotated template by
    the particle's CTF ``ctf[i]`` ``(R, Q)``, all rings (the per-particle 2-D CTF)."""
    weights = 2 * np.pi * grid.weights / (grid.box ** 2 * grid.n_angles)
    out = np.empty((len(image_polar), len(template_polar), grid.n_angles))
    for i, (image, values) in enumerate(zip(image_polar, ctf)):
        weighted = (np.conj(image) * weights[:, None]).astype(np.complex64)
        for j in range(grid.n_angles):
            rotated = np.roll(template_polar, j, axis=-1) * values.astype(np.float32)
            out[i, :, j] = np.einsum("rq,brq->b", weighted, rotated).real
    return out


def accuracy(result, template_rotations, particles):
    """Fractions within one and two grid steps of the true rotation, and within 1 px of
    the true shift."""
    found = rotations_from_alignment(template_rotations, result.template, result.angle)
    error = rotations.angular_distance(found, particles.rotations)
    shift_error = np.linalg.norm(result.shift - particles.shifts, axis=1)
    return np.mean(error <= GRID_STEP), np.mean(error <= 2 * GRID_STEP), np.mean(shift_error <= 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="particles of the timings")
    parser.add_argument("--groups", type=int, default=10, help="defocus groups (micrographs)")
    parser.add_argument("--max-shift", type=float, default=3.0,
                        help="shifts searched in the timings, pixels (1 px lattice)")
    parser.add_argument("--shift-sigma", type=float, default=2.5,
                        help="standard deviation of the simulated shifts per axis, pixels")
    parser.add_argument("--snr", type=float, nargs="+", default=[np.inf, 0.1, 0.03],
                        help="in-band SNRs of the accuracy table (inf: no noise)")
    parser.add_argument("--accuracy-n", type=int, default=512,
                        help="particles per row of the accuracy table")
    parser.add_argument("--accuracy-shift", type=float, default=8.0,
                        help="shifts searched in the accuracy table, pixels (1 px lattice)")
    parser.add_argument("--template-side", type=int, default=2,
                        help="particles the template-side CTF runs on before extrapolation")
    parser.add_argument("--brute-templates", type=int, default=1,
                        help="templates the brute-force search runs on before extrapolation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--quick", action="store_true",
                        help="256 particles, 4 groups, SNR inf and 0.1, 64 for accuracy, "
                             "one repeat")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="speed and compression tables only")
    parser.add_argument("--volumes", action="store_true",
                        help="also run the volume benchmark (bench_volume_alignment.py) "
                             "with its defaults")
    args = parser.parse_args()
    if args.quick:
        args.n, args.groups, args.snr, args.repeats = 256, 4, [np.inf, 0.1], 1
        args.accuracy_n, args.template_side = 64, 1
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    model = phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * BOX * PIXEL, rng=0,
                                            bfactor=PARTICLE_BFACTOR)
    reference = atoms.gaussian_atom_volume(
        phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * BOX * PIXEL, rng=0,
                                        bfactor=REFERENCE_BFACTOR), BOX, PIXEL)
    grid = alignment_grid(BOX)
    template_rotations = rotations.rotations_for_directions(rotations.viewing_grid_993()[0])
    template_polar = FourierSliceProjector(reference, dtype=np.float32).project_polar(
        template_rotations, grid.radii, grid.n_angles)

    def particles(count, snr, spectrum=None):
        return simulate.simulate_particles(
            model, count, BOX, PIXEL, rng=1, n_groups=args.groups, astigmatism=ASTIGMATISM,
            defocus_range=DEFOCUS_RANGE, shift_sigma=args.shift_sigma,
            snr=None if np.isinf(snr) else snr, snr_band=grid.max_frequency,
            noise_spectrum=spectrum, keep_clean=not np.isinf(snr))

    shifts = shift_grid(args.max_shift, 1.0)
    timed = particles(args.n, np.inf)
    image_polar = polar_transform(timed.images, grid)
    n_pairs = args.n * len(shifts) * len(template_rotations)

    def aligner(shift_list=shifts, **options):
        return RadialSVDAligner(grid, template_polar, shifts=shift_list,
                                block_size=args.block_size, **options)

    print(f"{args.n} particles x {len(template_rotations)} templates x {len(shifts)} shifts, "
          f"{BOX} px at {PIXEL} Å, {args.groups} defocus groups, astigmatism {ASTIGMATISM:g} Å, "
          f"R = {grid.n_rings} rings, Q = {grid.n_angles} angles ({BOX * PIXEL / grid.max_frequency:.1f} Å); "
          f"numba threads {numba.get_num_threads()}, {args.clock} clock, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    aligner().align(image_polar[:8], timed.ctf_params[:8], PIXEL)  # compile outside the timings
    timings = {}
    for name, options in (("radial-SVD, automatic H", {}),
                          ("radial-SVD, no re-scoring", dict(refine_candidates=0)),
                          ("full rank (H = R), pruned", dict(rank=grid.n_rings, pruning="always")),
                          ("full rank (H = R)", dict(rank=grid.n_rings, pruning="never"))):
        construct, built = best_time(lambda: aligner(**options), args.repeats, clock)
        search, result = best_time(
            lambda: built.align(image_polar, timed.ctf_params, PIXEL), args.repeats, clock)
        timings[name] = (construct, search, result)

    subset = slice(0, args.template_side)
    ctf = ctf_on_grid(timed.ctf_params[subset], grid, PIXEL)
    side_time, side = best_time(lambda: template_side_landscapes(
        grid, image_polar[subset], ctf, template_polar), 1, clock)
    side_total = side_time * args.n * len(shifts) / args.template_side
    ours = aligner(rank=grid.n_rings, dtype=np.float64).landscapes(
        image_polar[subset], ctf_params=timed.ctf_params[subset], pixel_size=PIXEL)
    side_difference = np.abs(side - ours).max() / np.abs(ours).max()

    brute_images = FourierSliceProjector(reference, dtype=np.float32).project(
        template_rotations[:args.brute_templates])
    brute_time, _ = best_time(lambda: rotated_inner_products(
        timed.images.astype(np.float64), brute_images, grid.angles, shifts=shifts), 1, clock)
    brute_total = brute_time * len(template_rotations) / args.brute_templates

    full_construct, full_search, full = timings["full rank (H = R)"]
    full_time = full_construct + full_search
    pruned_time = sum(timings["full rank (H = R), pruned"][:2])
    print("\n| method | construction (s) | search (s) | total (s) | (particle, shift, template) "
          "triples/s, all angles | speed-up vs full rank | vs full rank, pruned | same template, "
          "angle and shift as full rank |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (construct, search, result) in timings.items():
        total = construct + search
        same = np.mean((result.template == full.template) & (result.angle == full.angle)
                       & np.all(result.shift == full.shift, axis=1))
        print(f"| {name} | {construct:.3f} | {search:.3f} | {total:.3f} | {n_pairs / search:.3g} | "
              f"{full_time / total:.2f}x | {pruned_time / total:.2f}x | {same:.4f} |")
    print(f"| per-particle 2-D CTF on the rotated templates, all rings (extrapolated from "
          f"{args.template_side} particles x 1 shift) | - | - | {side_total:.0f} | "
          f"{n_pairs / side_total:.3g} | {full_time / side_total:.4f}x | - | - |")
    print(f"| brute force, real space, no CTF (extrapolated from {args.brute_templates} of "
          f"{len(template_rotations)} templates) | - | - | {brute_total:.0f} | "
          f"{n_pairs / brute_total:.3g} | {full_time / brute_total:.4f}x | - | - |")
    print(f"\ntemplate-side and image-side CTF landscapes differ by {side_difference:.1e} "
          "(relative, max)")
    ranks = timings["radial-SVD, automatic H"][2].ranks
    print(f"automatic H per CTF group: {', '.join(str(h) for h in ranks)} (R = {grid.n_rings})")
    tracemalloc.start()
    statistics = aligner().align(image_polar, timed.ctf_params, PIXEL).statistics
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"pruned search (H <= R / 2, CPU): angle DFT evaluated for "
          f"{statistics.evaluated / statistics.pairs:.2%} of the (particle, shift, template) "
          f"triples; peak memory of one run (tracemalloc) {peak / 2 ** 20:.0f} MiB, input polar "
          f"samples {image_polar.nbytes / 2 ** 20:.0f} MiB")

    noisy = particles(args.n, 0.1)
    compression_rows(grid, template_polar, polar_transform(noisy.images, grid),
                     noisy.ctf_params, args.repeats, clock, args.block_size)

    if not args.no_accuracy:
        accuracy_table(args, aligner, particles, grid, template_rotations)
    if args.volumes:
        run_volume_benchmark()


def accuracy_table(args, aligner, particles, grid, template_rotations):
    """Rotation and shift accuracy per in-band SNR and noise colour."""
    searched = shift_grid(args.accuracy_shift, 1.0)
    accurate = aligner(searched)
    print(f"\naccuracy: {args.accuracy_n} particles per row, {len(searched)} shifts searched "
          f"(+-{args.accuracy_shift:g} px, 1 px lattice), true shifts N(0, {args.shift_sigma:g} "
          f"px) per axis")
    print("\n| SNR in band | SNR whole box | noise | method | within 7.5° | within 15° | "
          "shift within 1 px |")
    print("|---|---|---|---|---|---|---|")
    for snr in args.snr:
        for colour, spectrum in (("white", None), ("coloured", coloured_spectrum)):
            if np.isinf(snr) and spectrum is not None:
                continue
            data = particles(args.accuracy_n, snr, spectrum)
            whole = (np.inf if np.isinf(snr) else
                     noise.snr_in_band(data.clean_images, data.noise_sigma, None, spectrum))
            data_polar = polar_transform(data.images, grid)
            for name, options in (("automatic H", {}), ("no re-scoring",
                                                        dict(refine_candidates=0))):
                built = aligner(searched, **options) if options else accurate
                within_one, within_two, shifted = accuracy(
                    built.align(data_polar, data.ctf_params, PIXEL), template_rotations, data)
                print(f"| {snr:g} | {whole:.3g} | {colour} | {name} | {within_one:.3f} | "
                      f"{within_two:.3f} | {shifted:.3f} |")


def compression_rows(grid, template_polar, image_polar, ctf, repeats, clock, block_size):
    """Compression alone: automatic H against full rank, pruned and dense, threads equal."""
    print(f"\ncompression alone: {len(image_polar)} particles at in-band SNR 0.1 x "
          f"{len(template_polar)} templates, zero shift")
    print("\n| threads | method | search (s) | pairs/s | compression factor (vs full rank, "
          "pruned) | vs full rank, dense | angle DFTs evaluated | identical assignments |")
    print("|---|---|---|---|---|---|---|---|")
    threads, workers = numba.get_num_threads(), fft_workers()
    pairs = len(image_polar) * len(template_polar)
    for count in sorted({threads, 1}, reverse=True):
        numba.set_num_threads(count)
        set_fft_workers(count)
        with threadpool_limits(count):
            aligners = {name: RadialSVDAligner(grid, template_polar, block_size=block_size,
                                               **options)
                        for name, options in (
                            ("automatic H", {}),
                            ("full rank, pruned", dict(rank=grid.n_rings, pruning="always")),
                            ("full rank, dense", dict(rank=grid.n_rings, pruning="never")))}
            for built in aligners.values():  # compile outside the timings
                built.align(image_polar[:8], ctf[:8], PIXEL)
            times = {name: best_time(lambda: built.align(image_polar, ctf, PIXEL), repeats, clock)
                     for name, built in aligners.items()}
            if count == 1:
                profile = cProfile.Profile()
                profile.runcall(aligners["automatic H"].align, image_polar, ctf, PIXEL)
        pruned, dense = times["full rank, pruned"], times["full rank, dense"]
        for name, (seconds, result) in times.items():
            same = np.mean((result.template == dense[1].template)
                           & (result.angle == dense[1].angle))
            share = result.statistics.evaluated / result.statistics.pairs
            print(f"| {count} | {name} | {seconds:.3f} | {pairs / seconds:.3g} | "
                  f"{pruned[0] / seconds:.2f}x | {dense[0] / seconds:.2f}x | {share:.1%} | "
                  f"{same:.4f} |")
    numba.set_num_threads(threads)
    set_fft_workers(workers)
    stats = pstats.Stats(profile).stats
    total = sum(entry[2] for entry in stats.values())
    print(f"\nautomatic H on one thread, where the time goes ({total:.2f} s of own time, "
          "cProfile):")
    for seconds, name in sorted(((entry[2], f"{name[2]} ({os.path.basename(name[0])})")
                                 for name, entry in stats.items()), reverse=True)[:8]:
        print(f"  {seconds / total:6.1%}  {name}")


def run_volume_benchmark():
    """The volume alignment table: compressed against full-rank SO(3) search."""
    import bench_volume_alignment
    volume_args = bench_volume_alignment.add_arguments(argparse.ArgumentParser()).parse_args([])
    print()
    bench_volume_alignment.run(volume_args)


if __name__ == "__main__":
    main()
