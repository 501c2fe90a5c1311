"""Differentiable Fourier-slice projector shared by every method.

Model: the image of a volume ``v`` in pose ``(R, t)`` with CTF ``c`` is

    image = synthesize( c(k) * exp(-2 pi i k.t / D) * V(R^T (kx, ky, 0)) )

where ``V`` is the centred, non-unitary 3-D transform of ``v`` (see
:mod:`.fourier`), read by interpolation on a zero-padded grid, and
``synthesize`` builds the real image from the half plane of frequencies
(:class:`.fourier.HalfPlane`).  ``R`` follows :mod:`.rotations`;
``t = (tx, ty)`` is the offset of the particle centre from the box centre in
pixels (a positive ``tx`` moves density to larger x).

Accuracy: the default is Keys cubic interpolation on a 2x padded grid,
deapodised by the kernel's own transfer function.  Against analytic
projections of Gaussian atoms this gives a uniform relative error of about
3e-3 at every pose, on axis included; trilinear interpolation with the sinc²
correction (``interpolation="linear"``) is faster but over-corrects at grid nodes, so
near-axis poses err by several percent for molecules that fill the box
(benchmarks/RESULTS.md has the numbers).

Derivatives: with respect to the volume the operator is linear, and
:meth:`FourierSliceProjector.backproject` is its exact adjoint.  Pose
derivatives are with respect to a left perturbation ``R <- expm([w]x) R``
in the image frame (``w`` in radians) and with respect to ``t`` (pixels).
"""
from dataclasses import dataclass

import numpy as np

from . import fourier
from .errors import InvalidDataError, ShapeError
from .kernels import INTERPOLATIONS, resolve_backend
from .kernels import projector_cpu
from .rotations import validate_poses



