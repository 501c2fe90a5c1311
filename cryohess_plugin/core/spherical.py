"""Spherical-harmonic shells of a volume's Fourier transform, and Wigner small-d.

The owner of the 3-D conventions of the radial-/degree-SVD alignment
(``docs/methods/radial_svd_alignment.md`` §4.1), all checked by brute force in
the tests:

* Frequency ``k = f (sin θ cos φ, sin θ sin φ, cos θ)`` in ``(kx, ky, kz)``
  order, ``f`` in cycles per box (:mod:`.fourier`).
* ``Y_l^m(θ, φ) = Ỹ_l^m(θ) exp(i m φ)`` orthonormal on the unit sphere with
  the Condon-Shortley phase (``scipy.special.sph_harm(m, l, φ, θ)``); the
  coefficients of shell ``r`` are ``A_l^m(f_r) = ∫ V(f_r k̂) conj(Y_l^m(k̂)) dk̂``.
* Radial quadrature: Gauss-Jacobi for ``∫_0^f_max g(f) f² df`` (nodes
  ``radii``, weights ``weights``, ``sum(weights) = f_max³ / 3``).  The paper's
  bandwidth is ``K = π f_max`` (radians per half-box, §1.1 of that page), with
  the defaults ``R = ceil(K) + 1`` shells and maximum degree ``L = ceil(K)``;
  shell ``r`` keeps degrees ``l <= min(L, 1 + ceil(π f_r))``.
* Wigner ``d^l_{m1 m2}(β) = <l m1| exp(-i β J_y) |l m2>``.  Coefficient
  rotation (the paper's eq. (97)): the function ``k ↦ V(R k)`` with
  ``R = landscape_rotation(α, β, γ)`` has coefficients
  ``Σ_{m2} exp(-i m1 α) d^l_{m1 m2}(β) exp(-i m2 γ) A_l^{m2}``.

Coefficient arrays are ``(..., R, L + 1, n_orders)`` complex with order ``m``
at index ``m mod n_orders``; ``n_orders`` is the paper's ``M = 2 L + 1``
rounded up to a fast FFT length (97 is prime: its FFTs are 6x slower than
98's), and entries with ``|m| > l`` or ``l`` above the shell's limit are zero.
"""
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.special

from . import fourier, rotations
from .errors import InvalidDataError, ShapeError
from .fourier import bandwidth, frequency_for_resolution, radial_quadrature, validate_band
from .projector import SliceOperator, validate_volume

def normalized_legendre(max_degree, cos_theta):
    """Orthonormal θ-parts ``Ỹ_l^m(θ)`` for ``0 <= m <= l <= max_degree``.

    Standard stable recurrences (sectoral seed, then three terms in ``l``),
    accurate at any degree used here, unlike factorial normalisations of
    ``lpmv``.

    :param cos_theta: ``(n,)`` values of ``cos θ``.
    :returns: ``(n, L + 1, L + 1)`` array indexed ``[i, l, m]``, zero for ``m > l``.
    """
    x = np.asarray(cos_theta, dtype=np.float64)
    sin_theta = np.sqrt(np.clip(1.0 - x ** 2, 0.0, None))
    size = max_degree + 1
    out = np.zeros((x.size, size, size))
    sectoral = np.full(x.size, 1.0 / math.sqrt(4 * math.pi))
    for m in range(size):
        if m > 0:
            sectoral = -math.sqrt((2 * m + 1) / (2 * m)) * sin_theta * sectoral
        out[:, m, m] = sectoral
        if m + 1 < size:
            out[:, m + 1, m] = math.sqrt(2 * m + 3) * x * sectoral
        for l in range(m + 2, size):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            out[:, l, m] = a * (x * out[:, l - 1, m] - b * out[:, l - 2, m])
    return out


@functools.lru_cache(maxsize=None)
def wigner_eigensystem(degree):
    """Integer eigenvalues ``λ = -l .. l`` and eigenvectors ``U`` of ``J_y`` for degree ``l``.

    ``d^l(β) = U diag(exp(-i β λ)) U^H`` (rows and columns ordered ``m = -l .. l``).
    Diagonalising ``J_y`` once keeps ``d`` to about 1e-15 at any degree used
    here, while Wigner's factorial sum cancels (in double precision it is off
    by 7e-10 at ``l = 30`` and 2e-6 at ``l = 40``, against exact arithmetic).
    """
    m = np.arange(-degree, degree)
    raising = np.sqrt((degree - m) * (degree + m + 1.0))
    j_y = np.zeros((2 * degree + 1, 2 * degree + 1), dtype=np.complex128)
    j_y[np.arange(1, 2 * degree + 1), np.arange(2 * degree)] = -0.5j * raising
    j_y[np.arange(2 * degree), np.arange(1, 2 * degree + 1)] = 0.5j * raising
    eigenvalues, vectors = np.linalg.eigh(j_y)
    # The spectrum is exactly -l .. l; exact integers make d(β) an exact
    # trigonometric polynomial in β.
    return np.rint(eigenvalues), vectors


