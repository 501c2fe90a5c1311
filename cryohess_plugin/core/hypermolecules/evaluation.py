"""Comparisons of a hyper-molecule posterior with a known truth (docs/methods/hyper_molecules.md §7).

The state coordinate is identified only up to a monotone warp (and reversal), so τ is
compared by rank (Spearman's ρ), a true state is carried onto the sampled scale through
the monotone curve of the posterior means, and a map at sampled state ``g`` is compared
with the true map at the median true state of the particles sampled near ``g``.
"""
import numpy as np
from scipy.stats import spearmanr


def rank_correlation(tau_mean, tau_true):
    """Spearman's ρ of posterior-mean states against true states."""
    return float(spearmanr(tau_mean, tau_true).correlation)


def true_state_on_sampled_scale(tau_mean, tau_true, bins=20):
    """Each true state carried to the sampled scale: the running median of the posterior
    means in bins of true state, made monotone and interpolated."""
    tau_mean, tau_true = np.asarray(tau_mean), np.asarray(tau_true)
    edges = np.quantile(tau_true, np.linspace(0, 1, bins + 1))
    centres, medians = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (tau_true >= lo) & (tau_true <= hi)
        if inside.any():
            centres.append(np.median(tau_true[inside]))
            medians.append(np.median(tau_mean[inside]))
    centres, medians = np.array(centres), np.array(medians)
    increasing = rank_correlation(tau_mean, tau_true) >= 0
    medians = (np.maximum.accumulate(medians) if increasing
               else np.minimum.accumulate(medians))
    return np.interp(tau_true, centres, medians)


def interval_coverage(tau_interval, tau_mean, tau_true):
    """Share of particles whose true state (on the sampled scale) lies in their interval.

    :param tau_interval: ``(n, 2)`` central interval of each particle's τ.
    """
    mapped = true_state_on_sampled_scale(tau_mean, tau_true)
    inside = (mapped >= tau_interval[:, 0]) & (mapped <= tau_interval[:, 1])
    return float(inside.mean())


def matched_true_states(grid, tau_mean, tau_true, width=0.05):
    """For every sampled state ``g`` of ``grid``, the median true state of the particles
    whose posterior mean lies within ``width`` of it (NaN where none does)."""
    tau_mean, tau_true = np.asarray(tau_mean), np.asarray(tau_true)
    out = np.full(len(grid), np.nan)
    for i, g in enumerate(grid):
        near = np.abs(tau_mean - g) <= width
        if near.sum() >= 5:
            out[i] = np.median(tau_true[near])
    return out
