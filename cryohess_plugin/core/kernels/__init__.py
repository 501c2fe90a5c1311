"""Hot loops: a Numba CPU kernel and a ``numba.cuda`` kernel for each, one dispatch.

``resolve_backend`` is the single place that decides where kernels run:
``"cpu"`` always works; ``"cuda"`` needs a CUDA device (or the simulator,
``NUMBA_ENABLE_CUDASIM=1``); ``"auto"`` takes CUDA when present.
"""
import os

from ..errors import CryoHessError

BACKENDS = ("auto", "cpu", "cuda")

#: Interpolations the slice kernels understand, by name.
INTERPOLATIONS = {"linear": 0, "cubic": 1}


class BackendUnavailableError(CryoHessError, RuntimeError):
    """CUDA was requested but no CUDA device is usable."""


def cudasim_active():
    """True when numba's CUDA simulator stands in for a device (tests of the CUDA kernels)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def cuda_available():
    """True when numba can run CUDA kernels here (a device, or the simulator)."""
    if cudasim_active():
        return True
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # a broken driver install must not break CPU use
        return False


def resolve_backend(backend):
    """Map ``"auto" | "cpu" | "cuda"`` to the backend kernels will use."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if backend == "cuda":
        raise BackendUnavailableError(
            "CUDA was requested but numba finds no CUDA device; switch the GPU option off "
            "or check the driver with `python -c 'from numba import cuda; cuda.detect()'`")
    return "cpu"
