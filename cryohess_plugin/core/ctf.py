"""Contrast transfer function: the one owner of the CTF convention.

The formula is the standard CTFFIND4 / RELION one:

* ``s`` is the physical spatial frequency in 1/Å, ``theta`` its direction.
  Frequencies are given as ``kx, ky`` in cycles per box (see
  :mod:`.fourier`), so ``s = |k| / (box * pixel_size)``.  ``kx`` runs along
  image axis -1 (x), ``ky`` along axis -2 (y), and ``theta = atan2(ky, kx)``
  is measured counter-clockwise from +x in that *index* frame (from +x
  towards increasing row index).
* ``defocus(theta) = 0.5 * (dU + dV + (dU - dV) * cos(2 (theta - angle)))``
  with underfocus positive and ``angle`` the direction of the U axis.
* ``chi = pi * lambda * defocus * s^2 - pi / 2 * Cs * lambda^3 * s^4 + phase_shift``
* ``CTF = +(sqrt(1 - A^2) * sin(chi) + A * cos(chi)) * exp(-B s^2 / 4)``

Every evaluation runs the Numba kernel :mod:`.kernels.ctf_cpu` (or its CUDA twin), to which
this module hands each particle's parameters reduced to the formula's coefficients.

This is Scipion's sign, positive at low frequency for underfocus: particles in
Scipion projects are extracted with inverted contrast (white, positive
density), and Xmipp, RELION and cryoSPARC model them with this CTF.  Xmipp's
``CTFDescription`` (``xmippLib.applyCTF``) equals it, with the same defocus,
angle, amplitude-contrast and wavelength conventions (``tests/test_ctf.py``
checks it).  Phase-flipped particles (Scipion's ``isPhaseFlipped()``) were
multiplied by the sign of their CTF, so their model is ``|CTF|``
(``CTFParams.phase_flipped``).
"""
import math
from dataclasses import astuple, dataclass, fields

import numpy as np
import scipy.special

from . import fourier
from .errors import InvalidDataError, ShapeError
from .kernels import ctf_cpu, resolve_backend

# h / sqrt(2 m e) in Å V^1/2 and e / (2 m c^2) in 1/V, the values RELION
# (ObservationModel) and Xmipp use.  CODATA 2018 gives 12.264260 and
# 0.9784756e-6 (wavelength 6e-6 relative shorter at 300 kV); the estimated
# defocus only enters through lambda * defocus, so matching the estimators'
# constants is what keeps the phase right at high defocus.
_WAVELENGTH_NUMERATOR = 12.2643247
_RELATIVISTIC_FACTOR = 0.978466e-6
# ctf_rings takes this many particles at once: its float64 temporaries stay in the
# cache (3x faster than one block of 1024 at the alignment's 49 x 49 half rings).
_RING_BLOCK = 64


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters of one micrograph or particle.

    :param defocus_u: defocus along the U axis in Å, underfocus positive.
    :param defocus_v: defocus along the V axis in Å, underfocus positive.
    :param defocus_angle: angle of the U axis from image +x in degrees,
        counter-clockwise in the index frame (see the module docstring).
    :param voltage: acceleration voltage in kV.
    :param spherical_aberration: Cs in mm.
    :param amplitude_contrast: fraction ``A`` in ``[0, 1)``.
    :param phase_shift: additional phase (phase plate) in degrees.
    :param bfactor: envelope B-factor in Å², ``>= 0``; 0 means no envelope.
    :param phase_flipped: the images were phase-flipped (multiplied by the sign of
        this CTF), so their CTF is ``|CTF|``.
    """
    defocus_u: float
    defocus_v: float
    defocus_angle: float
    voltage: float
    spherical_aberration: float
    amplitude_contrast: float
    phase_shift: float = 0.0
    bfactor: float = 0.0
    phase_flipped: bool = False

    def __post_init__(self):
        object.__setattr__(self, "phase_flipped", bool(self.phase_flipped))
        for field in fields(self):
            if field.name == "phase_flipped":
                continue
            value = getattr(self, field.name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise InvalidDataError(
                    f"CTF parameter {field.name} must be a number, got {value!r}; "
                    f"check the CTF estimation that provided it") from None
            if not math.isfinite(value):
                raise InvalidDataError(
                    f"CTF parameter {field.name} is {value}; re-estimate the CTF or "
                    f"drop the particles without a valid CTF")
            object.__setattr__(self, field.name, value)
        if self.voltage <= 0:
            raise InvalidDataError(
                f"CTF parameter voltage must be positive (kV), got {self.voltage}; "
                f"set the microscope voltage of the acquisition, e.g. 300")
        if self.bfactor < 0:
            raise InvalidDataError(
                f"CTF parameter bfactor must be >= 0 (Å², a damping envelope), got "
                f"{self.bfactor}; use 0 for no envelope")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise InvalidDataError(
                f"CTF parameter amplitude_contrast must be a fraction in [0, 1), got "
                f"{self.amplitude_contrast}; use e.g. 0.1 (not a percentage)")


def params_to_rows(params_list):
    """CTF parameters as a float ``(n, fields)`` array (``(0, fields)`` when empty), for files."""
    return np.array([astuple(p) for p in params_list],
                    dtype=np.float64).reshape(-1, len(fields(CTFParams)))


def params_from_rows(rows):
    """The :class:`CTFParams` of the rows of :func:`params_to_rows`."""
    return [CTFParams(*row) for row in rows]


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å.

    :param voltage_kv: acceleration voltage in kV (scalar or array).
    :returns: wavelength in Å, same shape.
    """
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return _WAVELENGTH_NUMERATOR / np.sqrt(volts * (1 + _RELATIVISTIC_FACTOR * volts))


