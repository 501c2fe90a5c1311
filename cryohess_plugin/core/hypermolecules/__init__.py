"""Hyper-molecules: continuous heterogeneity sampled by MCMC (docs/methods/hyper_molecules.md).

A map that varies smoothly with a state ``τ ∈ [0, 1]^d`` (or a composite of parts, each
with its own state), sampled jointly with every particle's state, shift, contrast and
(optionally) rotation, so that the maps along ``τ`` and every particle's ``τ`` come with
posterior uncertainty.
"""
from .conditional import conjugate_gradient, reflection_step
from .basis import MAX_STATE_DIMENSION, StateBasis, fourier_resample, soft_ball, working_box
from .diagnostics import (HyperMoleculeResult, effective_sample_size, split_rhat,
                          summarize_chains)
from .evaluation import (interval_coverage, matched_true_states, rank_correlation,
                         true_state_on_sampled_scale)
from .data import ParticleData, prepare_particles
from .likelihood import BandLikelihood
from .model import Component, HyperMolecule, validate_components
from .sampler import (Chain, ChainState, HyperMoleculeProblem, SamplerSettings, langevin_step,
                      map_series, run_chain, total_map)

__all__ = ["conjugate_gradient", "reflection_step", "MAX_STATE_DIMENSION", "StateBasis", "fourier_resample", "soft_ball", "working_box",
           "HyperMoleculeResult", "effective_sample_size", "split_rhat",
           "summarize_chains", "interval_coverage", "matched_true_states", "rank_correlation",
           "true_state_on_sampled_scale", "ParticleData", "prepare_particles", "BandLikelihood", "Component", "HyperMolecule",
           "validate_components", "Chain", "ChainState", "HyperMoleculeProblem",
           "SamplerSettings", "langevin_step", "map_series", "run_chain", "total_map"]
