"""The accumulated Hessian of the NLL at a volume for a viewing experiment.

``docs/methods/hessian_soft_modes.md`` §2.5 (the accumulated form) and §2.7 (its
products).  For noise-free templates (``r_j = 0``, the expected Hessian at the
reference) the reduced Hessian is

    H_red ΔF = Σ_j (1/σ²) T_j† C_j (I − Π_j) C_j T_j ΔF,

with ``Π_j`` the projector onto the image's three pose-derivative slices.
With a radial CTF an image's term depends only on its viewing direction and
its CTF: its in-plane angle rotates the ring (the ring quadrature with
``Q >= 2L + 1`` angles integrates every product exactly, so nothing
changes), and ``d`` and ``−d`` read the same great circle.  An astigmatic
CTF turns with the in-plane angle, which is independent of the map, so its
expected term is that of its ring-mean ``CTF²``.  So images are
counted per viewing direction (folded onto one hemisphere) and defocus
group, ``counts[d, g]`` (:class:`.experiment.ViewingExperiment`), and one
product costs a slice and an adjoint slice per occupied direction, however
many particles there are.  The poses' ``3 x 3`` blocks are per (direction,
group); the pose vectors are image-frame so(3) rotation vectors of the
direction's psi = 0 pose (:func:`.rotations.rotations_for_directions`), whose
norms are those of every image in that direction.

Approximations, all deliberate:

* expected Hessian: the residual terms of ``H_Fτ``, ``H_ττ`` (zero-mean at
  the truth) are dropped, as the authors do;
* pose binning: directions off the analysis grid move to the nearest grid
  direction (:func:`.experiment.rebin`); the error shrinks with the grid
  spacing (tests/test_softmodes_analysis.py measures it);
* one ``CTF²`` per defocus group: the mean over the group's particles of their
  ring-mean ``CTF²`` (:meth:`.experiment.ViewingExperiment.ctf_squared`, exact for
  ``H_FF`` with fixed poses; the pose blocks use the same mean).

Slices are GEMMs against real harmonics (below): the harmonics at a
direction's ring are shared by every shell, so a slice is one dense
``(D Q/2, P) x (P, R)`` product; the per-direction ``3 x 3`` pose algebra is
small next to it.  :class:`AccumulatedHessian` sets up the geometry and the
pose blocks once and runs every product in the :class:`.products.HessianProducts`
of its backend, chosen once: NumPy BLAS on the CPU, ``numba.cuda`` kernels on
a device (:mod:`.products_cuda`).  On the CPU the slices serve only to set up the
factored products (:class:`.products.FactoredProducts`) when their factors fit the
memory budget: the fixed-pose part per shell from the groups' sampling operators, the
pose part from three adjoint slices per direction.

Real harmonics.  :class:`.layout.RealLayout` is the real parametrisation
(``A_l0 = i^l x``, ``A_lm = (a + i b) / √2`` for ``m > 0``).
In those coordinates the value of a real volume's transform at a direction is
``Σ_p x_p h_p`` with ``h_p`` real for even ``l`` and imaginary for odd ``l``
(``Y_l^{-m} = (-1)^m conj Y_l^m``), so a slice is two real GEMMs, four times
fewer flops than a complex one, and only half of every ring is computed
(``V(ψ + π) = conj V(ψ)`` for a real volume).
"""
import numpy as np

from .. import rotations as rot
from ..errors import InvalidDataError
from ..kernels import resolve_backend
from ..kernels.soft_modes_cpu import real_harmonics
from .products import FactoredProducts, HostProducts, factored_bytes
from .sampling import sampling_grams

#: Relative cut-off of the per-image 3x3 pose-block pseudo-inverse (as the authors' code).
POSE_PINV_RCOND = 1e-6

#: Directions are processed in blocks whose harmonics take about this many bytes.
BLOCK_BYTES = 64 << 20


#: How :class:`AccumulatedHessian` forms its products: ``"auto"`` (factored on the CPU when
#: its factors fit the memory budget, else slices), ``"factored"`` or ``"slices"``.
PRODUCT_FORMS = ("auto", "factored", "slices")


