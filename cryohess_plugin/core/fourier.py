"""Fourier conventions: the one owner of transforms, grids, shells and padding.

* Arrays are indexed ``(z, y, x)`` for volumes and ``(y, x)`` for images, as
  ``mrcfile`` reads them.  The real-space origin is at index ``n // 2`` on
  every axis (even and odd sizes alike).
* Transforms are *centred* and *non-unitary*:
  ``X[k] = sum_x x[x] exp(-2 pi i k.x / n)`` with ``k`` and ``x`` both
  measured from index ``n // 2``; the inverse carries ``1 / n^d``.  With this
  normalisation the Fourier-slice theorem has no scale factor: the 2-D
  transform of a projection equals the central slice of the 3-D transform.
* Frequencies are integers ``k`` in cycles per box; the physical frequency is
  ``k / (n * pixel_size)`` in 1/Å and Nyquist is ``|k| = n / 2``.
* Real images are synthesised from the non-redundant half plane
  ``H = {kx > 0} ∪ {kx = 0, ky > 0} ∪ {0}`` (see :class:`HalfPlane`).

FFTs are ``scipy.fft`` with all available workers.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.special

from .errors import InvalidDataError
from .kernels import fourier_cpu

_fft_workers = os.cpu_count() or 1


def fft_workers():
    """Threads of every scipy FFT in the core (all cores unless a caller limited them)."""
    return _fft_workers


def set_fft_workers(count):
    """Limit the threads of the core's FFTs (a protocol step sets its own thread count)."""
    global _fft_workers
    _fft_workers = max(1, int(count))

#: The complex dtype that goes with each real working precision.
COMPLEX_DTYPES = {np.dtype(np.float32): np.dtype(np.complex64),
                  np.dtype(np.float64): np.dtype(np.complex128)}

#: FSC thresholds reported for resolution curves: gold standard and half-bit-like.
FSC_THRESHOLDS = (0.143, 0.5)

# Guards ceil() against K = pi f_max landing a rounding error above an integer.
_CEIL_SLACK = 1e-9


def working_dtypes(dtype):
    """``(real, complex)`` dtypes of a working precision; float32 or float64 only."""
    real = np.dtype(dtype)
    if real not in COMPLEX_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {real}")
    return real, COMPLEX_DTYPES[real]


def bandwidth(max_frequency):
    """The radial-SVD paper's ``ceil(K)``, ``K = pi * f_max``: the highest angular order (or
    spherical-harmonic degree) a particle filling the box shows at ``f_max``."""
    return math.ceil(math.pi * max_frequency - _CEIL_SLACK)


def validate_band(box, max_frequency):
    """Refuse a band limit outside ``(0, Nyquist]``."""
    if not 0 < max_frequency <= box / 2:
        raise InvalidDataError(
            f"the maximum frequency must lie in (0, {box / 2}] cycles per box (Nyquist), "
            f"got {max_frequency}; ask for a coarser resolution")


def radial_quadrature(box, max_frequency, count, power):
    """Gauss-Jacobi rule for ``integral_0^f_max g(f) f^power df`` in cycles per box.

    ``power`` is 1 for rings of a disc (images) and 2 for shells of a ball
    (volumes).  Returns ``(radii, weights)``.
    """
    validate_band(box, max_frequency)
    nodes, node_weights = scipy.special.roots_jacobi(count, 0, power)
    half = max_frequency / 2
    return half * (1 + nodes), half ** (power + 1) * node_weights


def frequency_for_resolution(box, pixel_size, resolution):
    """Cycles per box of ``resolution`` Å; refuses resolutions beyond Nyquist."""
    if resolution < 2 * pixel_size:
        raise InvalidDataError(
            f"{resolution} Å is finer than Nyquist ({2 * pixel_size} Å at "
            f"{pixel_size} Å/px)")
    return box * pixel_size / resolution


