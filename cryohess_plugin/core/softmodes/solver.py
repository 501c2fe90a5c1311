"""Softest modes of a symmetric operator in a metric, and what a user looks at.

``docs/methods/hessian_soft_modes.md`` §3 (the solver) and §4 (the displayed
quantities); every § below is a section of that page.  The solver knows nothing of the likelihood: it takes a function
``matvec`` applying a symmetric positive semi-definite operator ``G`` (the
Hessian's quadratic form, real coordinates) and solves ``G x = λ W x`` for the
smallest ``λ`` with a diagonal metric ``W``, with the given null-space vectors
(the rigid rotations, §2.6) removed.

As in §3.1 the generalised problem becomes the symmetric
``B = W^{-1/2} G W^{-1/2}`` on the complement of ``W^{1/2} N``.  The
complement is parametrised exactly by the Householder reflectors of a QR
factorisation of ``W^{1/2} N``, so ``B`` is solved as an operator of
dimension ``size - n_null`` and round-off cannot leak the null space back in.

:func:`lanczos_softest_modes` is the method of the paper (§3.1): a fixed
number of symmetric Lanczos steps with full re-orthogonalisation, returning
the smallest Ritz values.  Its cost is known in advance, it never fails to
return, and Ritz values are upper bounds of the true eigenvalues, which is
what "at least k times softer" statements need; the residuals say which pairs
converged, and with a tolerance the run stops as soon as the requested pairs
have.  Separated extreme Ritz values converge in 10-20 steps (§6); where the
soft end is a cluster near zero (polar-cap views) the run still ends after the
fixed steps, with Ritz values inside the cluster.

Complex shell coefficients go in as real pairs (e.g. ``a.view(np.float64)``),
which keeps the real inner product ``Re Σ conj(a) b``.

Display (§4): :func:`perturbation_size` gives ``ε`` at a log-likelihood
ratio of ``log 20``, :func:`soft_variance` the soft-subspace variance per
coefficient or, applied to mode volumes, per voxel, :func:`per_shell_profile`
sums any per-coefficient quantity per shell, and :func:`.spherical.shells_to_volume`
turns shell coefficients into a real-space map.
"""
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..errors import InvalidDataError, ShapeError
from ..progress import Reporter


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


class _ProjectedOperator:
    """``B = W^{-1/2} G W^{-1/2}`` in orthonormal coordinates ``z`` of the complement (§3.1).

    A coordinate vector ``z`` stands for the volume vector
    ``x = W^{-1/2} Q [0; z]`` (:meth:`to_volume`), which is W-orthogonal to
    the null space; ``applications`` counts the products with ``G``.
    """

    def __init__(self, matvec, size, null_space, metric):
        self.matvec = matvec
        self.size = size
        self.root = np.sqrt(_validated_metric(metric, size))
        self.complement = _Complement(_validated_null_space(null_space, size) * self.root, size)
        self.applications = 0

    @property
    def dimension(self):
        return self.complement.dimension

    def to_volume(self, z):
        """``x = W^{-1/2} Q [0; z]`` for ``z`` ``(dimension,)`` or ``(dimension, n)``."""
        return (self.complement.embed(z).T / self.root).T

    def from_volume(self, x):
        """Coordinates of the W-orthogonal projection of ``x`` off the null space."""
        return self.complement.restrict(self.root * x)

    def __call__(self, z):
        self.applications += 1
        product = np.asarray(self.matvec(self.to_volume(z)), dtype=np.float64)
        if product.shape != (self.size,):
            raise ShapeError(f"matvec returned shape {product.shape}, expected ({self.size},)")
        if not np.all(np.isfinite(product)):
            raise InvalidDataError("the operator returned NaN or infinite values; check the "
                                   "Hessian-vector product at the current volume and poses")
        return self.complement.restrict(product / self.root)


