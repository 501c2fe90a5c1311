"""Micrograph EM (Kreymer, Singer & Bendory): an ab-initio map from whole micrographs,
without particle picking.  ``docs/methods/micrograph_em.md`` describes the method; the
modules follow its sections: :mod:`.basis` (§2), :mod:`.projection` (§3), :mod:`.patches`
(§4), :mod:`.estep` (§5), :mod:`.mstep` (§6), :mod:`.em` (§7), :mod:`.picking` (§8) and
:mod:`.evaluate` (§9)."""
from . import basis, em, estep, evaluate, mstep, patches, picking, projection
from .basis import (MIN_PATCH_SIZE, SphericalBesselBasis, max_usable_degree, radial_counts,
                    spherical_bessel_zeros)
from .em import (EMSettings, EMState, MicrographEMResult, combine_starts,
                 initial_noise_variance, run_micrograph_em, run_start)
from .estep import Expectation, Model, expectation
from .evaluate import (SURFACE_SIGMAS, Alignment, align_coefficients, pairwise_fsc,
                       resample_volume, surface_level)
from .mstep import solve_volume, update_noise, update_shift_prior, volume_system
from .patches import (PatchSet, cut_patches, fourier_bin, nonempty_shifts, true_states)
from .picking import (PickingCurves, Picks, empty_f1, model_snr, original_pixel_centres,
                      pick_centres, pick_patches, picking_curves, reference_states,
                      shift_accuracy)
from .projection import (ProjectionOperator, ctf_image, grid_resolution_for_count,
                         quaternion_grid)

__all__ = ["basis", "em", "estep", "evaluate", "mstep", "patches", "picking", "projection",
           "MIN_PATCH_SIZE", "SphericalBesselBasis", "max_usable_degree", "radial_counts",
           "spherical_bessel_zeros", "EMSettings", "EMState", "MicrographEMResult",
           "combine_starts", "initial_noise_variance", "run_micrograph_em", "run_start",
           "Expectation", "Model", "expectation", "SURFACE_SIGMAS", "Alignment",
           "align_coefficients", "pairwise_fsc", "resample_volume", "surface_level", "solve_volume",
           "update_noise", "update_shift_prior",
           "volume_system", "PatchSet", "cut_patches", "fourier_bin", "nonempty_shifts",
           "true_states", "PickingCurves", "Picks", "empty_f1", "model_snr",
           "original_pixel_centres", "pick_centres", "pick_patches", "picking_curves",
           "reference_states", "shift_accuracy", "ProjectionOperator", "ctf_image",
           "grid_resolution_for_count",
           "quaternion_grid"]
