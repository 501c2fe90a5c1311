"""Brute-force rotational alignment in real space: the slow, independent reference.

Every template is rotated and shifted pixel by pixel and correlated with every
image; nothing here uses the Fourier or polar machinery it serves to check
(:mod:`.polar`), and nothing is meant to be fast: the cost is one
interpolation of the whole template per (template, angle, shift).

Geometry (the core's, see ``docs/conventions.md``): images are ``(y, x)``
arrays with the origin at index ``D // 2``; a point ``x = (x, y)`` is
(column, row) measured from there.  A template ``B`` in pose ``(gamma, t)``
is

    B_{gamma, t}(x) = B(R_{-gamma} (x - t)),   R_gamma = [[cos, -sin], [sin, cos]],

i.e. rotated counter-clockwise by ``gamma`` (radians) about the centre in
the (x, y) plane, so that the +x axis turns towards +y, then moved by
``t = (tx, ty)`` pixels (the particle-centre offset of the core's shifts).
Scores are raw inner products ``sum_x A(x) B_{gamma, t}(x)``, whose argmax is
the maximum-likelihood pose under white Gaussian noise.  With CTFs, each
image's CTF multiplies every posed template, ``C_i (B_{gamma, t})``: the
per-particle 2-D CTF, fixed in the image frame (:func:`.ctf.apply_ctf`).

Interpolation is SciPy's cubic B-spline (``order=3``) with zeros outside the
box: it is independent of the Keys-kernel Fourier interpolation under test,
and for images that are smooth on the pixel scale (band-limited well inside
Nyquist) its error is far below the 1 % the comparisons need.  An exact
Fourier rotation would be exact only for periodic images and costs
``O(D^4)`` per angle.
"""
from dataclasses import dataclass

import numpy as np
import scipy.ndimage

from ..ctf import apply_ctf
from ..errors import InvalidDataError, ShapeError

_MODE = "grid-constant"


@dataclass(frozen=True)
class BruteForceAlignment:
    """Best pose of every image over all templates, angles and shifts.

    ``template`` ``(n,)`` int index, ``angle`` ``(n,)`` radians, ``shift``
    ``(n, 2)`` pixels ``(tx, ty)``, ``score`` ``(n,)`` the inner product.
    """
    template: np.ndarray
    angle: np.ndarray
    shift: np.ndarray
    score: np.ndarray


