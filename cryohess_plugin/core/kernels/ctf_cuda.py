"""``numba.cuda`` kernel of the CTF: the contract of :mod:`.ctf_cpu` (same coefficient rows,
points and :func:`.ctf_cpu.ctf_value`), host arrays in, the host ``out`` filled.  One thread
per point ``j``, striding over the particles ``i``; float64 arithmetic, stored in ``out``'s
precision."""
from numba import cuda

from .ctf_cpu import ctf_value
from .cuda_launch import launch_shape, to_device_float64


@cuda.jit
def _values(coefficients, points, out):
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    n, m = out.shape
    if j >= m:
        return
    s2, cos_2theta, sin_2theta = points[0, j], points[1, j], points[2, j]
    for i in range(cuda.blockIdx.y, n, cuda.gridDim.y):
        out[i, j] = ctf_value(coefficients[i], s2, cos_2theta, sin_2theta)


def ctf_values(coefficients, points, out):
    """``out[i, j]``: the CTF of particle ``i`` at point ``j`` (see :mod:`.ctf_cpu`)."""
    n, m = out.shape
    if n == 0 or m == 0:
        return
    d_coefficients, d_points = to_device_float64(coefficients, points)
    d_out = cuda.device_array((n, m), dtype=out.dtype)
    blocks, threads = launch_shape(n, m)
    _values[blocks, threads](d_coefficients, d_points, d_out)
    out[...] = d_out.copy_to_host()
