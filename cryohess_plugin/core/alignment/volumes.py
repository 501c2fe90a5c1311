"""Volume-to-reference alignment over SO(3) with the radial- and degree-SVD.

Rangan, "Radial-recombination for rigid rotational alignment of images and
volumes" (2022), section 4; formulas in ``docs/methods/radial_svd_alignment.md``
§4, the paper's errata in §8.1 (section signs below are that page's).
Each volume ``A`` and the reference ``B`` become spherical-harmonic shells
``A_l^m(f_r)`` (:mod:`.spherical`).  The landscape

    X(α, β, γ) = <rotate_volume(A, R), B>,   R = landscape_rotation(α, β, γ),

in the units of the centred, non-unitary transform (``≈ box³ Σ_x`` of the
real-space product for maps band-limited to ``max_frequency``), is
``Σ_{m1 m2} exp(-i m1 α - i m2 γ) Σ_l d^l_{m1 m2}(β) X̃(m1, m2; l)`` with
``X̃(m1, m2; l) = Σ_r w_r conj(A_l^{m1}(f_r)) B_l^{m2}(f_r)``.

* **Unreduced** (full rank): step 1 ``X̃`` (one batched GEMM), step 2 the sum
  over ``l`` for every grid ``β`` (:func:`.kernels.volume_cpu.wigner_sum`),
  step 3 a 2-D FFT over ``(m1, m2)`` per ``β``.
* **Compressed**: the radial kernel ``C`` (shells, ``η = √w``, ``l = 0``
  excluded) keeps ``H_C`` principal shells, the degree kernel ``D`` (the paper's
  eq. (116) with the corrected ``(1 - δ)`` prefactor, §4.4) keeps ``H_D`` principal
  degrees, so step 1 costs ``H_C`` instead of ``R`` and step 2 sums ``H_D``
  precomputed ``[v_zᵀ d](β)`` instead of ``L`` degrees
  (:func:`.kernels.volume_cpu.degree_sum`).  At ``H_C = R, H_D = L + 1`` it
  equals the unreduced landscape; below, it drops the constant ``l = 0`` term
  and approximates the rest while staying strongly correlated with it, so its
  argmax lands on or next to the exact one (§4.3-§4.5).
  The kept principal degrees ``v_z`` vanish above a band ``L_c < L``
  (:data:`BAND_TOLERANCE`; about ``L / 2`` at the paper's ``K = 48``), so the
  compressed method keeps degrees and orders ``<= L_c`` only and, when the
  exact refinement follows, searches its landscape on its own grid of
  ``next_fast_len(2 L_c + 1)`` angles per axis (``search_orders``): step 2 and
  the FFTs shrink by about ``(L / L_c)³``.

Grid: ``α_i = γ_i = 2 π i / N`` and ``β_j = 2 π j / N``, ``j = 0 .. N // 2``
(``β`` in [0, π]; the paper's grid over [-π, π) repeats every rotation twice, §4.2),
``N = n_orders >= 2 L + 1`` (:class:`.spherical.ShellGrid`).  The unreduced
landscape is a trigonometric polynomial in ``(α, β, γ)`` (``d^l(β)`` has
frequencies ``|λ| <= l``) whose coefficients follow from its ``X̂`` on the grid
by one FFT over ``β``; the refinement maximises it from the best grid rotation
with its exact gradient, and the score is its value there over the norms.
Without refinement the score is the same exact value at the grid rotation,
from eq. (97) applied to the reference.
"""
import copy
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.optimize

from .. import fourier, spherical
from ..errors import InvalidDataError, ShapeError
from ..fourier import working_dtypes
from ..kernels import resolve_backend, volume_cpu
from ..progress import Reporter
from ..projector import validate_volume
from ..storage import load_fields, save_fields
from .radial_svd import choose_rank, shift_grid

#: Default bandwidth ``K = π f_max`` (the paper's 48, §5), capped at half Nyquist.
DEFAULT_BANDWIDTH = 48.0
#: The compressed landscape keeps degrees and orders up to the band ``L_c`` beyond
#: which every kept principal degree ``v_z`` has at most this squared mass.
BAND_TOLERANCE = 1e-6


