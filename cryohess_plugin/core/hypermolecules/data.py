"""Particles as the sampler sees them: half-plane spectra inside the band, CTFs and noise.

Likelihood (docs/methods/hyper_molecules.md §3): the transform of particle ``i`` at
frequency ``k`` of the half plane ``H`` (:class:`..fourier.HalfPlane`, DC left out) is

    Y_i(k) = a_i CTF_i(k) exp(-2πi k·t_i / D) V̂(R_iᵀ k, τ_i) + N_i(k),
    E|N_i(k)|² = σ²(|k|)

with complex Gaussian noise of per-shell power ``σ²`` (:func:`..noise.shell_noise_power`;
``D² s²`` for white noise of per-pixel variance ``s²``).  Each half-plane point stands for
itself and its mirror, so the log-likelihood is ``-Σ_{k∈H} |Y - model|² / σ²(|k|)`` up to a
constant: at the truth its expectation is minus the number of points (the χ² check).
"""
from dataclasses import dataclass

import numpy as np

from .. import fourier
from ..ctf import ctf_stack
from ..errors import InvalidDataError, MissingMetadataError, ShapeError
from ..rotations import validate_poses
from ..storage import StoredFields

#: Particles transformed at once while preparing the data.
_BATCH = 1024


@dataclass
class ParticleData(StoredFields):
    """The particles inside the band, in the form the likelihood uses.

    :param spectra: ``(n, m)`` complex64 half-plane transforms at ``0 < |k| < band``.
    :param kx, ky: ``(m,)`` frequencies in cycles per box.
    :param ctf: ``(n, m)`` float32 CTF values (Scipion's sign).
    :param box: particle box ``D``.  :param pixel_size: Å per pixel.
    :param band: the highest frequency kept (cycles per box).
    :param rotations: ``(n, 3, 3)`` starting rotations.  :param shifts: ``(n, 2)`` starting
        core shifts ``t`` in pixels.
    """
    spectra: np.ndarray
    kx: np.ndarray
    ky: np.ndarray
    ctf: np.ndarray
    box: int
    pixel_size: float
    band: float
    rotations: np.ndarray
    shifts: np.ndarray

    @property
    def count(self):
        return self.spectra.shape[0]

    def shells(self):
        """Integer shell ``round(|k|)`` of every point."""
        return np.rint(np.hypot(self.kx, self.ky)).astype(np.int64)

    def inside(self, band):
        """Mask of the points with ``|k| < band``."""
        return np.hypot(self.kx, self.ky) < band


def prepare_particles(images, ctf_params, pixel_size, band, rotations, shifts=None):
    """Half-plane spectra, CTFs and starting poses of a particle stack.

    :param images: ``(n, D, D)`` array or memory map of white particles.
    :param ctf_params: ``n`` :class:`..ctf.CTFParams` (required: the likelihood needs them).
    :param band: highest frequency in cycles per box, ``(0, D / 2]``.
    :param rotations: ``(n, 3, 3)``.  :param shifts: ``(n, 2)`` or None.
    :returns: :class:`ParticleData`.
    """
    n = len(images)
    if n == 0 or np.ndim(images) != 3 or np.shape(images)[1] != np.shape(images)[2]:
        raise ShapeError(f"particles must be a non-empty (n, D, D) stack, got {np.shape(images)}")
    box = int(np.shape(images)[1])
    if ctf_params is None:
        raise MissingMetadataError("the particles have no CTF; estimate the CTF of their "
                                   "micrographs (and re-extract) before sampling a hyper-molecule")
    if len(ctf_params) != n:
        raise ShapeError(f"{len(ctf_params)} CTFs for {n} particles; give one CTF per particle")
    fourier.validate_band(box, band)
    rotations, shifts = validate_poses(rotations, shifts, count=n)
    plane = fourier.HalfPlane.disc(box, band)
    keep = (plane.kx != 0) | (plane.ky != 0)
    kx, ky = plane.kx[keep], plane.ky[keep]
    spectra = np.empty((n, kx.size), dtype=np.complex64)
    for start in range(0, n, _BATCH):
        block = np.asarray(images[start:start + _BATCH], dtype=np.float64)
        if not np.isfinite(block).all():
            raise InvalidDataError("particles contain NaN or infinite pixels; remove them first")
        spectra[start:start + block.shape[0]] = plane.transform(block)[:, keep]
    ctf = ctf_stack(list(ctf_params), kx, ky, box, pixel_size, dtype=np.float32)
    return ParticleData(spectra, kx, ky, ctf, box, float(pixel_size), float(band),
                        rotations, shifts)


def shell_precision(noise_power, shells):
    """``1 / σ²`` of every point from per-shell noise power (shells without data: mean)."""
    power = np.asarray(noise_power, dtype=np.float64)
    fill = np.nanmean(power)
    power = np.where(np.isfinite(power) & (power > 0), power, fill)
    return (1.0 / power[shells]).astype(np.float32)

