"""Softest modes of the Hessian of the cryo-EM log-likelihood (Rangan et al.).

:mod:`.analysis` runs the method for an experiment (:func:`analyse_soft_modes`);
:mod:`.hessian` holds the experiment and its accumulated Hessian, :mod:`.solver` the
eigensolver and the displayed quantities, :mod:`.layout` the real parametrisation of
the shell coefficients, and :mod:`.per_image` the slow per-image reference form.
"""
from .analysis import (SoftModeAnalysis, analyse_soft_modes, auto_grid_spacing,
                       estimate_noise_variance, marginal_noise, particle_pose_changes)
from .hessian import (AccumulatedHessian, ViewingExperiment, experiment_from_distribution,
                      experiment_from_poses, particle_assignment, rebin)
from .layout import RealLayout
from .solver import (lanczos_softest_modes, per_shell_profile, perturbation_size,
                     soft_variance)

__all__ = ["SoftModeAnalysis", "analyse_soft_modes", "auto_grid_spacing",
           "estimate_noise_variance", "marginal_noise", "particle_pose_changes",
           "AccumulatedHessian", "ViewingExperiment", "experiment_from_distribution",
           "experiment_from_poses", "particle_assignment", "rebin", "RealLayout",
           "lanczos_softest_modes", "per_shell_profile", "perturbation_size", "soft_variance"]