def validate_volume(volume, name="volume"):
    """Check that ``volume`` is a finite, cubic 3-D array; return it as an array."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ShapeError(f"{name} must be a cubic 3-D array (box, box, box), got shape "
                         f"{volume.shape}; resize or pad it to a cube first")
    bad = np.count_nonzero(~np.isfinite(volume))
    if bad:
        raise InvalidDataError(f"{name} contains {bad} NaN or infinite voxels; "
                               "fix or mask the map before using it")
    return volume


@dataclass(frozen=True)
class PoseDerivatives:
    """Images and their derivatives with respect to the pose.

    ``images`` ``(n, D, D)``; ``d_rotation`` ``(n, 3, D, D)`` with respect to
    the image-frame rotation vector (per radian); ``d_shift`` ``(n, 2, D, D)``
    with respect to ``(tx, ty)`` (per pixel).  On the half plane
    (:meth:`FourierSliceProjector.pose_derivatives` with ``domain="fourier"``) the
    last axes ``(D, D)`` are the ``m`` half-plane points instead.
    """
    images: np.ndarray
    d_rotation: np.ndarray
    d_shift: np.ndarray


class SliceOperator:
    """Geometry of the projector: padded grid, interpolation, precision and backend.

    It holds no volume, so one operator serves forward projection of many
    volumes and back-projection alike.

    :param box: image and volume size ``D`` in pixels.
    :param padding: oversampling factor of the Fourier grid (2 by default).
    :param interpolation: ``"cubic"`` (Keys, default) or ``"linear"`` (trilinear).
    :param dtype: ``np.float32`` (production) or ``np.float64`` (tests).
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :mod:`.kernels`).
    :param radius: frequency cut-off of projected images in cycles per box
        (default Nyquist, ``box / 2``).
    """

    def __init__(self, box, padding=2, interpolation="cubic", dtype=np.float32, backend="auto",
                 radius=None):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got "
                             f"{interpolation!r}")
        if padding < 1 or int(padding) != padding:
            raise ValueError(f"padding must be a positive integer, got {padding}")
        self.dtype, self.complex_dtype = fourier.working_dtypes(dtype)
        self.box = int(box)
        self.padding = int(padding)
        self.padded_size = self.padding * self.box
        self.interpolation = interpolation
        self.interpolation_id = INTERPOLATIONS[interpolation]
        self.backend = resolve_backend(backend)
        if self.backend == "cuda":
            from .kernels import projector_cuda as kernels
        else:
            kernels = projector_cpu
        self._kernels = kernels
        self.half_plane = fourier.HalfPlane.disc(self.box, radius)
        self._deapodization = fourier.deapodization(self.box, self.padded_size, interpolation)

    # ----------------------------------------------------------------- volume <-> grid
    def volume_to_grid(self, volume):
        """Deapodised, zero-padded, centred 3-D transform of a ``(D, D, D)`` volume."""
        volume = validate_volume(volume)
        if volume.shape[0] != self.box:
            raise ShapeError(f"volume box {volume.shape[0]} differs from the projector box "
                             f"{self.box}; resample the volume or the images to one box")
        corrected = self._deapodize(volume)
        padded = fourier.pad_centred(corrected.astype(self.dtype), self.padded_size)
        return fourier.centred_fftn(padded).astype(self.complex_dtype)

    def grid_to_volume_adjoint(self, grid):
        """Transpose of :meth:`volume_to_grid` (real inner product on the grid)."""
        size = self.padded_size
        real = (fourier.centred_ifftn(grid) * float(size) ** 3).real
        return self._deapodize(fourier.crop_centred(real, self.box)).astype(self.dtype)

    def _deapodize(self, volume):
        """Divide a ``(D, D, D)`` volume by the kernel's transfer function (it is diagonal)."""
        d = self._deapodization
        return volume * (d[:, None, None] * d[None, :, None] * d[None, None, :])

    # ----------------------------------------------------------------- slices
    def _arguments(self, rotations, kx, ky, shifts, ctf):
        rotations = np.asarray(rotations, dtype=np.float64)
        rotations, _ = validate_poses(rotations[None] if rotations.ndim == 2 else rotations)
        n = rotations.shape[0]
        rows = np.ascontiguousarray(rotations[:, :2, :] * self.padding)
        shifts = (np.zeros((n, 2)) if shifts is None
                  else np.ascontiguousarray(np.broadcast_to(np.asarray(shifts, np.float64), (n, 2))))
        kx = np.ascontiguousarray(kx, dtype=np.float64)
        ky = np.ascontiguousarray(ky, dtype=np.float64)
        # The kernels read the grid unchecked where a sample's taps lie inside it.
        if not (np.isfinite(kx).all() and np.isfinite(ky).all()):
            raise InvalidDataError("frequencies contain NaN or infinite values")
        if ctf is None:
            ctf = projector_cpu.empty_ctf(self.dtype)
        else:
            ctf = np.ascontiguousarray(np.broadcast_to(np.asarray(ctf, self.dtype), (n, kx.size)))
        return rows, shifts, kx, ky, ctf

    def slices(self, grid, rotations, kx, ky, shifts=None, ctf=None):
        """Central-slice samples at 2-D frequencies ``(kx, ky)`` (cycles per box).

        :param grid: output of :meth:`volume_to_grid`.
        :param rotations: ``(n, 3, 3)``.
        :param kx, ky: ``(m,)`` frequencies, any positions (Cartesian, polar...).
        :param shifts: ``(n, 2)`` particle offsets in pixels, or None.
        :param ctf: ``(n, m)`` real CTF values at the samples, or None.
        :returns: complex ``(n, m)``.
        """
        rows, shifts, kx, ky, ctf = self._arguments(rotations, kx, ky, shifts, ctf)
        out = np.empty((rows.shape[0], kx.size), dtype=self.complex_dtype)
        self._kernels.slice_forward(grid, rows, shifts, kx, ky, ctf, self.box, self.interpolation_id, out)
        return out

    def slices_adjoint(self, values, rotations, kx, ky, shifts=None, ctf=None):
        """Transpose of :meth:`slices`: scatter ``values`` ``(n, m)`` into a new grid."""
        rows, shifts, kx, ky, ctf = self._arguments(rotations, kx, ky, shifts, ctf)
        values = np.ascontiguousarray(values, dtype=self.complex_dtype)
        if values.shape != (rows.shape[0], kx.size):
            raise ShapeError(f"values must have shape {(rows.shape[0], kx.size)}, "
                             f"got {values.shape}")
        size = self.padded_size
        grid = np.zeros((size, size, size), dtype=self.complex_dtype)
        self._kernels.slice_adjoint(values, rows, shifts, kx, ky, ctf, self.box, self.interpolation_id,
                                    grid)
        return grid

    def slice_gradients(self, grid, rotations, kx, ky, shifts=None, ctf=None):
        """Samples and their derivatives with respect to the pose.

        :returns: ``(values (n, m), d_rotation (n, 3, m), d_shift (n, 2, m))``;
            derivatives per radian of image-frame rotation and per pixel.
        """
        rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        rows, shifts, kx, ky, ctf = self._arguments(rotations, kx, ky, shifts, ctf)
        n, m = rows.shape[0], kx.size
        raw = np.empty((n, m), dtype=np.complex128)
        grad = np.empty((n, m, 3), dtype=np.complex128)
        self._kernels.slice_gradient(grid, rows, kx, ky, self.interpolation_id, raw, grad)
        phase = fourier.shift_phase(np.stack([kx, ky], -1), shifts, self.box)
        modulation = phase * (ctf if ctf.shape[0] else 1.0)
        values = raw * modulation
        # g = padding * R^T k~ + centre.  Under R <- expm([w]x) R the sample moves by
        # dg = -padding * R^T (w x k~), so dS/dw_a = -padding * (R grad) . (e_a x k~).
        image_grad = np.einsum("nab,nmb->nma", rotations, grad) * self.padding
        zeros = np.zeros_like(kx)
        cross = np.stack([np.stack([zeros, zeros, ky], -1),
                          np.stack([zeros, zeros, -kx], -1),
                          np.stack([-ky, kx, zeros], -1)])
        d_rotation = -np.einsum("nma,ema->nem", image_grad, cross) * modulation[:, None, :]
        d_shift = (-2j * np.pi / self.box) * np.stack([kx, ky])[None] * values[:, None, :]
        return values, d_rotation, d_shift


