"""The Markov chain of a hyper-molecule (docs/methods/hyper_molecules.md §4, §5).

One sweep is a composition of Metropolis–Hastings updates, each leaving the posterior
(at the current likelihood temperature) invariant:

* per particle, in parallel: the state ``τ`` of every heterogeneous component (a
  reflected random walk, or with a small probability a fresh uniform draw), the shift
  (random walk; the slices are reused, only the phase changes), the log-contrast
  (random walk under a normal prior) and, when asked, the rotation (a left so(3) random
  walk, or with a small probability a fresh uniform rotation);
* the states of all particles jointly with the coefficients: monotone warps of ``τ`` with
  the matching re-expansion of the coefficients (:mod:`.reparametrisation`);
* the coefficients: one preconditioned MALA step with the gradient from the projector's
  adjoint, or (``coefficient_draw="exact"``) a draw from their Gaussian conditional by
  perturbation–optimisation with a Metropolis–Hastings correction of the solver's error
  (:mod:`.conditional`); the preconditioner is a per-shell filter ``1 / (β H(|k|) + λ_q)`` with the data
  precision ``H`` measured by a Hessian probe, so all frequencies move at one pace.

Burn-in marches the band up (coarse to fine), raises the likelihood's temperature from
``initial_temperature`` to 1 (tempering), adapts the proposal scales towards their target
acceptance and re-estimates the per-shell noise from the residuals; after burn-in all of
that is frozen and samples are recorded.  The chain state is saved every few sweeps, so a
stopped run continues where it stopped, with the same random numbers.
"""
import os
from dataclasses import dataclass

import numpy as np

from .. import rotations as rot
from ..errors import InvalidDataError
from ..progress import Reporter
from ..storage import StoredFields
from .basis import fourier_resample, radial_filter, radial_frequencies, reflect_unit
from ..noise import shell_noise_power
from .data import shell_precision
from .likelihood import BandLikelihood
from .model import HyperMolecule
from .conditional import conjugate_gradient, reflection_step
from .reparametrisation import FAMILIES, propose_warp

#: Target acceptance of the random-walk proposals and of MALA during burn-in.
RANDOM_WALK_ACCEPTANCE, MALA_ACCEPTANCE = 0.3, 0.57
#: Particles a Hessian probe uses (its result is scaled to all of them).
PROBE_PARTICLES = 2000
#: Particles whose τ is traced for the convergence diagnostics.
TRACKED_PARTICLES = 8
#: Fewest particles per state-basis function a heterogeneous component needs.
MIN_PARTICLES_PER_STATE_FUNCTION = 50
#: Voxels a shell needs for its own Hessian-probe value.
MIN_SHELL_VOXELS = 50
#: Relative scales of the τ random walk, one drawn per particle and proposal.
TAU_SCALES = np.array([0.125, 0.5, 2.0])
#: Power iterations of the spectral start.
SPECTRAL_ITERATIONS = 12
#: Sweeps between re-estimates of the per-shell noise during burn-in.
NOISE_EVERY = 10
#: Largest MALA step (Crank–Nicolson factor ``ρ = 1 - ε²/2 = 0.5``).
MAX_MALA_STEP = 1.0
#: Largest proposal scales the adaptation may reach (a τ step beyond the unit interval
#: only re-draws it uniformly).
MAX_STEPS = {"mala": MAX_MALA_STEP, "tau": 0.5, "warp": 2.0}


@dataclass
class SamplerSettings:
    """Settings of one chain; the defaults suit 64-px particles with a few thousand images.

    :param sweeps: sweeps in all, burn-in included.  :param burn_in: sweeps before recording.
    :param thin: record every ``thin``-th sweep after burn-in.
    :param band_fractions: fractions of the band used in successive parts of burn-in.
    :param initial_temperature: likelihood exponent at the first sweep (1 at 2/3 of burn-in).
    :param prior_width: prior standard deviation of the coefficients over the starting
        map's RMS inside the mask.
    :param smoothness: weight ``κ`` of the state-smoothness prior: coefficient ``q`` has
        prior precision ``(1 + κ Σ(πj)²) / s²``.
    :param contrast_prior_sd: standard deviation of the log-contrast prior (centred at 0).
    :param shift_prior_sd: standard deviation (pixels) of the shift prior about the input.
    :param sample_rotations, sample_shifts, sample_contrast: which latents move.
    :param rotation_step_deg, tau_step, shift_step, contrast_step, mala_step: starting
        proposal scales (adapted during burn-in).
    :param global_rotation_probability, global_tau_probability: share of fresh uniform
        proposals (escapes from local modes).
    :param reparametrise: make the joint warp moves of the states and the coefficients
        (one per warp family and sweep, after the warm-up; off by default, see
        docs/methods/hyper_molecules.md §5.5 on what they do with Langevin steps).
    :param warp_step: starting scale of the warp parameter ``θ`` (adapted during burn-in).
    :param coefficient_draw: ``"langevin"`` (one preconditioned Langevin step per sweep)
        or ``"exact"`` (a conditional draw, :mod:`.conditional`).
    :param solver_iterations: conjugate-gradient steps of an exact draw.
    :param warmup: share of burn-in whose coefficient updates are preconditioned gradient
        steps without noise (a search for the posterior's bulk, not sampling).
    :param spectral_start: start the states from the leading heterogeneity directions of
        the residuals (else uniformly at random).
    :param grid_points: states in the grid of the gridded τ proposal (``⌊G^{1/d}⌋`` per axis),
        made every sweep except while the step sizes settle.
    :param map_count: maps along every state axis.
    :param checkpoint_every: sweeps between saved chain states.
    :param seed: seed of the data set's chains; chain ``c`` uses ``(seed, c)``.
    """
    sweeps: int = 200
    burn_in: int = 100
    thin: int = 1
    band_fractions: tuple = (0.5, 0.75, 1.0)
    initial_temperature: float = 0.3
    prior_width: float = 10.0
    smoothness: float = 1.0
    contrast_prior_sd: float = 0.2
    shift_prior_sd: float = 2.0
    sample_rotations: bool = False
    sample_shifts: bool = True
    sample_contrast: bool = True
    rotation_step_deg: float = 2.0
    tau_step: float = 0.1
    shift_step: float = 0.3
    contrast_step: float = 0.05
    mala_step: float = 0.5
    global_rotation_probability: float = 0.05
    global_tau_probability: float = 0.1
    reparametrise: bool = False
    warp_step: float = 0.05
    coefficient_draw: str = "langevin"
    solver_iterations: int = 40
    warmup: float = 0.4
    spectral_start: bool = True
    grid_points: int = 16
    map_count: int = 10
    checkpoint_every: int = 10
    seed: int = 0

    def validate(self):
        if not 0 <= self.burn_in < self.sweeps:
            raise InvalidDataError(f"burn-in ({self.burn_in}) must be shorter than the run "
                                   f"({self.sweeps} sweeps); ask for more sweeps")
        if self.thin < 1 or self.map_count < 2:
            raise InvalidDataError("thinning must be >= 1 and the map count >= 2")
        if not 0 < self.initial_temperature <= 1:
            raise InvalidDataError("the initial temperature must lie in (0, 1]")
        if not self.band_fractions or any(not 0 < f <= 1 for f in self.band_fractions):
            raise InvalidDataError("band fractions must lie in (0, 1]")
        if self.coefficient_draw not in ("langevin", "exact") or self.solver_iterations < 1:
            raise InvalidDataError("the coefficient draw must be 'langevin' or 'exact', with at "
                                   "least one solver iteration")
        return self

    @property
    def settle_start(self):
        """First sweep of the last third of burn-in, where only the sampler's own moves run
        (no gridded τ proposals, no noise re-estimates) so the step sizes adapt to them."""
        return 2 * self.burn_in // 3

    def temperature(self, sweep):
        ramp = max(1.0, 2.0 * self.burn_in / 3.0)
        return min(1.0, self.initial_temperature + (1 - self.initial_temperature) * sweep / ramp)

    def band_fraction(self, sweep):
        if sweep >= self.burn_in:
            return 1.0
        stage = int(len(self.band_fractions) * sweep / max(self.burn_in, 1))
        return float(self.band_fractions[stage])


