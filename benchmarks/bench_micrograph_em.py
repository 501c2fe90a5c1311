"""Micrograph EM: the cost of one iteration (E-step, M-step) and its growth in S, K, patches, L.

One iteration of the paper's size is a minibatch of 14 796 patches (5 % of four 2992²
micrographs), K = 552 rotations, l_max 10, L = 11 (``docs/methods/micrograph_em.md``
§11).  The patches are Gaussian noise plus the projections of a random volume: the cost
does not depend on the content.  Run from the repository root::

    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py paper
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py growth
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python benchmarks/bench_micrograph_em.py box
    python benchmarks/bench_micrograph_em.py recovery both 4 STATES  # C1/C3/C8 at L = 11
    python benchmarks/bench_micrograph_em.py recovery_report STATES  # the saved starts
    python benchmarks/bench_micrograph_em.py recovery_from_truth 0.15 5  # diagnosis
    python benchmarks/bench_micrograph_em.py picking    # C9 curves over SNR

Add ``--short`` to any of them for a smoke run of a few seconds to a minute (small sizes,
few iterations; its numbers are not results).

``paper``: one iteration at full size with its split; ``growth``: per-iteration time
against the number of patches, K and S (the minibatch fraction of a fixed data set; an
argument ``patches``, ``K`` or ``S`` runs those rows alone);
``box``: L = 11, 15, 21 at a fixed working resolution share (l_max at each L's limit
or 10) for the cost in L.
"""
import os
import sys
import time

import numpy as np

from cryohess_plugin.core.micrograph_em import run_start
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
    """Wall seconds of ``(E-step, M-step)`` of one iteration over ``count`` patches, after
    a warm-up (compilation, the cached projection matrices of the stage), and the process's
    CPU seconds of both (all threads: on a shared machine the wall time is inflated by
    other jobs, the CPU time much less)."""
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
        tick, cpu = time.perf_counter(), time.process_time()
        expected = expectation(patch_set, np.arange(count), operator, model)
        middle, cpu_middle = time.perf_counter(), time.process_time()
        matrix, vector = volume_system(operator, expected.statistics)
        coefficients, _ = solve_volume(matrix, vector)
        update_shift_prior(expected.statistics)
        update_noise(operator, coefficients, expected.statistics, model.noise_variance)
        timings.append((middle - tick, time.perf_counter() - middle,
                        cpu_middle - cpu, time.process_time() - cpu_middle))
    return np.min(np.array(timings), axis=0), operator.count, basis.size


def machine():
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')},"
            f" OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)")


def paper(short=False):
    rng = np.random.default_rng(0)
    patches = 500 if short else 14796
    (estep, mstep, estep_cpu, mstep_cpu), count, size = one_iteration(11, 10, 25, patches, rng)
    print("| size | E-step wall (s) | M-step wall (s) | total wall (s) | E-step CPU (s) | "
          "M-step CPU (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| {patches} patches, K = {count}, l_max 10 (d = {size}), L = 11 "
          f"| {estep:.1f} | {mstep:.1f} | {estep + mstep:.1f} | {estep_cpu:.1f} "
          f"| {mstep_cpu:.1f} |")
    print(machine())


def growth(which="all", short=False):
    """``which``: "patches", "K", "S" or "all" of the rows."""
    rng = np.random.default_rng(0)
    scale = 0.1 if short else 1.0
    print("| varied | value | E-step wall (s) | M-step wall (s) | E-step CPU (s) | "
          "M-step CPU (s) |")
    print("|---|---|---|---|---|---|")

    def row(varied, value, timings):
        e, m, e_cpu, m_cpu = timings
        print(f"| {varied} | {value} | {e:.2f} | {m:.2f} | {e_cpu:.2f} | {m_cpu:.2f} |")

    small = int(1000 * scale)
    for count in (1000, 2000, 4000, 8000, 14796) if which in ("all", "patches") else ():
        timings, _, _ = one_iteration(11, 10, 25, int(count * scale), rng)
        row("patches (K = 552)", int(count * scale), timings)
    resolutions = (15, 20, 25) if short else (15, 20, 25, 32, 50)
    for resolution in resolutions if which in ("all", "K") else ():
        timings, k, _ = one_iteration(11, 10, resolution, small, rng)
        row(f"K ({small} patches)", k, timings)
    total = 59184  # one 2992² micrograph's patches
    for fraction in (0.01, 0.02, 0.05, 0.1) if which in ("all", "S") else ():
        count = int(fraction * total * scale)
        timings, _, _ = one_iteration(11, 10, 25, count, rng)
        row(f"S (of {int(total * scale)} patches)", f"{fraction} ({count} patches)", timings)
    print(machine())


