"""The bases of a hyper-molecule: states (cosine series in τ) and space (band-limited voxels).

State basis (docs/methods/hyper_molecules.md §2): for ``τ ∈ [0, 1]^d`` the tensor products
of the non-periodic cosine series ``P_0 = 1``, ``P_j(τ) = √2 cos(π j τ)``, ``j < order``,
orthonormal on the unit cube.  It does not tie ``τ = 0`` to ``τ = 1`` (a periodic series
would), and ``∫ |∂_τ P_j|² dτ = (π j)²`` gives the smoothness prior its weights.

Spatial basis (§2): the voxels of a *working box* of ``w`` voxels spanning the particle
box, whose Nyquist frequency ``w / 2`` is just above the band: band-limited samples of the
map (sinc interpolants), related to the Fourier-voxel basis by the DFT, times a real-space
mask for compact support.  A map of the full box comes back by Fourier zero-padding.
"""
import itertools
import math

import numpy as np
import scipy.fft

from .. import fourier
from ..errors import InvalidDataError, ShapeError

#: Largest state dimension the sampler supports (the tensor basis grows as order^d).
MAX_STATE_DIMENSION = 3


class StateBasis:
    """Tensor-product cosine series on ``[0, 1]^dimension`` with ``order`` terms per axis.

    :param dimension: ``d`` in 0..3 (0: a rigid component, one constant function).
    :param order: terms per axis ``Q >= 1``; the basis has ``Q^d`` functions.
    """

    def __init__(self, dimension, order):
        dimension, order = int(dimension), int(order)
        if not 0 <= dimension <= MAX_STATE_DIMENSION:
            raise InvalidDataError(f"the state dimension must be 0 to {MAX_STATE_DIMENSION}, "
                                   f"got {dimension}; describe more motions with more "
                                   "components instead")
        if order < 1:
            raise InvalidDataError(f"the state basis order must be at least 1, got {order}")
        self.dimension, self.order = dimension, order
        combinations = list(itertools.product(range(order), repeat=dimension))
        self.indices = np.array(combinations, dtype=np.int64).reshape(len(combinations),
                                                                      dimension)

    @property
    def size(self):
        return self.indices.shape[0]

    def values(self, tau):
        """``(n, size)`` values ``P_q(τ_i)`` for ``tau`` ``(n, d)``."""
        tau = np.asarray(tau, dtype=np.float64).reshape(-1, self.dimension)
        out = np.ones((tau.shape[0], self.size))
        for axis in range(self.dimension):
            j = self.indices[:, axis]
            factor = np.where(j == 0, 1.0, math.sqrt(2.0) * np.cos(np.pi * j * tau[:, axis, None]))
            out *= factor
        return out

    def roughness(self):
        """``∫ |∇_τ P_q|² dτ = Σ_axes (π j)²`` of every function (0 for the constant)."""
        return (np.pi ** 2) * np.sum(self.indices ** 2, axis=1).astype(np.float64)

    def reversal_signs(self):
        """Signs ``s_q`` with ``P_q(1 - τ) = s_q P_q(τ)`` (every axis reversed)."""
        return (-1.0) ** np.sum(self.indices, axis=1)


def reflect_unit(values):
    """Fold values onto ``[0, 1]`` by reflection at both ends (a symmetric proposal)."""
    folded = np.mod(values, 2.0)
    return np.where(folded > 1.0, 2.0 - folded, folded)


def working_box(band):
    """Even working box whose Nyquist frequency exceeds ``band`` (cycles per box) by >= 1."""
    return 2 * (int(math.floor(band)) + 2)


def fourier_resample(volume, size):
    """Band-limited resampling of a real cubic volume to ``size`` voxels per edge.

    Both grids span the same box; the centred transform is cropped or zero-padded and
    scaled so that the voxel values are samples of the same band-limited function.
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ShapeError(f"expected a cubic volume, got shape {volume.shape}")
    old = volume.shape[0]
    if old == size:
        return volume.copy()
    spectrum = fourier.centred_fftn(volume)
    if size < old:
        spectrum = fourier.crop_centred(spectrum, size)
    else:
        spectrum = fourier.pad_centred(spectrum, size)
    # Non-unitary transforms of samples scale as the voxel count per unit volume.
    return fourier.centred_ifftn(spectrum).real * (size / old) ** 3


def radial_frequencies(size):
    """``|k|`` in cycles per box on the ``rfftn`` layout of a ``size^3`` real volume."""
    full = scipy.fft.fftfreq(size) * size
    half = scipy.fft.rfftfreq(size) * size
    return np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + half[None, None, :] ** 2)


def band_limit(size, band):
    """The multiplier (on the :func:`radial_frequencies` layout) keeping ``|k| <= band``."""
    return (radial_frequencies(size) <= band).astype(np.float64)


def radial_filter(volumes, multiplier):
    """Multiply the spectra of real volumes ``(..., w, w, w)`` by a real, even multiplier.

    :param multiplier: values on the :func:`radial_frequencies` layout.  A real, even
        multiplier is symmetric positive (semi-)definite on real volumes when it is
        non-negative, and commutes with the centring shift, so no shift copies are made.
    """
    volumes = np.asarray(volumes, dtype=np.float64)
    size = volumes.shape[-1]
    axes = (-3, -2, -1)
    spectrum = scipy.fft.rfftn(volumes, axes=axes, workers=fourier.fft_workers()) * multiplier
    return scipy.fft.irfftn(spectrum, s=(size,) * 3, axes=axes, workers=fourier.fft_workers())


def soft_ball(size, radius, centre=None, edge=2.0):
    """A ball mask of ``radius`` voxels with a raised-cosine edge of ``edge`` voxels.

    :param centre: ``(x, y, z)`` offset of the ball's centre from the box centre (voxels).
    """
    offsets = [fourier.frequencies(size).astype(np.float64)] * 3
    z, y, x = np.meshgrid(*offsets, indexing="ij")
    cx, cy, cz = (0.0, 0.0, 0.0) if centre is None else centre
    distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
    ramp = np.clip((distance - radius) / max(edge, 1e-9), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * ramp))