def shift_phase(frequencies, shifts, box):
    """``exp(-2 pi i k.t / box)``: the factor that moves content by ``t`` pixels.

    :param frequencies: ``(..., d)`` frequencies ``k`` in cycles per box.
    :param shifts: ``(n, d)`` (or ``(d,)``) core shifts ``t`` in pixels; ``-t``
        re-centres content found at ``t``.
    :returns: complex ``(n,) + frequencies.shape[:-1]``.
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    shifts = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
    phase = np.tensordot(shifts, frequencies, axes=([1], [frequencies.ndim - 1]))
    return np.exp((-2j * np.pi / box) * phase)


def centred_fftn(x, axes=None):
    """Centred, non-unitary forward FFT over ``axes`` (default: all)."""
    axes = tuple(range(np.ndim(x))) if axes is None else tuple(axes)
    shifted = scipy.fft.ifftshift(x, axes=axes)
    return scipy.fft.fftshift(scipy.fft.fftn(shifted, axes=axes, workers=fft_workers()), axes=axes)


def centred_ifftn(spectrum, axes=None):
    """Inverse of :func:`centred_fftn` (carries the ``1 / n^d`` factor)."""
    axes = tuple(range(np.ndim(spectrum))) if axes is None else tuple(axes)
    shifted = scipy.fft.ifftshift(spectrum, axes=axes)
    return scipy.fft.fftshift(scipy.fft.ifftn(shifted, axes=axes, workers=fft_workers()), axes=axes)


def real_filter_frequencies(height, width):
    """Frequencies ``(ky, kx)`` in cycles per pixel of the :func:`filter_real` layout.

    ``ky`` has shape ``(height, 1)``, ``kx`` ``(1, width // 2 + 1)``.  For even
    sizes the Nyquist row is ``ky = -1/2`` and the Nyquist column ``kx = +1/2``.
    """
    return scipy.fft.fftfreq(height)[:, None], scipy.fft.rfftfreq(width)[None, :]


def filter_real(images, multiplier):
    """Multiply the spectrum of real images ``(..., H, W)`` by a real, even multiplier.

    A real, even multiplier commutes with the shift that centres real space,
    so the uncentred FFT layout gives the centred result with no shift copies.

    :param multiplier: values at :func:`real_filter_frequencies` ``(H, W // 2 + 1)``.
    :returns: real array of the same shape, float32 for float32 input, else float64.
    """
    images = np.asarray(images)
    height, width = images.shape[-2:]
    dtype = images.dtype if images.dtype == np.float32 else np.float64
    spectrum = scipy.fft.rfft2(images, workers=fft_workers()) * multiplier
    out = scipy.fft.irfft2(spectrum, s=(height, width), workers=fft_workers())
    return out.astype(dtype, copy=False)


def frequencies(n):
    """Integer frequencies (or positions) of a centred axis of length ``n``."""
    return np.arange(n) - n // 2


def radius_grid(shape):
    """Distance from the centre (index ``n // 2``) of every element of ``shape``."""
    grids = np.meshgrid(*[frequencies(n) for n in shape], indexing="ij")
    return np.sqrt(sum(g.astype(np.float64) ** 2 for g in grids))


def shell_index(shape):
    """Integer Fourier shell of every element: ``round(|k|)``."""
    return np.rint(radius_grid(shape)).astype(np.int64)


def shell_sums(values):
    """Sum of (the real part of) ``values`` over each integer shell ``0 .. n // 2``."""
    values = np.asarray(values)
    shells = shell_index(values.shape)
    n_shells = min(values.shape) // 2 + 1
    inside = shells < n_shells
    return np.bincount(shells[inside], weights=values[inside].real, minlength=n_shells)


def shell_average(values):
    """Mean of (the real part of) ``values`` over each integer shell ``0 .. n // 2``."""
    values = np.asarray(values)
    return shell_sums(values) / np.maximum(shell_sums(np.ones(values.shape)), 1)


def fourier_shell_correlation(volume_a, volume_b):
    """FSC between two real volumes for integer shells ``0 .. n // 2``."""
    fa, fb = centred_fftn(volume_a), centred_fftn(volume_b)
    shells = shell_index(fa.shape)
    n_shells = fa.shape[0] // 2 + 1
    inside = shells < n_shells
    cross = np.bincount(shells[inside], (fa * np.conj(fb)).real[inside], n_shells)
    power_a = np.bincount(shells[inside], (np.abs(fa) ** 2)[inside], n_shells)
    power_b = np.bincount(shells[inside], (np.abs(fb) ** 2)[inside], n_shells)
    return cross / np.sqrt(np.maximum(power_a * power_b, np.finfo(float).tiny))


def resolution_at(frequencies, curve, threshold):
    """Resolution (Å) where ``curve`` first falls below ``threshold`` (linear in
    frequency between shells), or None if it never does.

    :param frequencies: ``(n,)`` shell frequencies in 1/Å, increasing.
    """
    below = np.nonzero(np.asarray(curve) < threshold)[0]
    if below.size == 0:
        return None
    i = below[0]
    if i == 0:
        return 1.0 / frequencies[0]
    fraction = (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
    return 1.0 / (frequencies[i - 1] + fraction * (frequencies[i] - frequencies[i - 1]))


def mirror(grid):
    """``grid`` at ``-k``: ``out[k] = grid[-k]`` on the centred layout of a cubic grid.

    With the origin at index ``n // 2``, ``-k`` of index ``i`` is index
    ``2 (n // 2) - i``: the reversed array for odd ``n``; for even ``n`` the
    ``-n/2`` planes (index 0) have no mirror on the grid and are set to zero
    (see :func:`paired`).  For the spectrum ``F`` of a real array
    ``conj(mirror(F)) = F`` wherever :func:`paired` holds.
    """
    size = grid.shape[0]
    if size % 2:
        return grid[::-1, ::-1, ::-1].copy()
    out = np.zeros_like(grid)
    out[1:, 1:, 1:] = grid[1:, 1:, 1:][::-1, ::-1, ::-1]
    return out


def paired(box):
    """Mask of the voxels of a centred ``box^3`` grid whose mirror ``-k`` is on the grid.

    All voxels for odd ``box``; for even ``box`` all but the ``-box/2`` planes.
    """
    mask = np.ones((box,) * 3, dtype=bool)
    if box % 2 == 0:
        mask[0], mask[:, 0], mask[:, :, 0] = False, False, False
    return mask


def hermitian_fold(grid):
    """``grid + conj(mirror(grid))``: fold a complex grid onto Hermitian (real-map) grids.

    This is the adjoint of embedding Hermitian grids in complex ones under
    ``Re <a, b>``, so it turns a gradient (or an adjoint slice) with respect
    to an unconstrained complex grid into one with respect to a real map; on
    a Hermitian grid it doubles every paired coefficient.
    """
    return grid + np.conj(mirror(grid))


def pad_centred(array, size):
    """Zero-pad every axis of ``array`` to ``size``, keeping the centre at ``size // 2``."""
    out = np.zeros((size,) * array.ndim, dtype=array.dtype)
    start = size // 2 - array.shape[0] // 2
    out[tuple(slice(start, start + n) for n in array.shape)] = array
    return out


def crop_centred(array, size):
    """Inverse of :func:`pad_centred`: the central ``size`` elements of every axis."""
    start = array.shape[0] // 2 - size // 2
    return array[tuple(slice(start, start + size) for _ in array.shape)]


def keys_cubic(u, a=-0.5):
    """Keys cubic convolution kernel (interpolating, C1, support [-2, 2])."""
    u = np.abs(np.asarray(u, dtype=np.float64))
    inner = (a + 2) * u ** 3 - (a + 3) * u ** 2 + 1
    outer = a * u ** 3 - 5 * a * u ** 2 + 8 * a * u - 4 * a
    return np.where(u < 1, inner, np.where(u < 2, outer, 0.0))


def interpolation_transfer(position, interpolation):
    """Continuous Fourier transform of an interpolation kernel.

    Interpolating a Fourier grid with kernel ``h`` multiplies the real-space
    object by ``H(x / n)``, the kernel's transform at ``x`` pixels from the
    centre of an ``n``-point padded box; dividing the object by it beforehand
    (deapodisation, "gridding correction") undoes that.

    :param position: ``x / n`` in cycles per grid step, array.
    :param interpolation: ``"linear"`` (``sinc^2``) or ``"cubic"`` (Keys, a = -0.5).
    """
    f = np.asarray(position, dtype=np.float64)
    if interpolation == "linear":
        return np.sinc(f) ** 2
    if interpolation == "cubic":
        # The kernel is even and piecewise cubic on [0, 1] and [1, 2]; 16-point
        # Gauss-Legendre is exact for the polynomial part times a smooth cosine
        # to double precision at |f| <= 1/2.
        nodes, weights = np.polynomial.legendre.leggauss(16)
        total = np.zeros_like(f)
        for lo in (0.0, 1.0):
            u = lo + 0.5 * (nodes + 1.0)
            total += np.cos(2 * np.pi * f[..., None] * u) @ (0.5 * weights * keys_cubic(u))
        return 2.0 * total
    raise ValueError(f"unknown interpolation {interpolation!r}; use 'linear' or 'cubic'")


def deapodization(box, padded_size, interpolation):
    """Separable deapodisation factor ``1 / H(x / padded_size)``, shape ``(box,)``.

    ``x`` runs over the positions of a centred ``box`` axis that is zero-padded
    to ``padded_size`` before the transform.
    """
    return 1.0 / interpolation_transfer(frequencies(box) / padded_size, interpolation)


@dataclass(frozen=True)
class HalfPlane:
    """Non-redundant 2-D frequencies of a real ``box × box`` image inside a disc.

    ``kx``, ``ky`` are the integer frequencies of the points of
    ``H = {kx > 0} ∪ {kx = 0, ky > 0} ∪ {0}`` with ``kx² + ky² < radius²``.
    :meth:`synthesize` maps complex values on these points to the real image
    whose spectrum they are (Hermitian extension), and :meth:`analyze` is its
    exact adjoint under ``<a, b> = Re sum conj(a) b``.

    Internally values go straight into the *unshifted* ``rfft2`` layout
    (``flat_index``), and the centring of real space is folded into the
    phase ``centring = exp(-2 pi i (kx + ky) (box // 2) / box)``, so no
    ``fftshift`` copies are made.
    """
    box: int
    radius: float
    kx: np.ndarray
    ky: np.ndarray
    multiplicity: np.ndarray
    flat_index: np.ndarray
    centring: np.ndarray

    @classmethod
    def disc(cls, box, radius=None):
        """Points strictly inside ``radius`` (default Nyquist, ``box / 2``)."""
        radius = box / 2 if radius is None else float(radius)
        ky, kx = np.meshgrid(frequencies(box), np.arange(box // 2 + 1), indexing="ij")
        keep = (kx ** 2 + ky ** 2 < radius ** 2) & ((kx > 0) | (ky >= 0))
        kx, ky = kx[keep], ky[keep]
        # Points that stand for themselves and their mirror image count twice.
        multiplicity = np.where((kx == 0) & (ky == 0), 1.0, 2.0)
        flat_index = (ky % box) * (box // 2 + 1) + kx
        centring = np.exp(-2j * np.pi * (kx + ky) * (box // 2) / box)
        return cls(box, radius, kx.astype(np.float64), ky.astype(np.float64), multiplicity,
                   flat_index.astype(np.int64), centring)

    @property
    def size(self):
        return self.kx.size

    def synthesize(self, values):
        """Real images ``(..., box, box)`` from half-plane values ``(..., size)``."""
        values = np.asarray(values)
        dtype = np.result_type(values.dtype, np.complex64)
        flat_values = np.ascontiguousarray(values.reshape(-1, self.size), dtype=dtype)
        half = np.zeros((flat_values.shape[0], self.box * (self.box // 2 + 1)), dtype=dtype)
        # irfft2 adds the conjugate of every kx > 0 entry itself and takes the
        # real part of the kx = 0 column, so those entries carry the factor 2.
        scale = np.where(self.kx == 0, self.multiplicity, 1.0) * self.centring
        fourier_cpu.scatter_rows(flat_values, scale.astype(dtype), self.flat_index, half)
        half = half.reshape(-1, self.box, self.box // 2 + 1)
        images = scipy.fft.irfft2(half, s=(self.box, self.box), workers=fft_workers())
        return images.reshape(values.shape[:-1] + (self.box, self.box))

    def _gather(self, images, factor):
        images = np.asarray(images)
        spectra = scipy.fft.rfft2(images.reshape(-1, self.box, self.box), workers=fft_workers())
        spectra = spectra.reshape(spectra.shape[0], -1)
        out = np.empty((spectra.shape[0], self.size), dtype=spectra.dtype)
        fourier_cpu.gather_rows(spectra, factor.astype(spectra.dtype), self.flat_index, out)
        return out.reshape(images.shape[:-2] + (self.size,))

    def analyze(self, images):
        """Adjoint of :meth:`synthesize`: half-plane values ``(..., size)`` of real images."""
        return self._gather(images, np.conj(self.centring) * self.multiplicity / self.box ** 2)

    def transform(self, images):
        """Centred spectrum of real images at the half-plane points (no adjoint weights)."""
        return self._gather(images, np.conj(self.centring))