def rotate_and_shift(image, angle, shift=(0.0, 0.0)):
    """``B(R_{-angle} (x - shift))`` of one ``(D, D)`` image: rotate by ``angle``, then move."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ShapeError(f"image must be one (D, D) array, got shape {image.shape}")
    image = _validate_stack(image[None], "image")[0]
    coefficients = scipy.ndimage.spline_filter(image, order=3, mode=_MODE)
    return _transform(coefficients, angle, np.asarray(shift, dtype=np.float64))


def rotated_inner_products(images, templates, angles, shifts=None, ctf_params=None,
                           pixel_size=None, normalized=False):
    """Inner products of every image with every rotated (and shifted) template.

    :param images: real ``(nA, D, D)``.
    :param templates: real ``(nB, D, D)``.
    :param angles: ``(n_angles,)`` rotation angles in radians.
    :param shifts: ``(n_shifts, 2)`` offsets ``(tx, ty)`` in pixels, or None.
    :param ctf_params: None, or one :class:`.ctf.CTFParams` per image that
        multiplies every posed template before the product (with ``pixel_size`` Å).
    :param normalized: divide each product by the norm of its (CTF-multiplied)
        posed template.
    :returns: float64 ``(nA, nB, n_angles)``, or ``(nA, nB, n_angles, n_shifts)``
        with shifts: ``sum_x A(x) B_{gamma, t}(x)``.
    """
    images, templates, angles, shift_list = _validate(images, templates, angles, shifts)
    if ctf_params is not None and len(ctf_params) != len(images):
        raise ShapeError(f"{len(ctf_params)} CTFs for {len(images)} images; give one per image")
    scores = np.stack([_template_scores(images, template, angles, shift_list, ctf_params,
                                        pixel_size, normalized)
                       for template in templates], axis=1)
    return scores if shifts is not None else scores[..., 0]


def brute_force_align(images, templates, angles, shifts=None, template_weights=None):
    """Best (template, angle, shift) of every image by exhaustive real-space search.

    Arguments as :func:`rotated_inner_products` (``shifts=None`` searches the
    zero shift only).  Raw inner products favour templates of large norm, so
    ``template_weights`` ``(nB,)`` may scale each template's scores before
    they are compared, e.g. ``1 / ||B||`` for normalised correlation; the
    returned score is the scaled one.  Templates are visited one at a time,
    so memory stays ``O(nA * n_angles * n_shifts)``.  Ties go to the first
    template, angle and shift in input order.
    """
    images, templates, angles, shift_list = _validate(images, templates, angles, shifts)
    weights = (np.ones(len(templates)) if template_weights is None
               else np.asarray(template_weights, dtype=np.float64))
    if weights.shape != (len(templates),):
        raise ShapeError(f"template_weights must have shape ({len(templates)},), "
                         f"got {weights.shape}")
    n = images.shape[0]
    best = np.full(n, -np.inf)
    best_template = np.zeros(n, dtype=np.int64)
    best_angle = np.zeros(n, dtype=np.int64)
    best_shift = np.zeros(n, dtype=np.int64)
    for index, template in enumerate(templates):
        scores = _template_scores(images, template, angles, shift_list)
        flat = weights[index] * scores.reshape(n, -1)
        arg = flat.argmax(axis=1)
        value = flat[np.arange(n), arg]
        better = value > best
        best[better] = value[better]
        best_template[better] = index
        best_angle[better], best_shift[better] = np.divmod(arg[better], len(shift_list))
    return BruteForceAlignment(best_template, angles[best_angle], shift_list[best_shift], best)


def _template_scores(images, template, angles, shifts, ctf_params=None, pixel_size=None,
                     normalized=False):
    """``(nA, n_angles, n_shifts)`` inner products of ``images`` with one template's poses."""
    coefficients = scipy.ndimage.spline_filter(template, order=3, mode=_MODE)
    posed = np.stack([_transform(coefficients, angle, shift)
                      for angle in angles for shift in shifts])
    flat_images = images.reshape(images.shape[0], -1)
    if ctf_params is None:
        scores = _products(flat_images, posed.reshape(posed.shape[0], -1), normalized)
    else:
        scores = np.empty((images.shape[0], posed.shape[0]))
        distinct = {}
        for i, params in enumerate(ctf_params):
            distinct.setdefault(params, []).append(i)
        for params, members in distinct.items():
            filtered = apply_ctf(posed, params, pixel_size).reshape(posed.shape[0], -1)
            scores[members] = _products(flat_images[members], filtered, normalized)
    return scores.reshape(images.shape[0], len(angles), len(shifts))


def _products(flat_images, flat_posed, normalized):
    """``(n, poses)`` products of image rows with posed templates, over their norms if
    ``normalized`` (0 for an empty template)."""
    scores = flat_images @ flat_posed.T
    if normalized:
        norms = np.linalg.norm(flat_posed, axis=1)
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    return scores


def _transform(coefficients, angle, shift):
    """Evaluate the spline ``coefficients`` at ``R_{-angle} (x - shift)`` on the pixel grid."""
    box = coefficients.shape[0]
    centre = np.full(2, float(box // 2))
    c, s = np.cos(angle), np.sin(angle)
    # affine_transform maps output index o to input index M o + offset in
    # (y, x) order; with u = o - centre - t this is R_{-angle} u written for (y, x).
    matrix = np.array([[c, -s], [s, c]])
    offset = centre - matrix @ (centre + shift[::-1])
    return scipy.ndimage.affine_transform(coefficients, matrix, offset, order=3, mode=_MODE,
                                          prefilter=False)


def _validate_stack(stack, name):
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ShapeError(f"{name} must be a stack of square images (n, D, D), got {stack.shape}")
    if stack.dtype.kind not in "fiu":
        raise InvalidDataError(f"{name} must be real numbers, got dtype {stack.dtype}")
    if not np.isfinite(stack).all():
        raise InvalidDataError(f"{name} contain NaN or infinite pixels; fix them first")
    return stack.astype(np.float64, copy=False)


def _validate(images, templates, angles, shifts):
    images = _validate_stack(np.asarray(images), "images")
    templates = _validate_stack(np.asarray(templates), "templates")
    if images.shape[1:] != templates.shape[1:]:
        raise ShapeError(f"images {images.shape[1:]} and templates {templates.shape[1:]} differ "
                         "in box; resample one of them")
    angles = np.atleast_1d(np.asarray(angles, dtype=np.float64))
    if angles.ndim != 1:
        raise ShapeError(f"angles must be one-dimensional, got shape {angles.shape}")
    shift_list = np.zeros((1, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    if shift_list.ndim != 2 or shift_list.shape[1] != 2:
        raise ShapeError(f"shifts must have shape (n_shifts, 2), got {shift_list.shape}")
    return images, templates, angles, shift_list
