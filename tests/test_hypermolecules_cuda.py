"""CUDA hyper-molecule likelihood kernels against the CPU kernels, on numba's CUDA simulator
(run in a child interpreter by tests/cudasim.py)."""
import numpy as np

from .cudasim import print_result, simulated_fixture

TOLERANCE = 1e-5

simulated = simulated_fixture("tests.test_hypermolecules_cuda")


def _simulated_errors():
    from cryohess_plugin.core.kernels import hypermolecule_cpu, hypermolecule_cuda

    rng = np.random.default_rng(12)
    n, k, m, box = 3, 2, 17, 16.0
    data = (rng.normal(size=(n, m)) + 1j * rng.normal(size=(n, m))).astype(np.complex64)
    slices = (rng.normal(size=(n, k, m)) + 1j * rng.normal(size=(n, k, m))).astype(np.complex64)
    weights = rng.normal(size=(n, k))
    ctf = rng.normal(size=(n, m)).astype(np.float32)
    shifts = rng.normal(size=(n, 2))
    kx, ky = rng.integers(-6, 7, (2, m)).astype(np.float64)
    precision = rng.random(m).astype(np.float32)
    errors = {}
    for name in ("log_likelihoods", "weighted_residuals"):
        shape = (n,) if name == "log_likelihoods" else (n, m)
        dtype = np.float64 if name == "log_likelihoods" else np.complex64
        cpu, gpu = np.empty(shape, dtype), np.empty(shape, dtype)
        arguments = (data, slices, weights, ctf, shifts, kx, ky, box, precision)
        getattr(hypermolecule_cpu, name)(*arguments, cpu)
        getattr(hypermolecule_cuda, name)(*arguments, gpu)
        errors[name] = float(np.abs(cpu - gpu).max() / np.abs(cpu).max())
    return errors


def test_log_likelihoods_agree(simulated):
    assert simulated["log_likelihoods"] < TOLERANCE


def test_weighted_residuals_agree(simulated):
    assert simulated["weighted_residuals"] < TOLERANCE


if __name__ == "__main__":
    print_result(_simulated_errors())
