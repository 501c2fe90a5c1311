"""Numba CPU kernels of the SO(3) landscape: step 2 of ``docs/methods/radial_svd_alignment.md``
§4.2 (unreduced) and §4.5 (compressed).

Both kernels fill ``out[b, i, j] = X̂(m1, m2; β_b)`` for every ``β`` of the
grid, with ``m1`` at index ``i = m1 mod N`` and ``m2 = j >= 0`` (the other
half follows from Hermitian symmetry).  The FFTs and GEMMs around them stay in
scipy/numpy: those are already multi-threaded library calls near peak speed,
while these sums mix a per-``β`` table with per-volume coefficients element by
element, which no library call does without temporaries ``n_β`` times larger.

``upload`` is the identity here; :mod:`.volume_cuda` keeps tables on the device.
"""
import numpy as np
from numba import njit, prange


def upload(array):
    """Backend copy of a table that many calls share (the array itself on the CPU)."""
    return array


@njit(parallel=True, cache=True)
def degree_sum(table, coefficients, out):
    """Compressed step 2: ``out[b, i, j] = Σ_z table[b, z, i, j] coefficients[z, i, j]``.

    ``table`` holds ``[v_zᵀ d]_{m1 m2}(β_b)`` (real), ``coefficients`` the
    degree-compressed ``[v_zᵀ X̃](m1, m2)`` (complex).
    """
    n_beta, n_z, n_i, n_j = table.shape
    for b in prange(n_beta):
        for i in range(n_i):
            for j in range(n_j):
                out[b, i, j] = 0
        for z in range(n_z):
            for i in range(n_i):
                for j in range(n_j):
                    out[b, i, j] += table[b, z, i, j] * coefficients[z, i, j]


@njit(parallel=True, cache=True)
def wigner_sum(table, offsets, first, coefficients, out):
    """Unreduced step 2: ``out[b, i, j] = Σ_{l >= first[i, j]} d^l_{m1 m2}(β_b) X̃(m1, m2; l)``.

    ``table[offsets[i, j] + l - first[i, j], b]`` holds ``d^l_{m1 m2}(β_b)``
    for the degrees ``l = first[i, j] .. L`` that carry orders ``(m1, m2)``
    (``first = max(|m1|, m2)``); ``coefficients[i, j, l]`` is ``X̃(m1, m2; l)``.
    With ``β`` innermost every table row is one contiguous multiply-add (twice
    as fast as running over ``l`` innermost, whose runs are short).
    """
    n_beta = table.shape[1]
    n_i, n_j, n_degrees = coefficients.shape
    for i in prange(n_i):
        acc_re = np.empty(n_beta, dtype=table.dtype)
        acc_im = np.empty(n_beta, dtype=table.dtype)
        for j in range(n_j):
            acc_re[:] = 0
            acc_im[:] = 0
            start = offsets[i, j] - first[i, j]
            for l in range(first[i, j], n_degrees):
                c_re = coefficients[i, j, l].real
                c_im = coefficients[i, j, l].imag
                row = table[start + l]
                for b in range(n_beta):
                    acc_re[b] += row[b] * c_re
                    acc_im[b] += row[b] * c_im
            for b in range(n_beta):
                out[b, i, j] = acc_re[b] + 1j * acc_im[b]
