"""Micrograph EM: the cost of one iteration (E-step, M-step) and its growth in S, K, patches, L.

One iteration of the paper's size is a minibatch of 14 796 patches (5 % of four 2992²
micrographs), K = 552 rotations, l_max 10, L = 11 (``docs/methods/micrograph_em.md``
§11).  The patches are Gaussian noise plus the projections of a random volume: the cost
does not depend on the content.  Run from the repository root::

    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py paper
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py growth
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py box
    python benchmarks/bench_micrograph_em.py recovery   # C1/C3/C8 at full size, minutes
    python benchmarks/bench_micrograph_em.py picking    # C9 curves over SNR

``paper``: one iteration at full size with its split; ``growth``: per-iteration time
against the number of patches, K and S (the minibatch fraction of a fixed data set);
``box``: L = 11, 15, 21 at a fixed working resolution share (l_max at each L's limit
or 10) for the cost in L.
"""
import os
import sys
import time

import numpy as np

from cryohess_plugin.core.micrograph_em.basis import SphericalBesselBasis
from cryohess_plugin.core.micrograph_em.estep import Model, expectation
from cryohess_plugin.core.micrograph_em.mstep import (solve_volume, update_noise,
                                                      update_shift_prior, volume_system)
from cryohess_plugin.core.micrograph_em.patches import PatchSet
from cryohess_plugin.core.micrograph_em.projection import ProjectionOperator, quaternion_grid


def random_patches(count, box, rng):
    """``count`` noise patches of one micrograph in a :class:`PatchSet`."""
    patches = rng.standard_normal((count, box, box)).astype(np.float32)
    zeros = np.zeros(count, dtype=np.int64)
    return PatchSet(patches, zeros, zeros, zeros, 1.0, 1.0, np.array([[box, box]]))


def one_iteration(box, degree, resolution, count, rng, repeat=1):
    """Seconds of ``(E-step, M-step)`` of one iteration over ``count`` patches, after a
    warm-up (compilation, the cached projection matrices of the stage)."""
    basis = SphericalBesselBasis.create(box, degree)
    operator = ProjectionOperator(basis, quaternion_grid(resolution))
    shifts = (2 * box - 1) ** 2
    model = Model(rng.standard_normal(basis.size), np.full(shifts, 0.5 / shifts), 0.5,
                  np.array([1.0]))
    patch_set = random_patches(count, box, rng)
    warm = expectation(patch_set, np.arange(min(count, 64)), operator, model)
    volume_system(operator, warm.statistics)
    timings = []
    for _ in range(repeat):
        tick = time.perf_counter()
        expected = expectation(patch_set, np.arange(count), operator, model)
        middle = time.perf_counter()
        matrix, vector = volume_system(operator, expected.statistics)
        coefficients, _ = solve_volume(matrix, vector)
        update_shift_prior(expected.statistics)
        update_noise(operator, coefficients, expected.statistics, model.noise_variance)
        timings.append((middle - tick, time.perf_counter() - middle))
    return np.min(np.array(timings), axis=0), operator.count, basis.size


def machine():
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')},"
            f" OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)")


def paper():
    rng = np.random.default_rng(0)
    (estep, mstep), count, size = one_iteration(11, 10, 25, 14796, rng)
    print(f"| paper size: 14 796 patches, K = {count}, l_max 10 (d = {size}), L = 11 "
          f"| {estep:.1f} | {mstep:.1f} | {estep + mstep:.1f} |")
    print(machine())


def growth():
    rng = np.random.default_rng(0)
    print("| varied | value | E-step (s) | M-step (s) | total (s) |")
    print("|---|---|---|---|---|")
    for count in (1000, 2000, 4000):
        (e, m), _, _ = one_iteration(11, 10, 25, count, rng)
        print(f"| patches (K = 552) | {count} | {e:.2f} | {m:.2f} | {e + m:.2f} |")
    for resolution in (15, 20, 25, 32):
        (e, m), k, _ = one_iteration(11, 10, resolution, 1000, rng)
        print(f"| K (1000 patches) | {k} | {e:.2f} | {m:.2f} | {e + m:.2f} |")
    total = 59184  # one 2992² micrograph's patches
    for fraction in (0.01, 0.02, 0.05):
        count = int(fraction * total)
        (e, m), _, _ = one_iteration(11, 10, 25, count, rng)
        print(f"| S (of {total} patches) | {fraction} ({count} patches) | {e:.2f} | {m:.2f} "
              f"| {e + m:.2f} |")
    print(machine())


def box():
    rng = np.random.default_rng(0)
    print("| L | l_max | d | E-step per 1000 patches (s) | M-step (s) |")
    print("|---|---|---|---|---|")
    for size, degree in ((11, 10), (15, 10), (15, 14), (21, 10)):
        (e, m), _, d = one_iteration(size, degree, 25, 1000, rng)
        print(f"| {size} | {degree} | {d} | {e:.2f} | {m:.2f} |")
    print(machine())




def blob_volume(box, rng, count=10, sigma=1.0):
    """A test volume like a small molecule at this sampling: ``count`` Gaussian blobs of
    ``sigma`` px inside the ball of radius ``0.35 box``, so every Fourier shell up to
    Nyquist holds signal (a few smooth blobs would leave the outer shells empty, and an
    FSC there would measure noise)."""
    grid = (np.arange(box) - box // 2).astype(np.float64)
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    volume = np.zeros((box,) * 3)
    for _ in range(count):
        direction = rng.standard_normal(3)
        centre = direction / np.linalg.norm(direction) * 0.35 * box * rng.random() ** (1 / 3)
        weight = rng.uniform(0.5, 1.0)
        volume += weight * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2
                                    + (z - centre[2]) ** 2) / (2 * sigma ** 2))
    return volume


