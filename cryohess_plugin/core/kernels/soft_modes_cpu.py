"""Numba CPU kernel of the accumulated soft-mode Hessian: the real harmonics at directions.

The twin of :func:`.soft_modes_cuda._harmonics` (one shared per-sample routine,
:func:`sample_harmonics`, and one column table);
the products themselves are NumPy BLAS GEMMs on the CPU
(:class:`cryohess_plugin.core.softmodes.products.HostProducts`).  One sample per
iteration of a parallel loop: the sectoral seed, then the three-term recurrence in the
degree (as :func:`.spherical.normalized_legendre`), and the real combinations of
:meth:`cryohess_plugin.core.softmodes.hessian.RealHarmonics.evaluate` (even degrees real,
odd degrees imaginary).
"""
import math

from numba import njit, prange
from numba.extending import register_jitable

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_4PI = 1.0 / math.sqrt(4 * math.pi)


@register_jitable
def sample_harmonics(samples, i, max_degree, table, even, odd):
    """Real harmonics at sample ``i`` of ``samples`` ``(n, 3)`` into row ``i`` of ``even``
    ``(n, n_even)`` and ``odd``; compiled into the CPU kernel and the CUDA one.

    ``table[l, m, k]`` is the column of ``(l, m)``'s kind ``a`` (``k = 0``; kind ``0``
    for ``m = 0``) and kind ``b`` (``k = 1``) in ``even`` (even ``l``) or ``odd``.
    """
    # Clamps by comparison: builtin min/max on floats fail numba's CUDA typing.
    x = samples[i, 2]
    if x > 1.0:
        x = 1.0
    elif x < -1.0:
        x = -1.0
    sin_squared = 1.0 - x * x
    sin_theta = math.sqrt(sin_squared) if sin_squared > 0.0 else 0.0
    phi = math.atan2(samples[i, 1], samples[i, 0])
    sectoral = _INV_SQRT_4PI
    for m in range(max_degree + 1):
        if m > 0:
            sectoral = -math.sqrt((2 * m + 1) / (2 * m)) * sin_theta * sectoral
        c = math.cos(m * phi)
        s = math.sin(m * phi)
        before = 0.0
        value = sectoral
        for l in range(m, max_degree + 1):
            if l == m + 1:
                before = value
                value = math.sqrt(2 * m + 3) * x * sectoral
            elif l > m + 1:
                a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
                b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
                value, before = a * (x * value - b * before), value
            if m == 0:
                # i^l Y_l^0: real (-1)^(l/2) for even l, imaginary (-1)^((l-1)/2) for odd.
                sign = 1.0 if (l // 2) % 2 == 0 else -1.0
                if l % 2 == 0:
                    even[i, table[l, 0, 0]] = sign * value
                else:
                    odd[i, table[l, 0, 0]] = sign * value
            elif l % 2 == 0:
                even[i, table[l, m, 0]] = _SQRT2 * value * c
                even[i, table[l, m, 1]] = -_SQRT2 * value * s
            else:
                odd[i, table[l, m, 0]] = _SQRT2 * value * s
                odd[i, table[l, m, 1]] = _SQRT2 * value * c


@njit(parallel=True, cache=True)
def real_harmonics(samples, max_degree, table, even, odd):
    """Real harmonics at ``samples`` ``(n, 3)`` into ``even`` ``(n, n_even)``, ``odd``
    (:func:`sample_harmonics`, one sample per iteration)."""
    for i in prange(samples.shape[0]):
        sample_harmonics(samples, i, max_degree, table, even, odd)
