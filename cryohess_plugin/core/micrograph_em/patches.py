"""Patches of micrographs and the shift states of the patch model.

``docs/methods/micrograph_em.md`` §4.  Micrographs are cut into non-overlapping ``L × L``
patches from their top-left corner (what does not fill a whole patch at the right and
bottom edges is left out).  A patch holds nothing or one projection ``P`` (``L × L``) seen
through a shift ``(sy, sx)``, ``0 <= sy, sx < 2L``: patch pixel ``(i, j)`` shows
``P[(i + sy) mod 2L, (j + sx) mod 2L]`` where that index is below ``L`` and zero
elsewhere (the paper's ``C T Z``, Eq. (18), with ``(sy, sx)`` in (row, column) order).
Every shift with ``sy = L`` or ``sx = L`` shows nothing: these ``4L - 1`` shifts are one
physical state, "empty", which the EM keeps as a single state next to the ``(2L - 1)²``
non-empty shifts (:func:`nonempty_shifts`).

Along one axis a shift ``s < L`` shows projection rows ``[s, L)`` in patch rows
``[0, L - s)``, and ``s > L`` shows rows ``[0, s - L)`` in patch rows ``[2L - s, L)``
(:func:`axis_windows`): the visible part of the projection is a corner rectangle.
"""
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .. import fourier
from ..errors import InvalidDataError
from ..storage import StoredFields


def axis_shifts(box):
    """The non-empty shifts of one axis, ``0 .. L-1, L+1 .. 2L-1`` (``2L - 1`` values)."""
    return np.concatenate([np.arange(box), np.arange(box + 1, 2 * box)])


def nonempty_shifts(box):
    """``((2L - 1)², 2)`` non-empty shifts ``(sy, sx)``, ``sy``-major: state ``s`` of the EM."""
    values = axis_shifts(box)
    sy, sx = np.meshgrid(values, values, indexing="ij")
    return np.stack([sy.ravel(), sx.ravel()], -1)


def all_shifts(box):
    """All ``(2L)²`` shifts of the paper's model, ``(4L², 2)``."""
    values = np.arange(2 * box)
    sy, sx = np.meshgrid(values, values, indexing="ij")
    return np.stack([sy.ravel(), sx.ravel()], -1)


def is_empty_shift(shifts, box):
    """True for the shifts that show nothing (``sy = L`` or ``sx = L``)."""
    shifts = np.asarray(shifts)
    return (shifts[..., 0] == box) | (shifts[..., 1] == box)


def axis_windows(shift, box):
    """``(patch slice, projection slice)`` of one axis for a non-empty ``shift``."""
    if shift < box:
        return slice(0, box - shift), slice(shift, box)
    return slice(2 * box - shift, box), slice(0, shift - box)


def shift_patch(projection, shift):
    """The patch ``C T Z P`` of one projection ``(L, L)`` at a shift ``(sy, sx)`` (any of
    the ``(2L)²``): the paper's operator, by its definition."""
    box = projection.shape[0]
    padded = np.zeros((2 * box, 2 * box), dtype=projection.dtype)
    padded[:box, :box] = projection
    rows = (np.arange(box) + shift[0]) % (2 * box)
    cols = (np.arange(box) + shift[1]) % (2 * box)
    return padded[np.ix_(rows, cols)]


def shifted_stack(projections, dtype=np.float32):
    """``C T_s Z P_k`` of every projection ``(K, L, L)`` at every non-empty shift:
    ``(K, S, L, L)`` with ``S = (2L - 1)²`` in :func:`nonempty_shifts` order."""
    projections = np.asarray(projections)
    count, box = projections.shape[0], projections.shape[1]
    values = axis_shifts(box)
    out = np.zeros((count, values.size, values.size, box, box), dtype=dtype)
    for a, sy in enumerate(values):
        patch_y, proj_y = axis_windows(sy, box)
        for b, sx in enumerate(values):
            patch_x, proj_x = axis_windows(sx, box)
            out[:, a, b, patch_y, patch_x] = projections[:, proj_y, proj_x]
    return out.reshape(count, values.size ** 2, box, box)


def back_shifted_patches(patches):
    """``(C T_s Z)ᵀ I`` of every patch ``(n, L, L)`` at every non-empty shift: the patch
    moved into the projection frame, zero where the shift shows nothing, ``(n, S, L, L)``.
    Pixel ``(u, v)`` holds ``Z I[(u - sy) mod 2L, (v - sx) mod 2L]``, read as windows of
    the zero-padded patch tiled twice."""
    patches = np.asarray(patches)
    count, box = patches.shape[0], patches.shape[1]
    padded = np.zeros((count, 2 * box, 2 * box), dtype=patches.dtype)
    padded[:, :box, :box] = patches
    tiled = np.tile(padded, (1, 2, 2))
    windows = np.lib.stride_tricks.sliding_window_view(tiled, (box, box), axis=(1, 2))
    start = 2 * box - axis_shifts(box)
    out = windows[:, start[:, None], start[None, :]]
    return out.reshape(count, -1, box, box)


