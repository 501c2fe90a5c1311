"""The CUDA CTF kernel (``core/kernels/ctf_cuda.py``) against the CPU one, on numba's CUDA
simulator in a child interpreter (``tests/cudasim.py``), or on the device."""
import numpy as np

from .cudasim import print_result, simulated_fixture

BOX, PIXEL = 64, 1.3
TOLERANCE = 1e-12


def parameter_sets():
    """Astigmatism, a phase plate with an envelope, and a phase flip (the last one)."""
    from cryohess_plugin.core.ctf import CTFParams
    return [CTFParams(21000.0, 18500.0, 37.0, 300.0, 2.7, 0.1),
            CTFParams(9000.0, 8000.0, 120.0, 200.0, 2.0, 0.07, phase_shift=60.0, bfactor=40.0),
            CTFParams(15000.0, 14000.0, -20.0, 300.0, 2.7, 0.1, phase_flipped=True)]


def _simulated_errors():
    from cryohess_plugin.core.ctf import ctf_stack
    from cryohess_plugin.core.kernels import resolve_backend
    params = parameter_sets()
    rng = np.random.default_rng(5)
    # Few points: the simulator runs every thread in Python.
    kx, ky = rng.uniform(-BOX / 2, BOX / 2, (2, 150))
    cpu = ctf_stack(params, kx, ky, BOX, PIXEL, backend="cpu")
    cuda = ctf_stack(params, kx, ky, BOX, PIXEL, backend="cuda")
    cuda_single = ctf_stack(params, kx, ky, BOX, PIXEL, dtype=np.float32, backend="cuda")
    return {"auto_backend": resolve_backend("auto"),
            "float64": float(np.abs(cuda - cpu).max()),
            "float32": float(np.abs(cuda_single - cpu).max()),
            "float32_dtype": str(cuda_single.dtype),
            "flipped_non_negative": bool(np.all(cuda[2] >= 0)),
            "unflipped_has_negatives": bool(np.any(cuda[0] < 0))}


simulated = simulated_fixture(__name__)


def test_cuda_kernel_matches_cpu(simulated):
    assert simulated["auto_backend"] == "cuda"
    assert simulated["float64"] <= TOLERANCE
    assert simulated["float32_dtype"] == "float32"
    assert simulated["float32"] <= 1e-7
    assert simulated["flipped_non_negative"] and simulated["unflipped_has_negatives"]


if __name__ == "__main__":
    print_result(_simulated_errors())
