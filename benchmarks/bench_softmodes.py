"""Soft modes at 2πK = 32: the accumulated form against the per-image 2-D form.

A Gaussian-atom phantom (box 64, 2 Å/px) is analysed at the resolution that
gives ``L = 2πK = 32`` for particles with uniform random poses and 10 defocus
groups (:func:`cryohess_plugin.core.synthetic.simulate.random_ctf_params`).  In the same
process:

* :func:`analyse_soft_modes` end to end (shells, binning, operator set-up,
  fixed-length Lanczos, mode volumes) for 16 modes, per particle count;
* one Hessian-vector product of the accumulated form
  (:class:`AccumulatedHessian`) per particle count: its cost follows the
  occupied grid directions, not the particles;
* one product of the per-image form (:meth:`SoftModeProblem.hessian_vector`,
  implicit poses) on a subset of the particles, scaled linearly to the full
  count (its cost and its harmonics cache are exactly linear in the images;
  the scaling is printed as such);
* peak memory: tracemalloc's peak of traced (numpy) allocations per stage and
  the process's maximum resident set size.

    python benchmarks/bench_softmodes.py [--particles 1000 10000] [--modes 16]
                                         [--iterations 64] [--subset 40] [--quick]
"""
import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core.softmodes import RealLayout, per_image
from cryohess_plugin.core import spherical
from cryohess_plugin.core.softmodes.analysis import analyse_soft_modes, auto_grid_spacing
from cryohess_plugin.core.softmodes.experiment import experiment_from_poses, rebin
from cryohess_plugin.core.softmodes.hessian import AccumulatedHessian

BOX, PIXEL = 64, 2.0


def measured(function):
    """``(seconds, traced peak MiB, result)`` of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return seconds, peak, result


def best_time(function, repeats=3):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=32, help="2πK = L")
    parser.add_argument("--particles", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--modes", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=64)
    parser.add_argument("--subset", type=int, default=40,
                        help="particles of the per-image product (scaled linearly)")
    parser.add_argument("--quick", action="store_true",
                        help="2πK = 16, 200 and 2000 particles, 4 modes, 16 iterations")
    args = parser.parse_args()
    if args.quick:
        args.degree, args.particles, args.modes, args.iterations, args.subset = (
            16, [200, 2000], 4, 16, 20)
    resolution = BOX * PIXEL * np.pi / args.degree
    model = phantoms.random_protein_phantom(3000, 50.0, rng=1)
    volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
    shells = spherical.ShellGrid.for_resolution(BOX, PIXEL, resolution)
    print(f"box {BOX}, {PIXEL} Å/px, resolution {resolution:.2f} Å: 2πK = L = "
          f"{shells.max_degree}, {shells.n_shells} shells; {args.modes} modes, "
          f"{args.iterations} Lanczos steps; grid {auto_grid_spacing(shells.max_degree):.2f}°; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    coefficients = spherical.SphericalTransform(shells, np.float64, "cpu").coefficients(volume)
    layout = RealLayout(shells)
    vector = np.random.default_rng(0).standard_normal(layout.n_parameters)
    product_times = {}
    for count in args.particles:
        poses = simulate.sample_rotations("uniform", count, count)
        groups = simulate.random_ctf_params(10, count)
        ctf = [groups[i * 10 // count] for i in range(count)]
        experiment = experiment_from_poses(poses, ctf, pixel_size=PIXEL)
        seconds, peak, result = measured(lambda: analyse_soft_modes(
            volume, PIXEL, experiment, resolution, n_modes=args.modes,
            iterations=args.iterations, backend="cpu"))
        binned, _ = rebin(experiment, auto_grid_spacing(shells.max_degree))
        operator = AccumulatedHessian(shells, layout.to_real_vector(coefficients), layout,
                                      binned, PIXEL)
        product = best_time(lambda: operator.matvec(vector))
        product_times[count] = product
        print(f"J = {count:6d}: {binned.directions.shape[0]:5d} occupied directions, "
              f"{args.modes} soft modes in {seconds:7.1f} s (traced peak {peak:7.0f} MiB), "
              f"Hessian-vector product {product * 1e3:8.1f} ms, "
              f"λ_min {result.eigenvalues[0]:.4g}, {int(result.converged.sum())} converged")

    subset = args.subset
    poses = simulate.sample_rotations("uniform", subset, 7)
    n_angles = 2 * shells.max_degree + 2
    empty = np.zeros((subset, shells.n_shells, n_angles), dtype=np.complex128)

    def per_image_problem():
        problem = per_image.SoftModeProblem(shells, empty, poses)
        templates = problem.templates(coefficients)
        problem = per_image.SoftModeProblem(shells, templates, poses)
        problem.hessian_vector(coefficients, vector)  # caches the expansion point
        return problem

    setup, peak, problem = measured(per_image_problem)
    per_image_seconds = best_time(lambda: problem.hessian_vector(coefficients, vector)) / subset
    print(f"per-image 2-D form: {per_image_seconds * 1e3:.2f} ms per image per product "
          f"(measured on {subset} images, scaled linearly; set-up {setup:.1f} s, "
          f"traced peak {peak:.0f} MiB for {subset} images)")
    for count, product in product_times.items():
        print(f"J = {count:6d}: per-image product ≈ {per_image_seconds * count:8.2f} s (scaled), "
              f"accumulated {product:.3f} s, ratio {per_image_seconds * count / product:7.1f}x; "
              f"per-image harmonics cache ≈ {peak * count / subset / 1024:.1f} GiB (scaled)")
    largest = max(product_times)
    smallest = min(product_times)
    print(f"accumulated product time J = {largest} / J = {smallest}: "
          f"{product_times[largest] / product_times[smallest]:.2f}")
    resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max resident set size {resident:.0f} MiB")


if __name__ == "__main__":
    main()
