"""Algorithm 2 of micrograph EM: posterior particle picking, and its scores.

``docs/methods/micrograph_em.md`` §8.  Under a volume estimate every patch gets its
posterior over "empty" and the non-empty shifts (marginal over rotations); the patch is a
pick when "empty" has posterior below one half, and its particle centre follows from the
most probable shift.  A particle that spans several patches is picked once per patch; picks closer
than half a box are merged, keeping the most probable.  Scores: the F1 of "empty" (the
paper's Eq. (39), empty patches positive) and the share of at least half-visible
particles whose shift is found within one pixel on each axis.
"""
from dataclasses import dataclass

import numpy as np

from .estep import expectation
from .patches import nonempty_shifts


@dataclass
class Picks:
    """Per patch of a :class:`.patches.PatchSet`: the posterior of "empty", the most
    probable non-empty shift ``(sy, sx)`` with its posterior and the most probable
    rotation index there; ``picked`` where "empty" has posterior below one half."""
    empty: np.ndarray
    shift: np.ndarray
    shift_posterior: np.ndarray
    rotation: np.ndarray
    picked: np.ndarray

    def states(self, box):
        """``(n, 2)`` picked shift per patch, ``(L, L)`` (empty) where not picked."""
        return np.where(self.picked[:, None], self.shift, box)


def pick_patches(patch_set, operator, model, ctfs=None, indices=None, backend="cpu"):
    """:class:`Picks` of the patches ``indices`` (default all) under ``model``
    (:class:`.estep.Model` at ``operator``'s basis)."""
    indices = np.arange(patch_set.count) if indices is None else np.asarray(indices)
    result = expectation(patch_set, indices, operator, model, ctfs, accumulate=False,
                         maximum_a_posteriori=True, backend=backend)
    shifts = nonempty_shifts(patch_set.box)[result.map_state]
    picked = result.empty < 0.5
    return Picks(result.empty, shifts, result.map_shift_posterior, result.map_rotation, picked)


def pick_centres(patch_set, picks, indices=None):
    """Particle centres of the picks: ``(micrograph, x, y, score)`` rows in *binned*
    micrograph pixels, score ``1 - P(empty)``, merged within half a box per micrograph;
    a pick whose centre falls outside its micrograph (a particle cut by the edge) is left
    out, as no box could be extracted around it."""
    indices = np.arange(patch_set.count) if indices is None else np.asarray(indices)
    box = patch_set.box
    chosen = np.flatnonzero(picks.picked)
    origins = patch_set.origins(indices[chosen])
    shift = picks.shift[chosen]
    offset = np.where(shift < box, -shift, 2 * box - shift)  # projection corner in patch
    centres = origins + offset + box // 2
    shapes = patch_set.shapes[patch_set.micrograph[indices[chosen]]]
    inside = np.all((centres >= 0) & (centres < shapes), axis=1)
    chosen, centres = chosen[inside], centres[inside]
    rows = np.column_stack([patch_set.micrograph[indices[chosen]], centres[:, 1],
                            centres[:, 0], 1.0 - picks.empty[chosen]])
    return merge_picks(rows, box / 2)


def original_pixel_centres(patch_set, picks, indices=None):
    """:func:`pick_centres` with ``x, y`` in the pixels of the original micrographs (the
    binned pixels times the patch set's binning factor), as coordinates are stored."""
    rows = pick_centres(patch_set, picks, indices)
    rows[:, 1:3] *= patch_set.binning
    return rows


def merge_picks(rows, radius):
    """Keep, per micrograph, the highest-scoring pick within ``radius`` of each other."""
    kept = []
    for micrograph in np.unique(rows[:, 0]):
        mine = rows[rows[:, 0] == micrograph]
        mine = mine[np.argsort(-mine[:, 3], kind="stable")]
        taken = []
        for row in mine:
            if all(np.hypot(row[1] - t[1], row[2] - t[2]) >= radius for t in taken):
                taken.append(row)
        kept.extend(taken)
    return np.array(kept).reshape(-1, 4)


def empty_f1(predicted_empty, true_empty):
    """F1 of "empty" (positive) against the truth (the paper's Eq. (39))."""
    predicted_empty, true_empty = np.asarray(predicted_empty), np.asarray(true_empty)
    hits = np.sum(predicted_empty & true_empty)
    if hits == 0:
        return 0.0
    precision = hits / np.sum(predicted_empty)
    recall = hits / np.sum(true_empty)
    return float(2 * precision * recall / (precision + recall))


def half_visible(states, box):
    """Patches whose particle shows more than half its extent on both axes."""
    states = np.asarray(states)
    extent = np.where(states < box, box - states, states - box)
    return np.all((extent > box / 2) & (states != box), axis=-1)


def shift_accuracy(predicted, truth, box):
    """Share of the half-visible true particles found within one pixel per axis."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    scored = half_visible(truth, box)
    if not scored.any():
        return float("nan")
    close = np.all(np.abs(predicted[scored] - truth[scored]) <= 1, axis=1)
    return float(np.mean(close))
