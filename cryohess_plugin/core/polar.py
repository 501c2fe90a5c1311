"""Polar Fourier grids: the one owner of rings, quadrature and ring coefficients.

Frequencies are in cycles per box, as everywhere in the core (:mod:`.fourier`).
The radial-SVD paper (Rangan 2022) measures frequency ``K`` in radians per
half-box; for an image whose support is the disc of radius ``box / 2`` the two
are related by ``K = pi * f_max`` (``docs/methods/radial_svd_alignment.md``
§1.1).  Its defaults ``K = 48, R = 49, Q = 98`` are ``R = ceil(K) + 1`` rings
and ``Q = 2 R`` angles (§1.2 of that page).

Ring ``r`` lies at radius ``radii[r]`` and angle ``2 pi j / Q``; the radii and
``weights`` are the Gauss-Jacobi rule for ``integral_0^f_max g(f) f df``.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from . import fourier
from .fourier import bandwidth, frequency_for_resolution, radial_quadrature, validate_band
from .ctf import ctf_rings
from .errors import InvalidDataError, ShapeError
from .kernels import polar_cpu, resolve_backend

#: Oversampling of the Fourier grid that polar nodes are interpolated from.
_PADDING = 2
#: Images per batch are chosen so one batch's spectra take about this many bytes.
_BATCH_BYTES = 1 << 25


@dataclass(frozen=True)
class PolarGrid:
    """Rings x angles sampling of a disc of frequencies, with its quadrature."""

    box: int
    max_frequency: float
    n_rings: int
    n_angles: int
    radii: np.ndarray = field(repr=False, compare=False)
    weights: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_max_frequency(cls, box, max_frequency, n_rings=None, n_angles=None):
        """Grid on ``[0, max_frequency]`` cycles per box; default rings and angles as in
        ``docs/methods/radial_svd_alignment.md`` §1.2."""
        validate_band(box, max_frequency)
        orders = bandwidth(max_frequency)
        n_rings = int(n_rings or orders + 1)
        n_angles = int(n_angles or 2 * (orders + 1))
        if n_angles % 2:
            raise InvalidDataError(f"the number of angles must be even, got {n_angles}")
        if n_angles < 2 * math.pi * max_frequency + 1:
            raise InvalidDataError(
                f"{n_angles} angles under-sample rings up to {max_frequency:.2f} cycles per "
                f"box; use at least {math.ceil(2 * math.pi * max_frequency + 1)}")
        radii, weights = radial_quadrature(box, max_frequency, n_rings, power=1)
        return cls(int(box), float(max_frequency), n_rings, n_angles, radii=radii,
                   weights=weights)

    @classmethod
    def for_resolution(cls, box, pixel_size, resolution, n_rings=None, n_angles=None):
        """Grid reaching ``resolution`` Å for a ``box``-pixel image of ``pixel_size`` Å."""
        return cls.from_max_frequency(
            box, frequency_for_resolution(box, pixel_size, resolution), n_rings, n_angles)

    @property
    def angles(self):
        """The ``Q`` in-plane angles ``2 pi j / Q`` (radians)."""
        return 2 * np.pi * np.arange(self.n_angles) / self.n_angles

    @property
    def angular_step(self):
        """Spacing of :attr:`angles` in radians."""
        return 2 * np.pi / self.n_angles

    @property
    def kx(self):
        """x frequencies of all nodes, ring-major ``(R * Q,)``."""
        return (self.radii[:, None] * np.cos(self.angles)[None]).ravel()

    @property
    def ky(self):
        """y frequencies of all nodes, ring-major ``(R * Q,)``."""
        return (self.radii[:, None] * np.sin(self.angles)[None]).ravel()


def ring_coefficients(polar):
    """Angular Fourier coefficients ``a[..., r, q] = fft(polar, axis=-1) / Q``.

    ``q`` follows numpy's ``fftfreq`` order (index ``Q - 1`` is ``q = -1``); the
    Nyquist bin ``q = Q / 2`` is zeroed, as it lies outside the angular band.
    """
    coefficients = np.fft.fft(polar, axis=-1) / polar.shape[-1]
    coefficients[..., polar.shape[-1] // 2] = 0
    return coefficients


def shift_phases(grid, shifts):
    """Multipliers ``(n_shifts, R, Q)`` that re-centre a particle found at offset ``t``.

    ``shifts`` are core shifts in pixels (offset of the particle centre from the
    box centre, see :mod:`.projector`); multiplying polar samples of an image by
    ``exp(+2 pi i k.t / D)`` undoes that offset.
    """
    shifts = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
    phases = fourier.shift_phase(np.stack([grid.kx, grid.ky], -1), -shifts, grid.box)
    return phases.reshape(len(shifts), grid.n_rings, grid.n_angles)


def ctf_on_grid(ctf_params, grid, pixel_size, dtype=np.float64):
    """Each particle's CTF at the nodes of ``grid``: ``(n, R, Q)``.

    The CTF is even (``C(-k) = C(k)``), so the half ring ``j < Q / 2`` is
    evaluated (:func:`.ctf.ctf_rings`, float32 or float64 as ``dtype``) and
    repeated on the antipodal half.
    """
    half = ctf_rings(ctf_params, grid.radii, grid.angles[:grid.n_angles // 2], grid.box,
                     pixel_size, dtype)
    return np.concatenate([half, half], axis=-1)


def polar_transform(images, grid, backend="auto", dtype=np.float32):
    """Centred, non-unitary Fourier transform of images at the polar nodes of ``grid``.

    ``out[i, r, j] = sum_x images[i](x) exp(-2 pi i k.x / D)`` at
    ``k = radii[r] (cos, sin)(2 pi j / Q)`` cycles per box, with ``x`` counted
    from index ``D // 2`` in (column, row) order: the samples that
    :meth:`.projector.FourierSliceProjector.project_polar` gives for the
    image's pose.

    As in the 3-D projector, each image is deapodised for the Keys cubic
    interpolation, its spectrum is taken on the 2x oversampled grid and the nodes are
    interpolated from it.  Against the exact sum the relative error is below
    1e-3 for particles (content within about 0.3 box of the centre) and grows
    towards the box edge: about 3e-2 for white noise that fills the box.
    Only the window of the oversampled grid that the taps read is computed:
    the transform along x is a BLAS product with the deapodised DFT matrix of
    those columns, the one along y a zero-padded FFT.  Half of every ring is
    interpolated; the antipodal half is its conjugate (real images).

    :param images: real ``(n, D, D)`` with ``D = grid.box``.
    :param grid: :class:`PolarGrid`.
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the interpolation
        (:func:`.kernels.resolve_backend`); the transforms run on the CPU.
    :param dtype: working precision, ``np.float32`` or ``np.float64``.
    :returns: ``(n, R, Q)`` complex64 (float32) or complex128 (float64).
    """
    dtype, _ = fourier.working_dtypes(dtype)
    images = _validate_images(images, grid.box)
    kernels = _interpolation_kernels(resolve_backend(backend))
    plan = _OversampledWindow(grid, dtype)
    n = images.shape[0]
    out = np.empty((n, grid.n_rings * grid.n_angles), dtype=plan.complex_dtype)
    for start in range(0, n, plan.batch):
        # Checked batch by batch: a stack of 1e5 particles needs no full-size mask.
        chunk = _finite_images(images[start:start + plan.batch], start)
        windows = plan.windows(chunk)
        kernels.polar_interpolate(windows, plan.offsets, plan.weights_x, plan.weights_y,
                                  plan.direct, plan.mirror, out[start:start + plan.batch])
    return out.reshape(n, grid.n_rings, grid.n_angles)


def _validate_images(images, box):
    """Check that ``images`` is a real ``(n, box, box)`` stack; return it as an array."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (box, box):
        raise ShapeError(f"images must have shape (n, {box}, {box}) to match the polar grid, "
                         f"got {images.shape}; add a leading axis to a single image and "
                         "resample images to the grid's box")
    if images.dtype.kind not in "fiu":
        raise InvalidDataError(f"images must be real numbers, got dtype {images.dtype}")
    return images


