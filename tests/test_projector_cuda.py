"""CUDA projector kernels against the CPU kernels, on the numba CUDA simulator.

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the
comparisons run in a child interpreter (this module run by ``tests/cudasim.py``) with the
simulator switched on; the child computes CPU and CUDA results side by side
and prints their relative differences as JSON.  The simulator is slow, hence
the tiny boxes.
"""
import numpy as np
import pytest

from .cudasim import print_result, run_child, simulated_fixture

DTYPES = {"float64": np.float64, "float32": np.float32}
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
INTERPOLATION_NAMES = ("linear", "cubic")
#: Even box with a CTF, odd box without one (the empty "no CTF" marker).
BOXES = {8: True, 9: False}
N_IMAGES = 3

KERNEL_CASES = [(op, dtype, interpolation, box) for op in ("forward", "adjoint", "gradient")
                for dtype in DTYPES for interpolation in INTERPOLATION_NAMES for box in BOXES]
API_CASES = [(op, dtype, interpolation) for op in ("project", "backproject", "pose_derivatives")
             for dtype in DTYPES for interpolation in INTERPOLATION_NAMES]


def kernel_case_name(op, dtype, interpolation, box):
    return f"{op}-{dtype}-{interpolation}-box{box}"


def api_case_name(op, dtype, interpolation):
    return f"api-{op}-{dtype}-{interpolation}"


