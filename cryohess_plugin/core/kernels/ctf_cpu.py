"""Numba CPU kernel of the CTF: many particles at many frequencies.

:mod:`..ctf` owns the convention: it reduces each particle's parameters to the
coefficients below (:data:`COEFFICIENTS`, one row per particle) and each
frequency to ``s²``, ``cos 2θ`` and ``sin 2θ`` (one column per point), and
:func:`ctf_value` is the formula of its docstring written with them:

* ``defocus = mean + half_difference (cos 2θ cos 2φ + sin 2θ sin 2φ)``
  (``= 0.5 (dU + dV + (dU - dV) cos 2(θ - φ))``, ``φ`` the U axis);
* ``chi + arcsin A = pi_lambda defocus s² + cs_term s⁴ + phase``, the phase shift and
  the amplitude contrast ``A`` both folded into ``phase``;
* ``CTF = sqrt(1 - A²) sin chi + A cos chi = sin(chi + arcsin A)``, times
  ``exp(-quarter_bfactor s²)``, and ``|CTF|`` for phase-flipped particles.  One sine
  per value instead of a sine and a cosine: the trigonometry is most of the cost.

:mod:`.ctf_cuda` runs the same :func:`ctf_value` on the GPU.
"""
import math

from numba import njit, prange
from numba.extending import register_jitable

#: Columns of the per-particle coefficient rows, in order.
COEFFICIENTS = ("mean_defocus", "half_difference", "cos_2_angle", "sin_2_angle", "pi_lambda",
                "cs_term", "phase", "quarter_bfactor", "phase_flipped")


@register_jitable(inline="always")
def ctf_value(c, s2, cos_2theta, sin_2theta):
    """The CTF of the particle with coefficient row ``c`` at one frequency."""
    defocus = c[0] + c[1] * (cos_2theta * c[2] + sin_2theta * c[3])
    value = math.sin(c[4] * defocus * s2 + c[5] * (s2 * s2) + c[6])
    # exp(0) = 1: particles without an envelope skip it, bit for bit the same.
    if c[7] != 0.0:
        value *= math.exp(-c[7] * s2)
    if c[8] != 0.0:
        value = abs(value)
    return value


@njit(parallel=True, cache=True)
def ctf_values(coefficients, points, out):
    """``out[i, j]``: the CTF of particle ``i`` (row of ``coefficients``) at point ``j``
    (column of ``points``: ``s²``, ``cos 2θ``, ``sin 2θ``); ``out`` float32 or float64."""
    n, m = out.shape
    for i in prange(n):
        c = coefficients[i]
        for j in range(m):
            out[i, j] = ctf_value(c, points[0, j], points[1, j], points[2, j])
