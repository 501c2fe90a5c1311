"""Algorithm 1 of micrograph EM: stochastic minibatch EM with frequency marching.

``docs/methods/micrograph_em.md`` §7.  Each iteration draws a fresh minibatch of
``⌊S · N⌋`` training patches, runs the E-step on it (:mod:`.estep`) and replaces the
volume, the shift prior and (optionally) the per-micrograph noise variances by their
M-step values (:mod:`.mstep`), from that minibatch alone (no step size, no running
average: the paper's §III-C).  Stages raise ``l_max`` (6 → 8 → 10 by default); a stage
keeps the previous coefficients and starts the new degrees at zero.  A fixed held-out set
of patches, never in a minibatch, scores every iteration by its mean log-likelihood; a
stage stops after ``patience`` iterations without a gain of ``tolerance`` nats per patch,
or at its iteration limit, and continues from its best held-out iterate.  Several random
starts run the whole schedule; the start with the best final held-out score is the result.
"""
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from ..errors import InvalidDataError
from ..progress import Reporter
from ..storage import StoredFields
from .basis import SphericalBesselBasis, max_usable_degree
from .estep import Model, expectation
from .mstep import solve_volume, update_noise, update_shift_prior, volume_system
from .patches import axis_shifts
from .projection import ProjectionOperator, quaternion_grid

#: The quantile of patch energies the first noise estimate reads (needs that share of
#: the patches empty).
NOISE_QUANTILE = 0.25


@dataclass
class EMSettings:
    """Settings of :func:`run_start` (defaults: the paper's, ``docs/methods/micrograph_em.md`` §7).

    :param schedule: ``l_max`` of each stage.
    :param iterations: the iteration limit of each stage.
    :param batch_fraction: ``S``, the share of training patches per iteration: one value
        for every stage, or one per stage (e.g. the whole training set, 1, in the last
        stage: the volume M-step then reads every patch instead of one minibatch's).
    :param rotation_resolution: the quaternion grid's resolution (25: 552 rotations).
    :param held_out: patches kept out of every minibatch to score iterations.
    :param tolerance: held-out gain (nats per patch) that counts as progress.
    :param patience: iterations without progress that end a stage.
    :param initial_empty: prior mass of "empty" at the start.
    :param estimate_noise: update the per-micrograph noise variance in the M-step.
    :param ridge: Tikhonov weight relative to the mean diagonal of ``A`` (0: none).
    :param dtype: float32 (production) or float64 correlations.
    :param backend: ``"cpu"``, ``"cuda"`` or ``"auto"`` for the posterior kernel.
    """
    schedule: tuple = (6, 8, 10)
    iterations: tuple = (20, 10, 10)
    batch_fraction: float = 0.05
    rotation_resolution: int = 25
    held_out: int = 1000
    tolerance: float = 1e-3
    patience: int = 3
    initial_empty: float = 0.5
    estimate_noise: bool = True
    ridge: float = 0.0
    dtype: str = "float32"
    backend: str = "cpu"

    def check(self, box):
        if len(self.schedule) != len(self.iterations) or not self.schedule:
            raise InvalidDataError("give one iteration limit per stage of the schedule")
        if list(self.schedule) != sorted(self.schedule):
            raise InvalidDataError(f"the degree schedule must not decrease, got {self.schedule}")
        usable = max_usable_degree(box)
        if self.schedule[-1] > usable:
            raise InvalidDataError(
                f"degree {self.schedule[-1]} has no radial term at patch size {box} (the "
                f"highest is {usable}); lower the last stage's degree or enlarge the patch")
        fractions = self.stage_fractions()
        if len(fractions) != len(self.schedule):
            raise InvalidDataError("give one minibatch fraction, or one per stage of the "
                                   "schedule")
        if not all(0 < fraction <= 1 for fraction in fractions):
            raise InvalidDataError(f"the minibatch fraction must lie in (0, 1], got "
                                   f"{self.batch_fraction}")

    def stage_fractions(self):
        """The minibatch fraction of every stage."""
        if np.ndim(self.batch_fraction) == 0:
            return (float(self.batch_fraction),) * len(self.schedule)
        return tuple(float(fraction) for fraction in self.batch_fraction)


