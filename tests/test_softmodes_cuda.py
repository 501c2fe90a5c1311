"""CUDA accumulated soft-mode Hessian against the CPU (BLAS) one, on the numba CUDA simulator.

The comparison runs in a child interpreter with the simulator switched on
(:mod:`tests.cudasim`); the simulator runs every thread in Python, hence a box
of 8, ``L = 4``, six directions and two defocus groups.
"""
import numpy as np
import pytest

from .cudasim import print_result, simulated_fixture

#: 8-pixel box at 1.2 cycles per box: 5 shells, L = 4, 100 real parameters.
BOX, MAX_FREQUENCY, PIXEL_SIZE = 8, 1.2, 4.0
TOLERANCE = 1e-10
CASES = ("cached", "recomputed")


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def _simulated_errors():
    from cryohess_plugin.core.softmodes import RealLayout, hessian
    from cryohess_plugin.core import spherical
    from cryohess_plugin.core.ctf import CTFParams
    from cryohess_plugin.core.kernels import soft_modes_cuda
    from cryohess_plugin.core.softmodes.analysis import analyse_soft_modes
    from cryohess_plugin.core.softmodes.experiment import ViewingExperiment
    from cryohess_plugin.core.softmodes.hessian import AccumulatedHessian
    from cryohess_plugin.core.softmodes.products import HostProducts

    rng = np.random.default_rng(5)
    groups = (CTFParams(12000, 12000, 0, 300, 2.7, 0.1), CTFParams(22000, 22000, 0, 300, 2.7, 0.1))
    shells = spherical.ShellGrid.from_max_frequency(BOX, MAX_FREQUENCY)
    layout = RealLayout(shells)
    decay = np.exp(-np.arange(shells.max_degree + 1) / 4.0)
    coefficients = layout.from_real_vector(rng.standard_normal(layout.n_parameters))
    volume_vector = layout.to_real_vector(coefficients * decay[None, :, None])
    directions = rng.standard_normal((6, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    counts = rng.uniform(0.5, 3.0, (6, 2))
    counts[1, 0] = 0.0  # an empty (direction, group)
    experiment = ViewingExperiment(directions, groups, counts, PIXEL_SIZE)

    errors = {"max_degree": shells.max_degree}
    cpu = AccumulatedHessian(shells, volume_vector, layout, experiment, PIXEL_SIZE, 0.7,
                             product_form="slices")
    on_device = {"cached": AccumulatedHessian(shells, volume_vector, layout, experiment,
                                              PIXEL_SIZE, 0.7, backend="cuda")}
    # No cache and blocks of four directions (two blocks, the last one short): the
    # harmonics are recomputed on the device into scratch at every product.
    per_direction = cpu.half * cpu.harmonics.index.shape[1] * 8
    hessian.BLOCK_BYTES = 4 * per_direction
    on_device["recomputed"] = AccumulatedHessian(shells, volume_vector, layout, experiment,
                                                 PIXEL_SIZE, 0.7, memory_budget=0, backend="cuda")
    hessian.BLOCK_BYTES = 64 << 20
    recomputed = on_device["recomputed"].products
    errors["recomputed_layout"] = (recomputed._cache is None and recomputed.block == 4
                                   and on_device["cached"].products._cache is not None)
    errors["dispatch"] = isinstance(cpu.products, HostProducts) and cpu.products._cache is not None

    # The harmonics kernel against RealHarmonics.evaluate.
    even, odd = on_device["cached"].products._cache[0]
    expected = cpu.products._cache[0]
    errors["harmonics"] = max(relative(even.copy_to_host(), expected[0]),
                              relative(odd.copy_to_host(), expected[1]))

    vectors = rng.standard_normal((2, layout.n_parameters))
    for case, operator in on_device.items():
        errors[f"pose_blocks-{case}"] = relative(operator.pose_blocks, cpu.pose_blocks)
        for implicit in (True, False):
            errors[f"matvec-{case}-{implicit}"] = max(
                relative(operator.matvec(v, implicit), cpu.matvec(v, implicit)) for v in vectors)
        errors[f"pose_change-{case}"] = relative(operator.pose_change(vectors[0]),
                                                 cpu.pose_change(vectors[0]))

    # A GEMM larger than one tile in every dimension, with ragged edges.
    from numba import cuda
    a, b = rng.standard_normal((37, 21)), rng.standard_normal((18, 21))
    c = cuda.device_array((37, 18))
    soft_modes_cuda.slice_product(cuda.to_device(a), cuda.to_device(b), c)
    errors["gemm_nt"] = relative(c.copy_to_host(), a @ b.T)
    values, start = rng.standard_normal((37, 18)), rng.standard_normal((18, 21))
    d_out = cuda.to_device(start)
    soft_modes_cuda.adjoint_product(cuda.to_device(values), cuda.to_device(a), d_out)
    errors["gemm_tn"] = relative(d_out.copy_to_host(), start + values.T @ a)

    # The whole analysis: the CUDA backend's eigenvalues equal the CPU one's.
    volume = rng.standard_normal((BOX,) * 3)
    results = {backend: analyse_soft_modes(volume, PIXEL_SIZE, experiment,
                                           BOX * PIXEL_SIZE / MAX_FREQUENCY, n_modes=2,
                                           max_products=60, log_determinant=(2, 4),
                                           backend=backend, grid_spacing_deg=None)
               for backend in ("cpu", "cuda")}
    errors["analysis_eigenvalues"] = relative(results["cuda"].eigenvalues,
                                              results["cpu"].eigenvalues)
    errors["analysis_pose_changes"] = relative(results["cuda"].pose_changes,
                                               results["cpu"].pose_changes)
    return errors


simulated = simulated_fixture(__name__)


def test_sizes_are_tiny_and_the_backends_dispatch(simulated):
    assert simulated["max_degree"] <= 4
    assert simulated["dispatch"]
    assert simulated["recomputed_layout"]


def test_device_harmonics_and_matrix_products_match_numpy(simulated):
    assert simulated["harmonics"] <= 1e-13
    assert simulated["gemm_nt"] <= 1e-13
    assert simulated["gemm_tn"] <= 1e-13


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("implicit", [True, False])
def test_cuda_matvec_matches_cpu(simulated, case, implicit):
    assert simulated[f"matvec-{case}-{implicit}"] <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_cuda_pose_change_and_blocks_match_cpu(simulated, case):
    assert simulated[f"pose_change-{case}"] <= TOLERANCE
    assert simulated[f"pose_blocks-{case}"] <= TOLERANCE


def test_analysis_on_cuda_matches_cpu(simulated):
    assert simulated["analysis_eigenvalues"] <= TOLERANCE
    assert simulated["analysis_pose_changes"] <= TOLERANCE


if __name__ == "__main__":
    print_result(_simulated_errors())
