"""CUDA posterior kernels against the CPU kernels, on the numba CUDA simulator.

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the
comparison runs in a child interpreter (this module run by ``tests/cudasim.py``)
with the simulator switched on; the child computes CPU and CUDA results side by
side and prints their relative differences as JSON.  The simulator runs every
thread in Python, hence the tiny boxes and sample counts.
"""
import numpy as np
import pytest

from .cudasim import print_result, simulated_fixture

KERNELS = {"linear": 0, "cubic": 1}
BOXES = (8, 9)
CASES = [(interpolation, box) for interpolation in KERNELS for box in BOXES]
TOLERANCE = 1e-12


def case_name(what, interpolation, box):
    return f"{what}-{interpolation}-box{box}"


def _simulated_errors():
    from cryohess_plugin.core import rotations
    from cryohess_plugin.core.posterior.problem import PosteriorProblem
    from cryohess_plugin.core.kernels import posterior_cpu, posterior_cuda, resolve_backend

    rng = np.random.default_rng(11)
    errors = {"auto_backend": resolve_backend("auto")}
    for interpolation, box in CASES:
        n, m = 3, 20
        rows = np.ascontiguousarray(rotations.random_rotations(n, rng)[:, :2, :])
        # Some samples reach past the grid edge, so the bounds checks are exercised.
        kx, ky = rng.uniform(-box / 2, box / 2, (2, m))
        weights = rng.random((n, m))
        grid = rng.random((box,) * 3)
        start = rng.random((box,) * 3)
        cpu_density, cuda_density = start.copy(), start.copy()
        posterior_cpu.sampling_density(weights, rows, kx, ky, KERNELS[interpolation], cpu_density)
        posterior_cuda.sampling_density(weights, rows, kx, ky, KERNELS[interpolation], cuda_density)
        errors[case_name("density", interpolation, box)] = float(
            np.abs(cuda_density - cpu_density).max() / np.abs(cpu_density - start).max())
        cpu_out, cuda_out = np.empty((n, m)), np.empty((n, m))
        posterior_cpu.gather_squared(grid, rows, kx, ky, KERNELS[interpolation], cpu_out)
        posterior_cuda.gather_squared(grid, rows, kx, ky, KERNELS[interpolation], cuda_out)
        errors[case_name("gather", interpolation, box)] = float(
            np.abs(cuda_out - cpu_out).max() / np.abs(cpu_out).max())

    # Dispatch: a problem on the CUDA backend uses the CUDA kernels and agrees with CPU.
    box = 8
    images = rng.standard_normal((2, box, box))
    poses = rotations.random_rotations(2, rng)
    on_cpu = PosteriorProblem(images, poses, backend="cpu")
    on_cuda = PosteriorProblem(images, poses, backend="cuda")
    errors["dispatch"] = on_cuda._kernels is posterior_cuda and on_cpu._kernels is posterior_cpu
    density = on_cpu.sampling_density()
    errors["problem_density"] = float(np.abs(on_cuda.sampling_density() - density).max()
                                      / density.max())
    variance = rng.random((box,) * 3)
    gathered = on_cpu.gathered_variance(variance, slice(0, 2))
    errors["problem_gather"] = float(np.abs(on_cuda.gathered_variance(variance, slice(0, 2))
                                            - gathered).max() / gathered.max())
    return errors


simulated = simulated_fixture(__name__)


def test_auto_picks_cuda_under_simulator(simulated):
    assert simulated["auto_backend"] == "cuda"


@pytest.mark.parametrize("interpolation, box", CASES)
def test_cuda_sampling_density_matches_cpu(simulated, interpolation, box):
    assert simulated[case_name("density", interpolation, box)] <= TOLERANCE


@pytest.mark.parametrize("interpolation, box", CASES)
def test_cuda_gather_squared_matches_cpu(simulated, interpolation, box):
    assert simulated[case_name("gather", interpolation, box)] <= TOLERANCE


def test_problem_dispatches_to_the_cuda_kernels(simulated):
    assert simulated["dispatch"]
    assert simulated["problem_density"] <= TOLERANCE
    assert simulated["problem_gather"] <= TOLERANCE


if __name__ == "__main__":
    print_result(_simulated_errors())
