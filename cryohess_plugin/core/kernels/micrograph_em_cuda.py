"""``numba.cuda`` kernel of micrograph EM: per-patch posteriors (see :mod:`.micrograph_em_cpu`).

Same contract as :func:`.micrograph_em_cpu.patch_posteriors` with host arrays in and the
results written back into them.  One block handles one patch: its threads stride over the
states and reduce the maximum and the sum in shared memory.
"""
import math

import numpy as np
from numba import cuda, float64

THREADS = 256


@cuda.jit
def _posteriors(corr, energy, log_prior, log_empty, inv_sigma2, log_norm, empty):
    p = cuda.blockIdx.x
    n, states = corr.shape
    if p >= n:
        return
    shifts = log_prior.shape[0]
    t = cuda.threadIdx.x
    half = 0.5 * inv_sigma2[p]
    shared = cuda.shared.array(THREADS, float64)
    best = log_empty
    for j in range(t, states, THREADS):
        value = log_prior[j % shifts] + (2.0 * corr[p, j] - energy[j]) * half
        corr[p, j] = value
        if value > best:
            best = value
    shared[t] = best
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width and shared[t + width] > shared[t]:
            shared[t] = shared[t + width]
        cuda.syncthreads()
        width //= 2
    best = shared[0]
    cuda.syncthreads()
    total = 0.0
    for j in range(t, states, THREADS):
        weight = math.exp(corr[p, j] - best)
        corr[p, j] = weight
        total += weight
    shared[t] = total
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            shared[t] += shared[t + width]
        cuda.syncthreads()
        width //= 2
    total = shared[0] + math.exp(log_empty - best)
    scale = 1.0 / total
    for j in range(t, states, THREADS):
        corr[p, j] *= scale
    if t == 0:
        log_norm[p] = best + math.log(total)
        empty[p] = math.exp(log_empty - best) * scale


def patch_posteriors(corr, energy, log_prior, log_empty, inv_sigma2, log_norm, empty):
    """See :func:`.micrograph_em_cpu.patch_posteriors`."""
    n = corr.shape[0]
    if n == 0:
        return
    d_corr = cuda.to_device(np.ascontiguousarray(corr))
    d_energy = cuda.to_device(np.ascontiguousarray(energy, dtype=corr.dtype))
    d_prior = cuda.to_device(np.ascontiguousarray(log_prior, dtype=np.float64))
    d_inv = cuda.to_device(np.ascontiguousarray(inv_sigma2, dtype=np.float64))
    d_norm = cuda.device_array(n, dtype=np.float64)
    d_empty = cuda.device_array(n, dtype=np.float64)
    _posteriors[n, THREADS](d_corr, d_energy, d_prior, float(log_empty), d_inv, d_norm, d_empty)
    corr[...] = d_corr.copy_to_host()
    log_norm[...] = d_norm.copy_to_host()
    empty[...] = d_empty.copy_to_host()
