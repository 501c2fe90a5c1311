"""``numba.cuda`` kernels of the hyper-molecule likelihood.

Same contract as :mod:`.hypermolecule_cpu` (host NumPy arrays in, results written into
the host output arrays).  :func:`log_likelihoods` takes one thread per image (the sum
over its frequencies stays in one thread, in float64); :func:`weighted_residuals` one
thread per sample ``j`` of an image ``i``.
"""
import numpy as np
from numba import cuda

from .cuda_launch import launch_shape
from .hypermolecule_cpu import modulated_model

THREADS_PER_IMAGE_BLOCK = 64


@cuda.jit
def _log_likelihoods(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    i = cuda.grid(1)
    n, m = data.shape
    if i >= n:
        return
    total = 0.0
    for j in range(m):
        _, model = modulated_model(data, slices, weights, ctf, shifts, kx, ky, box, i, j)
        residual = data[i, j] - model
        total += precision[j] * (residual.real ** 2 + residual.imag ** 2)
    out[i] = -total


@cuda.jit
def _weighted_residuals(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = data.shape
    if j >= m:
        return
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        modulation, model = modulated_model(data, slices, weights, ctf, shifts, kx, ky, box,
                                             i, j)
        out[i, j] = precision[j] * modulation.conjugate() * (data[i, j] - model)


def _upload(*arrays):
    return tuple(cuda.to_device(np.ascontiguousarray(array)) for array in arrays)


def log_likelihoods(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    """``out[i] = -sum_j precision[j] |data[i, j] - model[i, j]|^2`` for every image."""
    n = data.shape[0]
    if n == 0:
        return
    arguments = _upload(data, slices, weights, ctf, shifts, kx, ky)
    d_precision, = _upload(precision)
    d_out = cuda.device_array(n, dtype=np.float64)
    blocks = (n + THREADS_PER_IMAGE_BLOCK - 1) // THREADS_PER_IMAGE_BLOCK
    _log_likelihoods[blocks, THREADS_PER_IMAGE_BLOCK](*arguments, float(box), d_precision, d_out)
    out[...] = d_out.copy_to_host()


def weighted_residuals(data, slices, weights, ctf, shifts, kx, ky, box, precision, out):
    """``out[i, j] = precision[j] * conj(modulation) * (data - model)``."""
    n, m = data.shape
    if n == 0 or m == 0:
        return
    arguments = _upload(data, slices, weights, ctf, shifts, kx, ky)
    d_precision, = _upload(precision)
    d_out = cuda.device_array((n, m), dtype=out.dtype)
    blocks, threads = launch_shape(n, m)
    _weighted_residuals[blocks, threads](*arguments, float(box), d_precision, d_out)
    out[...] = d_out.copy_to_host()