@dataclass
class VolumeAlignmentResult:
    """Alignment of ``n`` volumes to one reference.

    ``rotate_volume(volumes[i], rotation[i], shift[i]) ≈ reference``.
    """
    rotation: np.ndarray  #: (n, 3, 3) core rotation matrices
    shift: np.ndarray  #: (n, 3) pixels (x, y, z); zeros without translation search
    score: np.ndarray  #: (n,) normalised correlation at the optimum
    ranks: tuple  #: (H_C, H_D) used by the search
    radial_eigenvalues: np.ndarray  #: eigenvalues of C, descending
    degree_eigenvalues: np.ndarray  #: eigenvalues of D, descending

    def save(self, path):
        """Write the result to the ``.npz`` ``path``, one entry per field."""
        save_fields(path, self)

    @classmethod
    def load(cls, path):
        """The result written by :meth:`save`."""
        return load_fields(cls, path, ranks=lambda ranks: tuple(ranks.tolist()))


def rotate_volume(volume, rotation, shift=None):
    """Resample ``volume`` rotated by the core matrix ``rotation`` and then shifted.

    ``out(x) = volume(Rᵀ (x - t))`` for positions ``x = (x, y, z)`` in pixels
    from the centre ``n // 2``: density at ``r`` moves to ``R r + t``.  So the
    output projected at rotation ``R0`` (:mod:`.projector`) equals the input
    projected at ``R0 @ R`` with the image shift ``(R0 t)[:2]``.  Cubic
    B-spline interpolation (``scipy.ndimage.affine_transform``, order 3);
    voxels from outside the box read as zero.

    :param volume: real ``(D, D, D)`` array indexed ``(z, y, x)``.
    :param rotation: ``(3, 3)``.
    :param shift: ``(3,)`` pixels ``(x, y, z)`` or None.
    """
    volume = validate_volume(volume)
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3):
        raise ShapeError(f"rotation must be a (3, 3) matrix, got shape {rotation.shape}")
    shift = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64).reshape(3)
    # Input index (z, y, x) = P Rᵀ P (output index - c) - P Rᵀ t + c, P reversing the axes.
    matrix = rotation.T[::-1, ::-1]
    centre = np.full(3, volume.shape[0] // 2, dtype=np.float64)
    offset = centre - matrix @ centre - (rotation.T @ shift)[::-1]
    return scipy.ndimage.affine_transform(volume, matrix, offset=offset, order=3,
                                          mode="constant", cval=0.0)


def shell_grid(box, max_frequency=None, resolution=None, pixel_size=None, max_degree=None):
    """The :class:`.spherical.ShellGrid` of :class:`VolumeAligner`: from a band limit in
    cycles per box, or a resolution in Å, or the default band."""
    if resolution is None:
        if max_frequency is None:
            max_frequency = min(DEFAULT_BANDWIDTH / np.pi, box / 4)
        return spherical.ShellGrid.from_max_frequency(box, max_frequency, max_degree=max_degree)
    if max_frequency is not None:
        raise InvalidDataError("give max_frequency or resolution, not both")
    if pixel_size is None or pixel_size <= 0:
        raise InvalidDataError("a resolution in Å needs the pixel size in Å of the maps")
    return spherical.ShellGrid.for_resolution(box, pixel_size, resolution, max_degree=max_degree)


def _ragged_degrees(shells):
    """First degree ``max(|m1|, m2)`` ``(N, N // 2 + 1)`` and number of degrees of every
    order pair ``(m1, m2 >= 0)`` of the unreduced step 2 (:meth:`VolumeAligner._build_tables`)."""
    half, degrees = shells.n_orders // 2 + 1, shells.max_degree + 1
    first = np.maximum(np.abs(shells.orders)[:, None], np.arange(half)[None, :])
    return first, np.clip(degrees - first, 0, None)


def table_bytes(shells, dtype=np.float64):
    """Bytes of the ``d^l(β)`` table that a :class:`VolumeAligner` on ``shells`` keeps for
    the unreduced landscape, about ``(2/3) L³ n_β`` numbers."""
    _, counts = _ragged_degrees(shells)
    return int(counts.sum()) * (shells.n_orders // 2 + 1) * np.dtype(dtype).itemsize


def _eigen_descending(kernel):
    values, vectors = np.linalg.eigh(kernel)
    return values[::-1], vectors[:, ::-1]


def _rank(eigenvalues, tolerance, fixed, name):
    """The ``fixed`` rank, checked, or the one :func:`.radial_svd.choose_rank` chooses."""
    size = eigenvalues.size
    if fixed is not None:
        if int(fixed) != fixed or not 1 <= fixed <= size:
            raise InvalidDataError(f"the {name} rank must be an integer in [1, {size}], got "
                                   f"{fixed}; use at most {size} for this resolution")
        return int(fixed)
    if eigenvalues[0] <= 0:
        raise InvalidDataError("the reference has no angular structure at this resolution "
                               "(its kernel is zero); check the map or raise the resolution")
    return choose_rank(eigenvalues, tolerance)


class VolumeAligner:
    """Aligns volumes to one reference over SO(3) (and optionally a grid of shifts).

    :param reference: real ``(D, D, D)`` map.
    :param max_frequency: band limit in cycles per box; or give ``resolution``
        (Å) with ``pixel_size`` (Å/px).  Default ``min(48 / π, D / 4)``: the
        paper's ``K = 48``, at most half Nyquist
        (``docs/methods/radial_svd_alignment.md`` §5).
    :param radial_rank, degree_rank: fixed ``H_C <= R`` and ``H_D <= L + 1``;
        by default the number of eigenvalues above ``tolerance`` times the
        largest, at least 4.
    :param max_shift, shift_step: translation search over the lattice
        :func:`.radial_svd.shift_grid` (pixels, 3-D); ``max_shift = 0`` searches
        rotations only.
    :param refine: refine the best grid rotation on the unreduced landscape.
    :param dtype: ``np.float64`` or ``np.float32`` (landscapes and tables).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the slice and landscape kernels.
    :param max_degree: ``L`` (default ``ceil(π f_max)``).

    The set-up holds the table ``d^l(β)`` of the unreduced landscape over the
    ``β`` grid (about ``(2/3) L³ n_β`` numbers, 32 MB in float64 at ``L = 48``)
    and, per grid size on first use, ``[v_zᵀ d](β)`` of the compressed one over
    its band (``H_D (2 L_c + 1)(L_c + 1) n_β``: 3 MB on the search grid at
    ``L_c = 26``, ``H_D = 16``).
    :meth:`align` searches the compressed landscape unless asked for the
    unreduced one (``full_rank=True``).
    """

    def __init__(self, reference, max_frequency=None, resolution=None, pixel_size=None,
                 radial_rank=None, degree_rank=None, tolerance=1e-2, max_shift=0.0,
                 shift_step=1.0, refine=True, dtype=np.float64, backend="auto",
                 max_degree=None):
        reference = validate_volume(reference, "reference")
        self.dtype, self.complex_dtype = working_dtypes(dtype)
        if not 0 < tolerance < 1:
            raise InvalidDataError(f"the rank tolerance must lie in (0, 1), got {tolerance}")
        self.box = reference.shape[0]
        self.refine = bool(refine)
        self.shifts = shift_grid(max_shift, shift_step, dimensions=3)
        self.shells = shell_grid(self.box, max_frequency, resolution, pixel_size, max_degree)
        self.backend = resolve_backend(backend)
        if self.backend == "cuda":
            from ..kernels import volume_cuda as kernels
        else:
            kernels = volume_cpu
        self._kernels = kernels
        self.transform = spherical.SphericalTransform(self.shells, self.dtype, self.backend)

        shells = self.shells
        n, degrees = shells.n_orders, shells.max_degree + 1
        self.n_half = n // 2 + 1
        reference_coefficients = self.transform.coefficients(reference).astype(np.complex128)
        self._reference = reference_coefficients.astype(self.complex_dtype)
        self._reference_half = np.ascontiguousarray(
            self._reference[:, :, :self.n_half].transpose(1, 0, 2))  # (l, r, m2)
        self._reference_norm = np.sqrt(shells.inner(reference_coefficients,
                                                    reference_coefficients).real)

        eta = np.sqrt(shells.weights)
        # C and D are real Gram matrices of the reference (docs/methods/radial_svd_alignment.md
        # §4.3-§4.4, with the η factors and the (1 - δ) prefactor of the errata, §8.1).
        angular = reference_coefficients[:, 1:].reshape(shells.n_shells, -1) * eta[:, None]
        radial = (angular.conj() @ angular.T).real
        weighted = np.moveaxis(reference_coefficients * eta[:, None, None], 1, 0)
        weighted = weighted.reshape(degrees, -1)
        degree = (weighted.conj() @ weighted.T).real
        degree[0, :] = degree[:, 0] = 0.0
        self.radial_eigenvalues, self._radial_vectors = _eigen_descending(radial)
        self.degree_eigenvalues, self._degree_vectors = _eigen_descending(degree)
        self.alpha = 2 * np.pi * np.arange(n) / n
        self.beta = 2 * np.pi * np.arange(n // 2 + 1) / n
        self._set_ranks(_rank(self.radial_eigenvalues, tolerance, radial_rank, "radial"),
                        _rank(self.degree_eigenvalues, tolerance, degree_rank, "degree"))
        self._build_tables()

    def _set_ranks(self, radial_rank, degree_rank):
        """The compressed method's principal shells, degrees, band and reference at these ranks."""
        self.ranks = (radial_rank, degree_rank)
        eta = np.sqrt(self.shells.weights)
        self._radial_basis = np.ascontiguousarray(
            (self._radial_vectors[:, :radial_rank] * eta[:, None]).T, dtype=self.dtype)  # u_h η_r
        kept = self._degree_vectors[:, :degree_rank]
        self.band = band = self._compressed_band(kept)
        self._degree_basis = np.ascontiguousarray(kept[:band + 1].T, dtype=self.dtype)  # v_z[l]
        # The compressed method only touches degrees and orders up to the band:
        # m1 = -L_c .. L_c at row m1 + L_c, m2 = 0 .. L_c.
        self._band_orders = np.arange(-band, band + 1) % self.shells.n_orders
        compressed_reference = self._compress(
            self._reference[:, :band + 1][:, :, self._band_orders[band:]])  # (H_C, l, m2)
        self._compressed_reference = np.ascontiguousarray(
            compressed_reference.transpose(1, 0, 2))  # (l, h, m2)
        #: Grid size of the compressed search before the exact refinement: the
        #: compressed landscape's own sampling grid, ``>= 2 L_c + 1``.
        self.search_orders = scipy.fft.next_fast_len(2 * band + 1)
        self._compressed_tables = {}

    def with_ranks(self, radial_rank, degree_rank):
        """This aligner at fixed ranks ``(H_C, H_D)``, sharing the reference's transform,
        kernels and unreduced tables (cheap: for sweeps over the rank)."""
        other = copy.copy(self)
        other._set_ranks(_rank(self.radial_eigenvalues, None, radial_rank, "radial"),
                         _rank(self.degree_eigenvalues, None, degree_rank, "degree"))
        return other

    # ------------------------------------------------------------------ set-up
    def _compressed_band(self, kept):
        """``L_c``: the kept principal degrees ``v_z`` vanish (to :data:`BAND_TOLERANCE`) above it.

        The principal degrees of a map concentrate on its low degrees (at the
        paper's ``K = 48`` with ``H_D = 16`` they end near ``l = 25``), so the
        compressed landscape carries orders ``|m| <= L_c`` only: its step 2
        and its FFT run on a grid of ``next_fast_len(2 L_c + 1)`` angles
        instead of ``2 L + 1``.  At full degree rank ``L_c = L`` (exact).
        """
        degrees = self.shells.max_degree + 1
        if kept.shape[1] >= degrees:
            return degrees - 1
        tail = np.cumsum((kept ** 2)[::-1], axis=0)[::-1]  # tail[l, z] = Σ_{l' >= l} v_z[l']²
        above = np.nonzero(np.any(tail > BAND_TOLERANCE, axis=1))[0]
        return int(max(above.max() if above.size else 0, 1))

    def _compressed_table(self, n):
        """``[v_zᵀ d]_{m1 m2}(β_j)``, ``β_j = 2 π j / n``, over the band: ``(n // 2 + 1, H_D, 2 L_c + 1, L_c + 1)``."""
        if n not in self._compressed_tables:
            band = self.band
            basis = self._degree_basis.astype(np.float64)  # (H_D, L_c + 1)
            table = np.zeros((n // 2 + 1, basis.shape[0], 2 * band + 1, band + 1))
            for l in range(band + 1):
                d = spherical.wigner_d_grid(l, n, nonnegative=True)  # (β, m1 = -l..l, m2 = 0..l)
                table[:, :, band - l:band + l + 1, :l + 1] += \
                    basis[None, :, l, None, None] * d[:, None]
            self._compressed_tables[n] = self._kernels.upload(table.astype(self.dtype))
        return self._compressed_tables[n]

    def _build_tables(self):
        """The ragged ``d^l(β)`` of the unreduced step 2 (the compressed tables come on demand).

        Orders ``(m1, m2)`` (``m2 >= 0``) are carried by degrees
        ``first = max(|m1|, m2) .. L``; their ``d^l_{m1 m2}(β)`` are the rows
        ``offsets[i, j] ..`` of the ragged table ``(entries, n_β)``.
        """
        shells = self.shells
        n, degrees = shells.n_orders, shells.max_degree + 1
        first, counts = _ragged_degrees(shells)
        offsets = np.concatenate([[0], np.cumsum(counts.ravel())[:-1]]).reshape(counts.shape)
        ragged = np.zeros((int(counts.sum()), self.beta.size))
        for l in range(degrees):
            rows = (np.arange(-l, l + 1) % n)[:, None]
            cols = np.arange(l + 1)[None, :]
            d = spherical.wigner_d_grid(l, n, nonnegative=True)  # (β, m1 = -l..l, m2 = 0..l)
            ragged[offsets[rows, cols] + l - first[rows, cols]] = np.moveaxis(d, 0, -1)
        upload = self._kernels.upload
        self._ragged_table = upload(ragged.astype(self.dtype))
        self._ragged_offsets = upload(offsets.astype(np.int64))
        self._ragged_first = upload(np.minimum(first, degrees).astype(np.int64))

    # ------------------------------------------------------------------ landscapes
    @staticmethod
    def _real_product(matrix, values):
        """``matrix @ values`` over the first axis of ``values``, for a real ``matrix``.

        Complex ``values`` are viewed as real pairs, so the GEMM is real (half
        the work of promoting ``matrix`` to complex).
        """
        values = np.ascontiguousarray(values)
        real = values.view(values.real.dtype).reshape(values.shape[0], -1)
        out = matrix @ real
        return out.view(values.dtype).reshape((matrix.shape[0],) + values.shape[1:])

    def _compress(self, coefficients):
        """Principal shells ``Σ_r u_h η_r A(f_r)``: ``(H_C, L + 1, n_orders)``."""
        return self._real_product(self._radial_basis, coefficients)

    def _compressed_hat(self, coefficients, n=None):
        """``X̂(m1, m2; β)`` of the compressed method on the grid of ``n`` angles.

        :param n: grid size (default ``N``, the unreduced grid); at least ``2 L_c + 1``.
        :returns: ``(n // 2 + 1, n, n // 2 + 1)``.
        """
        n = self.shells.n_orders if n is None else n
        band = self.band
        inside = coefficients[:, :band + 1][:, :, self._band_orders]
        compressed = self._compress(inside.astype(self.complex_dtype, copy=False))
        # Step 1: X̃[l, m1, m2] = Σ_h conj(Au[h, l, m1]) Bu[h, l, m2], batched over l.
        reduced = np.matmul(np.conj(compressed).transpose(1, 2, 0), self._compressed_reference)
        # Step 1b: [v_zᵀ X̃](m1, m2).
        by_degree = self._real_product(self._degree_basis, reduced)
        table = self._compressed_table(n)
        inner = np.empty((n // 2 + 1,) + reduced.shape[1:], dtype=self.complex_dtype)
        self._kernels.degree_sum(table, by_degree, inner)
        out = np.zeros((n // 2 + 1, n, n // 2 + 1), dtype=self.complex_dtype)
        out[:, np.arange(-band, band + 1) % n, :band + 1] = inner
        return out

    def _unreduced_hat(self, coefficients):
        """``X̂(m1, m2; β)`` of the unreduced landscape, ``(n_β, N, n_half)``."""
        weighted = np.conj(coefficients.astype(self.complex_dtype, copy=False)) * \
            self.shells.weights[:, None, None].astype(self.dtype)
        # Step 1: X̃[l, m1, m2] = Σ_r w_r conj(A[r, l, m1]) B[r, l, m2], batched over l.
        reduced = np.matmul(weighted.transpose(1, 2, 0), self._reference_half)
        out = np.empty((self.beta.size,) + reduced.shape[1:], dtype=self.complex_dtype)
        self._kernels.wigner_sum(self._ragged_table, self._ragged_offsets, self._ragged_first,
                                 np.ascontiguousarray(reduced.transpose(1, 2, 0)), out)
        return out

    @staticmethod
    def _grid_values(hat):
        """Step 3: ``X[β, α, γ]`` from ``X̂`` ``(n_β, n, n // 2 + 1)`` by a Hermitian 2-D FFT per ``β``."""
        n = hat.shape[1]
        return scipy.fft.hfft2(hat, s=(n, n), axes=(1, 2), workers=fourier.fft_workers())

    def _samples(self, volume, name="volume"):
        """Shell samples of a validated volume of the reference's box."""
        volume = validate_volume(volume, name)
        if volume.shape[0] != self.box:
            raise ShapeError(f"{name} has box {volume.shape[0]} but the reference has "
                             f"{self.box}; resample one of them to a common box")
        return self.transform.samples(volume)

    def landscape(self, volume, full_rank=False):
        """The landscape of one volume at zero shift on the search grid.

        :param full_rank: the unreduced landscape instead of the compressed one.
        :returns: ``(alpha (N,), beta (n_β,), gamma (N,), X (N, n_β, N))`` with
            ``X[i, j, k] = X(alpha[i], beta[j], gamma[k])`` (radians).
        """
        coefficients = self.shells.analyze(self._samples(volume))
        hat = self._unreduced_hat(coefficients) if full_rank else self._compressed_hat(coefficients)
        values = self._grid_values(hat).transpose(1, 0, 2)
        return self.alpha.copy(), self.beta.copy(), self.alpha.copy(), values

    # ------------------------------------------------------------------ refinement
    def _trigonometric_coefficients(self, hat):
        """``F[λ, i, j]`` with ``X = Re Σ c_j F exp(-i (λ β + m1 α + m2 γ))``.

        ``X̂(m1, m2; β)`` on the half period extends to the whole period by
        ``X̂(m1, m2; -β) = (-1)^(m1 - m2) X̂(m1, m2; β)``; an inverse FFT over
        ``β`` then gives its exact Fourier coefficients (``|λ| <= L < N / 2``).
        """
        n = self.shells.n_orders
        hat = hat.astype(np.complex128)
        signs = (-1.0) ** (self.shells.orders[:, None] - np.arange(self.n_half)[None, :])
        mirrored = hat[1:n - hat.shape[0] + 1][::-1] * signs
        full = np.concatenate([hat, mirrored])
        weights = np.where(np.arange(self.n_half) == 0, 1.0, 2.0)
        return scipy.fft.ifft(full, axis=0) * weights

    def _evaluate(self, coefficients, angles):
        """Value and gradient of the trigonometric landscape at ``(α, β, γ)``."""
        alpha, beta, gamma = angles
        orders = self.shells.orders
        e_beta = np.exp(-1j * orders * beta)
        e_alpha = np.exp(-1j * orders * alpha)
        e_gamma = np.exp(-1j * np.arange(self.n_half) * gamma)
        by_beta = np.tensordot(e_beta, coefficients, axes=(0, 0))  # (i, j)
        d_beta = np.tensordot(-1j * orders * e_beta, coefficients, axes=(0, 0))
        row = e_alpha @ by_beta
        value = (row @ e_gamma).real
        gradient = np.array([((-1j * orders * e_alpha) @ by_beta @ e_gamma).real,
                             (e_alpha @ d_beta @ e_gamma).real,
                             (row @ (-1j * np.arange(self.n_half) * e_gamma)).real])
        return value, gradient

    def _local_model(self, hat):
        """Exact value, gradient and Hessian of the landscape of ``hat`` at any rotation.

        The same trigonometric polynomial as :meth:`_trigonometric_coefficients`
        without its FFT over ``β``: the inverse FFT and the sum over ``λ`` fold
        into weights ``k_j(β) = (1/N) Σ_λ exp(-i λ (β - β_j))`` on the samples
        ``X̂(m1, m2; β_j)`` of the whole period, so one product of three weight
        rows (and their ``β`` derivatives) with the samples gives everything.
        """
        n = self.shells.n_orders
        hat = hat.astype(np.complex128)
        signs = (-1.0) ** (self.shells.orders[:, None] - np.arange(self.n_half)[None, :])
        full = np.concatenate([hat, hat[1:n - hat.shape[0] + 1][::-1] * signs])
        samples = full.reshape(n, -1)
        orders = self.shells.orders.astype(np.float64)
        nodes = 2 * np.pi * np.arange(n) / n
        m2 = np.arange(self.n_half, dtype=np.float64)
        weights = np.where(m2 == 0, 1.0, 2.0)

        powers = np.arange(3)[:, None]
        m1_powers = (-1j * orders[None, :]) ** powers  # (q, m1): (-i m1)^q
        m2_powers = ((-1j * m2[None, :]) ** powers * weights).T  # (m2, r)

        def model(angles):
            alpha, beta, gamma = angles
            phase = np.exp(-1j * orders[None, :] * (beta - nodes[:, None])) / n  # (j, λ)
            rows = phase @ m1_powers.T  # (j, p): Σ_λ (-i λ)^p phase
            by_beta = (rows.T @ samples).reshape(3 * n, self.n_half) @ (
                m2_powers * np.exp(-1j * m2 * gamma)[:, None])  # (p m1, r)
            # t[p, q, r]: p-th β derivative, q-th α and r-th γ derivative.
            t = ((m1_powers * np.exp(-1j * orders * alpha)) @ by_beta.reshape(3, n, 3)).real
            gradient = np.array([t[0, 1, 0], t[1, 0, 0], t[0, 0, 1]])
            hessian = np.array([[t[0, 2, 0], t[1, 1, 0], t[0, 1, 1]],
                                [t[1, 1, 0], t[2, 0, 0], t[1, 0, 1]],
                                [t[0, 1, 1], t[1, 0, 1], t[0, 0, 2]]])
            return t[0, 0, 0], gradient, hessian

        return model

    def _refine(self, hat, start):
        """Local maximum near ``start`` of the landscape whose ``X̂`` is ``hat``, and its value.

        Newton's method with the exact Hessian in a trust region
        (``trust-exact``): a handful of evaluations from a grid point.
        """
        model = self._local_model(hat)
        start = np.asarray(start, dtype=np.float64)
        start_value = model(start)[0]
        scale = max(abs(start_value), np.finfo(float).tiny)
        cache = {}

        def evaluate(angles):
            key = angles.tobytes()
            if key not in cache:
                cache.clear()
                value, gradient, hessian = model(angles)
                cache[key] = (-value / scale, -gradient / scale, -hessian / scale)
            return cache[key]

        result = scipy.optimize.minimize(lambda x: evaluate(x)[:2], start, jac=True,
                                         hess=lambda x: evaluate(x)[2], method="trust-exact",
                                         options={"gtol": 1e-9})
        if -result.fun * scale > start_value:
            return result.x, -result.fun * scale
        return start, start_value

    def _exact_value(self, coefficients, angles):
        """The unreduced landscape at one rotation: ``<A, B(R ·)>`` by eq. (97)."""
        rotated = spherical.rotate_coefficients(self._reference, *angles)
        return float(self.shells.inner(coefficients, rotated).real)

    # ------------------------------------------------------------------ alignment
    def _search(self, coefficients, full_rank=False):
        """Best grid point of one volume's landscape: ``(value, angles (3,), hat)``.

        The unreduced landscape is searched on its ``N``-point grid; the
        compressed one on its own ``search_orders`` grid when the exact
        refinement follows (its band is ``L_c``, so that grid samples it
        fully), else on the ``N``-point grid.  ``hat`` is the unreduced
        ``X̂`` for ``full_rank`` (the refinement reuses it), else None.
        """
        if full_rank:
            hat = self._unreduced_hat(coefficients)
        else:
            n = self.search_orders if self.refine else self.shells.n_orders
            hat = self._compressed_hat(coefficients, n)
        values = self._grid_values(hat)
        flat = int(np.argmax(values))
        b, a, g = np.unravel_index(flat, values.shape)
        step = 2 * np.pi / values.shape[1]
        return values.flat[flat], np.array([a * step, b * step, g * step]), \
            (hat if full_rank else None)

    def align(self, volumes, progress=None, full_rank=False):
        """Align each volume to the reference.

        :param volumes: ``(n, D, D, D)`` or one ``(D, D, D)`` map.
        :param progress: None or a callable taking a :class:`.progress.Progress` per volume.
        :param full_rank: search the unreduced landscape (the exact baseline).
        :returns: :class:`VolumeAlignmentResult`.
        """
        volumes = np.asarray(volumes)
        if volumes.ndim == 3:
            volumes = volumes[None]
        if volumes.ndim != 4 or volumes.shape[0] == 0:
            raise ShapeError(f"volumes must be (n, D, D, D) or (D, D, D) with n >= 1, got "
                             f"shape {volumes.shape}")
        count = volumes.shape[0]
        report = Reporter(progress)
        rotations = np.empty((count, 3, 3))
        shifts = np.zeros((count, 3))
        scores = np.empty(count)
        for index in range(count):
            samples = self._samples(volumes[index], f"volume {index}")
            best = None
            for s, shift in enumerate(self.shifts):
                if np.any(shift):
                    samples_at = samples * self.shells.shift_phases(shift)[0].astype(samples.dtype)
                else:
                    samples_at = samples
                coefficients = self.shells.analyze(samples_at)
                value, angles, hat = self._search(coefficients, full_rank)
                if best is None or value > best[0]:
                    best = (value, s, angles, coefficients, hat)
            _, s, angles, coefficients, hat = best
            if self.refine:
                exact = hat if full_rank else self._unreduced_hat(coefficients)
                angles, value = self._refine(exact, angles)
            else:
                value = self._exact_value(coefficients, angles)
            norm = np.sqrt(self.shells.inner(coefficients, coefficients).real)
            rotations[index] = spherical.landscape_rotation(*angles)
            # The search moved the map by -t; undoing it after the rotation is a shift by -R t.
            shifts[index] = -rotations[index] @ self.shifts[s]
            scores[index] = value / max(norm * self._reference_norm, np.finfo(float).tiny)
            report("Volumes aligned", index + 1, count)
        return VolumeAlignmentResult(rotations, shifts, scores, self.ranks,
                                     self.radial_eigenvalues.copy(),
                                     self.degree_eigenvalues.copy())