@dataclass
class HyperMoleculeProblem:
    """What a chain samples: the particles, the components and the state-basis order.

    :param data: :class:`.data.ParticleData`.
    :param components: list of :class:`.model.Component`.
    :param order: state-basis terms per axis.
    :param initial_volume: ``(D, D, D)`` starting map on the particles' scale, or None
        (then a homogeneous map is reconstructed from the particles first).
    :param interpolation: the projector's interpolation.  :param backend: kernels' backend.
    """
    data: object
    components: list
    order: int = 3
    initial_volume: np.ndarray = None
    interpolation: str = "linear"
    backend: str = "auto"

    def validate(self):
        model = HyperMolecule(self.components, self.order, self.data.box, self.data.band,
                              self.interpolation, "cpu")
        n = self.data.count
        for c in model.heterogeneous:
            functions = model.bases[c].size
            if n < MIN_PARTICLES_PER_STATE_FUNCTION * functions:
                raise InvalidDataError(
                    f"{n} particles cannot support a state basis of order {self.order} in "
                    f"{model.components[c].state_dimension} dimension(s) ({functions} maps for "
                    f"component {model.components[c].name!r}): that needs at least "
                    f"{MIN_PARTICLES_PER_STATE_FUNCTION * functions} particles; lower the "
                    "order or the state dimension")
        measurements = 2 * n * self.data.kx.size
        if measurements < 2 * model.coefficient_count:
            raise InvalidDataError(
                f"{model.coefficient_count} coefficients for {measurements} measured numbers; "
                "lower the band, the state-basis order or the number of components")
        if self.initial_volume is not None and np.shape(self.initial_volume) != (self.data.box,) * 3:
            raise InvalidDataError(f"the initial volume has shape {np.shape(self.initial_volume)}"
                                   f" but the particles have box {self.data.box}; resample it")
        return model


@dataclass
class ChainState(StoredFields):
    """Everything a chain needs to continue, and what it has recorded so far."""
    chain: int
    sweep: int
    band: float
    coefficients: np.ndarray
    states: np.ndarray
    shifts: np.ndarray
    log_contrast: np.ndarray
    rotations: np.ndarray
    steps: dict
    noise_power: np.ndarray
    prior_scale: float
    rng_state: dict
    traces: dict
    tau_samples: np.ndarray
    map_sum: np.ndarray
    map_square_sum: np.ndarray
    kept: int
    contrast_sum: np.ndarray
    shift_sum: np.ndarray
    map_size: int
    hessian_profiles: np.ndarray = None


def state_columns(model):
    """``{component: slice}`` of each heterogeneous component's τ in the state array."""
    columns, start = {}, 0
    for c in model.heterogeneous:
        d = model.components[c].state_dimension
        columns[c] = slice(start, start + d)
        start += d
    return columns, start


def map_series(model, map_count):
    """The states of the maps along τ: ``[(component, axis, (map_count, total) states)]``.

    Each series moves one axis of one component from 0 to 1; every other state is 0.5.
    """
    columns, total = state_columns(model)
    series = []
    for c in model.heterogeneous:
        for axis in range(model.components[c].state_dimension):
            states = np.full((map_count, total), 0.5)
            states[:, columns[c].start + axis] = np.linspace(0.0, 1.0, map_count)
            series.append((c, axis, states))
    if not series:
        series.append((None, None, np.full((1, total), 0.5)))
    return series