def back_shift(patch_sums, box):
    """Adjoint of :func:`shifted_stack`: ``(K, S, L, L)`` patch-frame sums to the
    projection frame ``(K, L, L)`` (the ``b_ω`` of ``docs/methods/micrograph_em.md`` §5)."""
    patch_sums = np.asarray(patch_sums)
    count = patch_sums.shape[0]
    values = axis_shifts(box)
    grid = patch_sums.reshape(count, values.size, values.size, box, box)
    out = np.zeros((count, box, box), dtype=np.float64)
    for a, sy in enumerate(values):
        patch_y, proj_y = axis_windows(sy, box)
        for b, sx in enumerate(values):
            patch_x, proj_x = axis_windows(sx, box)
            out[:, proj_y, proj_x] += grid[:, a, b, patch_y, patch_x]
    return out


def visibility_weights(weights, box):
    """``M_k = Σ_s W[k, s] 1_{V(s)}``: ``(K, L, L)`` from state weights ``(K, S)``, the
    per-rotation masks of the volume M-step (``docs/methods/micrograph_em.md`` §6.2)."""
    weights = np.asarray(weights, dtype=np.float64)
    values = axis_shifts(box)
    rows = np.zeros((values.size, box))
    for a, shift in enumerate(values):
        rows[a, axis_windows(shift, box)[1]] = 1.0
    grid = weights.reshape(-1, values.size, values.size)
    return np.einsum("ya,kyx,xb->kab", rows, grid, rows)


def visible_energies(projections):
    """``Σ_{V(s)} P_k²`` for every rotation and non-empty shift: ``(K, S)``, by prefix sums
    of the squared projections over the corner rectangles."""
    squared = np.asarray(projections, dtype=np.float64) ** 2
    count, box = squared.shape[0], squared.shape[1]
    table = np.zeros((count, box + 1, box + 1))
    table[:, 1:, 1:] = squared.cumsum(1).cumsum(2)
    values = axis_shifts(box)
    bounds = [axis_windows(s, box)[1] for s in values]
    out = np.empty((count, values.size, values.size))
    for a, ry in enumerate(bounds):
        for b, rx in enumerate(bounds):
            out[:, a, b] = (table[:, ry.stop, rx.stop] - table[:, ry.start, rx.stop]
                            - table[:, ry.stop, rx.start] + table[:, ry.start, rx.start])
    return out.reshape(count, -1)


def fourier_bin(image, factor):
    """``image`` resampled to ``1 / factor`` of its size by cropping its spectrum (values
    kept: a flat image stays flat), for any real ``factor >= 1``."""
    image = np.asarray(image, dtype=np.float64)
    if factor == 1:
        return image.copy()
    if factor < 1:
        raise InvalidDataError(f"the binning factor must be >= 1, got {factor}")
    height, width = image.shape
    new_h, new_w = max(1, int(round(height / factor))), max(1, int(round(width / factor)))
    spectrum = scipy.fft.rfft2(image, workers=fourier.fft_workers())
    keep_y = new_h // 2
    rows = np.concatenate([np.arange(0, new_h - keep_y), np.arange(height - keep_y, height)])
    cropped = spectrum[rows, :new_w // 2 + 1]
    out = scipy.fft.irfft2(cropped, s=(new_h, new_w), workers=fourier.fft_workers())
    return out * (new_h * new_w / (height * width))


@dataclass
class PatchSet(StoredFields):
    """The patches of a set of micrographs at the working pixel size.

    :param patches: ``(N, L, L)`` float32.
    :param micrograph: ``(N,)`` index of each patch's micrograph.
    :param row, col: ``(N,)`` patch grid position; the patch's top-left pixel is
        ``(row · L, col · L)`` in its (binned) micrograph.
    :param pixel_size: working pixel size in Å.
    :param binning: original pixel size ÷ working pixel size, inverted (``>= 1``).
    :param shapes: ``(M, 2)`` binned micrograph sizes.
    """
    patches: np.ndarray
    micrograph: np.ndarray
    row: np.ndarray
    col: np.ndarray
    pixel_size: float
    binning: float
    shapes: np.ndarray

    @property
    def box(self):
        return self.patches.shape[1]

    @property
    def count(self):
        return self.patches.shape[0]

    @property
    def n_micrographs(self):
        return self.shapes.shape[0]

    @classmethod
    def concatenate(cls, parts):
        """One set of the patches of ``parts`` (sets of disjoint micrographs, whose
        ``micrograph`` indices already count across all of them)."""
        parts = list(parts)
        first = parts[0]
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("patches", "micrograph", "row", "col")),
                   first.pixel_size, first.binning,
                   np.concatenate([p.shapes for p in parts]))

    def origins(self, indices=None):
        """``(n, 2)`` top-left ``(y, x)`` pixel of patches in their binned micrograph."""
        indices = np.arange(self.count) if indices is None else np.asarray(indices)
        return np.stack([self.row[indices], self.col[indices]], -1) * self.box