def model_micrographs(basis, truth, count, size, pixel, snr, ctf, rng=1):
    """Micrographs that follow the model exactly (the paper's second method): the
    projections of ``truth`` through the basis at continuous random rotations, pasted
    under the separation rule at target density 0.4, white noise at ``snr`` by Eq. (4)."""
    from cryohess_plugin.core.micrograph_em.projection import ctf_image
    from cryohess_plugin.core.synthetic.simulate import simulate_micrographs
    operator = ProjectionOperator(basis, np.eye(3)[None])

    def project(rotations, params):
        table = None if params is None else ctf_image(params, basis.box, pixel)
        return operator.project_at(truth, rotations, table)

    return simulate_micrographs(None, count, basis.box, pixel, shape=(size, size), rng=rng,
                                area_fraction=0.4, separation=2 * basis.box - 1,
                                projector=project, ctf=ctf, ctf_per_particle=True, snr=snr,
                                snr_definition="energy")


def recovery(which="both"):
    """C1, C3, C8 at L = 11, l_max 10, K = 552, SNR 3.5 by Eq. (4), noise estimated; then
    with a CTF per micrograph (defocus 1-2.5 µm).  ``which``: "plain", "ctf" or "both"."""
    from cryohess_plugin.core.micrograph_em import (EMSettings, align_coefficients, ctf_image,
                                                    cut_patches, pairwise_fsc, run_start)
    box = 11
    basis = SphericalBesselBasis.create(box, 10)
    truth = basis.from_volume(blob_volume(box, np.random.default_rng(3)))
    cases = {"plain": (False, 1, 990, 5.0, 3), "ctf": (True, 4, 495, 10.0, 1)}
    for ctf, count, size, pixel, starts in [cases[name] for name in cases
                                            if which in (name, "both")]:
        tick = time.perf_counter()
        sim = model_micrographs(basis, truth, count, size, pixel, 3.5, ctf)
        patch_set = cut_patches(sim.micrographs, box, pixel)
        ctfs = [ctf_image(p, box, pixel) for p in sim.ctf_params] if ctf else None
        settings = EMSettings(batch_fraction=0.1, held_out=500)
        states = [run_start(patch_set, settings, start, 0, ctfs) for start in range(starts)]
        best = int(np.argmax([s.best_heldout for s in states]))
        aligned = align_coefficients(basis, truth, states[best].coefficients)
        true_empty = 1 - sim.density() * ((2 * box - 1) / box) ** 2
        print(f"CTF per micrograph: {ctf}; {patch_set.count} patches, {starts} starts, "
              f"{time.perf_counter() - tick:.0f} s, iterations per start "
              f"{[len(s.history['stage']) for s in states]}")
        print(f"  FSC of the best start (shells 0-5): {np.round(aligned.fsc, 3).tolist()}")
        print(f"  empty mass {states[best].empty_mass:.4f}, simulator's {true_empty:.4f}; "
              f"noise variance {np.round(states[best].noise_variance, 4).tolist()}, true "
              f"{sim.noise_sigma ** 2:.4f}")
        if starts > 1:
            pairs = pairwise_fsc(basis, [s.coefficients for s in states])
            print(f"  pairwise min FSC over shells 1-4: {np.round(pairs, 3).tolist()}")
    print(machine())


def picking():
    """C9: Algorithm 2 with the true volume over SNR (Eq. (4)): F1 of "empty" against the
    simulator's placement, its always-empty baseline, the F1 against the patches that hold
    signal (clean energy above the noise of one pixel row), and the share of half-visible
    particles whose shift is found within 1 px."""
    from cryohess_plugin.core.micrograph_em import (Model, cut_patches, empty_f1,
                                                    pick_patches, shift_accuracy, true_states)
    box = 11
    basis = SphericalBesselBasis.create(box, 10)
    truth = basis.from_volume(blob_volume(box, np.random.default_rng(3)))
    operator = ProjectionOperator(basis, quaternion_grid(25))
    print("| SNR | F1 empty | always-empty F1 | F1 empty (signal-holding truth) | shift "
          "accuracy ±1 px |")
    print("|---|---|---|---|---|")
    for snr in np.logspace(-2, 2, 9):
        sim = model_micrographs(basis, truth, 1, 495, 5.0, snr, False, rng=7)
        patch_set = cut_patches(sim.micrographs, box, 5.0)
        states = true_states(sim.top_left(0), patch_set.origins(), box)
        empty = np.all(states == box, axis=1)
        clean = cut_patches(sim.clean_micrographs, box, 5.0).patches.astype(np.float64)
        quiet = np.sum(clean ** 2, axis=(1, 2)) < box * sim.noise_sigma ** 2
        shifts = (2 * box - 1) ** 2
        occupied = 1 - empty.mean()
        model = Model(truth, np.full(shifts, occupied / shifts), 1 - occupied,
                      np.array([sim.noise_sigma ** 2]))
        picks = pick_patches(patch_set, operator, model)
        baseline = 2 * empty.mean() / (1 + empty.mean())
        print(f"| {snr:.3g} | {empty_f1(~picks.picked, empty):.3f} | {baseline:.3f} | "
              f"{empty_f1(~picks.picked, empty | quiet):.3f} | "
              f"{shift_accuracy(picks.states(box), states, box):.3f} |")
    print(machine())


if __name__ == "__main__":
    {"paper": paper, "growth": growth, "box": box, "recovery": recovery,
     "picking": picking}[sys.argv[1]](*sys.argv[2:])
