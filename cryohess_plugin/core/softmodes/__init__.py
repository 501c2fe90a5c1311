"""Softest modes of the Hessian of the cryo-EM log-likelihood (Rangan et al.).

:mod:`.analysis` runs the method for an experiment (:func:`analyse_soft_modes`) and
holds its result (:class:`SoftModeAnalysis`, with its file); :mod:`.experiment` the
viewing experiment (image counts per direction and defocus group); :mod:`.noise` the
images' noise level; :mod:`.hessian` the experiment's accumulated Hessian, whose
products run on the CPU (:mod:`.products`) or a CUDA device (:mod:`.products_cuda`),
chosen once; :mod:`.solver` the eigensolver and the displayed quantities;
:mod:`.sampling` what the views sample (the null space and the solver's coordinates);
:mod:`.layout` the real parametrisation of the shell coefficients; and
:mod:`.per_image` the slow per-image reference form.  Results are stored with
:mod:`..storage`.  The
method in our words: ``docs/methods/hessian_soft_modes.md``.
"""
from .analysis import (EXPERIMENT_STATEMENT, FRAGILE_POSE_CHANGE_DEG, ParticleAssignment,
                       PoseChangeStatistics, SoftModeAnalysis, analyse_soft_modes,
                       analysis_memory, analysis_warnings, auto_grid_spacing,
                       particle_pose_changes)
from .experiment import (ViewingExperiment, experiment_from_distribution, experiment_from_poses,
                         particle_assignment, rebin)
from .hessian import AccumulatedHessian
from .layout import RealLayout
from .noise import (MapScale, NoiseLevel, estimate_noise_variance, marginal_noise,
                    noise_variance_for_snr)
from .sampling import NULL_THRESHOLD, SampledCoordinates, SamplingSpectrum
from .solver import (MetricCoordinates, ProjectedOperator, default_guard, per_shell_profile,
                     perturbation_size, soft_variance, softest_modes,
                     stochastic_log_determinant)

__all__ = ["FRAGILE_POSE_CHANGE_DEG", "ParticleAssignment", "PoseChangeStatistics",
           "SoftModeAnalysis", "analyse_soft_modes", "analysis_memory", "analysis_warnings",
           "auto_grid_spacing", "particle_pose_changes", "MapScale", "NoiseLevel",
           "estimate_noise_variance", "marginal_noise", "noise_variance_for_snr",
           "AccumulatedHessian", "ViewingExperiment",
           "experiment_from_distribution", "experiment_from_poses", "particle_assignment",
           "rebin", "RealLayout", "NULL_THRESHOLD", "SampledCoordinates", "SamplingSpectrum",
           "MetricCoordinates", "ProjectedOperator", "default_guard", "softest_modes",
           "stochastic_log_determinant", "per_shell_profile", "perturbation_size",
           "soft_variance", "EXPERIMENT_STATEMENT"]
