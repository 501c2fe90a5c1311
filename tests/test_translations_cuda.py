"""CUDA bound kernel of the FTK search, and the whole search with a CUDA aligner, against
the CPU, on the numba simulator (or the device, ``tests/cudasim.py``) in a child interpreter.
"""
import numpy as np

from .cudasim import print_result, simulated_fixture


def _simulated_errors():
    from cryohess_plugin.core.kernels import translations_cpu, translations_cuda
    from cryohess_plugin.core.polar import PolarGrid
    from cryohess_plugin.core.alignment.radial_svd import RadialSVDAligner, shift_grid
    from cryohess_plugin.core.alignment.translations import (PolarShifts, align_translations,
                                                             coarse_shift_step)
    from .alignment_data import blob_polar

    rng = np.random.default_rng(9)
    errors = {}
    for name, dtype in (("complex64", np.complex64), ("complex128", np.complex128)):
        spectra = (rng.standard_normal((5, 7, 6))
                   + 1j * rng.standard_normal((5, 7, 6))).astype(dtype)
        scale = rng.uniform(0.5, 2, 5).astype(spectra.real.dtype)
        cpu = np.empty((5, 7), spectra.real.dtype)
        gpu = np.empty((5, 7), spectra.real.dtype)
        translations_cpu.shift_bounds(spectra, scale, cpu)
        translations_cuda.shift_bounds(spectra, scale, gpu)
        magnitudes = np.abs(spectra.astype(np.complex128))
        reference = (2 * magnitudes.sum(-1) - magnitudes[..., 0]) * scale[:, None]
        errors[name] = [float(np.abs(cpu - reference).max() / reference.max()),
                        float(np.abs(gpu - reference).max() / reference.max())]
    # The whole search with a CUDA aligner (tiny: the simulator is slow).
    grid = PolarGrid.from_max_frequency(24, 3.0)
    templates = np.array([blob_polar(grid, offset) for offset in ((0, 0), (1, -2), (-3, 1))])
    images = np.array([blob_polar(grid, offset) for offset in ((1.5, 0.0), (1.0, -2.5))])
    results = []
    for backend in ("cpu", "cuda"):
        coarse = RadialSVDAligner(grid, templates, shifts=shift_grid(2.0, coarse_shift_step(grid)),
                                  refine_candidates=0, backend=backend)
        result = align_translations(coarse, templates, images, PolarShifts.disc(2.0), candidates=2)
        results.append(np.concatenate([result.template, result.angle, result.shift.ravel(),
                                       result.score]))
    errors["search"] = float(np.abs(results[0] - results[1]).max())
    return errors


simulated = simulated_fixture(__name__)


def test_cuda_bounds_match_cpu(simulated):
    assert max(simulated["complex64"]) <= 1e-6
    assert max(simulated["complex128"]) <= 1e-13


def test_cuda_search_matches_cpu(simulated):
    assert simulated["search"] <= 1e-5


if __name__ == "__main__":
    print_result(_simulated_errors())