def _finite_images(images, first_index):
    """Return ``images`` if every pixel is finite, else name the first bad image."""
    finite = np.isfinite(images).all(axis=(1, 2))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidDataError(f"image {first_index + bad[0]} contains NaN or infinite pixels; "
                               "fix or drop it before alignment")
    return images


class _OversampledWindow:
    """The part of the deapodised, 2x oversampled spectrum that polar nodes read.

    Grid coordinates are oversampled frequencies ``g = 2 k``.  Of every pair
    of antipodal nodes the one with ``kx >= 0`` is interpolated (``direct``;
    ``mirror`` gets its conjugate), so the window spans the columns and rows
    of those nodes' taps only.  Its spectrum is computed as the sum over
    pixels along x (a BLAS product with the deapodised DFT matrix of the
    window's columns) and a zero-padded FFT along y.
    """

    def __init__(self, grid, dtype):
        self.dtype = dtype
        _, self.complex_dtype = fourier.working_dtypes(dtype)
        box = grid.box
        self.size = _PADDING * box
        half = grid.n_angles // 2
        first = np.arange(half)
        keep_first = np.cos(grid.angles[:half]) >= 0
        rings = np.arange(grid.n_rings)[:, None] * grid.n_angles
        self.direct = (rings + np.where(keep_first, first, first + half)[None]).ravel()
        self.mirror = (rings + np.where(keep_first, first + half, first)[None]).ravel()
        gx = _PADDING * grid.kx[self.direct]
        gy = _PADDING * grid.ky[self.direct]
        # Taps f - 1 .. f + 2 around f = floor(g).
        columns = np.arange(int(np.floor(gx.min())) - 1, int(np.floor(gx.max())) + 3)
        rows = np.arange(int(np.floor(gy.min())) - 1, int(np.floor(gy.max())) + 3)
        self.weights_x = np.empty((gx.size, 4), dtype=dtype)
        self.weights_y = np.empty((gx.size, 4), dtype=dtype)
        self.offsets = polar_cpu.node_taps(gx - columns[0], gy - rows[0], columns.size,
                                           self.weights_x, self.weights_y)

        deapodization = fourier.deapodization(box, self.size, "cubic")
        dft = np.exp(-2j * np.pi * np.outer(fourier.frequencies(box), columns) / self.size)
        # Interleaved (re, im) columns: the real product with a real image is
        # then already the complex result, viewed without a copy.
        self.x_transform = (deapodization[:, None] * dft).astype(self.complex_dtype).view(dtype)
        self.y_deapodization = deapodization[:, None].astype(dtype)
        self.rows = rows % self.size
        # The FFT counts y from the image corner: this phase moves the origin to D // 2.
        self.row_phase = np.exp(2j * np.pi * rows * (box // 2) / self.size)[:, None].astype(
            self.complex_dtype)
        self.batch = max(1, _BATCH_BYTES
                         // (self.size * columns.size * self.complex_dtype.itemsize))

    def windows(self, images):
        """Windows ``(n, Y, X)`` of the oversampled spectra of ``images`` ``(n, D, D)``."""
        n, box = images.shape[0], images.shape[1]
        flat = images.astype(self.dtype, copy=False).reshape(n * box, box)
        along_x = (flat @ self.x_transform).view(self.complex_dtype).reshape(n, box, -1)
        along_x *= self.y_deapodization
        spectra = scipy.fft.fft(along_x, n=self.size, axis=1, overwrite_x=True,
                                workers=fourier.fft_workers())
        # C order for the kernel, whatever layout the FFT returned.
        windows = np.empty((n, self.rows.size, spectra.shape[2]), dtype=self.complex_dtype)
        return np.multiply(spectra[:, self.rows], self.row_phase, out=windows)


def _interpolation_kernels(backend):
    """Kernel module for a resolved backend."""
    if backend == "cuda":
        from .kernels import polar_cuda
        return polar_cuda
    return polar_cpu
