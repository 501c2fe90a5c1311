"""Algorithm 2 of micrograph EM: posterior particle picking, and its scores.

``docs/methods/micrograph_em.md`` §8.  Under a volume estimate every patch gets its
posterior over "empty" and the non-empty shifts (marginal over rotations); the patch is a
pick when "empty" has posterior below one half, and its particle centre follows from the
most probable shift.  A particle that spans several patches is picked once per patch; picks closer
than half a box are merged, keeping the most probable.  Scores: the F1 of "empty" (the
paper's Eq. (39), empty patches positive) and the share of at least half-visible
particles whose shift is found within one pixel on each axis.  :func:`picking_curves`
scores the picks against reference positions (e.g. a simulator's) at the data's SNR and
at lower SNRs made by adding white noise to the patches.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from ..storage import StoredFields
from .estep import Model, expectation
from .patches import nonempty_shifts, true_states


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
    """F1 of "empty" (positive) against the truth (the paper's Eq. (39)); with both
    arguments negated, the F1 of "holds a particle"."""
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


def reference_states(patch_set, centres):
    """The shift state of every patch under reference particles: ``centres`` per
    micrograph (in :class:`.patches.PatchSet` micrograph order) ``(k, 2)`` ``(x, y)`` in
    *original* micrograph pixels; ``(N, 2)`` as :func:`.patches.true_states`."""
    box = patch_set.box
    out = np.empty((patch_set.count, 2), dtype=np.int64)
    for micrograph, mine in enumerate(centres):
        where = np.flatnonzero(patch_set.micrograph == micrograph)
        binned = np.rint(np.asarray(mine, dtype=np.float64).reshape(-1, 2)
                         / patch_set.binning).astype(np.int64)
        out[where] = true_states(binned[:, ::-1] - box // 2, patch_set.origins(where), box)
    return out


def model_snr(operator, model, ctfs=None):
    """The SNR of Eq. (4) under ``model``: the mean projection energy over the rotation
    grid (with each micrograph's CTF) over ``L²`` times the micrograph's noise variance,
    averaged over the micrographs."""
    pixels = operator.box ** 2
    values = []
    for micrograph, variance in enumerate(np.asarray(model.noise_variance)):
        ctf = None if ctfs is None else ctfs[micrograph]
        energy = np.mean(np.sum(operator.project(model.coefficients, ctf) ** 2, axis=(1, 2)))
        values.append(energy / (pixels * variance))
    return float(np.mean(values))


@dataclass
class PickingCurves(StoredFields):
    """Algorithm 2 scored against reference positions, per SNR (Eq. (4), under the model).

    :param snr: ``(n,)`` the data's SNR, then the lower ones made by adding noise.
    :param f1_nonempty: F1 of "holds a particle" (positive) per SNR.
    :param f1_empty: F1 of "empty" (the paper's Eq. (39)) per SNR.
    :param always_empty_f1: the F1 of "empty" of calling every patch empty.
    :param shift_accuracy: share of half-visible reference particles found within 1 px.
    :param patches: how many patches were scored.
    """
    snr: np.ndarray
    f1_nonempty: np.ndarray
    f1_empty: np.ndarray
    always_empty_f1: float
    shift_accuracy: np.ndarray
    patches: int


#: Factors by which :func:`picking_curves` lowers the data's SNR (half a decade apart).
SNR_FACTORS = (1.0, 10 ** 0.5, 10.0, 10 ** 1.5, 100.0, 10 ** 2.5, 1000.0)


def picking_curves(patch_set, operator, model, states, ctfs=None, factors=SNR_FACTORS,
                   limit=5000, seed=0, backend="cpu"):
    """:class:`PickingCurves` of Algorithm 2 under ``model`` against the reference
    ``states`` ``(N, 2)`` (:func:`reference_states`), on at most ``limit`` random patches.
    At factor ``f`` white noise of variance ``(f - 1) σ²_m`` is added to the patches of
    micrograph ``m`` and the model's noise variance becomes ``f σ²_m``: the SNR is the
    data's over ``f``."""
    rng = np.random.default_rng(seed)
    chosen = np.arange(patch_set.count)
    if chosen.size > limit:
        chosen = np.sort(rng.choice(chosen, int(limit), replace=False))
    subset = dataclasses.replace(patch_set, patches=patch_set.patches[chosen],
                                 micrograph=patch_set.micrograph[chosen],
                                 row=patch_set.row[chosen], col=patch_set.col[chosen])
    truth = np.asarray(states)[chosen]
    box = patch_set.box
    empty = np.all(truth == box, axis=1)
    variance = np.asarray(model.noise_variance, dtype=np.float64)
    base = model_snr(operator, model, ctfs)
    f1_nonempty, f1_empty, accuracy = [], [], []
    for factor in factors:
        spread = np.sqrt((factor - 1) * variance[subset.micrograph])[:, None, None]
        noisy = subset.patches + (spread * rng.standard_normal(subset.patches.shape)
                                  ).astype(subset.patches.dtype)
        scaled = Model(model.coefficients, model.shift_prior, model.empty_mass,
                       variance * factor)
        picks = pick_patches(dataclasses.replace(subset, patches=noisy), operator, scaled,
                             ctfs, backend=backend)
        f1_nonempty.append(empty_f1(picks.picked, ~empty))
        f1_empty.append(empty_f1(~picks.picked, empty))
        accuracy.append(shift_accuracy(picks.states(box), truth, box))
    return PickingCurves(base / np.asarray(factors, dtype=np.float64), np.array(f1_nonempty),
                         np.array(f1_empty), 2 * empty.mean() / (1 + empty.mean()),
                         np.array(accuracy), int(chosen.size))
