"""Convergence diagnostics and the posterior summary of several chains
(docs/methods/hyper_molecules.md §6).

* :func:`split_rhat`: the potential scale reduction of chains split in halves
  (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4);
* :func:`effective_sample_size`: the multi-chain ESS with Geyer's initial positive
  sequence of autocorrelations (same reference, §11.5);
* :func:`summarize_chains`: chains put on one orientation of τ (the posterior is symmetric
  under ``τ → 1 - τ``, which maps coefficient ``q`` to ``s_q`` times itself), pooled maps
  along τ with their across-sample spread, every particle's τ mean, spread and central
  90 % interval, and the diagnostics of the traced scalars.
"""
from dataclasses import dataclass

import numpy as np

from ..storage import load_fields, save_fields
from .basis import fourier_resample


def split_rhat(draws):
    """Split R-hat of ``(chains, draws)`` samples of one scalar (NaN with < 4 draws)."""
    draws = np.asarray(draws, dtype=np.float64)
    half = draws.shape[1] // 2
    if half < 2:
        return float("nan")
    split = np.concatenate([draws[:, :half], draws[:, half:2 * half]])
    within = split.var(axis=1, ddof=1).mean()
    between = half * split.mean(axis=1).var(ddof=1)
    if within <= 0:
        return 1.0 if between <= 0 else float("inf")
    pooled = (half - 1) / half * within + between / half
    return float(np.sqrt(pooled / within))


def effective_sample_size(draws):
    """Multi-chain effective sample size of ``(chains, draws)`` samples of one scalar."""
    draws = np.asarray(draws, dtype=np.float64)
    chains, count = draws.shape
    if count < 4:
        return float("nan")
    centred = draws - draws.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * count, axis=1)
    autocovariance = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :count] / count
    within = draws.var(axis=1, ddof=1).mean()
    pooled = (count - 1) / count * within + (draws.mean(axis=1).var(ddof=1) if chains > 1 else 0)
    if pooled <= 0:
        return float(chains * count)
    rho = 1.0 - (within - autocovariance.mean(axis=0)) / pooled
    rho[0] = 1.0
    total, lag = 0.0, 0
    while lag + 1 < count:
        pair = rho[lag] + rho[lag + 1]
        if pair < 0:
            break
        total += pair
        lag += 2
    tau = max(2.0 * total - 1.0, 1.0 / np.log10(max(chains * count, 10)))
    return float(chains * count / tau)


@dataclass
class HyperMoleculeResult:
    """The posterior summary of a hyper-molecule run.

    :param tau_grid: ``(map_count,)`` states of the maps along every series.
    :param series: ``(S, 2)`` (component, axis) of each map series.
    :param mean_maps: ``(S, map_count, D, D, D)`` posterior mean maps along τ.
    :param std_maps: same shape: across-sample standard deviation.
    :param tau_mean, tau_std: ``(n, state_size)`` per-particle posterior mean and spread.
    :param tau_interval: ``(n, state_size, 2)`` central 90 % interval of τ.
    :param contrast_mean: ``(n,)``.  :param shift_mean: ``(n, 2)`` core shifts (pixels).
    :param rotations: ``(n, 3, 3)`` last rotations of the first chain.
    :param reversed_chains: ``(chains,)`` True where a chain's τ was reversed.
    :param rhat, ess: ``{trace name: value}``.
    :param traces: ``{"chain{c}/{name}": list}``.
    :param component_names: names of the components.
    :param samples: kept samples per chain.
    """
    tau_grid: np.ndarray
    series: np.ndarray
    tau_mean: np.ndarray
    tau_std: np.ndarray
    tau_interval: np.ndarray
    contrast_mean: np.ndarray
    shift_mean: np.ndarray
    rotations: np.ndarray
    reversed_chains: np.ndarray
    rhat: dict
    ess: dict
    traces: dict
    component_names: np.ndarray
    samples: int
    mean_maps: np.ndarray = None
    std_maps: np.ndarray = None

    def save(self, path):
        save_fields(path, self)

    @classmethod
    def load(cls, path, maps=True):
        return load_fields(cls, path, skip=() if maps else ("mean_maps", "std_maps"))

    def worst_rhat(self):
        values = [v for v in self.rhat.values() if np.isfinite(v)]
        return max(values) if values else float("nan")


#: Traced scalars whose R-hat and ESS are reported.
DIAGNOSED = ("log_likelihood", "heterogeneity_norm")


def summarize_chains(states, series, box, component_names, burn_in):
    """Pool chains into a :class:`HyperMoleculeResult`.

    :param states: final :class:`.sampler.ChainState` of every chain.
    :param series: :func:`.sampler.map_series` of the problem.
    :param box: particle box ``D`` (maps are returned at this size).
    :param burn_in: sweeps discarded from the traces for the diagnostics.
    """
    reference = states[0].tau_samples.mean(axis=0)
    reversed_chains, tau_samples, map_sum, map_square = [], [], 0.0, 0.0
    for state in states:
        tau = state.tau_samples
        flip = bool(reference.size and np.sum([np.corrcoef(reference[:, j], tau.mean(0)[:, j])[0, 1]
                                               for j in range(reference.shape[1])]) < 0)
        reversed_chains.append(flip)
        tau_samples.append(1.0 - tau if flip else tau)
        sums, squares = state.map_sum, state.map_square_sum
        if flip:
            sums, squares = sums[:, ::-1], squares[:, ::-1]
        map_sum = map_sum + sums
        map_square = map_square + squares
    kept = sum(state.kept for state in states)
    mean = map_sum / kept
    spread = np.sqrt(np.maximum(map_square / kept - mean ** 2, 0.0))
    shape = mean.shape[:2]
    mean_maps = np.stack([fourier_resample(v, box) for v in mean.reshape(-1, *mean.shape[2:])])
    std_maps = np.stack([fourier_resample(v, box) for v in spread.reshape(-1, *mean.shape[2:])])
    pooled = np.concatenate(tau_samples)
    traces, rhat, ess = {}, {}, {}
    names = sorted({name for state in states for name in state.traces})
    for name in names:
        for c, state in enumerate(states):
            values = np.asarray(state.traces.get(name, []), dtype=np.float64)
            if name.startswith("tau_") and reversed_chains[c]:
                values = 1.0 - values
            traces[f"chain{c}/{name}"] = values.tolist()
        if name in DIAGNOSED or name.startswith("tau_"):
            draws = np.array([np.asarray(s.traces[name], np.float64)[burn_in:] for s in states])
            if name.startswith("tau_"):
                draws = np.where(np.array(reversed_chains)[:, None], 1.0 - draws, draws)
            rhat[name], ess[name] = split_rhat(draws), effective_sample_size(draws)
    return HyperMoleculeResult(
        tau_grid=np.linspace(0.0, 1.0, shape[1]),
        series=np.array([(-1 if c is None else c, -1 if a is None else a)
                         for c, a, _ in series]),
        mean_maps=mean_maps.reshape(shape + (box,) * 3).astype(np.float32),
        std_maps=std_maps.reshape(shape + (box,) * 3).astype(np.float32),
        tau_mean=pooled.mean(axis=0), tau_std=pooled.std(axis=0),
        tau_interval=np.stack([np.quantile(pooled, 0.05, axis=0),
                               np.quantile(pooled, 0.95, axis=0)], -1),
        contrast_mean=sum(s.contrast_sum for s in states) / kept,
        shift_mean=sum(s.shift_sum for s in states) / kept,
        rotations=states[0].rotations, reversed_chains=np.array(reversed_chains),
        rhat=rhat, ess=ess, traces=traces, component_names=np.array(component_names),
        samples=kept)