class FourierSliceProjector:
    """Projector bound to one volume: forward projection, adjoint and derivatives.

    :param volume: real ``(D, D, D)`` map, indexed ``(z, y, x)``.
    :param padding, interpolation, dtype, backend, radius: see :class:`SliceOperator`.
    """

    def __init__(self, volume, padding=2, interpolation="cubic", dtype=np.float32, backend="auto",
                 radius=None):
        volume = validate_volume(volume)
        self.operator = SliceOperator(volume.shape[0], padding, interpolation, dtype, backend, radius)
        self.grid = self.operator.volume_to_grid(volume)

    @property
    def box(self):
        return self.operator.box

    @property
    def half_plane(self):
        return self.operator.half_plane

    def project_fourier(self, rotations, shifts=None, ctf=None):
        """Half-plane spectra ``(n, half_plane.size)`` of the projections.

        ``ctf`` holds CTF values at ``half_plane.kx, half_plane.ky``, shape
        ``(n, half_plane.size)``.
        """
        hp = self.half_plane
        return self.operator.slices(self.grid, rotations, hp.kx, hp.ky, shifts, ctf)

    def project(self, rotations, shifts=None, ctf=None):
        """Real projections ``(n, D, D)`` (see :meth:`project_fourier` for ``ctf``)."""
        spectra = self.project_fourier(rotations, shifts, ctf)
        return self.half_plane.synthesize(spectra).astype(self.operator.dtype, copy=False)

    def project_polar(self, rotations, radii, n_angles, shifts=None, ctf=None):
        """Slices on a polar grid: ``(n, len(radii), n_angles)`` complex.

        Sample ``(r, q)`` lies at frequency ``radii[r] * (cos, sin)(2 pi q / n_angles)``
        in cycles per box; ``ctf`` is ``(n, len(radii) * n_angles)`` or None.
        """
        radii = np.asarray(radii, dtype=np.float64)
        angles = 2 * np.pi * np.arange(n_angles) / n_angles
        kx = (radii[:, None] * np.cos(angles)[None]).ravel()
        ky = (radii[:, None] * np.sin(angles)[None]).ravel()
        values = self.operator.slices(self.grid, rotations, kx, ky, shifts, ctf)
        return values.reshape(values.shape[0], radii.size, n_angles)

    def backproject(self, images, rotations, shifts=None, ctf=None):
        """Exact adjoint of :meth:`project` with respect to the volume.

        The gradient of a loss ``L(project(v))`` with respect to ``v`` is
        ``backproject(dL/dimages)``.  Returns a real ``(D, D, D)`` volume.
        """
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.shape[1:] != (self.box, self.box):
            raise ShapeError(f"images must be (n, {self.box}, {self.box}), got {images.shape}")
        hp = self.half_plane
        values = hp.analyze(images.astype(self.operator.dtype))
        grid = self.operator.slices_adjoint(values, rotations, hp.kx, hp.ky, shifts, ctf)
        return self.operator.grid_to_volume_adjoint(grid)

    def pose_derivatives(self, rotations, shifts=None, ctf=None, domain="real"):
        """Projections and their derivatives with respect to rotation and shift.

        :param domain: ``"real"``: images ``(n, D, D)``; ``"fourier"``: their spectra
            on the half plane ``(n, m)`` (what a likelihood on the half plane needs).
        :returns: :class:`PoseDerivatives`.
        """
        if domain not in ("real", "fourier"):
            raise ValueError(f"domain must be 'real' or 'fourier', got {domain!r}")
        hp = self.half_plane
        values, d_rotation, d_shift = self.operator.slice_gradients(
            self.grid, rotations, hp.kx, hp.ky, shifts, ctf)
        if domain == "fourier":
            return PoseDerivatives(values, d_rotation, d_shift)
        return PoseDerivatives(hp.synthesize(values), hp.synthesize(d_rotation),
                               hp.synthesize(d_shift))
