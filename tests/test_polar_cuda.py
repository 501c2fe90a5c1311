"""CUDA polar-transform kernel against the CPU kernel, on the numba CUDA simulator.

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the
comparison runs in a child interpreter (this module run by ``tests/cudasim.py``) with the
simulator switched on; the child computes CPU and CUDA results side by side
and prints their relative differences as JSON.  The simulator is slow, hence
the tiny boxes.
"""
import numpy as np
import pytest

from .cudasim import print_result, simulated_fixture

DTYPES = {"float64": np.float64, "float32": np.float32}
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
BOXES = (16, 15)
CASES = [(dtype, box) for dtype in DTYPES for box in BOXES]


def case_name(dtype, box):
    return f"{dtype}-box{box}"


def _simulated_errors():
    from cryohess_plugin.core.kernels import resolve_backend
    from cryohess_plugin.core.polar import PolarGrid, polar_transform

    rng = np.random.default_rng(2024)
    errors = {"auto_backend": resolve_backend("auto")}
    for dtype, box in CASES:
        grid = PolarGrid.from_max_frequency(box, box / 4)
        images = rng.standard_normal((3, box, box))
        cpu = polar_transform(images, grid, backend="cpu", dtype=DTYPES[dtype])
        cuda = polar_transform(images, grid, backend="cuda", dtype=DTYPES[dtype])
        assert cuda.dtype == cpu.dtype
        errors[case_name(dtype, box)] = float(np.abs(cuda - cpu).max() / np.abs(cpu).max())
    return errors


simulated = simulated_fixture(__name__)


def test_auto_picks_cuda_under_simulator(simulated):
    assert simulated["auto_backend"] == "cuda"


@pytest.mark.parametrize("dtype, box", CASES)
def test_cuda_polar_transform_matches_cpu(simulated, dtype, box):
    assert simulated[case_name(dtype, box)] <= TOLERANCE[dtype]


if __name__ == "__main__":
    print_result(_simulated_errors())