@dataclass
class EMState(StoredFields):
    """One start's progress, saved after every iteration so a stopped run continues.

    ``history`` holds per iteration: ``stage``, ``degree``, ``batch_loglik`` (minibatch
    mean log-likelihood at the previous model), ``heldout_loglik`` (at the new model),
    ``empty_mass``, ``noise`` (mean variance), ``condition`` (of ``A``), ``change``
    (relative change of the coefficients), ``estep_seconds``, ``mstep_seconds``;
    ``stages`` the coefficients each finished stage ended with (``{"0": [...], ...}``).
    """
    start: int
    stage: int
    iteration: int
    coefficients: np.ndarray
    shift_prior: np.ndarray
    empty_mass: float
    noise_variance: np.ndarray
    best_heldout: float
    best_coefficients: np.ndarray
    stale: int
    finished: bool
    rng: dict
    history: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def model(self):
        return Model(self.coefficients, self.shift_prior, self.empty_mass, self.noise_variance)


def initial_noise_variance(patch_set):
    """Per micrograph, ``σ²`` from the lower quartile of its patch energies: an empty
    patch's ``|I|² / σ²`` is χ² with ``L²`` degrees of freedom, and particles only add
    energy, so the quartile divided by χ²'s quartile is an estimate while a quarter of
    the patches are empty (upper bound otherwise)."""
    pixels = patch_set.box ** 2
    energy = np.einsum("nij,nij->n", patch_set.patches, patch_set.patches, dtype=np.float64)
    reference = scipy.stats.chi2.ppf(NOISE_QUANTILE, pixels)
    out = np.empty(patch_set.n_micrographs)
    for m in range(patch_set.n_micrographs):
        mine = energy[patch_set.micrograph == m]
        if mine.size == 0:
            raise InvalidDataError(f"micrograph {m + 1} has no patches")
        out[m] = max(np.quantile(mine, NOISE_QUANTILE) / reference, 1e-12)
    return out


