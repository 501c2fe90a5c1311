"""The slow reference: the per-image likelihood of a volume's shell coefficients and its Hessian.

The deliberate reference form of ``docs/methods/hessian_soft_modes.md`` §1.7 and
§§2.1–2.7 (every § below is a section of that page): it sums over every image, keeps
the residual terms (the observed Hessian at the given poses) and is what the tests hold
the accumulated Hessian (:mod:`.hessian`) against.  The analysis does not use it.  CPU
(NumPy BLAS) only; there is no CUDA path.

Model and conventions
---------------------
* The volume is given by its spherical-harmonic shell coefficients ``A``,
  ``(R, L + 1, n_orders)`` complex on a :class:`.spherical.ShellGrid` (shell
  radii in cycles per box, degree limits, order layout: see :mod:`.spherical`).
* Images are polar samples ``(J, R, Q)`` at the shell radii and angles
  ``ψ_q = 2 π q / Q``, i.e. the samples of :func:`.polar.polar_transform` /
  :meth:`.projector.FourierSliceProjector.project_polar` on the grid of
  :func:`ring_grid`, already re-centred (multiply by :func:`.polar.shift_phases`).
* Poses are :mod:`.rotations` matrices ``R_j``.  The template of image ``j``
  is ``S_j(f, ψ) = C_j(f, ψ) V(f R_jᵀ (cos ψ, sin ψ, 0))`` (the projector's
  slice), so its samples are ``C_j ⊙ T_j A`` with
  ``(T_j A)(r, q) = Σ_{l,m} A_{r,l,m} Y_l^m(R_jᵀ e(ψ_q))``.
* Likelihood (§2.1, the paper's eq. (54); noise ``σ`` per unit area of the frequency plane
  in cycles per box; constants dropped)::

      NLL(A, {R_j}) = 1 / (2 σ²) Σ_j Σ_r ρ_r (2π / Q) Σ_q |C_j T_j A − Ã_j|²

  with ``ρ_r = w_r / f_r`` (the shells' ``∫ g f² df`` weights turned into
  ``∫ g f df`` weights, :func:`ring_grid`).
* Pose perturbations are left, image-frame rotation vectors ``ω_j``
  (``R_j ← expm([ω_j]_x) R_j``, :func:`.rotations.perturb`); then
  ``∂_{ω_a} T_j A = -i Σ_b R_j[a, b] T_j (L_b A)`` with the angular momentum
  ``L`` of :func:`.spherical.angular_momentum`.
* Real vector space: a real volume has ``A_{l,-m} = (-1)^{l+m} conj(A_{l,m})``.
  :meth:`SoftModeProblem.from_real_vector` maps ``n`` reals (per shell and
  degree ``l <= limit``: ``A_{l0} = i^l x``, and ``A_{lm} = (a + i b) / √2``
  for ``m > 0``) to such coefficients; it is an isometry from the Euclidean
  norm to the plain coefficient norm ``Σ |A|²`` over all ``m``, and
  :meth:`SoftModeProblem.to_real_vector` is its transpose (and its inverse on
  real-volume coefficients).  Gradients and Hessian-vector products are
  Euclidean in these reals.

API (numpy in/out)
------------------
``problem = SoftModeProblem(shell_grid, images_polar, rotations, ctf=None, noise_sigma=1.0,
max_cache_bytes=DEFAULT_MAX_CACHE_BYTES)``

* ``ctf``: None, radial ``(J, R)`` or full ``(J, R, Q)`` real values.
* ``problem.n_parameters``: length ``n`` of real vectors.
* ``templates(coeffs)`` ``(J, R, Q)`` and its exact adjoint ``templates_adjoint(values)``
  (plain complex sums on both sides).
* ``negative_log_likelihood(coeffs)``: the 2-D sum above.
* ``accumulated_terms()`` → :class:`AccumulatedTerms` ``(m20, m11, m02)``, and
  ``volumetric_negative_log_likelihood(coeffs, terms=None)``: the 3-D form (§2.2, the paper's eq. (77)).
* ``gradient(coeffs)``: ``(n,)`` real gradient with fixed poses.
* ``pose_gradient(coeffs)``: ``(J, 3)``; ``refine_poses(coeffs, iterations=5)``: a new
  problem with Newton-refined poses (the reduced Hessian assumes optimal poses).
* ``hessian_vector(coeffs, vector, implicit_poses=True)``: ``(n,)``; with implicit poses
  the reduced ``(H_FF - H_Fτ H_ττ⁺ H_τF) v``, otherwise ``H_FF v`` (fixed poses).
  Linear and symmetric in the Euclidean real inner product.
* ``implied_pose_change(coeffs, vector)``: ``(J, 3)`` ``Δω_j = -H_ττ⁺ H_τF v``, the pose
  part of a mode.
* ``rigid_rotation_modes(coeffs)``: ``(3, n)``, the volume parts ``-i L_a A`` of
  infinitesimal rigid rotations (null modes of the reduced Hessian at an optimum).
* ``metric_weights()``: ``(n,)`` ``W`` with ``xᵀ diag(W) y = Re ShellGrid.inner(A_x, A_y)``
  (the Fourier-ball norm); pose the eigenproblem ``H v = λ W v``.
* ``to_real_vector(coeffs)`` / ``from_real_vector(vector)``.

Expansion-point quantities (templates, pose derivatives, ``H_ττ`` blocks and their
pseudo-inverses) are cached for the last ``coeffs``, so repeated
``hessian_vector`` calls at one point (Lanczos) cost one pass of four slices and one
pass of four adjoint slices each.

Memory: the slices read the harmonics at every image sample, ``J Q (L + 1) n_orders``
complex numbers (4.5 GB at ``L = 32``, ``Q = 132``, ``J = 1000``).  They are kept
between products up to ``max_cache_bytes``; above it the images are processed in
blocks of at most an eighth of the budget, the first blocks stay cached within the
budget and the others are recomputed in every pass (results equal to rounding).
Besides the harmonics, the expansion point keeps four ``(J, R, Q)`` complex arrays.
"""
from dataclasses import dataclass, field

