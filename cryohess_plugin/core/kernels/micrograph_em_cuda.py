"""``numba.cuda`` kernel of micrograph EM: per-patch weights (see :mod:`.micrograph_em_cpu`).

Same contract as :func:`.micrograph_em_cpu.patch_weights`, with host arrays in and the
results written back into them.  One block handles one patch: its threads stride over the
states and reduce the maximum and the sum in shared memory.
"""
import math

import numpy as np
from numba import cuda, float64

THREADS = 256


@cuda.jit
def _weights(corr, offset, scale, log_empty, best, totals):
    p = cuda.blockIdx.x
    rotations, n, shifts = corr.shape
    if p >= n:
        return
    states = rotations * shifts
    t = cuda.threadIdx.x
    shared = cuda.shared.array(THREADS, float64)
    top = log_empty
    for j in range(t, states, THREADS):
        k = j // shifts
        s = j - k * shifts
        value = offset[k, s] + scale * corr[k, p, s]
        corr[k, p, s] = value
        if value > top:
            top = value
    shared[t] = top
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width and shared[t + width] > shared[t]:
            shared[t] = shared[t + width]
        cuda.syncthreads()
        width //= 2
    top = shared[0]
    cuda.syncthreads()
    total = 0.0
    for j in range(t, states, THREADS):
        k = j // shifts
        s = j - k * shifts
        weight = math.exp(corr[k, p, s] - top)
        corr[k, p, s] = weight
        total += weight
    shared[t] = total
    cuda.syncthreads()
    width = THREADS // 2
    while width > 0:
        if t < width:
            shared[t] += shared[t + width]
        cuda.syncthreads()
        width //= 2
    if t == 0:
        best[p] = top
        totals[p] = shared[0] + math.exp(log_empty - top)


def patch_weights(corr, offset, scale, log_empty, best, totals):
    """See :func:`.micrograph_em_cpu.patch_weights`."""
    n = corr.shape[1]
    if n == 0:
        return
    d_corr = cuda.to_device(np.ascontiguousarray(corr))
    d_offset = cuda.to_device(np.ascontiguousarray(offset, dtype=corr.dtype))
    d_best = cuda.device_array(n, dtype=np.float64)
    d_totals = cuda.device_array(n, dtype=np.float64)
    _weights[n, THREADS](d_corr, d_offset, float(scale), float(log_empty), d_best, d_totals)
    corr[...] = d_corr.copy_to_host()
    best[...] = d_best.copy_to_host()
    totals[...] = d_totals.copy_to_host()