@dataclass(frozen=True)
class LanczosModes:
    """Smallest Ritz pairs of ``G x = θ W x`` off the null space after a fixed Lanczos run.

    ``eigenvalues`` ``(n_modes,)`` ascending smallest Ritz values (upper bounds
    of the smallest eigenvalues); ``vectors`` ``(n_modes, size)`` W-orthonormal
    Ritz vectors, W-orthogonal to the null space; ``residuals`` ``(n_modes,)``
    ``‖G x - θ W x‖_{W^-1}`` of the projected problem; ``converged`` where the
    residual is at most ``tolerance * max(|θ|, eps ‖T‖)``; ``ritz_history``
    ``(iterations, iterations)``, row ``k`` the ``k + 1`` Ritz values after
    step ``k + 1``, ascending, then NaN; ``log_determinant`` the estimate
    ``dimension * mean(log θ)`` over all final Ritz values (§3.2: the
    average log eigenvalue; exact ``Σ log λ`` when the run spans the whole
    complement; NaN when a Ritz value is not positive); ``iterations`` the
    number of operator applications (= Lanczos steps).
    """
    eigenvalues: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    ritz_history: np.ndarray
    log_determinant: float
    iterations: int


#: A Lanczos coefficient ``β_k <= BREAKDOWN * ‖T‖`` means an invariant subspace (§3.1).
BREAKDOWN = 1e-12


def _orthogonalised(vector, basis):
    """``vector`` minus its projection on the orthonormal rows of ``basis``, twice.

    One classical Gram-Schmidt pass loses orthogonality in proportion to the
    cancellation; a second pass restores it to rounding ("twice is enough").
    The returned overlaps are the first pass's plus the second's.
    """
    overlaps = np.zeros(basis.shape[0])
    for _ in range(2):
        correction = basis @ vector
        vector = vector - correction @ basis
        overlaps += correction
    return vector, overlaps


def _unit_random(generator, basis):
    vector, _ = _orthogonalised(generator.standard_normal(basis.shape[1]), basis)
    return vector / np.linalg.norm(vector)


def _lanczos_start(operator, start, generator):
    if start is None:
        return _unit_random(generator, np.zeros((0, operator.dimension)))
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (operator.size,):
        raise ShapeError(f"start must be a vector of shape ({operator.size},), got {start.shape}")
    if not np.all(np.isfinite(start)):
        raise InvalidDataError("start contains NaN or infinite values")
    vector = operator.from_volume(start)
    norm = np.linalg.norm(vector)
    if norm <= 1e-12 * np.linalg.norm(operator.root * start):
        raise InvalidDataError("start lies in the null space (or is zero); pass another vector")
    return vector / norm