def box(short=False):
    rng = np.random.default_rng(0)
    count = 100 if short else 1000
    print(f"| L | l_max | d | E-step per {count} patches, wall (s) | M-step wall (s) | "
          "E-step CPU (s) | M-step CPU (s) |")
    print("|---|---|---|---|---|---|---|")
    for size, degree in ((11, 10), (15, 10), (15, 14), (21, 10)):
        (e, m, e_cpu, m_cpu), _, d = one_iteration(size, degree, 25, count, rng)
        print(f"| {size} | {degree} | {d} | {e:.2f} | {m:.2f} | {e_cpu:.2f} | {m_cpu:.2f} |")
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


def _run_start(label, patch_set, settings, start, ctfs, states_dir=None):
    """One start in a worker process, its iterations reported on stderr as they end (and
    its state saved in ``states_dir``, when given, to read a run stopped early)."""

    def checkpoint(state):
        if states_dir:
            state.save(os.path.join(states_dir, f"{label}_start{start + 1}.npz"))
        history = state.history
        print(f"  [{label} start {start + 1}] iteration {state.iteration}, degree "
              f"{history['degree'][-1]:.0f}, held-out {history['heldout_loglik'][-1]:.4f}, "
              f"empty mass {state.empty_mass:.3f}", file=sys.stderr, flush=True)

    return run_start(patch_set, settings, start, 0, ctfs, checkpoint=checkpoint)


def _recovery_problem(short=False):
    """``(basis, truth, cases, settings)`` of :func:`recovery`: ``cases`` maps a name to
    ``(CTF per micrograph, micrographs, side, Å/px, starts)``, 3600 patches in either."""
    from cryohess_plugin.core.micrograph_em import EMSettings
    box = 11
    basis = SphericalBesselBasis.create(box, 10)
    truth = basis.from_volume(blob_volume(box, np.random.default_rng(3)))
    cases = {"plain": (False, 1, 660, 5.0, 3), "ctf": (True, 4, 330, 10.0, 1)}
    # The paper's schedule 6 → 8 → 10 with fewer iterations per stage than its 20 / 10 / 10
    # (held-out stopping usually ends a stage earlier anyway).  Minibatches grow with the
    # degree, to the whole training set in the last stage: from the truth, 15 % minibatches
    # (540 patches, about 70 particles' worth) leave the l_max 10 M-step so noisy that the
    # FSC at shells 4-5 falls to 0.6 / 0.4, while full batches keep it above 0.87 / 0.64.
    settings = EMSettings(iterations=(8, 5, 4), batch_fraction=(0.3, 0.5, 1.0),
                          held_out=150)
    if short:
        cases = {"plain": (False, 1, 198, 5.0, 2), "ctf": (True, 2, 198, 10.0, 1)}
        settings = EMSettings(iterations=(2, 1, 1), batch_fraction=(0.2, 0.2, 1.0),
                              held_out=50)
    return basis, truth, cases, settings


def _recovery_data(basis, truth, case):
    """``(simulation, patch set, CTF images or None)`` of one case of :func:`recovery`."""
    from cryohess_plugin.core.micrograph_em import ctf_image, cut_patches
    ctf, count, size, pixel, _ = case
    sim = model_micrographs(basis, truth, count, size, pixel, 3.5, ctf)
    patch_set = cut_patches(sim.micrographs, basis.box, pixel)
    ctfs = [ctf_image(p, basis.box, pixel) for p in sim.ctf_params] if ctf else None
    return sim, patch_set, ctfs


def _report_start(label, state, sim, patch_set, basis, truth):
    """One start's FSC to the truth (final and per finished stage), empty mass, noise."""
    from cryohess_plugin.core.micrograph_em import align_coefficients
    box = basis.box

    def fsc_of(coefficients):
        padded = np.zeros(basis.size)
        padded[:len(coefficients)] = coefficients
        return np.round(align_coefficients(basis, truth, padded).fsc, 3).tolist()

    true_empty = 1 - sim.density() * ((2 * box - 1) / box) ** 2
    print(f"{label} ({patch_set.count} patches): {len(state.history['stage'])} iterations, "
          f"degree {state.history['degree'][-1]:.0f}, finished {state.finished}, held-out "
          f"{state.history['heldout_loglik'][-1]:.4f}", flush=True)
    print(f"  FSC to the truth (shells 0-5): {fsc_of(state.coefficients)}")
    for stage, coefficients in sorted(state.stages.items()):
        print(f"  end of stage {int(stage) + 1}: FSC {fsc_of(coefficients)}")
    print(f"  empty mass {state.empty_mass:.4f}, simulator's {true_empty:.4f}; noise variance "
          f"{np.round(state.noise_variance, 4).tolist()}, true {sim.noise_sigma ** 2:.4f}",
          flush=True)


def _report_agreement(name, states, basis):
    """The best start by held-out score and the pairwise agreement of the starts (C3)."""
    from cryohess_plugin.core.micrograph_em import pairwise_fsc
    if len(states) > 1:
        best = int(np.argmax([s.history["heldout_loglik"][-1] for s in states]))
        pairs = pairwise_fsc(basis, [s.coefficients for s in states])
        print(f"{name}: best start {best + 1}; pairwise min FSC over shells 1-4 of the "
              f"starts: {np.round(pairs, 3).tolist()}")


