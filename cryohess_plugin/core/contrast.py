"""Polarity and scale of particles against a map: the check at the data boundary.

Particles come from other programs on their own scale and, if extracted without
inverting the contrast, with the wrong sign (see ``docs/conventions.md``,
"Contrast").  Every method that compares particles with a map first fits, per
defocus group, the amplitude ``a_g`` of the model ``X_j ≈ a_g C_j P(R_j, t_j) V``
by least squares over the Fourier band (the DC term excluded: extraction
normalises each particle's mean):

    a_g = Σ_{j∈g} Re <P_j, X_j> / Σ_{j∈g} |P_j|²

with the residual noise power ``σ²`` per complex coefficient estimated from
``Σ |X_j − a_g P_j|²``, so that ``a_g`` has the standard error
``sqrt(σ² / (2 Σ |P_j|²))``.  The overall amplitude and its z-score decide:
a significant negative amplitude means dark particles (:class:`PolarityError`);
an amplitude within noise of zero means the particles do not show this map
(:class:`AmplitudeFitError`).  The fitted amplitude puts the map on the
particles' scale where a method needs both on one scale.

For particles without poses :func:`polarity_from_scores` compares best alignment
scores of the images as given and negated.

Without a map to compare with, a map reconstructed from the particles shows their
polarity itself: protein is denser than the solvent, so the low-resolution density of a
centred map is higher in its middle than at the edges of the box.  :class:`MapPolarity`
holds that contrast, the mean density in the ball ``r < D/4`` minus the mean beyond
``r > 0.45 D`` (:func:`solvent_contrast_weights`), with its standard error.  It assumes a
centred particle whose middle is not mostly solvent (a hollow shell such as a capsid
with an empty interior could read as dark).
"""
from dataclasses import dataclass

import numpy as np

from .ctf import ctf_stack
from .errors import InvalidDataError, ShapeError
from .fourier import radius_grid
from .projector import FourierSliceProjector, validate_volume
from .rotations import validate_poses

#: z-score an amplitude or polarity must reach to be trusted.
SIGNIFICANCE = 5.0

#: Particles projected per batch (bounds the memory of the spectra).
_BATCH = 256

#: The particle's middle and the solvent of a centred map, as fractions of the box: the
#: ball ``r < D/4`` and the region ``r > 0.45 D`` (the box's corners included).
PARTICLE_RADIUS, SOLVENT_RADIUS = 0.25, 0.45

_FIX_DARK = ("invert their contrast (e.g. with 'xmipp3 - preprocess particles', option "
             "'Invert contrast', or RELION's 'Invert contrast' at extraction) and run again")


class PolarityError(InvalidDataError):
    """The particles are dark against the map (contrast not inverted at extraction)."""


class AmplitudeFitError(InvalidDataError):
    """The particles do not show the map: the fitted amplitude is within noise of zero."""


@dataclass(frozen=True)
class AmplitudeFit:
    """Least-squares amplitude of particles against CTF-modulated projections of a map.

    :param groups: ``(G,)`` labels of the defocus groups, in the order of the arrays.
    :param amplitude: ``(G,)`` fitted ``a_g``.
    :param standard_error: ``(G,)`` standard error of ``a_g``.
    :param counts: ``(G,)`` particles per group.
    :param amplitude_all: the amplitude fitted to every particle at once.
    :param standard_error_all: its standard error.
    :param noise_power: residual power ``σ²`` per complex Fourier coefficient.
    """
    groups: np.ndarray
    amplitude: np.ndarray
    standard_error: np.ndarray
    counts: np.ndarray
    amplitude_all: float
    standard_error_all: float
    noise_power: float

    @property
    def z_score(self):
        """Overall amplitude in units of its standard error."""
        return self.amplitude_all / self.standard_error_all

    def check(self, what="particles"):
        """The fit, or :class:`PolarityError` / :class:`AmplitudeFitError` naming the fix."""
        if self.z_score <= -SIGNIFICANCE:
            raise PolarityError(
                f"the {what} look dark against this map (fitted amplitude "
                f"{self.amplitude_all:.3g} ± {self.standard_error_all:.2g}, negative in "
                f"{np.count_nonzero(self.amplitude < 0)} of {self.amplitude.size} defocus "
                f"groups): {_FIX_DARK}")
        if self.z_score < SIGNIFICANCE:
            raise AmplitudeFitError(
                f"the {what} do not show this map: their fitted amplitude "
                f"{self.amplitude_all:.3g} ± {self.standard_error_all:.2g} is within noise of "
                f"zero; check that the map, the poses and the pixel size belong to these "
                f"particles")
        return self


