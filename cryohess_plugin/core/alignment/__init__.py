"""Rigid alignment with the radial-SVD (Rangan 2022): images against templates
(:mod:`.radial_svd`), with sub-pixel translations by the factorised translation
kernel (:mod:`.translations`), volumes against a reference over SO(3) with the
degree-SVD (:mod:`.volumes`), the paper's landscape metrics (:mod:`.metrics`), and
the slow real-space search they are tested against (:mod:`.brute_force`).
"""
from .metrics import LandscapeMetrics, backward_percentiles, landscape_metrics
from .brute_force import BruteForceAlignment, brute_force_align, rotated_inner_products
from .radial_svd import (KERNEL_CENTRINGS, MIN_RANK, PAPER_MAX_FREQUENCY, AlignmentResult,
                         RadialSVDAligner, alignment_grid, choose_rank, group_ctfs,
                         polarity_against_templates, projection_templates, radial_kernel,
                         rotations_from_alignment, shift_grid)
from .translations import (DEFAULT_SHIFT_STEP, SHIFT_RANGE_FRACTION, ParticleSearch, PolarShifts,
                           TranslationFactorization, align_translations, coarse_shift_step,
                           default_max_shift, resolve_max_shift, translation_aware_kernel)
from .volumes import VolumeAligner, VolumeAlignmentResult, rotate_volume, shell_grid, table_bytes

__all__ = ["LandscapeMetrics", "backward_percentiles", "landscape_metrics",
           "BruteForceAlignment", "brute_force_align", "rotated_inner_products",
           "KERNEL_CENTRINGS", "MIN_RANK", "PAPER_MAX_FREQUENCY", "AlignmentResult",
           "RadialSVDAligner", "alignment_grid", "choose_rank", "group_ctfs",
           "polarity_against_templates", "projection_templates", "radial_kernel",
           "rotations_from_alignment", "shift_grid",
           "DEFAULT_SHIFT_STEP", "SHIFT_RANGE_FRACTION", "ParticleSearch", "PolarShifts", "TranslationFactorization",
           "align_translations", "coarse_shift_step", "default_max_shift", "resolve_max_shift",
           "translation_aware_kernel",
           "VolumeAligner", "VolumeAlignmentResult", "rotate_volume", "shell_grid",
           "table_bytes"]