def recovery(which="both", processes=1, states_dir=None, short=False):
    """C1, C3, C8 at L = 11, l_max 10, K = 552, SNR 3.5 by Eq. (4), noise estimated; then
    with a CTF per micrograph (defocus 1-2.5 µm).  ``which``: "plain", "ctf" or "both";
    ``processes``: the starts and cases run side by side in that many single-threaded
    processes; ``states_dir``: where each start saves its state after every iteration
    (``recovery_report`` reads them, e.g. of a run stopped early).  Each start's result is
    printed as soon as it ends."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    basis, truth, cases, settings = _recovery_problem(short)
    tick = time.perf_counter()
    jobs, data = {}, {}
    with ProcessPoolExecutor(max_workers=int(processes)) as pool:
        for name in [n for n in cases if which in (n, "both")]:
            sim, patch_set, ctfs = _recovery_data(basis, truth, cases[name])
            data[name] = (sim, patch_set, {})
            for start in range(cases[name][4]):
                jobs[pool.submit(_run_start, name, patch_set, settings, start, ctfs,
                                 states_dir)] = (name, start)
        for job in as_completed(jobs):
            name, start = jobs[job]
            sim, patch_set, states = data[name]
            states[start] = job.result()
            _report_start(f"{name} start {start + 1}, after {time.perf_counter() - tick:.0f} s",
                          states[start], sim, patch_set, basis, truth)
    for name, (_, _, states) in data.items():
        _report_agreement(name, [states[k] for k in sorted(states)], basis)
    print(machine())


def recovery_from_truth(fraction="1.0", iterations="5", short=False):
    """Diagnosis of :func:`recovery`: EM at l_max 10 started from the true map, on the same
    3600 patches, with minibatches of ``fraction``: the FSC to the truth per iteration
    shows what the data and the minibatch size allow, whatever the initialisation."""
    from cryohess_plugin.core import fourier
    from cryohess_plugin.core.micrograph_em import (EMSettings, EMState,
                                                    initial_noise_variance)
    basis, truth, cases, _ = _recovery_problem(short)
    sim, patch_set, _ = _recovery_data(basis, truth, cases["plain"])
    box = basis.box
    true_empty = 1 - sim.density() * ((2 * box - 1) / box) ** 2
    noise = initial_noise_variance(patch_set)
    print(f"{patch_set.count} patches, {len(sim.coordinates[0])} particles, empty mass "
          f"{true_empty:.4f}, noise variance {sim.noise_sigma ** 2:.4f} (first estimate "
          f"{noise[0]:.4f})")
    settings = EMSettings(schedule=(10,), iterations=(int(iterations),),
                          batch_fraction=float(fraction), held_out=200, patience=100)
    shifts = (2 * box - 1) ** 2
    state = EMState(0, 0, 0, truth.copy(), np.full(shifts, 0.5 / shifts), 0.5, noise,
                    -np.inf, truth.copy(), 0, False,
                    np.random.default_rng(5).bit_generator.state, {})
    reference = basis.to_volume(truth)

    def checkpoint(current):
        fsc = fourier.fourier_shell_correlation(reference,
                                                basis.to_volume(current.coefficients))
        if current.finished:
            print(f"  kept (the best held-out iterate): FSC {np.round(fsc, 3).tolist()}")
            return
        print(f"  iteration {current.iteration}: held-out "
              f"{current.history['heldout_loglik'][-1]:.4f}, empty mass "
              f"{current.empty_mass:.3f}, noise {current.noise_variance[0]:.4f}, FSC "
              f"(shells 0-5) {np.round(fsc, 3).tolist()}", flush=True)

    run_start(patch_set, settings, 0, 0, state=state, checkpoint=checkpoint)
    print(machine())


def recovery_report(states_dir, short=False):
    """:func:`recovery`'s report from the states its starts saved in ``states_dir``."""
    from cryohess_plugin.core.micrograph_em import EMState
    basis, truth, cases, _ = _recovery_problem(short)
    for name, case in cases.items():
        paths = [os.path.join(states_dir, f"{name}_start{start + 1}.npz")
                 for start in range(case[4])]
        states = [EMState.load(path) for path in paths if os.path.exists(path)]
        if not states:
            continue
        sim, patch_set, _ = _recovery_data(basis, truth, case)
        for state in states:
            _report_start(f"{name} start {state.start + 1}", state, sim, patch_set, basis,
                          truth)
        _report_agreement(name, states, basis)


def picking(short=False):
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
    for snr in np.logspace(-2, 2, 3 if short else 9):
        sim = model_micrographs(basis, truth, 1, 198 if short else 495, 5.0, snr, False, rng=7)
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
    arguments = [a for a in sys.argv[2:] if a != "--short"]
    {"paper": paper, "growth": growth, "box": box, "recovery": recovery,
     "recovery_report": recovery_report, "recovery_from_truth": recovery_from_truth,
     "picking": picking}[sys.argv[1]](*arguments, short="--short" in sys.argv)