def _polar(kx, ky, box, pixel_size):
    """Squared physical frequency (1/Å²) and direction (rad) of ``(kx, ky)``."""
    scale = 1.0 / (box * pixel_size)
    sx = np.asarray(kx, dtype=np.float64) * scale
    sy = np.asarray(ky, dtype=np.float64) * scale
    return sx ** 2 + sy ** 2, np.arctan2(sy, sx)


def _coefficients(rows):
    """The per-particle coefficient rows of the CTF kernel (:data:`.kernels.ctf_cpu.COEFFICIENTS`)
    from rows of :func:`params_to_rows`: ``(n, 9)`` float64."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(fields(CTFParams)))
    du, dv, angle, voltage, cs, amplitude, phase, bfactor, flipped = rows.T
    wavelength = electron_wavelength(voltage)
    two_angle = 2 * np.deg2rad(angle)
    return np.ascontiguousarray(np.stack([
        0.5 * (du + dv), 0.5 * (du - dv), np.cos(two_angle), np.sin(two_angle),
        np.pi * wavelength,
        -0.5 * np.pi * (cs * 1e7) * wavelength ** 3,  # Cs in mm -> Å
        np.deg2rad(phase) + np.arcsin(amplitude), bfactor / 4,
        (flipped != 0).astype(np.float64)], axis=1))


def _coefficient_columns(rows):
    """Each kernel coefficient of ``rows`` as a float64 ``(n, 1)`` column, by name."""
    coefficients = _coefficients(rows)
    return {name: coefficients[:, [k]] for k, name in enumerate(ctf_cpu.COEFFICIENTS)}


def _points(s2, theta):
    """The point columns of the CTF kernel: ``(3, npts)`` ``s²``, ``cos 2θ``, ``sin 2θ``."""
    s2, theta = np.ravel(s2), np.ravel(theta)
    return np.ascontiguousarray(np.stack([s2, np.cos(2 * theta), np.sin(2 * theta)]))


def _kernel_values(rows, s2, theta, dtype=np.float64, backend="cpu"):
    """CTF of every particle of ``rows`` at every point ``(s2, theta)``: ``(n, npts)``.

    The formula of the module docstring, evaluated by the CTF kernel (CPU or CUDA)."""
    coefficients = _coefficients(rows)
    points = _points(s2, theta)
    out = np.empty((coefficients.shape[0], points.shape[1]), dtype=dtype)
    if resolve_backend(backend) == "cuda":
        from .kernels import ctf_cuda as kernels
    else:
        kernels = ctf_cpu
    kernels.ctf_values(coefficients, points, out)
    return out


def evaluate_ctf(params, kx, ky, box, pixel_size):
    """CTF values at frequencies ``(kx, ky)``.

    :param params: :class:`CTFParams`.
    :param kx: frequencies along image x (axis -1) in cycles per box, array.
    :param ky: frequencies along image y (axis -2) in cycles per box, array
        broadcastable with ``kx``.
    :param box: image size in pixels.
    :param pixel_size: pixel size in Å.
    :returns: float64 array of the broadcast shape of ``kx`` and ``ky``.
    """
    s2, theta = _polar(kx, ky, box, pixel_size)
    return _kernel_values(params_to_rows([params]), s2, theta)[0].reshape(np.shape(s2))


def ctf_stack(params_list, kx, ky, box, pixel_size, dtype=np.float64, backend="cpu"):
    """CTF of many particles at the same frequencies.

    :param params_list: sequence of ``n`` :class:`CTFParams`.
    :param kx: 1-D frequencies along x in cycles per box, shape ``(npts,)``
        (e.g. ``HalfPlane.kx``).
    :param ky: 1-D frequencies along y, shape ``(npts,)``.
    :param box: image size in pixels.
    :param pixel_size: pixel size in Å.
    :param dtype: output dtype (the arithmetic is float64 either way).
    :param backend: ``"cpu" | "cuda" | "auto"`` (:func:`.kernels.resolve_backend`).
    :returns: array of shape ``(n, npts)``.
    """
    return ctf_stack_from_rows(params_to_rows(params_list), kx, ky, box, pixel_size, dtype,
                               backend)


def ctf_stack_from_rows(rows, kx, ky, box, pixel_size, dtype=np.float64, backend="cpu"):
    """:func:`ctf_stack` of the particles whose parameters are ``rows`` (:func:`params_to_rows`),
    without building a :class:`CTFParams` per particle (the posterior's batches)."""
    kx, ky = np.asarray(kx), np.asarray(ky)
    if kx.ndim != 1 or kx.shape != ky.shape:
        raise ShapeError(f"kx and ky must be 1-D of equal length, got {kx.shape} and {ky.shape}")
    s2, theta = _polar(kx, ky, box, pixel_size)
    return _kernel_values(rows, s2, theta, dtype, backend)


def ring_mean_ctf_squared(params_list, radii, box, pixel_size):
    """Mean of ``CTF²`` around each ring ``|k| = radii`` (cycles per box), astigmatism included.

    With ``sin α = A`` the CTF is ``sin(χ + α) E`` (``E`` the envelope), so
    ``CTF² = E² (1 − cos(2χ + 2α)) / 2``; around a ring ``χ = χ̄ + κ cos 2(θ − θ_U)``
    with ``χ̄`` the phase of the mean defocus and ``κ = π λ s² (dU − dV) / 2``, and the
    ring mean of ``cos(c + 2κ cos φ)`` is ``J₀(2κ) cos c``.  Phase flipping does not change
    ``CTF²``.  This is the exact ring average, not the CTF² of the mean defocus.

    :param params_list: ``n`` :class:`CTFParams`.
    :param radii: ``(R,)`` ring radii in cycles per box.
    :returns: ``(n, R)`` float64.
    """
    radii = np.asarray(radii, dtype=np.float64)
    if radii.ndim != 1:
        raise ShapeError(f"radii must be 1-D, got shape {radii.shape}")
    s2, _ = _polar(radii, np.zeros_like(radii), box, pixel_size)
    c = _coefficient_columns(params_to_rows(params_list))
    # The phase coefficient holds alpha: this is chi of the mean defocus plus alpha.
    mean_chi = c["pi_lambda"] * c["mean_defocus"] * s2 + c["cs_term"] * s2 ** 2 + c["phase"]
    swing = c["pi_lambda"] * s2 * c["half_difference"]
    envelope = np.exp(-2 * c["quarter_bfactor"] * s2)
    return envelope * 0.5 * (1 - scipy.special.j0(2 * swing) * np.cos(2 * mean_chi))


def ctf_rings(params_list, radii, angles, box, pixel_size, dtype=np.float64):
    """CTF of many particles on rings: ``(n, len(radii), len(angles))``.

    The values of :func:`ctf_stack` at ``k = radii[r] (cos, sin)(angles[j])``
    (cycles per box), with ``|k|`` taken once per ring and the direction once
    per angle (the polar grids of the alignment).  ``dtype=np.float64`` gives
    the arithmetic of :func:`ctf_stack`.  ``np.float32`` takes the kernel's phase
    ``chi + arcsin A`` (``sqrt(1 - A^2) sin chi + A cos chi = sin(chi + arcsin A)``),
    reduces it modulo ``2 pi`` in float64 and takes its sine in float32, numpy's
    vectorised single-precision sine (about 40x faster than the double-precision one
    per value): absolute error below 1e-6.
    """
    s2, _ = _polar(np.asarray(radii, dtype=np.float64), 0.0, box, pixel_size)
    theta = np.asarray(angles, dtype=np.float64)
    if s2.ndim != 1 or theta.ndim != 1:
        raise ShapeError(f"radii and angles must be 1-D, got {s2.shape} and {theta.shape}")
    dtype = np.dtype(dtype)
    rows = params_to_rows(params_list)
    if dtype == np.float64:
        return _kernel_values(rows, np.repeat(s2, theta.size), np.tile(theta, s2.size)).reshape(
            len(rows), s2.size, theta.size)
    out = np.empty((len(rows), s2.size, theta.size), dtype=dtype)
    ring_s2 = s2[:, None]
    for start in range(0, len(rows), _RING_BLOCK):
        c = {name: values[:, :, None] for name, values in
             _coefficient_columns(rows[start:start + _RING_BLOCK]).items()}
        defocus = c["mean_defocus"] + c["half_difference"] * (
            np.cos(2 * theta) * c["cos_2_angle"] + np.sin(2 * theta) * c["sin_2_angle"])
        chi = (c["pi_lambda"] * ring_s2) * defocus
        chi += c["phase"] + c["cs_term"] * ring_s2 ** 2
        chi -= (2 * np.pi) * np.round(chi * (0.5 / np.pi))
        values = np.sin(chi.astype(np.float32)) * np.exp(
            -c["quarter_bfactor"] * ring_s2).astype(np.float32)
        out[start:start + _RING_BLOCK] = np.where(c["phase_flipped"] != 0, np.abs(values), values)
    return out


def filter_images(images, params, pixel_size):
    """Multiply the spectrum of real images ``(..., H, W)`` by one CTF.

    For even sizes the Nyquist row is evaluated at ``ky = -H/2`` and the
    Nyquist column at ``kx = +W/2`` (Xmipp picks differently); images without
    power on those lines are unaffected.

    :returns: real array of the same shape (float32 for float32 input, else float64).
    """
    images = np.asarray(images)
    ky, kx = fourier.real_filter_frequencies(*images.shape[-2:])
    # Frequencies in cycles per pixel are cycles per box for a "box" of 1 pixel.
    return fourier.filter_real(images, evaluate_ctf(params, kx, ky, 1, pixel_size))


def apply_ctf(images, params, pixel_size):
    """Multiply the centred spectrum of square real-space images by one CTF.

    See :func:`filter_images` for the Nyquist lines of even boxes.

    :param images: real array ``(..., box, box)``.
    :param params: :class:`CTFParams`.
    :param pixel_size: pixel size in Å.
    :returns: real array of the same shape (float64 or float32 as the input).
    """
    images = np.asarray(images)
    if images.ndim < 2 or images.shape[-1] != images.shape[-2]:
        raise ShapeError(f"expected square images (..., box, box), got shape {images.shape}")
    return filter_images(images, params, pixel_size)
