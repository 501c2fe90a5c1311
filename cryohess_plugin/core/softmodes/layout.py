"""The one real parametrisation of a real volume's spherical-harmonic shell coefficients.

A real volume has ``A_{l,-m} = (-1)^{l+m} conj(A_{l,m})``; per shell and degree
``l <= limit`` the reals are ``A_{l0} = i^l x`` and ``A_{lm} = (a + i b) / √2`` for
``m > 0``.  The map is an isometry from the Euclidean norm to the plain coefficient
norm ``Σ |A|²`` over all ``m``; gradients, Hessian products and metrics of the soft-mode
analysis all work in these reals.
"""
import numpy as np

from ..errors import ShapeError
from ..spherical import angular_momentum


class RealLayout:
    """The real parametrisation of a real volume's shell coefficients (module docstring).

    ``n_parameters`` reals per volume; :meth:`from_real_vector` /
    :meth:`to_real_vector`, the Fourier-ball :meth:`metric_weights` and the
    :meth:`rigid_rotation_modes` depend on the shells only, so the per-image
    (:class:`SoftModeProblem`) and accumulated forms share one layout.
    """

    def __init__(self, shells):
        self.mask = shells.coefficient_mask()
        zero_r, zero_l, pair_r, pair_l, pair_m = [], [], [], [], []
        for shell, limit in enumerate(shells.degree_limits):
            for degree in range(int(limit) + 1):
                zero_r.append(shell)
                zero_l.append(degree)
                for order in range(1, degree + 1):
                    pair_r.append(shell)
                    pair_l.append(degree)
                    pair_m.append(order)
        self.n_orders = shells.n_orders
        self.shape = (shells.n_shells, shells.max_degree + 1, shells.n_orders)
        self.zero = (np.array(zero_r), np.array(zero_l), np.zeros(len(zero_r), dtype=int))
        pair_m = np.array(pair_m, dtype=int)
        self.positive = (np.array(pair_r), np.array(pair_l), pair_m)
        self.negative = (np.array(pair_r), np.array(pair_l), (-pair_m) % shells.n_orders)
        self.zero_phase = 1j ** self.zero[1]
        self.pair_sign = (-1.0) ** (self.positive[1] + pair_m)
        self.size = len(zero_r) + 2 * len(pair_r)
        self.shell_weights = shells.weights[np.concatenate(
            [self.zero[0], self.positive[0], self.positive[0]])]

    @property
    def n_parameters(self):
        return self.size

    def metric_weights(self):
        """``(n,)`` radial weights ``W`` of the Fourier-ball norm for each real parameter."""
        return self.shell_weights.copy()

    def rigid_rotation_modes(self, coeffs):
        """``(3, n)`` volume parts ``-i L_a A`` of infinitesimal rotations about x, y, z."""
        coeffs = np.asarray(coeffs) * self.mask
        return np.stack([self.to_real_vector(-1j * angular_momentum(coeffs, axis))
                         for axis in range(3)])

    def from_real_vector(self, vector):
        """Real-volume coefficients ``(R, L + 1, n_orders)`` of a real vector ``(n,)``."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (self.size,):
            raise ShapeError(f"expected a real vector of length {self.size}, got {vector.shape}")
        n_zero, n_pair = self.zero[0].size, self.positive[0].size
        out = np.zeros(self.shape, dtype=np.complex128)
        out[self.zero] = self.zero_phase * vector[:n_zero]
        pair = (vector[n_zero:n_zero + n_pair] + 1j * vector[n_zero + n_pair:]) / np.sqrt(2)
        out[self.positive] = pair
        out[self.negative] = self.pair_sign * pair.conj()
        return out

    def to_real_vector(self, coefficients):
        """Transpose of :meth:`from_real_vector` (its inverse on real-volume coefficients)."""
        coefficients = np.asarray(coefficients)
        positive, negative = coefficients[self.positive], coefficients[self.negative]
        zero = (self.zero_phase.conj() * coefficients[self.zero]).real
        real = (positive.real + self.pair_sign * negative.real) / np.sqrt(2)
        imag = (positive.imag - self.pair_sign * negative.imag) / np.sqrt(2)
        return np.concatenate([zero, real, imag])