def total_map(model, states, coefficients=None):
    """The whole molecule on the working box at one state vector (shared copies rotated)."""
    from scipy.ndimage import affine_transform
    columns, _ = state_columns(model)
    out = np.zeros((model.size,) * 3)
    centre = np.full(3, model.size // 2, dtype=np.float64)
    for c in range(len(model.components)):
        tau = states[columns[c]] if c in columns else None
        volume = model.component_map(c, tau, coefficients)
        g = model.symmetry(c)
        if not np.allclose(g, np.eye(3)):
            # V_c(r) = V_m(Gᵀ r); arrays are (z, y, x), G acts on (x, y, z).
            flip = np.eye(3)[::-1]
            matrix = flip @ g.T @ flip
            volume = affine_transform(volume, matrix, offset=centre - matrix @ centre, order=3)
        out += volume
    return out


def langevin_step(position, current, density, precondition, step, rng):
    """One preconditioned Langevin (MALA-family) Metropolis–Hastings step.

    The proposal is ``x' = x + (ε²/2) P ∇log π(x) + ε √(1 - ε²/4) P^½ ξ``: MALA for small
    ``ε``; for a Gaussian target of covariance ``P`` it is the Crank–Nicolson move, which
    keeps the target invariant at any ``ε <= √2`` (docs/methods/hyper_molecules.md §5), so
    the step need not shrink with the number of coefficients.  The Hastings ratio uses the
    gradient at both ends.

    :param position: ``{name: array}`` current point ``x``.
    :param current: ``(log π(x), {name: ∇log π(x)})``.
    :param density: function of a point giving ``(log π, gradient)`` like ``current``.
    :param precondition: ``{name: function(array, power)}`` applying ``P^power`` (symmetric,
        positive on the sampled subspace; ``power = -1`` its pseudo-inverse).
    :param step: ``ε`` (clipped to :data:`MAX_MALA_STEP`).
    :param rng: :class:`numpy.random.Generator`.
    :returns: ``(proposal, accepted, acceptance probability)``.
    """
    eps = min(step, MAX_MALA_STEP)
    drift, spread = 0.5 * eps ** 2, eps * np.sqrt(1.0 - 0.25 * eps ** 2)
    log_current, grad = current
    proposal, forward_mean = {}, {}
    for name, x in position.items():
        forward_mean[name] = x + drift * precondition[name](grad[name], 1.0)
        noise = precondition[name](rng.standard_normal(x.shape), 0.5)
        proposal[name] = forward_mean[name] + spread * noise
    log_new, new_grad = density(proposal)
    log_forward = log_backward = 0.0
    for name, x in position.items():
        backward_mean = proposal[name] + drift * precondition[name](new_grad[name], 1.0)
        d_forward = proposal[name] - forward_mean[name]
        d_backward = x - backward_mean
        log_forward -= np.sum(d_forward * precondition[name](d_forward, -1.0))
        log_backward -= np.sum(d_backward * precondition[name](d_backward, -1.0))
    log_ratio = log_new - log_current + (log_backward - log_forward) / (2 * spread ** 2)
    accepted = bool(np.log(rng.random()) < log_ratio)
    return proposal, accepted, float(np.exp(min(log_ratio, 0.0)))


class Chain:
    """One Markov chain of a :class:`HyperMoleculeProblem` (see the module docstring)."""

    def __init__(self, problem, settings, chain=0, checkpoint=None, progress=None):
        self.problem, self.settings = problem, settings.validate()
        self.data = problem.data
        self.template = problem.validate()
        self.columns, self.state_size = state_columns(self.template)
        self.series = map_series(self.template, settings.map_count)
        self.checkpoint = checkpoint
        self.report = Reporter(progress)
        self.index = chain
        if checkpoint is not None and os.path.exists(checkpoint):
            self.state = ChainState.load(checkpoint)
        else:
            self.state = self._initial_state()
        self.state.steps.setdefault("warp", settings.warp_step)
        self.model = None
        self.hessian = None

    # ------------------------------------------------------------------ set-up
    def _initial_state(self):
        s, data = self.settings, self.data
        rng = np.random.default_rng([s.seed, self.index])
        n = data.count
        states = rng.random((n, self.state_size))
        band = s.band_fraction(0) * data.band
        model = HyperMolecule(self.problem.components, self.problem.order, data.box, band,
                              self.problem.interpolation, self.problem.backend)
        if self.problem.initial_volume is not None:
            start = model.limit(fourier_resample(self.problem.initial_volume, model.size))
            cover = sum(model.masks[m] for m in model.owners)
            for m in model.owners:
                model.coefficients[m][0] = start * model.masks[m] / np.maximum(cover, 1.0)
            noise = None
        else:
            noise = self._data_power()
        size = model.size
        total = len(self.series)
        state = ChainState(
            chain=self.index, sweep=0, band=band, coefficients=self._flat(model),
            states=states, shifts=data.shifts.copy(), log_contrast=np.zeros(n),
            rotations=data.rotations.copy(),
            steps={"tau": s.tau_step, "shift": s.shift_step, "contrast": s.contrast_step,
                   "rotation": np.deg2rad(s.rotation_step_deg), "mala": s.mala_step,
                   "warp": s.warp_step},
            noise_power=np.zeros(0) if noise is None else noise, prior_scale=0.0,
            rng_state=rng.bit_generator.state, traces={},
            tau_samples=np.zeros((0, n, self.state_size), np.float32),
            map_sum=np.zeros((total, s.map_count) + (size,) * 3),
            map_square_sum=np.zeros((total, s.map_count) + (size,) * 3), kept=0,
            contrast_sum=np.zeros(n), shift_sum=np.zeros((n, 2)), map_size=size)
        return state

    def _data_power(self):
        """Per-shell power of the data: the noise estimate before any model exists."""
        return shell_noise_power(self.data.spectra, self.data.kx, self.data.ky,
                                 int(np.ceil(self.data.band)) + 1)

    def _flat(self, model):
        return np.concatenate([model.coefficients[m].ravel() for m in model.owners])

    def _unflat(self, model, flat):
        start = 0
        for m in model.owners:
            shape = model.coefficients[m].shape
            count = int(np.prod(shape))
            model.coefficients[m] = flat[start:start + count].reshape(shape).copy()
            start += count

    def _build(self, band):
        """Model, likelihood, slices and preconditioner at ``band``."""
        st = self.state
        if self.model is None:
            model = HyperMolecule(self.problem.components, self.problem.order, self.data.box,
                                  st.band, self.problem.interpolation, self.problem.backend)
            self._unflat(model, st.coefficients)
        else:
            model = self.model
        if band != st.band:
            model = model.resample(band)
            st.band = band
        self.model = model
        starting = st.sweep == 0 and not st.prior_scale
        if starting and self.problem.initial_volume is None:
            self._set_noise(st.noise_power)
            self._reconstruct_start()
        if not st.prior_scale:
            inside = np.concatenate([model.masks[m].ravel() > 0.5 for m in model.owners])
            values = np.concatenate([model.coefficients[m][0].ravel() for m in model.owners])
            rms = float(np.sqrt(np.mean(values[inside] ** 2)))
            if not rms > 0:
                raise InvalidDataError("the starting map is zero inside the masks; give a "
                                       "starting map or check the masks")
            st.prior_scale = self.settings.prior_width * rms
        if st.noise_power.size == 0:
            self._set_noise(np.ones(int(np.ceil(self.data.band)) + 1))
            self._refresh_slices()
            self._update_noise()
            if starting and self.settings.spectral_start:
                self._spectral_start()
            return
        self._set_noise(st.noise_power)
        self._refresh_slices()
        resumed = (st.hessian_profiles is not None and band == st.band and self.hessian is None
                   and not starting)
        self._precondition(measure=not resumed)

    def _update_noise(self):
        """Per-shell noise from the current residuals (shells outside the band keep theirs)."""
        st = self.state
        residuals = self.likelihood.residuals(self.slices, self.weights, st.shifts)
        shells = int(np.ceil(self.data.band)) + 1
        power = shell_noise_power(residuals, self.likelihood.kx, self.likelihood.ky, shells)
        previous = st.noise_power if st.noise_power.size == shells else np.full(shells, np.nan)
        st.noise_power = np.where(np.isfinite(power), power, previous)
        self._set_noise(st.noise_power)
        self.log_likelihood = self.likelihood.log_likelihoods(self.slices, self.weights,
                                                              st.shifts)
        self._precondition(measure=True)

    def _set_noise(self, noise_power):
        keep = self.data.inside(self.state.band)
        precision = shell_precision(noise_power, self.data.shells()[keep])
        self.likelihood = BandLikelihood(self.data, self.state.band, precision,
                                         self.problem.backend)

    def _refresh_slices(self):
        model, st = self.model, self.state
        self.grids = model.grids()
        self.slices = model.slices(self.grids, st.rotations, self.likelihood.kx,
                                   self.likelihood.ky)
        self.weights = self._weights(st.states, st.log_contrast)
        self.log_likelihood = self.likelihood.log_likelihoods(self.slices, self.weights,
                                                              st.shifts)

    def _weights(self, states, log_contrast):
        per_component = {c: states[:, cols] for c, cols in self.columns.items()}
        return self.model.term_weights(per_component, np.exp(log_contrast))

    def _gradient(self, slices, weights, rows=None):
        """Gradient of the (untempered) log-likelihood with respect to the coefficients."""
        st = self.state
        rows_all = slice(None) if rows is None else rows
        shifts = st.shifts[rows_all]
        residual = self.likelihood.weighted_residuals(slices, weights, shifts, rows)
        return self.model.gradient(2.0 * residual, weights, st.rotations[rows_all],
                                   self.likelihood.kx, self.likelihood.ky)

    def _reconstruct_start(self):
        """A homogeneous starting map: preconditioned gradient steps from zero (constant term)."""
        model = self.model
        weights = np.zeros((self.data.count, len(model.terms)))
        for t, (c, m, q) in enumerate(model.terms):
            weights[:, t] = 1.0 if q == 0 else 0.0
        self.weights = weights
        radius = np.rint(radial_frequencies(model.size)).astype(np.int64)
        hessian = {key: profile[radius] for key, profile in
                   self._shell_hessian(weights, only_constant=True).items()}
        for _ in range(3):
            self.grids = model.grids()
            self.slices = model.slices(self.grids, self.state.rotations, self.likelihood.kx,
                                       self.likelihood.ky)
            gradient = self._gradient(self.slices, weights)
            for m in model.owners:
                h = hessian[(m, 0)]
                step = radial_filter(gradient[m][0], model.band_mask / (h + 1e-2 * h.max()))
                model.coefficients[m][0] += step
        self.state.noise_power = np.zeros(0)

    def _spectral_start(self):
        """Starting states from the leading heterogeneity directions (burn-in only).

        For each heterogeneous component, the directions ``v`` of its coefficient maps
        that explain most residual variance beyond the noise, ``max vᵀ C v`` with
        ``C = Σ_i J_iᵀ W (r_i r_iᵀ - W⁻¹) W J_i`` (residuals ``r_i`` of the homogeneous
        start, ``W`` the noise precision), by preconditioned power iteration with one
        direction per state axis; particle ``i``'s state on axis ``a`` starts at the rank
        of its score ``⟨J_i v_a, r_i⟩_W``, jittered per chain.  This is a starting point,
        not a move of the chain (docs/methods/hyper_molecules.md §5).
        """
        model, st = self.model, self.state
        rng = np.random.default_rng([self.settings.seed, self.index, 11])
        kx, ky = self.likelihood.kx, self.likelihood.ky
        constant = np.array([1.0 if q == 0 else 0.0 for _, _, q in model.terms])
        weights = constant[None, :] * np.exp(st.log_contrast)[:, None]
        residual = self.likelihood.weighted_residuals(self.slices, weights, st.shifts)
        zero = np.zeros_like(self.likelihood.spectra)
        for c, cols in self.columns.items():
            m = model.owner(c)
            term = [t for t, (tc, _, q) in enumerate(model.terms) if tc == c and q == 0][0]
            one_hot = np.zeros_like(weights)
            one_hot[:, term] = np.exp(st.log_contrast)
            precondition = model.band_mask / self.hessian[(m, 0)]
            directions = []
            for axis in range(cols.stop - cols.start):
                v = model.limit(model.masks[m] * rng.standard_normal((model.size,) * 3))
                for _ in range(SPECTRAL_ITERATIONS):
                    for previous in directions:
                        v -= np.sum(v * previous) * previous
                    v /= np.linalg.norm(v)
                    probe = {o: np.zeros_like(model.coefficients[o]) for o in model.owners}
                    probe[m][0] = v
                    slices = model.slices(model.grids(probe), st.rotations, kx, ky)
                    scores = np.einsum("nm,nm->n", np.conj(slices[:, term]), residual).real
                    saved, self.likelihood.spectra = self.likelihood.spectra, zero
                    try:
                        noise = -self.likelihood.weighted_residuals(slices, one_hot, st.shifts)
                    finally:
                        self.likelihood.spectra = saved
                    applied = model.gradient(residual * scores[:, None] - noise, one_hot,
                                             st.rotations, kx, ky)[m][0]
                    v = radial_filter(applied, precondition)
                v /= np.linalg.norm(v)
                directions.append(v)
                ranks = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)
                jitter = 0.05 * rng.standard_normal(len(scores))
                st.states[:, cols.start + axis] = reflect_unit(ranks + jitter)
        self.weights = self._weights(st.states, st.log_contrast)
        self.log_likelihood = self.likelihood.log_likelihoods(self.slices, self.weights,
                                                              st.shifts)

    def _shell_hessian(self, weights, only_constant=False):
        """Per-shell data precision ``H_{m,q}`` (integer shells of the working box), by one
        Hessian probe each."""
        model, st = self.model, self.state
        rng = np.random.default_rng([self.settings.seed, self.index, st.sweep, 7])
        rows = np.arange(self.data.count)
        if rows.size > PROBE_PARTICLES:
            rows = np.sort(rng.choice(rows, PROBE_PARTICLES, replace=False))
        factor = self.data.count / rows.size
        radius = np.rint(radial_frequencies(model.size)).astype(np.int64)
        shells = radius.max() + 1
        zero = np.zeros_like(self.likelihood.spectra[rows])
        out = {}
        for m in model.owners:
            for q in range(model.coefficients[m].shape[0]):
                if only_constant and q:
                    continue
                probe = {o: np.zeros_like(model.coefficients[o]) for o in model.owners}
                probe[m][q] = model.masks[m] * rng.standard_normal((model.size,) * 3)
                slices = model.slices(model.grids(probe), st.rotations[rows],
                                      self.likelihood.kx, self.likelihood.ky)
                saved = self.likelihood.spectra
                self.likelihood.spectra = zero
                try:
                    residual = self.likelihood.weighted_residuals(slices, weights[rows],
                                                                  st.shifts[rows])
                finally:
                    self.likelihood.spectra = saved
                product = model.gradient(-2.0 * residual, weights[rows], st.rotations[rows],
                                         self.likelihood.kx, self.likelihood.ky)[m][q] * factor
                spectrum = np.fft.rfftn(probe[m][q])
                numerator = np.bincount(radius.ravel(), (np.conj(spectrum)
                                        * np.fft.rfftn(product)).real.ravel(), shells)
                denominator = np.bincount(radius.ravel(), (np.abs(spectrum) ** 2).ravel(), shells)
                per_shell = np.maximum(numerator / np.maximum(denominator, 1e-300), 0.0)
                # A shell of few voxels gives a noisy ratio (the DC shell one number): the
                # innermost shells take the value of the first shell with enough voxels.
                counts = np.bincount(radius.ravel(), minlength=shells)
                first = int(np.argmax(counts >= MIN_SHELL_VOXELS))
                per_shell[:first] = per_shell[first]
                out[(m, q)] = per_shell
        return out

    def _precondition(self, measure=False):
        """Prior precisions and the MALA precisions ``β H + λ_q`` at this band."""
        model, st = self.model, self.state
        beta = self.settings.temperature(st.sweep)
        radius = np.rint(radial_frequencies(model.size)).astype(np.int64)
        if measure or st.hessian_profiles is None:
            profiles = self._shell_hessian(self.weights)
            st.hessian_profiles = np.stack([profiles[key] for key in sorted(profiles)])
        keys = sorted((m, q) for m in model.owners for q in range(model.coefficients[m].shape[0]))
        self.hessian = {key: st.hessian_profiles[i][radius] + 1e-12 for i, key in enumerate(keys)}
        self.prior_precision, self.filters = {}, {}
        for m in model.owners:
            roughness = model.bases[m].roughness()
            self.prior_precision[m] = (1.0 + self.settings.smoothness * roughness) \
                / st.prior_scale ** 2
            self.filters[m] = [beta * self.hessian[(m, q)] + self.prior_precision[m][q]
                               for q in range(roughness.size)]
        self.filter_temperature = beta

    # ------------------------------------------------------------------ moves
    def _accept(self, log_ratio, rng):
        return np.log(rng.random(log_ratio.shape)) < log_ratio

    def _move_states(self, rng, beta):
        st, s = self.state, self.settings
        rates = []
        for c, cols in self.columns.items():
            proposal = st.states.copy()
            n, d = st.states.shape[0], cols.stop - cols.start
            # Each particle's scale is drawn from {1/8, 1/2, 2} x the step, independently of
            # its state (so the proposal stays symmetric): particles whose τ posterior is much
            # sharper or wider than typical still move.
            scales = st.steps["tau"] * TAU_SCALES[rng.integers(0, len(TAU_SCALES), n)]
            local = reflect_unit(st.states[:, cols]
                                 + scales[:, None] * rng.standard_normal((n, d)))
            fresh = rng.random(st.states.shape[0]) < s.global_tau_probability
            local[fresh] = rng.random((int(fresh.sum()), cols.stop - cols.start))
            proposal[:, cols] = local
            weights = self._weights(proposal, st.log_contrast)
            new = self.likelihood.log_likelihoods(self.slices, weights, st.shifts)
            accept = self._accept(beta * (new - self.log_likelihood), rng)
            st.states[accept] = proposal[accept]
            self.weights[accept] = weights[accept]
            self.log_likelihood[accept] = new[accept]
            rates.append(accept[~fresh].mean() if (~fresh).any() else 0.0)
        return float(np.mean(rates)) if rates else np.nan

    def _move_states_gridded(self, rng, beta):
        """Independence proposals of τ from its conditional on a jittered grid (exact MH).

        A cell of the grid is drawn with probability ``∝ exp(β ll)`` at its centre and τ
        uniformly inside it; the Hastings ratio uses the same cell probabilities.
        """
        st = self.state
        n = st.states.shape[0]
        for c, cols in self.columns.items():
            d = cols.stop - cols.start
            # At most grid_points evaluations whatever d, so the cost does not grow with d.
            per_axis = max(2, int(np.floor(self.settings.grid_points ** (1.0 / d) + 1e-9)))
            centres = (np.arange(per_axis) + 0.5) / per_axis
            grid = np.stack(np.meshgrid(*([centres] * d), indexing="ij"), -1).reshape(-1, d)
            scores = np.empty((n, grid.shape[0]))
            trial = st.states.copy()
            for g, point in enumerate(grid):
                trial[:, cols] = point
                scores[:, g] = beta * self.likelihood.log_likelihoods(
                    self.slices, self._weights(trial, st.log_contrast), st.shifts)
            scores -= scores.max(axis=1, keepdims=True)
            probability = np.exp(scores)
            probability /= probability.sum(axis=1, keepdims=True)
            pick = (probability.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
            proposal = st.states.copy()
            proposal[:, cols] = grid[pick] + (rng.random((n, d)) - 0.5) / per_axis
            cell_of = np.clip((st.states[:, cols] * per_axis).astype(int), 0, per_axis - 1)
            current_cell = np.ravel_multi_index(tuple(cell_of.T), (per_axis,) * d)
            weights = self._weights(proposal, st.log_contrast)
            new = self.likelihood.log_likelihoods(self.slices, weights, st.shifts)
            rows = np.arange(n)
            log_ratio = (beta * (new - self.log_likelihood)
                         + np.log(probability[rows, current_cell] + 1e-300)
                         - np.log(probability[rows, pick] + 1e-300))
            accept = self._accept(log_ratio, rng)
            st.states[accept] = proposal[accept]
            self.weights[accept] = weights[accept]
            self.log_likelihood[accept] = new[accept]

    def _move_shifts(self, rng, beta):
        st, s = self.state, self.settings
        proposal = st.shifts + st.steps["shift"] * rng.standard_normal(st.shifts.shape)
        new = self.likelihood.log_likelihoods(self.slices, self.weights, proposal)
        prior = -0.5 * (np.sum((proposal - self.data.shifts) ** 2, 1)
                        - np.sum((st.shifts - self.data.shifts) ** 2, 1)) / s.shift_prior_sd ** 2
        accept = self._accept(beta * (new - self.log_likelihood) + prior, rng)
        st.shifts[accept] = proposal[accept]
        self.log_likelihood[accept] = new[accept]
        return float(accept.mean())

    def _move_contrast(self, rng, beta):
        st, s = self.state, self.settings
        proposal = st.log_contrast + st.steps["contrast"] * rng.standard_normal(st.log_contrast.shape)
        weights = self._weights(st.states, proposal)
        new = self.likelihood.log_likelihoods(self.slices, weights, st.shifts)
        prior = -0.5 * (proposal ** 2 - st.log_contrast ** 2) / s.contrast_prior_sd ** 2
        accept = self._accept(beta * (new - self.log_likelihood) + prior, rng)
        st.log_contrast[accept] = proposal[accept]
        self.weights[accept] = weights[accept]
        self.log_likelihood[accept] = new[accept]
        return float(accept.mean())

    def _move_rotations(self, rng, beta):
        st, s = self.state, self.settings
        n = st.rotations.shape[0]
        proposal = rot.perturb(st.rotations, st.steps["rotation"] * rng.standard_normal((n, 3)))
        fresh = rng.random(n) < s.global_rotation_probability
        proposal[fresh] = rot.random_rotations(int(fresh.sum()), rng)
        slices = self.model.slices(self.grids, proposal, self.likelihood.kx, self.likelihood.ky)
        new = self.likelihood.log_likelihoods(slices, self.weights, st.shifts)
        accept = self._accept(beta * (new - self.log_likelihood), rng)
        st.rotations[accept] = proposal[accept]
        self.slices[accept] = slices[accept]
        self.log_likelihood[accept] = new[accept]
        return float(accept[~fresh].mean()) if (~fresh).any() else 0.0

    def _move_warps(self, rng, beta):
        """Joint warps of every particle's state and the coefficients (docs/methods/
        hyper_molecules.md §5.5): one proposal per warp family and owner, a random axis,
        ``θ ~ N(0, step²)``; the slices follow the coefficients linearly, so nothing is
        re-projected."""
        model, st = self.model, self.state
        rates = []
        maps = sum(model.coefficients[m].shape[0] for m in model.owners)
        voxels = model.coefficient_count // maps
        for m in model.owners:
            users = [c for c in self.columns if model.owner(c) == m]
            if not users:
                continue
            for family in FAMILIES:
                axis = int(rng.integers(0, model.components[m].state_dimension))
                theta = st.steps["warp"] * rng.standard_normal()
                moved, coefficients, matrix, log_jacobian = propose_warp(
                    [st.states[:, self.columns[c]] for c in users], model.coefficients[m],
                    model.bases[m], family, axis, theta, voxels)
                states = st.states.copy()
                slices = self.slices.copy()
                combine = matrix.astype(np.complex64)
                for c, values in zip(users, moved):
                    states[:, self.columns[c]] = values
                    terms = [t for t, (tc, _, _) in enumerate(model.terms) if tc == c]
                    slices[:, terms] = np.einsum("qp,npm->nqm", combine, self.slices[:, terms])
                proposal = dict(model.coefficients)
                proposal[m] = coefficients
                weights = self._weights(states, st.log_contrast)
                new = self.likelihood.log_likelihoods(slices, weights, st.shifts)
                log_ratio = (beta * (new.sum() - self.log_likelihood.sum())
                             + self.log_prior(proposal) - self.log_prior(model.coefficients)
                             + log_jacobian)
                accepted = bool(np.log(rng.random()) < log_ratio)
                if accepted:
                    model.coefficients = proposal
                    st.states, self.slices, self.weights = states, slices, weights
                    self.log_likelihood = new
                    self.grids = model.grids()
                rates.append(float(np.exp(min(log_ratio, 0.0))))
        return float(np.mean(rates)) if rates else np.nan

    def log_prior(self, coefficients):
        return -0.5 * sum(float(np.sum(self.prior_precision[m][:, None, None, None]
                                        * coefficients[m] ** 2)) for m in self.model.owners)

    def _posterior_gradient(self, coefficients, gradient, beta):
        return {m: beta * gradient[m] - self.prior_precision[m][:, None, None, None]
                * coefficients[m] for m in self.model.owners}

    def _filtered(self, volumes, m, power):
        """``P^power`` of every coefficient map: ``P = 1 / (β H + λ_q)`` inside the band, 0
        outside (the coefficients stay band-limited; the Hastings ratio's ``P⁻¹`` is the
        pseudo-inverse on that subspace)."""
        inside = self.model.band_mask > 0
        return np.stack([radial_filter(volumes[q], np.where(
            inside, self.filters[m][q] ** (-power), 0.0)) for q in range(volumes.shape[0])])

    def _search_coefficients(self, beta):
        """Warm-up: one preconditioned gradient step ``u += P ∇log π(u)`` (no noise)."""
        model = self.model
        gradient = self._gradient(self.slices, self.weights)
        grad = self._posterior_gradient(model.coefficients, gradient, beta)
        model.coefficients = {m: model.coefficients[m] + self._filtered(grad[m], m, 1.0)
                              for m in model.owners}
        self.grids = model.grids()
        self.slices = model.slices(self.grids, self.state.rotations, self.likelihood.kx,
                                   self.likelihood.ky)
        self.log_likelihood = self.likelihood.log_likelihoods(self.slices, self.weights,
                                                              self.state.shifts)

    def _move_coefficients(self, rng, beta):
        """One preconditioned Langevin step of the coefficients (:func:`langevin_step`)."""
        model, st = self.model, self.state
        if self._current_gradient is None:
            self._current_gradient = self._gradient(self.slices, self.weights)
        evaluated = {}

        def density(coefficients):
            grids = model.grids(coefficients)
            slices = model.slices(grids, st.rotations, self.likelihood.kx, self.likelihood.ky)
            values = self.likelihood.log_likelihoods(slices, self.weights, st.shifts)
            gradient = self._gradient(slices, self.weights)
            evaluated.update(grids=grids, slices=slices, values=values, gradient=gradient)
            return (beta * values.sum() + self.log_prior(coefficients),
                    self._posterior_gradient(coefficients, gradient, beta))

        current = (beta * self.log_likelihood.sum() + self.log_prior(model.coefficients),
                   self._posterior_gradient(model.coefficients, self._current_gradient, beta))
        precondition = {m: (lambda v, power, m=m: self._filtered(v, m, power))
                        for m in model.owners}
        proposal, accepted, rate = langevin_step(model.coefficients, current, density,
                                                 precondition, st.steps["mala"], rng)
        if accepted:
            model.coefficients = proposal
            self.grids, self.slices = evaluated["grids"], evaluated["slices"]
            self.log_likelihood = evaluated["values"]
            self._current_gradient = evaluated["gradient"]
        return rate

    def _maps(self, flat):
        """``{owner: coefficient maps}`` of a flat vector (the inverse of :meth:`_flat`)."""
        out, start = {}, 0
        for m in self.model.owners:
            shape = self.model.coefficients[m].shape
            count = int(np.prod(shape))
            out[m] = flat[start:start + count].reshape(shape)
            start += count
        return out

    def _vector(self, maps):
        return np.concatenate([maps[m].ravel() for m in self.model.owners])

    def _adjoint_of(self, spectra):
        """``2 Aᵀ W s`` for spectra ``s`` at the current latents, in the band."""
        model, st = self.model, self.state
        saved, self.likelihood.spectra = self.likelihood.spectra, spectra
        try:
            residual = self.likelihood.weighted_residuals(self.slices, np.zeros_like(self.weights),
                                                          st.shifts)
        finally:
            self.likelihood.spectra = saved
        gradient = model.gradient(2.0 * residual, self.weights, st.rotations,
                                  self.likelihood.kx, self.likelihood.ky)
        return {m: model.limit(gradient[m]) for m in model.owners}

    def _precision_product(self, flat, beta):
        """``(2β AᵀWA + Λ) v`` restricted to the band (the conditional precision)."""
        model, st = self.model, self.state
        maps = self._maps(flat)
        slices = model.slices(model.grids(maps), st.rotations, self.likelihood.kx,
                              self.likelihood.ky)
        data = self._adjoint_of(self.likelihood.model_spectra(slices, self.weights, st.shifts)
                                .astype(np.complex64))
        return self._vector({m: model.limit(beta * data[m] + self.prior_precision[m][
            :, None, None, None] * maps[m]) for m in model.owners})

    def _conditional_noise(self, rng, beta):
        """``w ~ N(0, 2β AᵀWA + Λ)`` in the band: the adjoint of complex noise of variance
        ``1 / (2βW)`` per real part, plus prior noise."""
        model = self.model
        shape = self.likelihood.spectra.shape
        deviation = 1.0 / np.sqrt(2.0 * beta * self.likelihood.precision.astype(np.float64))
        data = deviation * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        maps = self._adjoint_of(data.astype(np.complex64))
        return self._vector({m: model.limit(beta * maps[m] + np.sqrt(self.prior_precision[m])[
            :, None, None, None] * rng.standard_normal(maps[m].shape)) for m in model.owners})

    def _move_coefficients_exact(self, rng, beta):
        """A draw of the coefficients from their Gaussian conditional (:func:`.conditional.
        reflection_step`): ``Q = 2β AᵀWA + Λ``, ``b = 2β AᵀWY``, the noise ``w ~ N(0, Q)`` as
        the adjoint of data-like noise plus prior noise, the solve preconditioned by the
        per-shell filter of the Langevin step."""
        model, st = self.model, self.state
        linear = self._vector({m: beta * v for m, v in
                               self._adjoint_of(self.likelihood.spectra).items()})

        def apply(flat):
            return self._precision_product(flat, beta)

        def precondition(flat):
            maps = self._maps(flat)
            return self._vector({m: self._filtered(maps[m], m, 1.0) for m in model.owners})

        evaluated = {}

        def log_target(flat):
            coefficients = self._maps(flat)
            grids = model.grids(coefficients)
            slices = model.slices(grids, st.rotations, self.likelihood.kx, self.likelihood.ky)
            values = self.likelihood.log_likelihoods(slices, self.weights, st.shifts)
            evaluated.update(grids=grids, slices=slices, values=values)
            return beta * values.sum() + self.log_prior(coefficients)

        log_current = beta * self.log_likelihood.sum() + self.log_prior(model.coefficients)
        proposal, _, accepted, rate = reflection_step(
            self._flat(model), log_current, log_target, apply, linear,
            lambda generator: self._conditional_noise(generator, beta),
            lambda c: conjugate_gradient(apply, c, precondition, self.settings.solver_iterations),
            rng)
        if accepted:
            model.coefficients = {m: v.copy() for m, v in self._maps(proposal).items()}
            self.grids, self.slices = evaluated["grids"], evaluated["slices"]
            self.log_likelihood = evaluated["values"]
        return rate

    # ------------------------------------------------------------------ the run
    def _adapt(self, name, rate, target):
        """Robbins–Monro on the log step; from the settle phase on with a gain decaying as
        ``1 / √k`` (acceptances far from equilibrium are near 1 and would inflate it)."""
        if np.isfinite(rate):
            settled = self.state.sweep - self.settings.settle_start
            gain = 1.0 if settled < 0 else 1.0 / np.sqrt(1.0 + settled)
            step = self.state.steps[name] * np.exp(gain * (rate - target))
            self.state.steps[name] = float(min(step, MAX_STEPS.get(name, np.inf)))

    def _record(self):
        st, model = self.state, self.model
        st.tau_samples = np.concatenate([st.tau_samples, st.states[None].astype(np.float32)])
        if st.map_size != model.size:
            shape = st.map_sum.shape[:2] + (model.size,) * 3
            st.map_sum, st.map_square_sum = np.zeros(shape), np.zeros(shape)
            st.map_size = model.size
        for s_index, (_, _, states) in enumerate(self.series):
            for j, vector in enumerate(states):
                volume = total_map(model, vector)
                st.map_sum[s_index, j] += volume
                st.map_square_sum[s_index, j] += volume ** 2
        st.contrast_sum += np.exp(st.log_contrast)
        st.shift_sum += st.shifts
        st.kept += 1

    def _trace(self, name, value):
        self.state.traces.setdefault(name, []).append(float(value))

    def _save(self):
        if self.checkpoint is not None:
            st = self.state
            st.coefficients = self._flat(self.model)
            st.save(self.checkpoint)

    def run(self):
        """Run the chain to ``settings.sweeps``; returns the final :class:`ChainState`."""
        s, st = self.settings, self.state
        rng = np.random.default_rng()
        rng.bit_generator.state = st.rng_state
        self._current_gradient = None
        while st.sweep < s.sweeps:
            band = s.band_fraction(st.sweep) * self.data.band
            if self.model is None or band != st.band:
                self._build(band)
            elif st.sweep < s.settle_start and st.sweep % NOISE_EVERY == 0:
                self._update_noise()
            beta = s.temperature(st.sweep)
            if beta != self.filter_temperature:
                self._precondition()
            warming = st.sweep < s.warmup * s.burn_in
            if warming:
                # Coefficients first: they follow the states (from the spectral start) before
                # the states move against them.
                self._search_coefficients(beta)
            if st.sweep < s.settle_start or st.sweep >= s.burn_in:
                # Not while the step sizes settle, so they adapt to the random walk alone.
                self._move_states_gridded(rng, beta)
            rates = {"tau": self._move_states(rng, beta)}
            if s.sample_shifts:
                rates["shift"] = self._move_shifts(rng, beta)
            if s.sample_contrast:
                rates["contrast"] = self._move_contrast(rng, beta)
            if s.sample_rotations:
                rates["rotation"] = self._move_rotations(rng, beta)
            if s.reparametrise and not warming and self.columns:
                rates["warp"] = self._move_warps(rng, beta)
            self._current_gradient = None
            if not warming and s.coefficient_draw == "exact":
                rates["exact"] = self._move_coefficients_exact(rng, beta)
            elif not warming:
                rates["mala"] = self._move_coefficients(rng, beta)
            if st.sweep < s.burn_in:
                for name, rate in rates.items():
                    if name not in st.steps:
                        continue
                    self._adapt(name, rate, MALA_ACCEPTANCE if name == "mala"
                                else RANDOM_WALK_ACCEPTANCE)
            st.sweep += 1
            self._record_traces(rates, beta)
            if st.sweep > s.burn_in and (st.sweep - s.burn_in) % s.thin == 0:
                self._record()
            st.rng_state = rng.bit_generator.state
            if st.sweep % s.checkpoint_every == 0 or st.sweep == s.sweeps:
                self._save()
            self.report(f"chain {self.index + 1}: sweep {st.sweep}/{s.sweeps}, band "
                        f"{st.band:.1f}, log-likelihood {self.log_likelihood.sum():.4g}, "
                        f"acceptance " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()),
                        st.sweep, s.sweeps)
        st.coefficients = self._flat(self.model) if self.model is not None else st.coefficients
        return st

    def _record_traces(self, rates, beta):
        st, model = self.state, self.model
        self._trace("log_likelihood", self.log_likelihood.sum())
        self._trace("temperature", beta)
        self._trace("band", st.band)
        for name, rate in rates.items():
            self._trace(f"acceptance_{name}", rate)
        for name, step in st.steps.items():
            self._trace(f"step_{name}", step)
        norm = sum(float(np.sum(model.coefficients[m][1:] ** 2)) for m in model.owners)
        self._trace("heterogeneity_norm", np.sqrt(norm) * (self.data.box / model.size) ** 1.5)
        for k in range(min(TRACKED_PARTICLES, self.data.count)):
            for j in range(self.state_size):
                self._trace(f"tau_{k}_{j}", st.states[k, j])


def run_chain(problem, settings, chain=0, checkpoint=None, progress=None):
    """Run (or continue, from ``checkpoint``) one chain; returns its :class:`ChainState`."""
    return Chain(problem, settings, chain, checkpoint, progress).run()