def _relative(value, reference):
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def _rotations(rng, count):
    """Random proper rotations from QR factorisations."""
    q, r = np.linalg.qr(rng.standard_normal((count, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q * np.linalg.det(q)[:, None, None]


def _kernel_errors(rng):
    from cryohess_plugin.core import fourier
    from cryohess_plugin.core.kernels import INTERPOLATIONS, projector_cpu, projector_cuda

    errors = {}
    for dtype, interpolation, box in [(d, k, b) for d in DTYPES for k in INTERPOLATION_NAMES for b in BOXES]:
        real = np.dtype(DTYPES[dtype])
        complex_dtype = np.result_type(real, np.complex64)
        interpolation_id = INTERPOLATIONS[interpolation]
        size = 2 * box
        rows = np.ascontiguousarray(_rotations(rng, N_IMAGES)[:, :2, :] * 2)
        hp = fourier.HalfPlane.disc(box)
        # Corner frequencies put every tap outside the grid: samples read as zero.
        corner = box / 2
        kx = np.concatenate([hp.kx, [corner, -corner, corner]])
        ky = np.concatenate([hp.ky, [corner, corner, -corner]])
        m = kx.size
        shifts = rng.uniform(-2, 2, (N_IMAGES, 2))
        shifts[0] = 0.0  # the kernels skip the phase of unshifted images
        ctf = (rng.uniform(-1, 1, (N_IMAGES, m)).astype(real) if BOXES[box]
               else projector_cpu.empty_ctf(real))
        grid = (rng.standard_normal((size,) * 3)
                + 1j * rng.standard_normal((size,) * 3)).astype(complex_dtype)
        common = (rows, shifts, kx, ky, ctf, box, interpolation_id)

        cpu_out = np.empty((N_IMAGES, m), complex_dtype)
        cuda_out = np.empty((N_IMAGES, m), complex_dtype)
        projector_cpu.slice_forward(grid, *common, cpu_out)
        projector_cuda.slice_forward(grid, *common, cuda_out)
        errors[kernel_case_name("forward", dtype, interpolation, box)] = _relative(cuda_out, cpu_out)

        values = (rng.standard_normal((N_IMAGES, m))
                  + 1j * rng.standard_normal((N_IMAGES, m))).astype(complex_dtype)
        # Both start from the same non-zero grid: the adjoint adds into it.
        cpu_grid = grid.copy()
        cuda_grid = grid.copy()
        projector_cpu.slice_adjoint(values, *common, cpu_grid)
        projector_cuda.slice_adjoint(values, *common, cuda_grid)
        errors[kernel_case_name("adjoint", dtype, interpolation, box)] = _relative(
            cuda_grid - grid, cpu_grid - grid)

        cpu_values = np.empty((N_IMAGES, m), np.complex128)
        cuda_values = np.empty((N_IMAGES, m), np.complex128)
        cpu_grad = np.empty((N_IMAGES, m, 3), np.complex128)
        cuda_grad = np.empty((N_IMAGES, m, 3), np.complex128)
        projector_cpu.slice_gradient(grid, rows, kx, ky, interpolation_id, cpu_values, cpu_grad)
        projector_cuda.slice_gradient(grid, rows, kx, ky, interpolation_id, cuda_values, cuda_grad)
        errors[kernel_case_name("gradient", dtype, interpolation, box)] = max(
            _relative(cuda_values, cpu_values), _relative(cuda_grad, cpu_grad))
    return errors


def _api_errors(rng):
    from cryohess_plugin.core.projector import FourierSliceProjector

    box = 8
    errors = {}
    for dtype, interpolation in [(d, k) for d in DTYPES for k in INTERPOLATION_NAMES]:
        volume = rng.standard_normal((box,) * 3)
        cpu = FourierSliceProjector(volume, interpolation=interpolation, dtype=DTYPES[dtype], backend="cpu")
        gpu = FourierSliceProjector(volume, interpolation=interpolation, dtype=DTYPES[dtype], backend="cuda")
        assert gpu.operator.backend == "cuda"
        poses = _rotations(rng, N_IMAGES)
        shifts = rng.uniform(-2, 2, (N_IMAGES, 2))
        ctf = rng.uniform(-1, 1, (N_IMAGES, cpu.half_plane.size))
        images = rng.standard_normal((N_IMAGES, box, box))

        errors[api_case_name("project", dtype, interpolation)] = _relative(
            gpu.project(poses, shifts, ctf), cpu.project(poses, shifts, ctf))
        errors[api_case_name("backproject", dtype, interpolation)] = _relative(
            gpu.backproject(images, poses, shifts, ctf), cpu.backproject(images, poses, shifts, ctf))
        cpu_derivatives = cpu.pose_derivatives(poses, shifts, ctf)
        gpu_derivatives = gpu.pose_derivatives(poses, shifts, ctf)
        errors[api_case_name("pose_derivatives", dtype, interpolation)] = max(
            _relative(getattr(gpu_derivatives, field), getattr(cpu_derivatives, field))
            for field in ("images", "d_rotation", "d_shift"))
    return errors


def _simulated_errors():
    from cryohess_plugin.core.kernels import resolve_backend

    rng = np.random.default_rng(2024)
    return {"auto_backend": resolve_backend("auto"), **_kernel_errors(rng), **_api_errors(rng)}


simulated = simulated_fixture(__name__)


def test_auto_picks_cuda_under_simulator(simulated):
    assert simulated["auto_backend"] == "cuda"


@pytest.mark.parametrize("op, dtype, interpolation, box", KERNEL_CASES)
def test_cuda_kernel_matches_cpu(simulated, op, dtype, interpolation, box):
    assert simulated[kernel_case_name(op, dtype, interpolation, box)] <= TOLERANCE[dtype]


@pytest.mark.parametrize("op, dtype, interpolation", API_CASES)
def test_cuda_projector_matches_cpu(simulated, op, dtype, interpolation):
    assert simulated[api_case_name(op, dtype, interpolation)] <= TOLERANCE[dtype]


_UNAVAILABLE_CHECK = """
import json
from numba import cuda
from cryohess_plugin.core.kernels import BackendUnavailableError, resolve_backend
from cryohess_plugin.core.projector import SliceOperator
result = {"device": cuda.is_available(), "auto": resolve_backend("auto")}
for name, call in [("resolve", lambda: resolve_backend("cuda")),
                   ("operator", lambda: SliceOperator(8, backend="cuda"))]:
    try:
        call()
        result[name] = "no error"
    except BackendUnavailableError:
        result[name] = "raised"
print(json.dumps(result))
"""


def test_cuda_unavailable_without_device_or_simulator():
    result = run_child(["-c", _UNAVAILABLE_CHECK], simulator=False)
    if result["device"]:
        pytest.skip("a CUDA device is present")
    assert result["resolve"] == "raised"
    assert result["operator"] == "raised"
    assert result["auto"] == "cpu"


if __name__ == "__main__":
    print_result(_simulated_errors())