def wigner_d(degree, beta):
    """Wigner small-d matrices ``d^l(β)``, shape ``β.shape + (2l + 1, 2l + 1)``, real.

    Index ``[m1 + l, m2 + l]`` holds ``d^l_{m1 m2}(β)``.
    """
    eigenvalues, vectors = wigner_eigensystem(degree)
    beta = np.asarray(beta, dtype=np.float64)
    phases = np.exp(-1j * beta[..., None] * eigenvalues)
    return ((vectors * phases[..., None, :]) @ vectors.conj().T).real


def wigner_d_grid(degree, n_angles, nonnegative=False):
    """``d^l(β_j)`` for ``β_j = 2 π j / n_angles``, ``j = 0 .. n_angles // 2`` (``β`` in [0, π]).

    ``d^l(β) = Σ_λ c_λ exp(-i λ β)`` with ``c_λ = U[:, λ] U[:, λ]^H``, so the
    whole grid is one FFT over ``λ`` (needs ``n_angles >= 2 l + 1``).

    :param nonnegative: only the columns ``m2 = 0 .. l`` (half the work).
    :returns: ``(n_angles // 2 + 1, 2l + 1, 2l + 1)`` real, or ``(..., 2l + 1, l + 1)``.
    """
    if n_angles < 2 * degree + 1:
        raise InvalidDataError(f"{n_angles} angles cannot resolve degree {degree}")
    eigenvalues, vectors = wigner_eigensystem(degree)
    size = 2 * degree + 1
    columns = vectors.conj().T[:, degree:] if nonnegative else vectors.conj().T
    coefficients = np.zeros((n_angles, size, columns.shape[1]), dtype=np.complex128)
    coefficients[eigenvalues.astype(np.int64) % n_angles] = (
        vectors.T[:, :, None] * columns[:, None, :])
    return scipy.fft.fft(coefficients, axis=0, workers=fourier.fft_workers())[
        :n_angles // 2 + 1].real


def landscape_rotation(alpha, beta, gamma):
    """Core rotation matrix of the landscape angles ``(α, β, γ)`` in radians.

    ``R = Rz(γ) Ry(β) Rz(α)`` in the passive convention of :mod:`.rotations`,
    i.e. ``euler_to_matrix(α, β, γ)`` in degrees; it is the inverse of the
    paper's active ``R_τ = Rz(α) Ry(β) Rz(γ)`` (eq. (97)).  Rotating coefficients by
    :func:`rotate_coefficients` with these angles gives the coefficients of
    ``k ↦ V(R k)``.
    """
    return rotations.euler_to_matrix(np.rad2deg(alpha), np.rad2deg(beta), np.rad2deg(gamma))


@dataclass(frozen=True)
class ShellGrid:
    """Spherical shells in Fourier space with radial and angular quadrature.

    Shell ``r`` (radius ``radii[r]`` cycles per box) is sampled at
    ``n_theta`` Gauss-Legendre nodes in ``cos θ`` times ``n_orders`` equally
    spaced ``φ``, which integrates products of harmonics of degree ``<= L``
    exactly, so :meth:`analyze` inverts :meth:`synthesize` on band-limited
    shells.
    """

    box: int
    max_frequency: float
    n_shells: int
    max_degree: int
    n_orders: int
    radii: np.ndarray = field(repr=False, compare=False)
    weights: np.ndarray = field(repr=False, compare=False)
    degree_limits: np.ndarray = field(repr=False, compare=False)
    cos_theta: np.ndarray = field(repr=False, compare=False)
    theta_weights: np.ndarray = field(repr=False, compare=False)
    harmonics: np.ndarray = field(repr=False, compare=False)
    quadrature: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_max_frequency(cls, box, max_frequency, n_shells=None, max_degree=None):
        """Shells on ``[0, max_frequency]`` cycles per box; default shells and degree as in
        ``docs/methods/radial_svd_alignment.md`` §4.1."""
        validate_band(box, max_frequency)
        n_shells = int(n_shells or bandwidth(max_frequency) + 1)
        max_degree = int(max_degree or bandwidth(max_frequency))
        if n_shells < 1 or max_degree < 1:
            raise InvalidDataError(f"need at least one shell and degree 1, got {n_shells} "
                                   f"shells and degree {max_degree}")
        n_orders = scipy.fft.next_fast_len(2 * max_degree + 1)
        radii, weights = radial_quadrature(box, max_frequency, n_shells, power=2)
        limits = np.minimum(max_degree, 1 + np.array([bandwidth(f) for f in radii]))
        cos_theta, theta_weights = np.polynomial.legendre.leggauss(max_degree + 1)
        positive = normalized_legendre(max_degree, cos_theta)
        # Ỹ_l^{-m} = (-1)^m Ỹ_l^m, stored at index -m mod n_orders.
        harmonics = np.zeros((max_degree + 1, max_degree + 1, n_orders))
        orders = np.arange(max_degree + 1)
        harmonics[:, :, orders] = positive
        harmonics[:, :, -orders[1:]] = positive[:, :, 1:] * (-1.0) ** orders[1:]
        # Analysis weights Ỹ_l^m(θ_i) W_i laid out (m, l, i) for the batched GEMM of analyze.
        quadrature = np.ascontiguousarray(
            (harmonics * theta_weights[:, None, None]).transpose(2, 1, 0))
        return cls(int(box), float(max_frequency), n_shells, max_degree, n_orders,
                   radii=radii, weights=weights, degree_limits=limits,
                   cos_theta=cos_theta, theta_weights=theta_weights, harmonics=harmonics,
                   quadrature=quadrature)

    @classmethod
    def for_resolution(cls, box, pixel_size, resolution, n_shells=None, max_degree=None):
        """Shells reaching ``resolution`` Å for a ``box``-voxel map of ``pixel_size`` Å."""
        return cls.from_max_frequency(
            box, frequency_for_resolution(box, pixel_size, resolution), n_shells, max_degree)

    @property
    def n_theta(self):
        return self.cos_theta.size

    @property
    def orders(self):
        """Order ``m`` of each index of the last axis (``|m| > L`` unused)."""
        index = np.arange(self.n_orders)
        return np.where(index <= self.n_orders // 2, index, index - self.n_orders)

    @property
    def phi(self):
        return 2 * np.pi * np.arange(self.n_orders) / self.n_orders

    def coefficient_mask(self):
        """Boolean ``(R, L + 1, n_orders)``: the coefficients a shell can hold."""
        degree = np.arange(self.max_degree + 1)
        valid = np.abs(self.orders)[None, :] <= degree[:, None]
        return valid[None] & (degree[None, :, None] <= self.degree_limits[:, None, None])

    def frequencies(self):
        """``(kx, ky, kz)`` of every node, each ``(R, n_theta, n_orders)``."""
        sin_theta = np.sqrt(1.0 - self.cos_theta ** 2)
        f = self.radii[:, None, None]
        return (f * sin_theta[None, :, None] * np.cos(self.phi)[None, None, :],
                f * sin_theta[None, :, None] * np.sin(self.phi)[None, None, :],
                f * self.cos_theta[None, :, None] * np.ones(self.n_orders))

    def slice_geometry(self):
        """Rotations and 2-D points that read every node through a Fourier slice.

        The half-plane ``{φ fixed}`` through the ``kz`` axis is the slice of
        the rotation whose first two rows are ``(cos φ, sin φ, 0)`` and
        ``(0, 0, 1)``: the slice samples ``Rᵀ (u, v, 0) = u (cos φ, sin φ, 0)
        + v e_z``, so ``(u, v) = f (sin θ, cos θ)`` lands on node ``(f, θ, φ)``.

        :returns: ``rotations (n_orders, 3, 3)``, ``u, v`` ``(R * n_theta,)``
            ordered shell-major.
        """
        c, s = np.cos(self.phi), np.sin(self.phi)
        zero, one = np.zeros_like(c), np.ones_like(c)
        matrices = np.stack([np.stack([c, s, zero], -1),
                             np.stack([zero, zero, one], -1),
                             np.stack([s, -c, zero], -1)], -2)
        sin_theta = np.sqrt(1.0 - self.cos_theta ** 2)
        u = (self.radii[:, None] * sin_theta[None]).ravel()
        v = (self.radii[:, None] * self.cos_theta[None]).ravel()
        return matrices, u, v

    def shift_phases(self, shifts):
        """Multipliers ``(n_shifts, R, n_theta, n_orders)`` that re-centre shifted maps.

        For a map whose content sits at offset ``t = (x, y, z)`` pixels from
        the box centre, multiplying its samples by ``exp(+2 π i k·t / box)``
        gives the samples of the map moved back by ``-t``.
        """
        shifts = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
        return fourier.shift_phase(np.stack(self.frequencies(), -1), -shifts, self.box)

    def analyze(self, samples):
        """Coefficients ``(..., R, L + 1, n_orders)`` of samples ``(..., R, n_theta, n_orders)``.

        FFT over ``φ``, then Gauss-Legendre quadrature against ``Ỹ_l^m``
        (one real GEMM per order).
        """
        samples = np.asarray(samples)
        lead = samples.shape[:-3]
        shells, thetas, orders = self.n_shells, self.n_theta, self.n_orders
        by_order = scipy.fft.fft(samples, axis=-1) * (2 * np.pi / orders)
        # Orders as the batch axis of a real GEMM: (m, θ, batch, R) viewed as real.
        stacked = np.ascontiguousarray(by_order.reshape(-1, shells, thetas, orders)
                                       .transpose(3, 2, 0, 1))
        real = stacked.view(stacked.real.dtype).reshape(orders, thetas, -1)
        out = np.matmul(self.quadrature.astype(real.dtype, copy=False), real)  # (m, l, batch R 2)
        out = out.view(stacked.dtype).reshape(orders, self.max_degree + 1, -1, shells)
        out = out.transpose(2, 3, 1, 0).reshape(lead + (shells, self.max_degree + 1, orders))
        return out * self.coefficient_mask()

    def synthesize(self, coefficients):
        """Samples ``(..., R, n_theta, n_orders)`` of coefficients ``(..., R, L + 1, n_orders)``."""
        coefficients = np.asarray(coefficients) * self.coefficient_mask()
        by_order = np.einsum("ilm,...rlm->...rim", self.harmonics, coefficients)
        return scipy.fft.ifft(by_order, axis=-1) * self.n_orders

    def inner(self, a, b):
        """``Σ_r w_r Σ_{l, m} conj(a) b``: the Fourier-ball inner product, complex."""
        return np.einsum("r,...rlm,...rlm->...", self.weights, np.conj(a), b)


def rotate_coefficients(coefficients, alpha, beta, gamma):
    """Coefficients of ``k ↦ V(R k)``, ``R = landscape_rotation(α, β, γ)`` (the paper's eq. (97)).

    :param coefficients: ``(..., L + 1, n_orders)`` (any leading axes, e.g. shells).
    """
    coefficients = np.asarray(coefficients)
    n_orders = coefficients.shape[-1]
    out = np.zeros(coefficients.shape, dtype=np.complex128)
    for degree in range(coefficients.shape[-2]):
        m = np.arange(-degree, degree + 1)
        index = m % n_orders
        phases = np.exp(-1j * m * gamma) * coefficients[..., degree, index]
        rotated = phases @ wigner_d(degree, beta).T
        out[..., degree, index] = np.exp(-1j * m * alpha) * rotated
    return out


class SphericalTransform:
    """Shell samples and spherical-harmonic coefficients of volumes' transforms.

    Samples come from the projector's interpolation of the 2x padded,
    deapodised transform (:class:`.projector.SliceOperator`): one Fourier
    slice per ``φ`` (see :meth:`ShellGrid.slice_geometry`).  When the shells
    stop well below Nyquist the volume is first resampled to a smaller box
    ``grid_box`` by cropping its transform (same physical box, so frequencies
    in cycles per box are unchanged and the transform at integer frequencies
    is kept exactly); that makes the padded FFT several times cheaper at the
    same interpolation accuracy (about 1e-3 of the transform's scale).

    :param shells: :class:`ShellGrid`.
    :param dtype: ``np.float32`` or ``np.float64`` (samples are complex of that precision).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the slice kernels.
    """

    #: Frequencies kept beyond ``max_frequency`` when cropping: the cubic taps
    #: reach one frequency further, the rest keeps the crop's edge away.
    CROP_MARGIN = 3

    def __init__(self, shells, dtype=np.float64, backend="auto"):
        self.shells = shells
        self.grid_box = min(shells.box, 2 * math.ceil(shells.max_frequency + self.CROP_MARGIN))
        self.operator = SliceOperator(self.grid_box, dtype=dtype, backend=backend)
        self._rotations, self._u, self._v = shells.slice_geometry()

    def samples(self, volume):
        """Transform of ``volume`` at the shell nodes, ``(R, n_theta, n_orders)`` complex."""
        volume = validate_volume(volume)
        shells = self.shells
        if volume.shape[0] != shells.box:
            raise ShapeError(f"volume box {volume.shape[0]} differs from the shells' box "
                             f"{shells.box}; resample the volume to that box")
        if self.grid_box < shells.box:
            volume = self._cropped(volume)
        grid = self.operator.volume_to_grid(volume)
        values = self.operator.slices(grid, self._rotations, self._u, self._v)
        return np.moveaxis(values.reshape(shells.n_orders, shells.n_shells, shells.n_theta), 0, -1)

    def _cropped(self, volume):
        """``centred_ifftn(crop_centred(centred_fftn(volume), grid_box)).real`` from one real FFT.

        The cropped spectrum's negative ``kz`` half comes from Hermitian symmetry of
        the real volume's transform, so only ``rfftn`` runs on the large box.
        """
        box, size = volume.shape[0], self.grid_box
        half = scipy.fft.rfftn(scipy.fft.ifftshift(volume), workers=fourier.fft_workers())
        frequencies = scipy.fft.ifftshift(np.arange(-(size // 2), size - size // 2))
        upper = frequencies >= 0
        spectrum = np.empty((size,) * 3, dtype=half.dtype)
        spectrum[:, :, upper] = half[np.ix_(frequencies % box, frequencies % box,
                                            frequencies[upper])]
        spectrum[:, :, ~upper] = np.conj(half[np.ix_(-frequencies % box, -frequencies % box,
                                                     -frequencies[~upper])])
        return scipy.fft.fftshift(scipy.fft.ifftn(spectrum, workers=fourier.fft_workers()).real)

    def coefficients(self, volume):
        """Spherical-harmonic coefficients ``(R, L + 1, n_orders)`` of ``volume``."""
        return self.shells.analyze(self.samples(volume))


def harmonics_at(directions, max_degree, n_orders):
    """``Y_l^m`` at unit directions, laid out like coefficient arrays.

    :param directions: ``(..., 3)`` unit vectors ``(kx, ky, kz)``.
    :param n_orders: length of the order axis (``>= 2 max_degree + 1``).
    :returns: ``(..., max_degree + 1, n_orders)`` complex, order ``m`` at index
        ``m mod n_orders``, zero for ``|m| > l``; so ``Σ_{l,m} A * Y`` is the
        expansion with coefficients ``A`` at each direction.
    """
    directions = np.asarray(directions, dtype=np.float64)
    lead = directions.shape[:-1]
    points = directions.reshape(-1, 3)
    cos_theta = np.clip(points[:, 2], -1.0, 1.0)
    phi = np.arctan2(points[:, 1], points[:, 0])
    positive = normalized_legendre(max_degree, cos_theta)
    orders = np.arange(max_degree + 1)
    out = np.zeros((points.shape[0], max_degree + 1, n_orders), dtype=np.complex128)
    out[:, :, orders] = positive * np.exp(1j * orders * phi[:, None])[:, None, :]
    # Y_l^{-m} = (-1)^m conj(Y_l^m) (Condon-Shortley).
    out[:, :, -orders[1:]] = (positive[:, :, 1:] * (-1.0) ** orders[1:]
                              * np.exp(-1j * orders[1:] * phi[:, None])[:, None, :])
    return out.reshape(lead + out.shape[1:])


def angular_momentum(coefficients, axis):
    """Coefficients of ``L_a V`` with ``L = -i k × ∇`` (``a`` = 0, 1, 2 for x, y, z).

    The generators of :func:`rotate_coefficients`: the coefficients of
    ``k ↦ V(expm(-t [e_a]_x) k)`` are ``A - i t L_a A + O(t²)`` (for ``a = z``
    that is ``α = t``, for ``a = y`` it is ``β = t``).  Degrees do not mix, and
    ``L_a`` is Hermitian in the plain coefficient inner product.

    :param coefficients: ``(..., L + 1, n_orders)``.
    """
    coefficients = np.asarray(coefficients)
    n_orders = coefficients.shape[-1]
    out = np.zeros(coefficients.shape, dtype=np.complex128)
    for degree in range(coefficients.shape[-2]):
        m = np.arange(-degree, degree + 1)
        values = coefficients[..., degree, m % n_orders]
        if axis == 2:
            out[..., degree, m % n_orders] = m * values
            continue
        # (L+ A)_{m+1} = sqrt((l - m)(l + m + 1)) A_m; L- is its adjoint.
        ladder = np.sqrt((degree - m[:-1]) * (degree + m[:-1] + 1.0))
        raised = np.zeros(values.shape, dtype=np.complex128)
        lowered = np.zeros(values.shape, dtype=np.complex128)
        raised[..., 1:] = ladder * values[..., :-1]
        lowered[..., :-1] = ladder * values[..., 1:]
        out[..., degree, m % n_orders] = (
            (raised + lowered) / 2 if axis == 0 else (raised - lowered) / 2j)
    return out


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