import numpy as np

from .. import rotations as rot
from ..errors import InvalidDataError, ShapeError
from ..polar import PolarGrid
from ..spherical import angular_momentum, harmonics_at
from .hessian import POSE_PINV_RCOND
from .layout import RealLayout

#: Default bound on the image-sample harmonics kept between products (2 GiB).
DEFAULT_MAX_CACHE_BYTES = 2 ** 31

COMPLEX_BYTES = np.dtype(np.complex128).itemsize

#: A block of images recomputed per pass takes at most this fraction of the cache budget.
BLOCK_FRACTION = 1 / 8


def ring_grid(shell_grid, n_angles):
    """:class:`.polar.PolarGrid` of rings at the shell radii, with ``∫ g f df`` weights.

    Use it to sample images (:func:`.polar.polar_transform`) and CTFs
    (``ctf_stack(params, grid.kx, grid.ky, ...)``) for :class:`SoftModeProblem`.
    """
    return PolarGrid(shell_grid.box, shell_grid.max_frequency, shell_grid.n_shells,
                     int(n_angles), radii=shell_grid.radii,
                     weights=shell_grid.weights / shell_grid.radii)


@dataclass(frozen=True)
class AccumulatedTerms:
    """Back-projected data moments per shell (§2.2, the paper's eqs. (79)–(81)).

    :param m20: ``(R, 2L + 1, n_orders_2)`` coefficients of ``Σ_j |C_j|²`` deposited on the
        great circles (degrees up to ``2L``, enough for ``∫ M20 |F|²``).
    :param m11: ``(R, L + 1, n_orders)`` coefficients of ``Σ_j C_j Ã_j``.
    :param m02: ``(R,)`` integral over the sphere of ``Σ_j |Ã_j|²``.
    """
    m20: np.ndarray
    m11: np.ndarray
    m02: np.ndarray