def hessian_products(backend, *args):
    """The slice-form :class:`.products.HessianProducts` of ``backend`` (``"cpu"``,
    ``"cuda"`` or ``"auto"``, :func:`.kernels.resolve_backend`) built with ``args``."""
    if resolve_backend(backend) == "cuda":
        from .products_cuda import DeviceProducts
        return DeviceProducts(*args)
    return HostProducts(*args)


class RealHarmonics:
    """Real harmonics ``h_p`` of the real parametrisation, per shell column (module docstring).

    Columns ``p`` are ``(l, m, kind)`` for ``0 <= m <= l <= L`` (kind ``a``/``b`` for
    ``m > 0``), even degrees first.  ``index[r, p]`` is the position of shell ``r``'s
    parameter ``p`` in the real vectors of ``layout`` (:class:`.layout.RealLayout`),
    ``-1`` beyond the shell's degree limit.
    """

    def __init__(self, shells, layout):
        self.shells = shells
        degrees, orders, kinds = [], [], []
        for degree in range(shells.max_degree + 1):
            degrees.append(degree), orders.append(0), kinds.append(0)
            for order in range(1, degree + 1):
                degrees += [degree, degree]
                orders += [order, order]
                kinds += [1, 2]
        degrees, orders, kinds = map(np.array, (degrees, orders, kinds))
        order = np.argsort(degrees % 2, kind="stable")
        self.degrees, self.orders, self.kinds = degrees[order], orders[order], kinds[order]
        self.n_even = int(np.count_nonzero(self.degrees % 2 == 0))
        # Parameter positions: the documented layout is exact on integers.
        numbered = layout.from_real_vector(np.arange(1.0, layout.n_parameters + 1))
        self.index = np.rint(self.extract(numbered)).astype(int) - 1
        self.size = layout.n_parameters
        valid = self.index >= 0
        self._rows, self._columns = np.nonzero(valid)
        self._positions = self.index[valid]
        self.shell_of_parameter = np.empty(self.size, dtype=int)
        self.shell_of_parameter[self._positions] = self._rows
        self._table = self.column_table()

    def extract(self, coefficients):
        """Real coordinates ``(..., R, P)`` of real-volume coefficients ``(..., R, L + 1, M)``."""
        c = np.asarray(coefficients)
        values = c[..., self.degrees, self.orders]
        phase = 1j ** self.degrees
        return np.where(self.kinds == 0, (values * phase.conj()).real,
                        np.where(self.kinds == 1, np.sqrt(2) * values.real,
                                 np.sqrt(2) * values.imag))

    def to_columns(self, vector):
        """``(R, P)`` shell coordinates of a real vector ``(n,)`` (zeros beyond the limits)."""
        out = np.zeros(self.index.shape)
        out[self._rows, self._columns] = vector[self._positions]
        return out

    def from_columns(self, columns):
        """Transpose of :meth:`to_columns`: ``(R, P)`` -> ``(n,)``."""
        out = np.zeros(self.size)
        out[self._positions] = columns[self._rows, self._columns]
        return out

    def column_table(self):
        """``table[l, m, k]``: the column of harmonic ``(l, m)`` of kind ``a`` (``k = 0``,
        kind ``0`` for ``m = 0``) or ``b`` (``k = 1``) in the even or odd block, as the
        harmonics kernels (:mod:`.kernels.soft_modes_cpu`, :mod:`.kernels.soft_modes_cuda`)
        read it."""
        degree = self.shells.max_degree
        table = np.zeros((degree + 1, degree + 1, 2), dtype=np.int64)
        for p, (l, m, kind) in enumerate(zip(self.degrees, self.orders, self.kinds)):
            table[l, m, max(kind - 1, 0)] = p if l % 2 == 0 else p - self.n_even
        return table

    def evaluate(self, directions):
        """``(Re h_even, Im h_odd)`` at directions ``(n, 3)``: ``(n, n_even)``, ``(n, rest)``.

        ``h_p`` is ``i^l Y_l^0`` for ``m = 0`` and ``(Y_l^m ± (-1)^{l+m} Y_l^{-m}) / √2``
        (times ``i`` for kind ``b``) otherwise: real for even ``l``, imaginary for odd.
        """
        directions = np.ascontiguousarray(directions, dtype=np.float64).reshape(-1, 3)
        even = np.zeros((directions.shape[0], self.n_even))
        odd = np.zeros((directions.shape[0], self.degrees.size - self.n_even))
        real_harmonics(directions, self.shells.max_degree, self._table, even, odd)
        return even, odd


