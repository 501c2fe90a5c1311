"""The CUDA posterior-weight kernel of micrograph EM against the CPU kernel, on numba's CUDA
simulator (in a child interpreter, see ``tests/cudasim.py``), and an E-step on the CUDA
backend against the CPU one."""
import numpy as np

from .cudasim import print_result, simulated_fixture

TOLERANCE = 1e-12


def _simulated_errors():
    from cryohess_plugin.core.kernels import micrograph_em_cpu, micrograph_em_cuda, resolve_backend
    from cryohess_plugin.core.micrograph_em import (Model, ProjectionOperator,
                                                    SphericalBesselBasis, cut_patches,
                                                    expectation, quaternion_grid)

    rng = np.random.default_rng(12)
    errors = {"auto_backend": resolve_backend("auto")}
    rotations, patches, shifts = 3, 4, 25
    corr = rng.standard_normal((rotations, patches, shifts)) * 5
    offset = rng.standard_normal((rotations, shifts))
    results = {}
    for name, kernels in (("cpu", micrograph_em_cpu), ("cuda", micrograph_em_cuda)):
        weights, best, totals = corr.copy(), np.empty(patches), np.empty(patches)
        kernels.patch_weights(weights, offset, 0.7, -1.5, best, totals)
        results[name] = (weights, best, totals)
    for index, what in enumerate(("weights", "best", "totals")):
        cpu, cuda = results["cpu"][index], results["cuda"][index]
        errors[what] = float(np.abs(cuda - cpu).max() / np.abs(cpu).max())

    box = 7
    basis = SphericalBesselBasis.create(box, 2)
    operator = ProjectionOperator(basis, quaternion_grid(15)[:4])
    patch_set = cut_patches([rng.standard_normal((box, 2 * box))], box, 1.0)
    count = (2 * box - 1) ** 2
    model = Model(rng.standard_normal(basis.size), np.full(count, 0.5 / count), 0.5,
                  np.array([1.0]))
    on = {backend: expectation(patch_set, np.arange(2), operator, model, dtype=np.float64,
                               backend=backend) for backend in ("cpu", "cuda")}
    errors["estep_loglik"] = float(np.abs(on["cuda"].log_likelihood
                                          - on["cpu"].log_likelihood).max())
    cpu_back = on["cpu"].statistics[0].back_projection
    errors["estep_back"] = float(np.abs(on["cuda"].statistics[0].back_projection - cpu_back)
                                 .max() / np.abs(cpu_back).max())
    return errors


simulated = simulated_fixture("tests.test_micrograph_em_cuda")


def test_the_simulator_is_the_cuda_backend(simulated):
    assert simulated["auto_backend"] == "cuda"


def test_cuda_weights_equal_cpu_weights(simulated):
    for what in ("weights", "best", "totals"):
        assert simulated[what] < TOLERANCE, what


def test_cuda_estep_equals_cpu_estep(simulated):
    assert simulated["estep_loglik"] < 1e-10
    assert simulated["estep_back"] < 1e-12


if __name__ == "__main__":
    print_result(_simulated_errors())
