"""Rigid alignment with the radial-SVD (Rangan 2022): images against templates
(:mod:`.radial_svd`), volumes against a reference over SO(3) with the degree-SVD
(:mod:`.volumes`), and the slow real-space search they are tested against
(:mod:`.brute_force`).
"""
from .brute_force import BruteForceAlignment, brute_force_align, rotated_inner_products
from .radial_svd import (AlignmentResult, RadialSVDAligner, choose_rank, group_ctfs,
                         radial_kernel, rotations_from_alignment, search_shifts)
from .volumes import VolumeAligner, VolumeAlignmentResult, rotate_volume, shift_grid

__all__ = ["BruteForceAlignment", "brute_force_align", "rotated_inner_products",
           "AlignmentResult", "RadialSVDAligner", "choose_rank", "group_ctfs", "radial_kernel",
           "rotations_from_alignment", "search_shifts", "VolumeAligner",
           "VolumeAlignmentResult", "rotate_volume", "shift_grid"]