#: The paper's patch size, used when no working resolution is asked for.
DEFAULT_PATCH_SIZE = 11


def working_geometry(diameter, pixel_size, resolution=None, minimum=7):
    """Patch size and binning for particles of ``diameter`` Å in micrographs of
    ``pixel_size`` Å (``docs/methods/micrograph_em.md`` §4): the working pixel is half the
    target ``resolution`` (Å; None: the one that makes the particle 11 px wide), and the
    patch is the smallest odd number of working pixels that holds the particle.

    :returns: ``(patch size L, binning factor >= 1, working pixel size Å)``.
    """
    if not diameter > 0:
        raise InvalidDataError(f"the particle diameter must be positive, got {diameter} Å")
    working = diameter / DEFAULT_PATCH_SIZE if not resolution else resolution / 2.0
    if working < pixel_size * (1 - 1e-9):
        raise InvalidDataError(
            f"a working pixel of {working:.3g} Å is finer than the micrographs' {pixel_size:g} "
            f"Å: ask for a resolution of at least {2 * pixel_size:g} Å (Nyquist)")
    box = int(np.ceil(diameter / working - 1e-9))
    box += 1 - box % 2
    if box < minimum:
        raise InvalidDataError(
            f"a {diameter:g} Å particle at {working:.3g} Å per working pixel is a {box} px "
            f"patch; the method needs at least {minimum} px: ask for a finer resolution "
            f"(at most {2 * diameter / minimum:.3g} Å) or check the diameter")
    return box, max(1.0, working / pixel_size), working


def check_micrograph(micrograph, name):
    """A finite 2-D float array, or :class:`InvalidDataError` naming ``name``."""
    micrograph = np.asarray(micrograph)
    if micrograph.ndim != 2:
        raise InvalidDataError(f"{name} must be a 2-D image, got shape {micrograph.shape}")
    bad = np.count_nonzero(~np.isfinite(micrograph))
    if bad:
        raise InvalidDataError(f"{name} has {bad} NaN or infinite pixels; repair or remove "
                               "that micrograph")
    return micrograph


def cut_patches(micrographs, box, pixel_size, binning=1.0, names=None, subtract_mean=False,
                first=0):
    """Bin micrographs by ``binning`` (:func:`fourier_bin`) and cut them into patches.

    :param micrographs: sequence of 2-D arrays at the original pixel size.
    :param box: patch size ``L`` at the working pixel size.
    :param pixel_size: original pixel size in Å.
    :param names: what to call each micrograph in messages (default ``micrograph k``).
    :param subtract_mean: remove each binned micrograph's mean (real micrographs have an
        arbitrary offset; the model's background is zero).
    :param first: index of the first micrograph in a larger set (patches cut in batches).
    :returns: :class:`PatchSet`.
    """
    patches, owner, rows, cols, shapes = [], [], [], [], []
    for index, micrograph in enumerate(micrographs):
        name = names[index] if names is not None else f"micrograph {index + 1}"
        binned = fourier_bin(check_micrograph(micrograph, name), binning)
        if subtract_mean:
            binned = binned - binned.mean()
        n_rows, n_cols = binned.shape[0] // box, binned.shape[1] // box
        if n_rows == 0 or n_cols == 0:
            raise InvalidDataError(
                f"{name} ({binned.shape[1]}x{binned.shape[0]} px after binning) is smaller "
                f"than one {box}x{box} patch; use a smaller particle diameter or less binning")
        tiles = binned[:n_rows * box, :n_cols * box].reshape(n_rows, box, n_cols, box)
        patches.append(tiles.transpose(0, 2, 1, 3).reshape(-1, box, box).astype(np.float32))
        r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        rows.append(r.ravel())
        cols.append(c.ravel())
        owner.append(np.full(n_rows * n_cols, first + index))
        shapes.append(binned.shape)
    return PatchSet(np.concatenate(patches), np.concatenate(owner), np.concatenate(rows),
                    np.concatenate(cols), float(pixel_size * binning), float(binning),
                    np.array(shapes))


def true_states(top_left, origins, box):
    """The state of each patch under particles with top-left corners ``top_left``
    ``(T, 2)`` ``(y, x)`` of one micrograph: ``(n, 2)`` shift ``(sy, sx)`` of the particle
    overlapping patch ``n`` (origins ``(n, 2)``) and ``(L, L)`` (empty) where none does.
    With the separation rule at most one particle overlaps a patch; where several do
    (arbitrary spacing) the one with the largest visible area is reported.
    """
    origins = np.asarray(origins)
    out = np.full((origins.shape[0], 2), box, dtype=np.int64)
    best = np.zeros(origins.shape[0])
    for corner in np.asarray(top_left):
        offset = corner[None, :] - origins  # projection corner in patch coordinates
        overlap = np.all(np.abs(offset) < box, axis=1)
        area = np.prod(box - np.abs(offset), axis=1) * overlap
        better = area > best
        shift = np.where(offset <= 0, -offset, 2 * box - offset)
        out[better] = shift[better]
        best[better] = area[better]
    return out
