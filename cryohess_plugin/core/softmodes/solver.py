"""Softest modes of a symmetric operator in a metric, its log-determinant, and what a user
looks at.

``docs/methods/hessian_soft_modes.md`` §3 (the solver) and §4 (the displayed
quantities); every § below is a section of that page.  The solver knows nothing of the
likelihood: it takes a function ``matmat`` applying a symmetric positive semi-definite
operator ``G`` (the Hessian's quadratic form, real coordinates) to a stack of vectors and
solves ``G x = θ W x`` for the smallest ``θ`` with a diagonal metric ``W``, off a null
space: given vectors (the rigid rotations, §2.6) and, through ``coordinates``, the
components the experiment does not sample (:mod:`.sampling`).

:class:`ProjectedOperator` is ``B = W^{-1/2} G W^{-1/2}`` in orthonormal coordinates of
that complement: the coordinates' own (:class:`MetricCoordinates`, or
:class:`.sampling.SampledCoordinates`), then the Householder reflectors of a QR of the
null vectors, so round-off cannot leak the null space back in.

:func:`softest_modes` is a block Davidson method with thick restarts, preconditioned by
the coordinates' diagonal of the fixed-pose Hessian, run until every wanted pair meets a
relative residual tolerance or a budget of products is spent (§3.1).  Eigenvalues that
cluster are reported as one soft subspace; pairs short of the tolerance are flagged, not
bounds.  :func:`stochastic_log_determinant` estimates ``log det B`` by stochastic Lanczos
quadrature (§3.3).

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


class MetricCoordinates:
    """Coordinates ``z = W^{1/2} x`` of all real parameters (no unsampled components).

    The interface :class:`ProjectedOperator` reads (shared with
    :class:`.sampling.SampledCoordinates`): :meth:`embed` ``x = W^{-1/2} z`` of row
    stacks, its transpose :meth:`restrict`, :meth:`of_volume` (the coordinates of a
    volume's W-orthogonal projection), ``dimension`` and ``diagonal`` (the preconditioner's
    diagonal in these coordinates, None for none).
    """

    def __init__(self, metric, size):
        self._root = np.sqrt(_validated_metric(metric, size))
        self.size = self.dimension = int(size)
        self.diagonal = None

    def embed(self, z):
        return np.atleast_2d(z) / self._root

    def restrict(self, vectors):
        return np.atleast_2d(vectors) / self._root

    def of_volume(self, vectors):
        return np.atleast_2d(vectors) * self._root


class ProjectedOperator:
    """``B = W^{-1/2} G W^{-1/2}`` on the complement of a null space, in orthonormal
    coordinates ``y`` (module docstring), applied to row stacks ``(k, dimension)``.

    :param matmat: ``(k, size) -> (k, size)`` products with ``G``.
    :param coordinates: :class:`MetricCoordinates` or :class:`.sampling.SampledCoordinates`.
    :param null_space: ``(n_null, size)`` volume vectors removed (any basis; only their
        parts inside the coordinates' span count), or None.
    """

    def __init__(self, matmat, coordinates, null_space=None):
        self.matmat = matmat
        self.coordinates = coordinates
        self.size = coordinates.size
        null = _validated_null_space(null_space, self.size)
        inside = coordinates.of_volume(null) if null.shape[0] else null[:, :0]
        if inside.shape[0]:
            _, values, rows = np.linalg.svd(inside, full_matrices=False)
            inside = rows[values > 1e-8 * max(values.max(), np.finfo(float).tiny)]
        self.complement = _Complement(inside, coordinates.dimension)
        self.applications = 0

    @property
    def dimension(self):
        return self.complement.dimension

    def _from(self, y):
        return self.complement.embed(np.atleast_2d(y).T).T

    def _to(self, z):
        return self.complement.restrict(np.atleast_2d(z).T).T

    def to_volume(self, y):
        """``(k, size)`` volume vectors of coordinates ``(k, dimension)`` (W-orthonormal
        rows for orthonormal ``y``)."""
        return self.coordinates.embed(self._from(y))

    def from_volume(self, vectors):
        """Coordinates of the W-orthogonal projections of volume vectors ``(k, size)``."""
        return self._to(self.coordinates.of_volume(vectors))

    def precondition(self, residuals):
        """The residuals ``(k, dimension)`` divided by the coordinates' diagonal (as is
        without one)."""
        diagonal = self.coordinates.diagonal
        if diagonal is None:
            return np.array(residuals, dtype=np.float64)
        floor = np.finfo(float).eps * max(diagonal.max(), np.finfo(float).tiny)
        return self._to(self._from(residuals) / np.maximum(diagonal, floor))

    def __call__(self, y):
        y = np.atleast_2d(y)
        self.applications += y.shape[0]
        volumes = self.to_volume(y)
        product = np.asarray(self.matmat(volumes), dtype=np.float64)
        if product.shape != volumes.shape:
            raise ShapeError(f"matmat returned shape {product.shape}, expected {volumes.shape}")
        if not np.all(np.isfinite(product)):
            raise InvalidDataError("the operator returned NaN or infinite values; check the "
                                   "Hessian-vector product at the current volume and poses")
        return self._to(self.coordinates.restrict(product))


#: The search space grows to at least this many vectors before a thick restart.
MIN_SEARCH_SPACE = 160

#: Ritz values closer than this (relative gap) form one soft subspace: with residuals at
#: a tolerance of 1e-3 their individual vectors are not determined to better than ~10 %.
CLUSTER_GAP = 1e-2


@dataclass(frozen=True)
class SoftestModes:
    """Softest eigenpairs of ``G x = θ W x`` off the null space (:func:`softest_modes`).

    ``eigenvalues`` ``(m,)`` ascending Ritz values (upper bounds of the eigenvalues of
    ``B``, by interlacing); ``vectors`` ``(m, size)`` W-orthonormal, W-orthogonal to the
    null space; ``residuals`` ``(m,)`` relative ``‖B y − θ y‖ / θ``; ``converged`` where
    that is at most the tolerance; ``clusters`` ``(m,)`` the soft subspace of each pair
    (equal labels: eigenvalues within :data:`CLUSTER_GAP` of each other, one subspace
    whose individual vectors are arbitrary); ``history`` ``(iterations, n_wanted)`` the
    wanted Ritz values after every iteration; ``products`` the operator applications;
    ``dimension`` that of the complement.  ``m`` is the number asked for, or more when
    the last one's cluster goes on; ``open_cluster``: that cluster reaches the last pair
    computed, so it may go on beyond them.
    """
    eigenvalues: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    clusters: np.ndarray
    history: np.ndarray
    products: int
    dimension: int
    open_cluster: bool = False


def cluster_labels(values, gap=CLUSTER_GAP):
    """Label of the soft subspace of each of ascending ``values`` (:data:`CLUSTER_GAP`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=int)
    steps = np.diff(values) > gap * np.maximum(np.abs(values[1:]), np.finfo(float).tiny)
    return np.concatenate([[0], np.cumsum(steps)]).astype(int)


