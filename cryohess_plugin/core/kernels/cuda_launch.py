"""Launch shape and uploads shared by the ``numba.cuda`` slice kernels.

The kernels take one thread per sample ``j`` (grid dimension x) and stride
over the images ``i`` from ``blockIdx.y`` by ``gridDim.y``.
"""
import numpy as np
from numba import cuda

THREADS = 128
#: CUDA caps grid dimension y at 65535; kernels stride over the remaining images.
MAX_BLOCKS_Y = 65535


def launch_shape(n, m):
    """Blocks and threads for ``n`` images of ``m`` samples (one thread per sample)."""
    return ((m + THREADS - 1) // THREADS, min(n, MAX_BLOCKS_Y)), THREADS


def to_device_float64(*arrays):
    """Contiguous float64 device copies of ``arrays``."""
    return tuple(cuda.to_device(np.ascontiguousarray(array, dtype=np.float64))
                 for array in arrays)