@dataclass(eq=False)
class SoftModeProblem:
    """Images with known poses and CTFs, as a function of the volume's shell coefficients.

    See the module docstring for the model, conventions and methods.
    """

    shell_grid: object
    images_polar: np.ndarray
    rotations: np.ndarray
    ctf: np.ndarray = None
    noise_sigma: float = 1.0
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        shells = self.shell_grid
        self.images_polar = np.asarray(self.images_polar, dtype=np.complex128)
        if self.images_polar.ndim != 3 or self.images_polar.shape[1] != shells.n_shells:
            raise ShapeError(f"images must be (J, {shells.n_shells}, Q) polar samples at the "
                             f"shell radii, got {self.images_polar.shape}")
        n_images, _, n_angles = self.images_polar.shape
        self.rotations = np.asarray(self.rotations, dtype=np.float64).reshape(-1, 3, 3)
        if self.rotations.shape[0] != n_images:
            raise ShapeError(f"{self.rotations.shape[0]} rotations for {n_images} images")
        ctf = np.ones((n_images, shells.n_shells, 1)) if self.ctf is None else np.asarray(
            self.ctf, dtype=np.float64)
        if ctf.ndim == 2:
            ctf = ctf[:, :, None]
        self.ctf = np.ascontiguousarray(np.broadcast_to(ctf, self.images_polar.shape))
        self.grid = ring_grid(shells, n_angles)
        # Quadrature weight of every ring sample: ρ_r (2π / Q).
        self._sample_weights = self.grid.weights[:, None] * (2 * np.pi / n_angles)
        self._mask = shells.coefficient_mask()
        self._sample_directions = self._directions(self.rotations)
        if not self.max_cache_bytes >= 0:
            raise InvalidDataError(f"max_cache_bytes must be a non-negative number of bytes, "
                                   f"got {self.max_cache_bytes}")
        self._n_harmonics = (shells.max_degree + 1) * shells.n_orders
        bytes_per_image = n_angles * self._n_harmonics * COMPLEX_BYTES
        self._blocks = self._image_blocks(bytes_per_image)
        # Keep the first blocks; leave room for one recomputed block when not all fit.
        block_bytes = bytes_per_image * self._blocks[0].stop
        kept = (1 if len(self._blocks) == 1
                else max(0, int(self.max_cache_bytes // block_bytes) - 1))
        self._kept_harmonics = [self._compute_harmonics(images) for images in self._blocks[:kept]]
        self.layout = RealLayout(shells)

    # ------------------------------------------------------------------ geometry
    @property
    def n_images(self):
        return self.images_polar.shape[0]

    @property
    def n_angles(self):
        return self.images_polar.shape[2]

    @property
    def n_parameters(self):
        return self.layout.n_parameters

    def _directions(self, rotations):
        """Unit directions ``R_jᵀ e(ψ_q)`` read by every ring sample, ``(J, Q, 3)``."""
        psi = 2 * np.pi * np.arange(self.n_angles) / self.n_angles
        return (np.cos(psi)[None, :, None] * rotations[:, None, 0, :]
                + np.sin(psi)[None, :, None] * rotations[:, None, 1, :])

    def _image_blocks(self, bytes_per_image):
        """Ranges of images: all at once within ``max_cache_bytes``, else smaller blocks."""
        if self.n_images * bytes_per_image <= self.max_cache_bytes:
            size = self.n_images
        else:
            size = max(1, int(BLOCK_FRACTION * self.max_cache_bytes // bytes_per_image))
        return [slice(start, min(start + size, self.n_images))
                for start in range(0, self.n_images, size)]

    def _compute_harmonics(self, images):
        """``(b Q, P)`` harmonics of a block's samples, ``P = (L + 1) n_orders``."""
        shells = self.shell_grid
        harmonics = harmonics_at(self._sample_directions[images], shells.max_degree,
                                 shells.n_orders)
        return harmonics.reshape(-1, self._n_harmonics)

    def _block_harmonics(self):
        """``(images, harmonics)`` of every block: kept ones, then recomputed ones."""
        for index, images in enumerate(self._blocks):
            yield images, (self._kept_harmonics[index] if index < len(self._kept_harmonics)
                           else self._compute_harmonics(images))

    # ------------------------------------------------------------------ slice operator
    def _slice_blocks(self, coefficients):
        """``T_j A`` without CTF of a stack ``(..., R, L + 1, n_orders)``, block by block.

        Yields ``(images, values (..., b, R, Q))`` for the blocks' image ranges.
        """
        coefficients = np.asarray(coefficients) * self._mask
        lead = coefficients.shape[:-3]
        shells = self.shell_grid.n_shells
        flat = coefficients.reshape((-1, shells, self._n_harmonics))
        for images, harmonics in self._block_harmonics():
            count = images.stop - images.start
            # (b Q, P) x (s, R, P): one complex GEMM per block.
            values = np.einsum("sp,brp->bsr", harmonics, flat, optimize=True)
            values = values.reshape((-1, count, self.n_angles, shells)).transpose(0, 1, 3, 2)
            yield images, values.reshape(lead + (count, shells, self.n_angles))

    def _slice(self, coefficients):
        """``T_j A`` without CTF for a stack ``(..., R, L + 1, n_orders)`` → ``(..., J, R, Q)``."""
        return np.concatenate([values for _, values in self._slice_blocks(coefficients)], axis=-3)

    def _slice_adjoint(self, values):
        """Adjoint of :meth:`_slice` for a stack ``(..., J, R, Q)`` (plain complex sums)."""
        shells = self.shell_grid
        values = np.asarray(values)
        lead = values.shape[:-3]
        flat = values.reshape((-1,) + values.shape[-3:])
        coefficients = np.zeros((flat.shape[0] * shells.n_shells, self._n_harmonics),
                                dtype=np.complex128)
        for images, harmonics in self._block_harmonics():
            by_sample = flat[:, images].transpose(0, 2, 1, 3).reshape(coefficients.shape[0], -1)
            # X conj(H) = conj(conj(X) H): no conjugated copy of the harmonics.
            coefficients += (by_sample.conj() @ harmonics).conj()
        coefficients = coefficients.reshape(
            lead + (shells.n_shells, shells.max_degree + 1, shells.n_orders))
        return coefficients * self._mask

    def templates(self, coeffs):
        """Templates ``C_j ⊙ T_j A`` at the ring samples, ``(J, R, Q)``."""
        return self.ctf * self._slice(coeffs)

    def templates_adjoint(self, values):
        """Exact adjoint of :meth:`templates`: ``Σ_j T_j†(C_j ⊙ values_j)``."""
        return self._slice_adjoint(self.ctf * np.asarray(values))

    # ------------------------------------------------------------------ likelihood
    def _weighted_norm(self, residuals):
        return float(np.sum(self._sample_weights * np.abs(residuals) ** 2))

    def negative_log_likelihood(self, coeffs):
        """2-D form: ``1 / (2σ²) Σ_j ∫∫ |C_j T_j A − Ã_j|²`` by ring quadrature."""
        residuals = self.templates(coeffs) - self.images_polar
        return self._weighted_norm(residuals) / (2 * self.noise_sigma ** 2)

    def accumulated_terms(self):
        """Back-project the data moments onto the shells (:class:`AccumulatedTerms`).

        Each ring sample is deposited as the degree-limited delta at its
        direction with the ring-quadrature weight ``2π / Q``; this is exactly
        the adjoint of the slice, so the 3-D and 2-D forms agree to rounding.
        """
        shells = self.shell_grid
        angle_weight = 2 * np.pi / self.n_angles
        m11 = self.templates_adjoint(angle_weight * self.images_polar)
        double = 2 * shells.max_degree
        n_orders = 2 * double + 1
        evidence = angle_weight * self.ctf ** 2  # (J, R, Q), real
        m20 = np.zeros((shells.n_shells, double + 1, n_orders), dtype=np.complex128)
        bytes_per_image = self.n_angles * (double + 1) * n_orders * COMPLEX_BYTES
        for images in self._image_blocks(bytes_per_image):
            harmonics = harmonics_at(self._sample_directions[images], double, n_orders)
            m20 += np.einsum("jrq,jqlm->rlm", evidence[images], harmonics, optimize=True).conj()
        m02 = angle_weight * np.sum(np.abs(self.images_polar) ** 2, axis=(0, 2))
        return AccumulatedTerms(m20=m20, m11=m11, m02=m02)

    def volumetric_negative_log_likelihood(self, coeffs, terms=None):
        """3-D form ``1 / (2σ²) Σ_r ρ_r ∫ (M20 |F|² − 2 Re(M11† F) + M02) dΩ`` (§2.2, eq. (77)).

        ``∫ M20 |F|²`` is evaluated on a Gauss-Legendre x uniform sphere grid
        exact for degree ``4L`` (the product's degree).
        """
        terms = self.accumulated_terms() if terms is None else terms
        shells = self.shell_grid
        degree = shells.max_degree
        directions, sphere_weights = _exact_sphere_grid(4 * degree)
        m20_values = np.einsum("glm,rlm->rg", harmonics_at(directions, 2 * degree,
                                                          terms.m20.shape[-1]), terms.m20).real
        volume_values = np.einsum("glm,rlm->rg", harmonics_at(directions, degree, shells.n_orders),
                                  np.asarray(coeffs) * self._mask)
        quadratic = np.sum(sphere_weights * m20_values * np.abs(volume_values) ** 2, axis=1)
        linear = np.einsum("rlm,rlm->r", terms.m11.conj(), np.asarray(coeffs) * self._mask).real
        per_shell = quadratic - 2 * linear + terms.m02
        return float(np.sum(self.grid.weights * per_shell)) / (2 * self.noise_sigma ** 2)

    # ------------------------------------------------------------------ expansion point
    def _expansion(self, coeffs):
        """Residuals, pose derivatives and pose blocks at ``coeffs`` (cached for the last one)."""
        coeffs = np.asarray(coeffs, dtype=np.complex128) * self._mask
        cached = self._cache.get("expansion")
        if cached is not None and np.array_equal(cached["coeffs"], coeffs):
            return cached
        matrices = self.rotations
        weights = self._sample_weights / self.noise_sigma ** 2
        momenta = np.stack([angular_momentum(coeffs, axis) for axis in range(3)])
        second = np.stack([angular_momentum(momenta, axis) for axis in range(3)])  # [c, d] = L_c L_d
        slices = self._slice(np.concatenate([coeffs[None], momenta]))  # (4, J, R, Q)
        residuals = self.ctf * slices[0] - self.images_polar
        # S_a = C ∂_a T A = -i C Σ_b R[a, b] T(L_b A).
        derivatives = -1j * self.ctf * np.einsum("jab,bjrq->ajrq", matrices, slices[1:])
        pose_gradient = np.einsum("rq,ajrq,jrq->ja", weights, derivatives.conj(), residuals).real
        pose_blocks = np.einsum("rq,ajrq,bjrq->jab", weights, derivatives.conj(), derivatives,
                                optimize=True).real
        # The second derivatives are only contracted with the residuals: block by block.
        for images, second_slices in self._slice_blocks(second):  # (3, 3, b, R, Q)
            # S_ab = -1/2 C Σ_cd (R_ac R_bd + R_bc R_ad) T(L_c L_d A): the symmetrised flow.
            mixed = np.einsum("jac,jbd,cdjrq->abjrq", matrices[images], matrices[images], second_slices,
                              optimize=True)
            second_derivatives = -0.5 * self.ctf[images] * (mixed + mixed.transpose(1, 0, 2, 3, 4))
            pose_blocks[images] += np.einsum("rq,abjrq,jrq->jab", weights,
                                             second_derivatives.conj(), residuals[images],
                                             optimize=True).real
        pose_blocks = (pose_blocks + pose_blocks.transpose(0, 2, 1)) / 2
        cached = {"coeffs": coeffs, "residuals": residuals, "derivatives": derivatives,
                  "pose_gradient": pose_gradient, "pose_blocks": pose_blocks,
                  "pose_pinv": np.linalg.pinv(pose_blocks, rcond=POSE_PINV_RCOND, hermitian=True)}
        self._cache["expansion"] = cached
        return cached

    # ------------------------------------------------------------------ derivatives
    def gradient(self, coeffs):
        """Real gradient ``(n,)`` of the NLL with fixed poses (``Σ_j T_j† C_j r_j`` = M20 F − M11)."""
        residuals = self.templates(coeffs) - self.images_polar
        weights = self._sample_weights / self.noise_sigma ** 2
        return self.to_real_vector(self.templates_adjoint(weights * residuals))

    def pose_gradient(self, coeffs):
        """``(J, 3)`` derivative of the NLL with respect to each image-frame rotation vector."""
        return self._expansion(coeffs)["pose_gradient"].copy()

    def refine_poses(self, coeffs, iterations=5):
        """A new problem whose poses take ``iterations`` Newton steps towards the optimum at ``coeffs``.

        Step ``ω_j = -H_ττ⁺ g_j`` applied as :func:`.rotations.perturb`.  The
        reduced Hessian assumes poses at their optimum (§2.5 and §7.1: refine the
        poses, do not keep the paper's gradient term).
        """
        problem = self
        for _ in range(iterations):
            expansion = problem._expansion(coeffs)
            step = -np.einsum("jab,jb->ja", expansion["pose_pinv"], expansion["pose_gradient"])
            problem = SoftModeProblem(self.shell_grid, self.images_polar,
                                      rot.perturb(problem.rotations, step),
                                      self.ctf, self.noise_sigma, self.max_cache_bytes)
        return problem

    def _pose_coupling(self, expansion, direction):
        """``H_τF ΔF`` ``(J, 3)`` and the slices of ``ΔF`` it needs."""
        weights = self._sample_weights / self.noise_sigma ** 2
        slices = self._slice(np.stack([direction] + [angular_momentum(direction, b)
                                                     for b in range(3)]))
        change = self.ctf * slices[0]
        change_derivatives = -1j * self.ctf * np.einsum("jab,bjrq->ajrq", self.rotations,
                                                          slices[1:])
        coupling = (np.einsum("rq,ajrq,jrq->ja", weights, expansion["derivatives"].conj(), change)
                    + np.einsum("rq,ajrq,jrq->ja", weights, change_derivatives.conj(),
                                expansion["residuals"])).real
        return coupling, change

    def implied_pose_change(self, coeffs, vector):
        """``(J, 3)`` first-order pose response ``Δω_j = -H_ττ⁺ (H_τF v)_j`` to a volume change."""
        expansion = self._expansion(coeffs)
        coupling, _ = self._pose_coupling(expansion, self.from_real_vector(vector))
        return -np.einsum("jab,jb->ja", expansion["pose_pinv"], coupling)

    def hessian_vector(self, coeffs, vector, implicit_poses=True):
        """``(n,)`` Hessian-vector product in the real vector space (§2.7, §1.6).

        ``implicit_poses=True``: reduced Hessian ``(H_FF − H_Fτ H_ττ⁺ H_τF) v``
        of the profile likelihood (poses re-optimised to first order);
        ``False``: ``H_FF v`` with fixed poses.
        """
        direction = self.from_real_vector(vector)
        weights = self._sample_weights / self.noise_sigma ** 2
        if not implicit_poses:
            return self.to_real_vector(self.templates_adjoint(weights * self.templates(direction)))
        expansion = self._expansion(coeffs)
        coupling, change = self._pose_coupling(expansion, direction)
        pose_change = -np.einsum("jab,jb->ja", expansion["pose_pinv"], coupling)
        # H_FF ΔF + Σ_j T_j†(C_j Σ_a Δω_a S_a) ...
        moved = change + np.einsum("ja,ajrq->jrq", pose_change, expansion["derivatives"])
        # ... + Σ_j Σ_a Δω_a (∂_a T_j)†(C_j r_j), (∂_a T_j)† = i Σ_b R[a, b] L_b T_j†:
        # four back-projections in one pass over the harmonics.
        mixing = np.einsum("ja,jab->bj", pose_change, self.rotations)
        weighted_residuals = weights * expansion["residuals"]
        backs = self.templates_adjoint(np.concatenate(
            [(weights * moved)[None], mixing[:, :, None, None] * weighted_residuals[None]]))
        out = backs[0] + 1j * sum(angular_momentum(backs[1 + axis], axis) for axis in range(3))
        return self.to_real_vector(out)

    def rigid_rotation_modes(self, coeffs):
        """``(3, n)`` volume parts ``-i L_a A`` of infinitesimal rotations about x, y, z."""
        return self.layout.rigid_rotation_modes(coeffs)

    # ------------------------------------------------------------------ real vector space
    def metric_weights(self):
        """``(n,)`` radial weights ``W`` of the Fourier-ball norm for each real parameter."""
        return self.layout.metric_weights()

    def to_real_vector(self, coeffs):
        """Transpose of :meth:`from_real_vector` (its inverse on real-volume coefficients)."""
        return self.layout.to_real_vector(coeffs)

    def from_real_vector(self, vector):
        """Real-volume coefficients ``(R, L + 1, n_orders)`` of a real vector ``(n,)``."""
        return self.layout.from_real_vector(vector)


def _exact_sphere_grid(degree):
    """Directions ``(n, 3)`` and weights integrating polynomials of ``degree`` on the sphere."""
    cos_theta, theta_weights = np.polynomial.legendre.leggauss(degree // 2 + 1)
    n_phi = degree + 1
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    sin_theta = np.sqrt(1.0 - cos_theta ** 2)
    directions = np.stack([sin_theta[:, None] * np.cos(phi)[None],
                           sin_theta[:, None] * np.sin(phi)[None],
                           np.repeat(cos_theta[:, None], n_phi, 1)], -1).reshape(-1, 3)
    weights = np.repeat(theta_weights * (2 * np.pi / n_phi), n_phi)
    return directions, weights