def _orthonormal_rows(block, basis):
    """Rows of ``block`` orthogonalised against the orthonormal rows of ``basis`` (twice)
    and among themselves; rows that vanish are dropped."""
    for _ in range(2):
        block = block - (block @ basis.T) @ basis
    norms = np.linalg.norm(block, axis=1)
    block = block[norms > 1e-10 * max(norms.max(initial=0.0), np.finfo(float).tiny)]
    if block.shape[0] == 0:
        return block
    q, r = np.linalg.qr(block.T)
    keep = np.abs(np.diagonal(r)) > 1e-10 * np.abs(np.diagonal(r)).max()
    block = q[:, keep].T
    return block - (block @ basis.T) @ basis


def default_guard(n_modes):
    """Extra pairs :func:`softest_modes` carries along by default: ``n_modes`` plus these
    are the vectors it starts from, so its budget of products must cover them."""
    return max(4, n_modes // 2)


def softest_modes(operator, n_modes, tolerance=1e-3, max_products=None, block=4, guard=None,
                  start=None, rng=0, progress=None):
    """Softest eigenpairs of ``G x = θ W x`` off the null space, to a residual tolerance.

    A block Davidson method (§3.1) on a :class:`ProjectedOperator`: the search space starts
    from ``n_modes + guard`` random vectors (and ``start``), and every iteration adds the
    preconditioned residuals of up to ``block`` unconverged Ritz pairs, softest first,
    until the wanted pairs (and the rest of the last one's subspace) meet the tolerance and
    the next pair is known well enough to tell whether it belongs to that subspace;
    when it holds ``max(6 (n_modes + guard), 160)`` vectors it restarts thick, from the
    ``2 (n_modes + guard)`` softest Ritz vectors.  With the identity as preconditioner the
    space is a block Krylov space (Lanczos' convergence); with the fixed-pose Hessian's
    diagonal in the sampling eigenbasis (:class:`.sampling.SampledCoordinates`) the
    clustered, ill-conditioned soft end of preferred views converges in a few hundred
    products.  Written here rather than with ``scipy.sparse.linalg.lobpcg``: LOBPCG
    applies the operator to its whole block at every iteration, which measured 3–5 times
    the products of this method on the soft-mode operators (§3.1).

    :param operator: :class:`ProjectedOperator` (``G`` symmetric PSD, the metric and the
        null space in its coordinates).
    :param n_modes: pairs wanted.
    :param tolerance: relative residual ``‖B y − θ y‖ / θ`` every wanted pair must reach.
    :param max_products: budget of operator applications (default ``100 n_modes``).
    :param block: residuals added per iteration.  :param guard: extra pairs carried along
        (default :func:`default_guard`), so the wanted ones converge and clusters show.
    :param start: ``(size,)`` or ``(j, size)`` volume vectors included in the start space.
    :param rng: seed or generator of the random start vectors.
    :param progress: None or a callable taking a :class:`.progress.Progress` after every
        iteration, whose ``values`` are the wanted Ritz values.
    :returns: :class:`SoftestModes`.
    """
    n_modes, size, coordinates = int(n_modes), operator.size, operator.coordinates
    dimension = operator.dimension
    if not 1 <= n_modes <= dimension:
        raise InvalidDataError(f"n_modes must be between 1 and {dimension} (the dimension of "
                               f"the complement of the null space), got {n_modes}")
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise InvalidDataError(f"tolerance must be a positive number, got {tolerance}")
    guard = default_guard(n_modes) if guard is None else int(guard)
    wanted = min(n_modes + guard, dimension)
    max_products = 100 * n_modes if max_products is None else int(max_products)
    if max_products < wanted:
        raise InvalidDataError(f"max_products {max_products} cannot even start {wanted} vectors "
                               f"({n_modes} modes and {guard} guard vectors); raise it")
    block = max(1, int(block))
    limit = min(dimension, max(6 * wanted, MIN_SEARCH_SPACE))
    keep = min(dimension, 2 * wanted)
    generator = np.random.default_rng(rng)
    report = Reporter(progress)

    initial = generator.standard_normal((wanted, dimension))
    if start is not None:
        start = np.atleast_2d(np.asarray(start, dtype=np.float64))
        if start.shape[1:] != (size,):
            raise ShapeError(f"start must be a vector of shape ({size},) or a stack of them, "
                             f"got {start.shape}")
        if not np.all(np.isfinite(start)):
            raise InvalidDataError("start contains NaN or infinite values")
        given = operator.from_volume(start)
        if np.linalg.norm(given) <= 1e-12 * np.linalg.norm(coordinates.of_volume(start)):
            raise InvalidDataError("start lies in the null space (or is zero); pass another "
                                   "vector")
        initial = np.concatenate([given, initial])[:wanted]
    basis = _orthonormal_rows(initial, np.zeros((0, dimension)))
    products = operator(basis)
    # The Rayleigh quotient matrix grows by the new rows and columns only: recomputing it
    # would cost space² · dimension per iteration, about as much as a Hessian product.
    small = basis @ products.T
    history = []
    while True:
        small = (small + small.T) / 2
        values, weights = scipy.linalg.eigh(small)
        count = min(wanted, values.size)
        ritz = weights[:, :count].T @ basis
        residual = weights[:, :count].T @ products - values[:count, None] * ritz
        relative = np.linalg.norm(residual, axis=1) / np.maximum(
            np.abs(values[:count]), np.finfo(float).tiny)
        done = relative <= tolerance
        labels = cluster_labels(values[:count])
        # The wanted pairs and the rest of the last one's cluster, when it ends in view.
        end = int(np.searchsorted(labels, labels[n_modes - 1], side="right"))
        reported = end if end < count or count == dimension else n_modes
        history.append(values[:n_modes])
        report(f"Eigensolver: {operator.applications} products, "
               f"{int(done[:reported].sum())} of {reported} pairs within {tolerance:g}",
               operator.applications, max_products, values[:n_modes])
        pending = np.flatnonzero(~done)[:block]
        room = max_products - operator.applications
        # The pair after the last reported one must be known to a relative residual of
        # CLUSTER_GAP: then its Ritz value is within the gap of an eigenvalue, and a copy
        # of the last subspace's eigenvalue that the space still mixes shows by joining it.
        boundary = reported >= count or relative[reported] <= max(tolerance, CLUSTER_GAP)
        if done[:reported].all() and boundary or pending.size == 0 or room <= 0:
            break
        if basis.shape[0] == dimension:
            break
        pending = pending[:room]
        corrections = operator.precondition(residual[pending])
        if basis.shape[0] + pending.size > limit:
            basis, products = weights[:, :keep].T @ basis, weights[:, :keep].T @ products
            small = np.diag(values[:keep])
        corrections = _orthonormal_rows(corrections, basis)
        if corrections.shape[0] == 0:
            corrections = _orthonormal_rows(generator.standard_normal((1, dimension)), basis)
        applied = operator(corrections)
        cross = basis @ applied.T
        small = np.block([[small, cross], [cross.T, corrections @ applied.T]])
        basis = np.concatenate([basis, corrections])
        products = np.concatenate([products, applied])
    return SoftestModes(eigenvalues=values[:reported],
                        vectors=operator.to_volume(ritz[:reported]),
                        residuals=relative[:reported], converged=done[:reported],
                        clusters=labels[:reported], history=np.array(history),
                        products=operator.applications, dimension=dimension,
                        open_cluster=bool(end >= count and count < dimension))


@dataclass(frozen=True)
class LogDeterminant:
    """``log det B`` on the complement of the null space by stochastic Lanczos quadrature:
    ``value`` (the mean over probes), ``standard_error`` (their spread over the root of
    their number), ``probes`` and ``steps``, and ``dimension``."""
    value: float
    standard_error: float
    probes: int
    steps: int
    dimension: int


def stochastic_log_determinant(operator, probes=4, steps=30, rng=0):
    """``log det`` of a symmetric positive definite :class:`ProjectedOperator` (§3.3).

    Stochastic Lanczos quadrature: for each Rademacher probe ``z`` (``‖z‖² = n``), ``steps``
    Lanczos steps from ``z / ‖z‖`` (full re-orthogonalisation) give a tridiagonal ``T`` with
    eigenpairs ``(θ_k, s_k)``, and ``zᵀ log(B) z ≈ n Σ_k s_k[0]² log θ_k`` (Gauss
    quadrature of the probe's spectral measure); the estimate is the mean over the
    probes.  The probes run side by side, one block product per step.

    :returns: :class:`LogDeterminant` (NaN when a Ritz value is not positive).
    """
    dimension = operator.dimension
    probes, steps = int(probes), min(int(steps), dimension)
    if probes < 1 or steps < 1:
        raise InvalidDataError(f"need at least one probe and one step, got {probes} and {steps}")
    generator = np.random.default_rng(rng)
    vectors = np.zeros((probes, steps, dimension))
    vectors[:, 0] = generator.choice([-1.0, 1.0], size=(probes, dimension)) / np.sqrt(dimension)
    alpha, beta = np.zeros((probes, steps)), np.zeros((probes, steps))
    length = np.full(probes, steps)
    for step in range(steps):
        active = np.flatnonzero(length > step)
        current = vectors[active, step]
        product = operator(current)
        for row, p in enumerate(active):
            w = product[row]
            alpha[p, step] = w @ current[row]
            for _ in range(2):  # full re-orthogonalisation, twice
                w = w - (vectors[p, :step + 1] @ w) @ vectors[p, :step + 1]
            norm = np.linalg.norm(w)
            if step + 1 == steps:
                continue
            if norm <= 1e-12 * max(np.abs(alpha[p, :step + 1]).max(), np.finfo(float).tiny):
                length[p] = step + 1  # an invariant subspace: the quadrature is exact
                continue
            beta[p, step] = norm
            vectors[p, step + 1] = w / norm
    estimates = np.empty(probes)
    for p in range(probes):
        values, weights = scipy.linalg.eigh_tridiagonal(alpha[p, :length[p]],
                                                        beta[p, :length[p] - 1])
        estimates[p] = (dimension * np.sum(weights[0] ** 2 * np.log(values))
                        if values[0] > 0 else np.nan)
    error = float(estimates.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan")
    return LogDeterminant(float(estimates.mean()), error, probes, steps, dimension)


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