def split_patches(count, held_out, rng):
    """``(training, held-out)`` patch indices: a fixed random held-out set of at most a
    fifth of the patches."""
    order = np.random.default_rng(rng).permutation(count)
    held = min(int(held_out), count // 5)
    return np.sort(order[held:]), np.sort(order[:held])


def visible_fraction(box):
    """Mean visible share of a projection over the non-empty shifts, ``(L / (2L - 1))²``."""
    values = axis_shifts(box)
    lengths = np.where(values < box, box - values, values - box)
    return float(np.mean(lengths) / box) ** 2


def initial_state(patch_set, settings, start, seed, noise_variance, ctfs, operator):
    """A random start: an i.i.d. Gaussian volume in the first stage's basis, scaled so
    that its projections carry the data's signal energy (``docs/methods/micrograph_em.md``
    §7.2), uniform non-empty shifts and ``initial_empty``."""
    rng = np.random.default_rng([int(seed), int(start)])
    basis = operator.basis
    coefficients = basis.from_volume(rng.standard_normal((basis.box,) * 3))
    pixels = patch_set.box ** 2
    energy = np.einsum("nij,nij->n", patch_set.patches, patch_set.patches, dtype=np.float64)
    signal = np.mean(energy - pixels * noise_variance[patch_set.micrograph])
    target = max(signal, 0.05 * pixels * float(np.mean(noise_variance)))
    target /= (1 - settings.initial_empty) * visible_fraction(patch_set.box)
    ctf = None if ctfs is None else ctfs[0]
    current = np.mean(np.sum(operator.project(coefficients, ctf) ** 2, axis=(1, 2)))
    coefficients *= np.sqrt(target / current)
    n_shifts = axis_shifts(patch_set.box).size ** 2
    prior = np.full(n_shifts, (1 - settings.initial_empty) / n_shifts)
    return EMState(start, 0, 0, coefficients, prior, float(settings.initial_empty),
                   np.array(noise_variance, dtype=np.float64), -np.inf, coefficients.copy(),
                   0, False, rng.bit_generator.state, {})


def _record(history, **values):
    for key, value in values.items():
        history.setdefault(key, []).append(float(value))


def run_start(patch_set, settings, start=0, seed=0, ctfs=None, state=None, rotations=None,
              checkpoint=None, progress=None):
    """Run (or continue) one random start through the whole schedule.

    :param patch_set: :class:`.patches.PatchSet`.
    :param ctfs: None or per micrograph its ``(L, L)`` CTF image.
    :param state: an :class:`EMState` to continue (from :meth:`EMState.load`), or None.
    :param rotations: ``(K, 3, 3)`` grid (default: :func:`.projection.quaternion_grid`).
    :param checkpoint: called with the state after every iteration (e.g. to save it).
    :param progress: the core's progress callback (:mod:`..progress`).
    :returns: the final :class:`EMState`.
    """
    settings.check(patch_set.box)
    report = Reporter(progress)
    rotations = quaternion_grid(settings.rotation_resolution) if rotations is None else rotations
    training, held_out = split_patches(patch_set.count, settings.held_out, seed)
    if training.size == 0:
        raise InvalidDataError("no patches to train on; add micrographs")
    batches = [max(1, int(np.floor(fraction * training.size)))
               for fraction in settings.stage_fractions()]
    options = dict(dtype=np.dtype(settings.dtype), backend=settings.backend)
    basis = SphericalBesselBasis.create(patch_set.box, settings.schedule[0])
    operator = ProjectionOperator(basis, rotations)
    if state is None:
        noise = initial_noise_variance(patch_set)
        state = initial_state(patch_set, settings, start, seed, noise, ctfs, operator)
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng
    while not state.finished:
        degree = settings.schedule[state.stage]
        if operator.basis.max_degree != degree:
            basis = SphericalBesselBasis.create(patch_set.box, degree)
            operator = ProjectionOperator(basis, rotations)
        size = basis.size
        if state.coefficients.size != size:  # a new stage: keep shared degrees, zero the rest
            grown = np.zeros(size)
            grown[:state.coefficients.size] = state.coefficients
            state.coefficients = grown
        tick = time.perf_counter()
        chosen = np.sort(rng.choice(training, batches[state.stage], replace=False))
        expected = expectation(patch_set, chosen, operator, state.model(), ctfs, **options)
        middle = time.perf_counter()
        matrix, vector = volume_system(operator, expected.statistics, ctfs)
        previous = state.coefficients
        coefficients, condition = solve_volume(matrix, vector, settings.ridge)
        shift_prior, empty_mass = update_shift_prior(expected.statistics)
        noise = state.noise_variance
        if settings.estimate_noise:
            noise = update_noise(operator, coefficients, expected.statistics, noise, ctfs)
        finish = time.perf_counter()
        state.coefficients, state.shift_prior, state.empty_mass = coefficients, shift_prior, \
            empty_mass
        state.noise_variance = noise
        heldout = np.nan
        if held_out.size:
            heldout = float(np.mean(expectation(patch_set, held_out, operator, state.model(),
                                                ctfs, accumulate=False,
                                                **options).log_likelihood))
        change = np.linalg.norm(coefficients - previous) / max(np.linalg.norm(coefficients),
                                                               1e-300)
        state.iteration += 1
        _record(state.history, stage=state.stage, degree=degree,
                batch_loglik=np.mean(expected.log_likelihood), heldout_loglik=heldout,
                empty_mass=empty_mass, noise=np.mean(noise), condition=condition,
                change=change, estep_seconds=middle - tick, mstep_seconds=finish - middle)
        stage_iterations = int(np.sum(np.array(state.history["stage"]) == state.stage))
        if not heldout > state.best_heldout + settings.tolerance:
            state.stale += 1
        else:
            state.stale = 0
        if heldout > state.best_heldout or not np.isfinite(state.best_heldout):
            state.best_heldout = heldout
            state.best_coefficients = coefficients.copy()
        report(f"start {start + 1}, stage {state.stage + 1} (l_max {degree}), iteration "
               f"{stage_iterations}: held-out log-likelihood {heldout:.3f} per patch, "
               f"empty mass {empty_mass:.3f}, noise {np.mean(noise):.4g}",
               values=(heldout, empty_mass))
        if (state.stale >= settings.patience
                or stage_iterations >= settings.iterations[state.stage]):
            if np.isfinite(state.best_heldout) and state.best_coefficients.size == size:
                state.coefficients = state.best_coefficients.copy()
            state.stages[str(state.stage)] = state.coefficients.tolist()
            state.stage += 1
            state.stale = 0
            state.best_heldout = -np.inf
            state.finished = state.stage >= len(settings.schedule)
            if state.finished:
                state.best_heldout = heldout if held_out.size == 0 else float(np.mean(
                    expectation(patch_set, held_out, operator, state.model(), ctfs,
                                accumulate=False, **options).log_likelihood))
        state.rng = rng.bit_generator.state
        if checkpoint is not None:
            checkpoint(state)
    return state


@dataclass
class MicrographEMResult(StoredFields):
    """The outcome of :func:`run_micrograph_em`: the best start and all starts' finals.

    :param coefficients: ``(d,)`` of the best start (highest final held-out score).
    :param volume: ``(L, L, L)`` its volume at the working pixel size.
    :param start_coefficients: ``(starts, d)``.
    :param start_scores: ``(starts,)`` final held-out mean log-likelihood per patch.
    """
    box: int
    max_degree: int
    pixel_size: float
    coefficients: np.ndarray
    volume: np.ndarray
    shift_prior: np.ndarray
    empty_mass: float
    noise_variance: np.ndarray
    best_start: int
    start_coefficients: np.ndarray
    start_scores: np.ndarray
    history: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def basis(self):
        return SphericalBesselBasis.create(self.box, self.max_degree)

    def operator_and_model(self, rotation_resolution):
        """The projection operator on the rotation grid of ``rotation_resolution`` degrees
        and the fitted model, as posterior picking needs them."""
        operator = ProjectionOperator(self.basis(), quaternion_grid(rotation_resolution))
        return operator, Model(self.coefficients, self.shift_prior, self.empty_mass,
                               self.noise_variance)

    #: The columns of :meth:`write_table`.
    TABLE_COLUMNS = ('stage', 'degree', 'batch_loglik', 'heldout_loglik', 'empty_mass',
                     'noise', 'condition', 'estep_seconds', 'mstep_seconds')

    def write_table(self, path):
        """The convergence table as text: one line per start and iteration."""
        with open(path, "w") as table:
            table.write("start iteration " + " ".join(self.TABLE_COLUMNS) + "\n")
            for start in range(len(self.start_scores)):
                columns = [self.history[f"start{start + 1}_{key}"]
                           for key in self.TABLE_COLUMNS]
                for i, row in enumerate(zip(*columns)):
                    table.write(f"{start + 1} {i + 1} "
                                + " ".join(f"{value:.6g}" for value in row) + "\n")


def combine_starts(states, pixel_size, box):
    """The :class:`MicrographEMResult` of finished starts (best held-out score wins)."""
    scores = np.array([s.best_heldout for s in states])
    best = int(np.nanargmax(scores))
    chosen = states[best]
    degree = max_degree_of(box, chosen.coefficients.size)
    basis = SphericalBesselBasis.create(box, degree)
    history = {f"start{s.start + 1}_{key}": value for s in states
               for key, value in s.history.items()}
    return MicrographEMResult(box, degree, float(pixel_size), chosen.coefficients,
                              basis.to_volume(chosen.coefficients), chosen.shift_prior,
                              chosen.empty_mass, chosen.noise_variance, best,
                              np.stack([s.coefficients for s in states]), scores, history,
                              dict(chosen.stages))


def max_degree_of(box, size):
    """The ``l_max`` whose basis at patch size ``box`` has ``size`` coefficients."""
    for degree in range(max_usable_degree(box) + 1):
        if SphericalBesselBasis.create(box, degree).size == size:
            return degree
    raise InvalidDataError(f"no degree gives {size} coefficients at patch size {box}")


def run_micrograph_em(patch_set, settings, starts=3, seed=0, ctfs=None, rotations=None,
                      progress=None):
    """Every start of :func:`run_start`, combined (:func:`combine_starts`)."""
    states = [run_start(patch_set, settings, start, seed, ctfs, rotations=rotations,
                        progress=progress) for start in range(int(starts))]
    return combine_starts(states, patch_set.pixel_size, patch_set.box)