class AccumulatedHessian:
    """The accumulated (expected, noise-free) Hessian of the NLL at a volume (module docstring).

    :param shells: :class:`.spherical.ShellGrid`.
    :param volume_vector: ``(n,)`` real coordinates of the reference volume.
    :param layout: :class:`.layout.RealLayout` of ``shells``.
    :param experiment: :class:`.experiment.ViewingExperiment` (directions are used as given).
    :param pixel_size: Å per voxel of the volume (sets the CTF's physical frequencies).
    :param noise_sigma2: the likelihood's ``σ²`` (per unit area of the frequency plane in
        cycles per box, ``docs/methods/hessian_soft_modes.md`` §1.3): one number (white
        noise) or ``(R,)``, the noise power at each shell (coloured noise).
    :param n_angles: ring samples ``Q`` (even, ``>= 2L + 1``; default ``2L + 2``).
    :param memory_budget: bytes for the factored products' factors, or for caching the
        harmonics of the slice form (host or device memory); beyond it the harmonics are
        recomputed at every product (on the device with ``"cuda"``).
    :param backend: ``"cpu"`` (BLAS), ``"cuda"`` or ``"auto"``
        (:func:`.kernels.resolve_backend`) for the products (:attr:`products`).
    :param product_form: one of :data:`PRODUCT_FORMS`: the factored products
        (:class:`.products.FactoredProducts`, CPU only, ``(L + 1) / 3`` times fewer flops)
        or slices of every direction per product.
    :param group_scales: None or ``(G,)`` each defocus group's amplitude relative to the
        map (its images are ``a_g C P F``): its CTF² is multiplied by ``a_g²``.
    """

    def __init__(self, shells, volume_vector, layout, experiment, pixel_size, noise_sigma2=1.0,
                 n_angles=None, memory_budget=1 << 30, backend="cpu", group_scales=None,
                 product_form="auto"):
        if product_form not in PRODUCT_FORMS:
            raise InvalidDataError(f"product_form must be one of {PRODUCT_FORMS}, got "
                                   f"{product_form!r}")
        self.backend = resolve_backend(backend)
        if product_form == "factored" and self.backend != "cpu":
            raise InvalidDataError("the factored products run on the CPU; use "
                                   "product_form='slices' (or 'auto') with the CUDA backend")
        self.shells = shells
        self.experiment = experiment
        self.noise_sigma2 = np.broadcast_to(np.asarray(noise_sigma2, dtype=np.float64),
                                            (shells.n_shells,)).copy()
        if not np.all(np.isfinite(self.noise_sigma2) & (self.noise_sigma2 > 0)):
            raise InvalidDataError("the noise power must be finite and positive on every shell")
        degree = shells.max_degree
        self.n_angles = int(n_angles or 2 * degree + 2)
        if self.n_angles % 2 or self.n_angles < 2 * degree + 1:
            raise InvalidDataError(f"n_angles must be even and at least {2 * degree + 1}, "
                                   f"got {self.n_angles}")
        self.half = self.n_angles // 2
        self.harmonics = RealHarmonics(shells, layout)
        rotations = rot.rotations_for_directions(experiment.directions)
        self.rotations = rotations
        psi = 2 * np.pi * np.arange(self.half) / self.n_angles
        # Sample directions R_dᵀ e(ψ_q) of the half rings, (D, Q/2, 3).
        samples = (np.cos(psi)[None, :, None] * rotations[:, None, 0, :]
                   + np.sin(psi)[None, :, None] * rotations[:, None, 1, :])
        n_directions = rotations.shape[0]
        per_direction = self.half * self.harmonics.index.shape[1] * 8
        block = max(1, min(n_directions, BLOCK_BYTES // per_direction))
        cache = n_directions * per_direction <= memory_budget
        # Ring weights 2 (2π/Q) ρ_r: half rings stand for whole ones.
        self._ring_weights = 2 * (2 * np.pi / self.n_angles) * shells.weights / shells.radii
        self.ctf_squared = experiment.ctf_squared(shells.radii, shells.box, pixel_size)  # (G, R)
        if group_scales is not None:
            scales = np.asarray(group_scales, dtype=np.float64).reshape(-1)
            if scales.shape != (self.ctf_squared.shape[0],) or not np.all(
                    np.isfinite(scales) & (scales > 0)):
                raise InvalidDataError(f"group_scales must be {self.ctf_squared.shape[0]} "
                                       "positive amplitudes, one per defocus group")
            self.ctf_squared = self.ctf_squared * scales[:, None] ** 2
        #: ``(G, R)`` what an image of group ``g`` weighs on shell ``r``: ``C²_{g,r} / σ²_r``.
        self.shell_weights = self.ctf_squared / self.noise_sigma2
        #: The backend's :class:`.products.HessianProducts`, which every product runs in.
        factored = product_form == "factored" or (
            product_form == "auto" and self.backend == "cpu"
            and factored_bytes(shells, n_directions, experiment.n_groups)
            <= memory_budget)
        #: :func:`.sampling.sampling_grams` of the experiment's groups when the products
        #: are factored (for :class:`.sampling.SamplingSpectrum`), else None.
        self.sampling_grams = None
        if factored:
            self.sampling_grams = sampling_grams(self.harmonics, experiment.directions,
                                                 experiment.counts)
            self.products = FactoredProducts(samples, self.harmonics, block,
                                             self.shell_weights, experiment.counts,
                                             self._ring_weights, self.sampling_grams[0],
                                             shells.weights / shells.radii)
        else:
            self.products = hessian_products(self.backend, samples, self.harmonics, block,
                                             cache, self.shell_weights, experiment.counts,
                                             self._ring_weights)
        self._setup_poses(layout.rigid_rotation_modes(layout.from_real_vector(volume_vector)))


    def _setup_poses(self, rotation_modes):
        """Pose-derivative slices ``U_a = -i Σ_b R[a, b] T(L_b F)`` and the blocks' pinv."""
        modes = np.stack([self.harmonics.to_columns(mode) for mode in rotation_modes])
        derivative_re, derivative_im = [], []
        for where, v_re, v_im in self.products.mode_slices(modes):  # T(-i L_b F)
            matrices = self.rotations[where]
            derivative_re.append(np.einsum("dab,dqbr->adqr", matrices, v_re))
            derivative_im.append(np.einsum("dab,dqbr->adqr", matrices, v_im))
        derivatives = (np.concatenate(derivative_re, axis=1),
                       np.concatenate(derivative_im, axis=1))  # (3, D, Q/2, R)
        del derivative_re, derivative_im  # the blocks' copies, before the products' set-up
        u_re, u_im = derivatives
        gram = (np.einsum("adqr,bdqr->drab", u_re, u_re, optimize=True)
                + np.einsum("adqr,bdqr->drab", u_im, u_im, optimize=True))
        gram *= self._ring_weights[None, :, None, None]
        # Per (direction, group) blocks without the counts, which cancel in Δτ.
        blocks = np.einsum("gr,drab->dgab", self.shell_weights, gram)
        blocks = (blocks + blocks.transpose(0, 1, 3, 2)) / 2
        self.pose_blocks = blocks
        self.products.set_poses(derivatives,
                                np.linalg.pinv(blocks, rcond=POSE_PINV_RCOND, hermitian=True))

    def _columns(self, vectors):
        vectors = np.asarray(vectors, dtype=np.float64)
        return np.stack([self.harmonics.to_columns(v) for v in vectors.reshape(-1, vectors.shape[-1])])

    def matmat(self, vectors, implicit_poses=True):
        """``(k, n)`` Hessian-vector products of the NLL (sum over images) with each row
        of ``vectors`` ``(k, n)``, in one pass over the harmonics."""
        out = self.products.matvec(self._columns(vectors), implicit_poses)
        return np.stack([self.harmonics.from_columns(c) for c in out])

    def matvec(self, vector, implicit_poses=True):
        """``(n,)`` Hessian-vector product of the NLL (sum over images)."""
        return self.matmat(np.asarray(vector)[None], implicit_poses)[0]

    def pose_changes(self, vectors):
        """``(k, D, G, 3)`` first-order image-frame rotations ``Δτ`` implied by the volume
        changes ``vectors`` ``(k, n)``."""
        return self.products.pose_change(self._columns(vectors))

    def pose_change(self, vector):
        """``(D, G, 3)`` first-order image-frame rotation ``Δτ`` implied by a volume change."""
        return self.pose_changes(np.asarray(vector)[None])[0]