def lanczos_softest_modes(matvec, size, n_modes, iterations=64, null_space=None, metric=None,
                          start=None, tolerance=1e-6, rng=0, progress=None):
    """Smallest Ritz pairs of ``G x = θ W x`` after a fixed number of Lanczos steps (§3.1).

    Symmetric Lanczos on ``B`` (module docstring) with full
    re-orthogonalisation, twice, against every previous Lanczos vector at
    every step.  A coefficient ``β_k <= 1e-12 ‖T‖`` (an invariant subspace)
    restarts the recurrence from a random vector orthogonal to all previous
    ones, so the basis keeps growing and repeated eigenvalues are found.
    The run stops before ``iterations`` steps when the ``n_modes`` smallest
    Ritz pairs meet the residual test by the estimate ``|β_k s_{k,i}|``
    (last components of the eigenvectors ``s_i`` of ``T``), unless a
    restart happened: then exact pairs of the closed blocks pass the test
    while copies of a repeated eigenvalue may still be missing, so every
    step is run.

    Returned residuals are true ones at no extra operator application: the
    products ``B v_k`` are kept, and by linearity ``B (V s) = (B V) s``.
    Memory: two ``(iterations, size)`` arrays.

    :param matvec: function ``x (size,) -> G x (size,)``, ``G`` symmetric (PSD for the bounds).
    :param size: dimension of the real coordinate vectors.
    :param n_modes: how many of the smallest Ritz pairs to return.
    :param iterations: number of Lanczos steps (operator applications), capped at the
        dimension of the complement of the null space (where the Ritz pairs are exact).
    :param null_space: ``(n_null, size)`` vectors removed (any basis), or None.
    :param metric: ``(size,)`` positive diagonal of ``W``, or None for the identity.
    :param start: ``(size,)`` start vector (the authors use a randomly rotated copy of the
        volume), W-projected off the null space; None for a random one from ``rng``.
    :param tolerance: relative residual of the convergence test (0 runs every step).
    :param rng: seed or ``np.random.Generator`` of the random start and restart vectors.
    :param progress: None or a callable taking a :class:`.progress.Progress` after every
        step, whose ``values`` are the step's Ritz values.
    :returns: :class:`LanczosModes`.
    """
    size, n_modes, iterations = int(size), int(n_modes), int(iterations)
    operator = _ProjectedOperator(matvec, size, null_space, metric)
    if iterations < 1:
        raise InvalidDataError(f"iterations must be at least 1, got {iterations}")
    steps = min(iterations, operator.dimension)
    if not 1 <= n_modes <= steps:
        raise InvalidDataError(
            f"n_modes must be between 1 and {steps} (the iterations, at most the dimension "
            f"{operator.dimension} of the complement of the null space), got {n_modes}")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise InvalidDataError(f"tolerance must be finite and non-negative, got {tolerance}")
    generator = np.random.default_rng(rng)
    report = Reporter(progress)
    basis = np.zeros((steps, operator.dimension))
    products = np.zeros((steps, operator.dimension))
    alpha, beta = np.zeros(steps), np.zeros(steps)
    history = np.full((steps, steps), np.nan)
    vector = _lanczos_start(operator, start, generator)
    restarted = False
    for step in range(steps):
        basis[step] = vector
        products[step] = operator(vector)
        alpha[step] = vector @ products[step]
        residual = products[step] - alpha[step] * vector
        if step:
            residual -= beta[step - 1] * basis[step - 1]
        residual, overlaps = _orthogonalised(residual, basis[:step + 1])
        alpha[step] += overlaps[step]
        ritz_values, ritz_vectors = scipy.linalg.eigh_tridiagonal(alpha[:step + 1], beta[:step])
        history[step, :step + 1] = ritz_values
        report(f"Lanczos step {step + 1}", step + 1, steps, ritz_values)
        if step + 1 == steps:
            break
        scale = np.abs(ritz_values).max()
        coupling = np.linalg.norm(residual)
        if coupling <= BREAKDOWN * scale:
            restarted = True
            vector = _unit_random(generator, basis[:step + 1])
            continue
        estimates = coupling * np.abs(ritz_vectors[-1, :n_modes])
        threshold = tolerance * np.maximum(np.abs(ritz_values[:n_modes]),
                                           np.finfo(float).eps * scale)
        if not restarted and step + 1 >= n_modes and np.all(estimates <= threshold):
            break
        beta[step] = coupling
        vector = residual / coupling
    used = step + 1
    values, weights = ritz_values[:n_modes], ritz_vectors[:, :n_modes]
    coordinates = basis[:used].T @ weights
    residuals = np.linalg.norm(products[:used].T @ weights - values * coordinates, axis=0)
    scale = np.abs(ritz_values).max()
    converged = residuals <= tolerance * np.maximum(np.abs(values), np.finfo(float).eps * scale)
    log_determinant = (operator.dimension * float(np.mean(np.log(ritz_values)))
                       if ritz_values[0] > 0 else float("nan"))
    return LanczosModes(eigenvalues=values, vectors=operator.to_volume(coordinates).T,
                        residuals=residuals, converged=converged,
                        ritz_history=history[:used, :used], log_determinant=log_determinant,
                        iterations=operator.applications)


def perturbation_size(eigenvalue, log_likelihood_ratio=np.log(20), noise_variance=1.0,
                      n_images=1):
    """Amplitude ``ε`` of a W-unit mode that costs ``log_likelihood_ratio`` (§4.4).

    The negative log-likelihood changes by ``½ (n_images / noise_variance) λ ε²``
    (keeping the ½ the paper's eq. (125) drops, §7.1), so
    ``ε = sqrt(2 σ² log_LR / (J λ))``.  With the
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
    """``Σ_{i < count} |v_i|² / λ_i`` entry by entry (§4.6).

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
