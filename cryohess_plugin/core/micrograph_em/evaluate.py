"""Comparing an estimate with a reference: the best rotation and reflection, then the FSC.

``docs/methods/micrograph_em.md`` §9.  The method determines the volume up to a rotation
and a reflection (the paper's §II).  The search maximises the correlation of the
coefficient vectors (the basis is nearly orthonormal on the voxel grid, so this is the
correlation of the volumes) over a quaternion grid, both handednesses, then refines the
best rotation locally; the FSC is then computed on the voxel volumes.
"""
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from .. import fourier
from ..rotations import so3_exp
from .projection import quaternion_grid

#: A map's display surface lies this many standard deviations above its mean.
SURFACE_SIGMAS = 2.0


@dataclass
class Alignment:
    """The estimate moved onto the reference: its coefficients, rotation, whether it was
    mirrored, the correlation and the FSC per shell ``0 .. L // 2``."""
    coefficients: np.ndarray
    rotation: np.ndarray
    reflected: bool
    correlation: float
    fsc: np.ndarray


def _correlation(a, b):
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def align_coefficients(basis, reference, estimate, resolution=25):
    """:class:`Alignment` of ``estimate`` onto ``reference`` (both coefficients of ``basis``)."""
    reference = np.asarray(reference, dtype=np.float64)
    best = (-np.inf, None, None)
    grid = quaternion_grid(resolution)
    for reflected in (False, True):
        candidate = basis.reflect(estimate) if reflected else np.asarray(estimate, np.float64)
        for rotation in grid:
            score = _correlation(basis.rotate(candidate, rotation), reference)
            if score > best[0]:
                best = (score, rotation, reflected)
    _, rotation, reflected = best
    candidate = basis.reflect(estimate) if reflected else np.asarray(estimate, np.float64)

    def loss(vector):
        return -_correlation(basis.rotate(candidate, so3_exp(vector) @ rotation), reference)

    refined = scipy.optimize.minimize(loss, np.zeros(3), method="Nelder-Mead",
                                      options={"xatol": 1e-4, "fatol": 1e-8})
    rotation = so3_exp(refined.x) @ rotation
    aligned = basis.rotate(candidate, rotation)
    fsc = fourier.fourier_shell_correlation(basis.to_volume(reference), basis.to_volume(aligned))
    return Alignment(aligned, rotation, reflected, _correlation(aligned, reference), fsc)


def resample_volume(volume, pixel_size, box, working_pixel):
    """A map of ``pixel_size`` Å resampled to ``box³`` voxels of ``working_pixel`` Å about
    its centre (Fourier crop or pad to the new pixel size, then a centred crop or pad),
    to compare it with an estimate (e.g. a reference chosen in the viewer)."""
    volume = np.asarray(volume, dtype=np.float64)
    size = volume.shape[0]
    resized = max(1, int(round(size * pixel_size / working_pixel)))
    spectrum = fourier.centred_fftn(volume)
    if resized < size:
        spectrum = fourier.crop_centred(spectrum, resized)
    else:
        spectrum = fourier.pad_centred(spectrum, resized)
    image = fourier.centred_ifftn(spectrum).real * (resized / size) ** 3
    if resized >= box:
        return fourier.crop_centred(image, box)
    return fourier.pad_centred(image, box)


def pairwise_fsc(basis, estimates, resolution=25):
    """The minimum over shells ``1 .. L // 2 - 1`` of the FSC of every aligned pair:
    ``(starts, starts)`` (diagonal 1)."""
    count = len(estimates)
    out = np.ones((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            fsc = align_coefficients(basis, estimates[i], estimates[j], resolution).fsc
            out[i, j] = out[j, i] = float(np.min(fsc[1:basis.box // 2]))
    return out


def surface_level(volume, sigmas=SURFACE_SIGMAS):
    """Contour level that shows the particle of ``volume`` (the level of its ChimeraX
    surface): ``sigmas`` standard deviations above the mean of the map, so the solvent's
    fluctuations stay below it."""
    volume = np.asarray(volume, dtype=np.float64)
    return float(volume.mean() + sigmas * volume.std())
