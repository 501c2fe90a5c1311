"""Softest modes of a symmetric operator in a metric, and what a user looks at.

Method notes, sections 3 and 4.  The solver knows nothing of the likelihood:
it takes a function ``matvec`` applying a symmetric positive semi-definite
operator ``G`` (the Hessian's quadratic form, real coordinates) and solves
``G x = λ W x`` for the smallest ``λ`` with a diagonal metric ``W``, with the
given null-space vectors (the rigid rotations, notes 2.6) removed.

Following notes 3.1 the generalised problem becomes the symmetric
``B = W^{-1/2} G W^{-1/2}`` on the complement of ``W^{1/2} N``.  The
complement is parametrised exactly by the Householder reflectors of a QR
factorisation of ``W^{1/2} N``, so ``B`` is solved as an operator of
dimension ``size - n_null`` and round-off cannot leak the null space back in.
The Lanczos iteration is ARPACK's (``scipy.sparse.linalg.eigsh``): it keeps
every Lanczos vector orthogonal with DGKS re-orthogonalisation, which is the
notes' full re-orthogonalisation, with implicit restarts on top.

Complex shell coefficients go in as real pairs (e.g. ``a.view(np.float64)``),
which keeps the real inner product ``Re Σ conj(a) b``.

Display (notes 4): :func:`perturbation_size` gives ``ε`` at a log-likelihood
ratio of ``log 20``, :func:`soft_variance` the soft-subspace variance per
coefficient or, applied to mode volumes, per voxel, :func:`per_shell_profile`
sums any per-coefficient quantity per shell, and :func:`shells_to_volume`
turns shell coefficients into a real-space map.
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg

from . import fourier
from .errors import ConvergenceError, InvalidDataError, ShapeError
from .spherical import SphericalTransform


@dataclass(frozen=True)
class SoftModes:
    """Smallest eigenpairs of ``G x = λ W x`` off the null space.

    ``eigenvalues`` ``(n_modes,)`` ascending; ``vectors`` ``(n_modes, size)``
    W-orthonormal and W-orthogonal to the null space; ``iterations`` the
    number of operator applications the solver used; ``residuals``
    ``‖G x - λ W x‖_{W^-1}`` per mode; ``converged`` per mode, true where the
    residual meets ARPACK's rule ``tolerance * max(|λ|, eps^(2/3))``.
    """
    eigenvalues: np.ndarray
    vectors: np.ndarray
    iterations: int
    converged: np.ndarray
    residuals: np.ndarray


class _Complement:
    """Orthonormal coordinates ``z`` of the complement of the span of ``basis`` rows.

    ``Q = H_0 H_1 ... H_{k-1}`` (Householder reflectors of the QR of
    ``basis.T``) is orthogonal with its first ``k`` columns spanning the
    basis, so ``y = Q [0; z]`` is an isometry onto the complement.
    """

    def __init__(self, basis, size):
        self.size = size
        self.n_null = basis.shape[0]
        self.reflectors = []
        if self.n_null:
            packed, tau = np.linalg.qr(basis.T, mode="raw")  # packed is (k, size)
            diagonal = np.abs(np.diagonal(packed.T[:self.n_null]))
            if diagonal.min() <= 1e-10 * diagonal.max():
                raise InvalidDataError("null_space vectors are linearly dependent; pass a basis")
            for j in range(self.n_null):
                v = np.zeros(size)
                v[j] = 1.0
                v[j + 1:] = packed[j, j + 1:]
                self.reflectors.append((v, tau[j]))

    @property
    def dimension(self):
        return self.size - self.n_null

    def embed(self, z):
        """``Q [0; z]`` for ``z`` ``(dimension,)`` or ``(dimension, n)``."""
        y = np.zeros((self.size,) + z.shape[1:])
        y[self.n_null:] = z
        for v, tau in reversed(self.reflectors):
            y -= tau * np.outer(v, v @ y).reshape(y.shape)
        return y

    def restrict(self, y):
        """Last ``dimension`` entries of ``Qᵀ y`` (the reflectors are symmetric)."""
        y = np.array(y, dtype=np.float64)
        for v, tau in self.reflectors:
            y -= tau * np.outer(v, v @ y).reshape(y.shape)
        return y[self.n_null:]


def _validated_metric(metric, size):
    if metric is None:
        return np.ones(size)
    metric = np.asarray(metric, dtype=np.float64)
    if metric.shape != (size,):
        raise ShapeError(f"metric must be the diagonal of W, shape ({size},), got {metric.shape}")
    if not np.all(np.isfinite(metric)) or metric.min() <= 0:
        raise InvalidDataError("metric must be finite and positive (it is a norm's weights)")
    return metric


def _validated_null_space(null_space, size):
    if null_space is None:
        return np.zeros((0, size))
    null_space = np.atleast_2d(np.asarray(null_space, dtype=np.float64))
    if null_space.ndim != 2 or null_space.shape[1] != size:
        raise ShapeError(f"null_space must have shape (n_null, {size}), got {null_space.shape}")
    if not np.all(np.isfinite(null_space)):
        raise InvalidDataError("null_space contains NaN or infinite values")
    return null_space


def softest_modes(matvec, size, n_modes, null_space=None, metric=None, max_iterations=None,
                  tolerance=1e-10, rng=0):
    """Smallest eigenpairs of ``G x = λ W x`` with ``x`` W-orthogonal to ``null_space``.

    :param matvec: function ``x (size,) -> G x (size,)``, ``G`` symmetric PSD.
    :param size: dimension of the real coordinate vectors.
    :param n_modes: how many of the smallest eigenpairs to return.
    :param null_space: ``(n_null, size)`` vectors removed from the Krylov space
        and the result (any basis; they need not be orthonormal), or None.
    :param metric: ``(size,)`` positive diagonal of ``W``, or None for the identity.
    :param max_iterations: ARPACK's restart limit (None: its default, ``10 size``).
    :param tolerance: relative accuracy of the Ritz pairs (ARPACK's ``tol``).
    :param rng: seed or ``np.random.Generator`` of the start vector.
    :raises ConvergenceError: when fewer than ``n_modes`` pairs converged.
    """
    size, n_modes = int(size), int(n_modes)
    weights = _validated_metric(metric, size)
    null_space = _validated_null_space(null_space, size)
    root = np.sqrt(weights)
    complement = _Complement(null_space * root, size)
    if not 1 <= n_modes < complement.dimension:
        raise InvalidDataError(f"n_modes must be between 1 and {complement.dimension - 1} "
                               f"(size {size} minus {complement.n_null} null vectors, minus 1), "
                               f"got {n_modes}")
    applications = 0

    def transformed(z):
        nonlocal applications
        applications += 1
        x = complement.embed(np.ravel(z)) / root
        g = np.asarray(matvec(x), dtype=np.float64)
        if g.shape != (size,):
            raise ShapeError(f"matvec returned shape {g.shape}, expected ({size},)")
        if not np.all(np.isfinite(g)):
            raise InvalidDataError("the operator returned NaN or infinite values; check the "
                                   "Hessian-vector product at the current volume and poses")
        return complement.restrict(g / root)

    operator = scipy.sparse.linalg.LinearOperator(
        (complement.dimension,) * 2, matvec=transformed, dtype=np.float64)
    generator = np.random.default_rng(rng)
    start = generator.standard_normal(complement.dimension)
    try:
        # 'SA' without shift-invert, as in notes 3.1: only products with G exist.
        values, vectors = scipy.sparse.linalg.eigsh(
            operator, k=n_modes, which="SA", v0=start, maxiter=max_iterations, tol=tolerance)
    except scipy.sparse.linalg.ArpackNoConvergence as failure:
        raise ConvergenceError(
            f"only {len(failure.eigenvalues)} of {n_modes} soft modes converged after "
            f"{applications} operator applications; raise max_iterations or tolerance") from None
    iterations = applications
    order = np.argsort(values)
    values, vectors = values[order], vectors[:, order]
    residuals = np.array([np.linalg.norm(transformed(vectors[:, i]) - values[i] * vectors[:, i])
                          for i in range(n_modes)])
    converged = residuals <= tolerance * np.maximum(np.abs(values), np.finfo(float).eps ** (2 / 3))
    modes = (complement.embed(vectors) / root[:, None]).T
    return SoftModes(values, modes, iterations, converged, residuals)


def perturbation_size(eigenvalue, log_likelihood_ratio=np.log(20), noise_variance=1.0,
                      n_images=1):
    """Amplitude ``ε`` of a W-unit mode that costs ``log_likelihood_ratio`` (notes 4.4).

    The negative log-likelihood changes by ``½ (n_images / noise_variance) λ ε²``
    (notes section 7: keep the ½), so ``ε = sqrt(2 σ² log_LR / (J λ))``.  With the
    defaults ``eigenvalue`` is already of the negative log-likelihood's Hessian;
    pass ``noise_variance`` ``σ̂²`` and ``n_images`` ``J`` for an eigenvalue of
    the per-image ``𝓛 = σ̂² NLL`` with image weights summing to one.
    """
    eigenvalue = np.asarray(eigenvalue, dtype=np.float64)
    if not np.all(np.isfinite(eigenvalue)) or np.any(eigenvalue <= 0):
        raise InvalidDataError("eigenvalues must be finite and positive to size a perturbation "
                               "(project out the null space first)")
    if log_likelihood_ratio <= 0 or noise_variance <= 0 or n_images <= 0:
        raise InvalidDataError("log_likelihood_ratio, noise_variance and n_images must be positive")
    return np.sqrt(2.0 * noise_variance * log_likelihood_ratio / (n_images * eigenvalue))


def soft_variance(modes, eigenvalues, count=None):
    """``Σ_{i < count} |v_i|² / λ_i`` entry by entry (notes 4.6).

    The Laplace posterior's variance restricted to the soft subspace: a
    W-unit mode of eigenvalue ``λ`` has variance ``1 / λ`` along it.  Pass
    coefficient modes for a per-coefficient map, or the modes' volumes
    (:func:`shells_to_volume`) for the per-voxel map; multiply by
    ``2 log 20`` to get ``Σ ε_i² |v_i|²`` at the log-20 threshold.

    :param modes: ``(n_modes, ...)`` real or complex.
    :param eigenvalues: ``(n_modes,)`` positive.
    :param count: how many of the first modes to use (default all).
    """
    modes = np.asarray(modes)
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if eigenvalues.ndim != 1 or modes.shape[:1] != eigenvalues.shape:
        raise ShapeError(f"modes {modes.shape} and eigenvalues {eigenvalues.shape} must share "
                         "their first axis")
    count = eigenvalues.size if count is None else int(count)
    if not 1 <= count <= eigenvalues.size:
        raise InvalidDataError(f"count must be between 1 and {eigenvalues.size}, got {count}")
    used = eigenvalues[:count]
    if not np.all(np.isfinite(used)) or np.any(used <= 0):
        raise InvalidDataError("soft variance needs positive eigenvalues")
    return np.tensordot(1.0 / used, np.abs(modes[:count]) ** 2, axes=1)


def per_shell_profile(values, shell_index, n_shells=None):
    """Sum of ``values`` over the entries of each shell, ``(n_shells,)``.

    :param shell_index: non-negative integers of ``values``' shape, e.g.
        ``np.indices(coefficients.shape)[0]`` for ``(R, L + 1, n_orders)`` arrays.
    """
    values = np.asarray(values, dtype=np.float64)
    shell_index = np.asarray(shell_index)
    if shell_index.shape != values.shape:
        raise ShapeError(f"shell_index {shell_index.shape} must match values {values.shape}")
    if shell_index.size and (shell_index.min() < 0
                             or not np.issubdtype(shell_index.dtype, np.integer)):
        raise InvalidDataError("shell_index must hold non-negative integers")
    return np.bincount(shell_index.ravel(), weights=values.ravel(), minlength=n_shells or 0)


def shells_to_volume(coefficients, shell_grid, box=None, dtype=np.float64, backend="auto"):
    """Real ``(box, box, box)`` map whose transform is the shells' expansion, low-passed.

    Inverse transform by quadrature: ``v(x) = D⁻³ ∫_{|k|<f_max} V(k) exp(2πi k·x / D) d³k``
    with the shells' radial (Gauss-Jacobi for ``f² df``) and angular weights,
    evaluated as the exact adjoint of :class:`.SphericalTransform`'s sampling
    (slice adjoint, then deapodisation) on its small grid, and zero-padded in
    Fourier space to ``box``.  A volume whose transform vanishes beyond
    ``f_max`` comes back to within about 1e-3 (see the tests); otherwise
    this is the volume low-passed by the ball ``|k| < f_max``.  The real part
    is kept, i.e. the Hermitian part of the coefficients (a real volume's).

    :param coefficients: ``(R, L + 1, n_orders)`` as in :mod:`.spherical`.
    :param shell_grid: :class:`.spherical.ShellGrid`.
    :param box: output size (default ``shell_grid.box``; the map keeps its physical size).
    """
    coefficients = np.asarray(coefficients)
    shape = (shell_grid.n_shells, shell_grid.max_degree + 1, shell_grid.n_orders)
    if coefficients.shape != shape:
        raise ShapeError(f"coefficients must have shape {shape}, got {coefficients.shape}")
    if not np.all(np.isfinite(coefficients)):
        raise InvalidDataError("coefficients contain NaN or infinite values")
    box = shell_grid.box if box is None else int(box)
    transform = SphericalTransform(shell_grid, dtype=dtype, backend=backend)
    if box < transform.grid_box:
        raise ShapeError(f"box {box} cannot hold frequencies up to {shell_grid.max_frequency}")
    samples = shell_grid.synthesize(coefficients)
    # d³k = f² df dΩ: radial weights times Gauss-Legendre in cos θ times 2π / n_φ.
    quadrature = (shell_grid.weights[:, None, None] * shell_grid.theta_weights[None, :, None]
                  * (2 * np.pi / shell_grid.n_orders))
    values = np.moveaxis(samples * quadrature, -1, 0).reshape(shell_grid.n_orders, -1)
    rotations, u, v = shell_grid.slice_geometry()
    operator = transform.operator
    grid = operator.slices_adjoint(values, rotations, u, v)
    small = operator.grid_to_volume_adjoint(grid).astype(np.float64) / transform.grid_box ** 3
    if box == transform.grid_box:
        return small
    # Same physical box: padding the transform keeps its values at integer frequencies.
    spectrum = fourier.pad_centred(fourier.centred_fftn(small), box)
    return fourier.centred_ifftn(spectrum).real