def fit_amplitude(volume, images, rotations, shifts, ctf_params, pixel_size, groups=None,
                  max_frequency=None, backend="auto"):
    """Fit the particles' amplitude against the map's projections per defocus group.

    :param volume: ``(D, D, D)`` map.
    :param images: ``(n, D, D)`` particles (an array or a memory map).
    :param rotations: ``(n, 3, 3)``.  :param shifts: ``(n, 2)`` core shifts in pixels, or None.
    :param ctf_params: ``n`` :class:`.ctf.CTFParams`, or None for images without CTF.
    :param pixel_size: Å.
    :param groups: ``(n,)`` defocus-group label of each particle (default: one group).
    :param max_frequency: band in cycles per box (default Nyquist).
    :returns: :class:`AmplitudeFit`.
    """
    volume = validate_volume(volume)
    box = volume.shape[0]
    n = len(images)
    if n == 0 or np.shape(images)[1:] != (box, box):
        raise ShapeError(f"images must be a non-empty (n, {box}, {box}) stack matching the "
                         f"map, got {np.shape(images)}; resample the particles or the map")
    rotations, shifts = validate_poses(rotations, shifts, count=n)
    if ctf_params is not None and len(ctf_params) != n:
        raise ShapeError(f"{len(ctf_params)} CTFs for {n} images; give one CTF per image")
    groups = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise ShapeError(f"groups must have shape ({n},), got {groups.shape}")
    projector = FourierSliceProjector(volume, dtype=np.float64, backend=backend)
    plane = projector.half_plane
    radius = np.hypot(plane.kx, plane.ky)
    band = (radius > 0) & (radius <= (box / 2 if max_frequency is None else max_frequency))
    cross, power, energy = np.empty(n), np.empty(n), np.empty(n)
    for start in range(0, n, _BATCH):
        where = slice(start, min(start + _BATCH, n))
        ctf = (None if ctf_params is None else
               ctf_stack(list(ctf_params[where]), plane.kx, plane.ky, box, pixel_size))
        model = projector.project_fourier(rotations[where], shifts[where], ctf)[:, band]
        data = plane.transform(np.asarray(images[where], dtype=np.float64))[:, band]
        if not np.isfinite(data).all():
            raise InvalidDataError("images contain NaN or infinite values; remove those particles")
        cross[where] = np.einsum("nm,nm->n", model.conj(), data).real
        power[where] = np.einsum("nm,nm->n", model.conj(), model).real
        energy[where] = np.einsum("nm,nm->n", data.conj(), data).real
    labels, index = np.unique(groups, return_inverse=True)
    group_cross = np.bincount(index, cross)
    group_power = np.bincount(index, power)
    if not np.all(group_power > 0):
        raise InvalidDataError("the map projects to zero in this band; check the map and the "
                               "resolution")
    amplitude = group_cross / group_power
    residual = energy.sum() - np.sum(amplitude * group_cross)
    dof = max(n * int(band.sum()) - labels.size, 1)
    noise_power = max(residual, 0.0) / dof
    amplitude_all = cross.sum() / power.sum()
    return AmplitudeFit(labels, amplitude, np.sqrt(noise_power / (2 * group_power)),
                        np.bincount(index), float(amplitude_all),
                        float(np.sqrt(noise_power / (2 * power.sum()))), float(noise_power))


@dataclass(frozen=True)
class PolarityTest:
    """Best alignment scores of particles as given against the same particles negated.

    :param difference: mean of ``score − negated score`` over the particles.
    :param standard_error: its standard error.
    """
    difference: float
    standard_error: float

    @property
    def z_score(self):
        return self.difference / max(self.standard_error, np.finfo(float).tiny)

    def check(self, what="particles"):
        """The test, or :class:`PolarityError` when the negated particles match better."""
        if self.z_score <= -SIGNIFICANCE:
            raise PolarityError(
                f"the {what} look dark against these references (the negated images match "
                f"them better, z = {self.z_score:.1f}): {_FIX_DARK}")
        return self


def polarity_from_scores(scores, negated_scores):
    """:class:`PolarityTest` of the best scores ``(n,)`` of images and of their negatives.

    Alignment maximises a correlation, so a search finds a positive best score for
    dark particles too; only the comparison with the negated images tells the sign.
    """
    scores, negated_scores = np.asarray(scores, np.float64), np.asarray(negated_scores,
                                                                         np.float64)
    if scores.shape != negated_scores.shape or scores.ndim != 1 or scores.size < 2:
        raise ShapeError(f"need two equal (n,) score arrays with n >= 2, got {scores.shape} "
                         f"and {negated_scores.shape}")
    difference = scores - negated_scores
    return PolarityTest(float(difference.mean()),
                        float(difference.std(ddof=1) / np.sqrt(difference.size)))


def solvent_contrast_weights(box):
    """Real-space weights ``f`` of the contrast of a centred ``box``-wide map against the
    solvent, ``sum f * map``: the mean inside the ball ``r < PARTICLE_RADIUS * D`` minus the
    mean beyond ``r > SOLVENT_RADIUS * D``."""
    radius = radius_grid((box,) * 3)
    inside, solvent = radius < PARTICLE_RADIUS * box, radius > SOLVENT_RADIUS * box
    return inside / inside.sum() - solvent / solvent.sum()


@dataclass(frozen=True)
class MapPolarity:
    """Contrast of a map against its solvent (:func:`solvent_contrast_weights`).

    :param contrast: mean density of the particle's middle minus that of the solvent;
        positive for white particles.
    :param standard_error: its standard error (e.g. under a posterior over the map).
    """
    contrast: float
    standard_error: float

    @property
    def z_score(self):
        return self.contrast / max(self.standard_error, np.finfo(float).tiny)

    @property
    def significant(self):
        """Whether the sign of the contrast is beyond noise."""
        return abs(self.z_score) >= SIGNIFICANCE

    def check(self, what="particles"):
        """The contrast, or :class:`PolarityError` when the map is significantly darker in
        its middle than in its solvent."""
        if self.z_score <= -SIGNIFICANCE:
            raise PolarityError(
                f"the {what} are dark: the map reconstructed from them is darker in its "
                f"middle than in its solvent (contrast {self.contrast:.3g} ± "
                f"{self.standard_error:.2g}, z = {self.z_score:.1f}); {_FIX_DARK}")
        return self

    def warning(self, what="particles"):
        """A warning when the contrast cannot tell the polarity, else None."""
        if self.significant:
            return None
        return (f"The polarity of the {what} could not be checked: the map's contrast against "
                f"its solvent, {self.contrast:.3g} ± {self.standard_error:.2g} (z = "
                f"{self.z_score:.1f}), is within noise. If the map looks dark (protein darker "
                f"than the solvent), {_FIX_DARK}.")
