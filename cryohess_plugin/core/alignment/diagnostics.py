"""What the rank ``H`` of the radial-SVD does to a run's alignment, measured on its first
particles (landscapes at a few ``H``, accuracy against full rank over a sweep of ``H``,
the time to align at the run's ``H`` and at full rank) or its first volumes (the paper's
landscape metrics against ``H``) (``docs/methods/radial_svd_alignment.md`` §2.6).
Computed once by the protocols, read by their viewers.
"""
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..storage import StoredFields
from .metrics import volume_rank_metrics

#: Ranks of the accuracy sweep: about this many, geometrically spaced up to full rank.
SWEEP_POINTS = 12


@dataclass
class RankDiagnostics(StoredFields):
    """Rank diagnostics of the first ``n`` particles of a run.

    :param landscape_ranks: ``(m,)`` ranks of the stored landscapes (1, 2, 4, the run's
        rank and full rank).
    :param landscapes: ``(m, n, Q)`` score of each particle against its assigned
        reference at every in-plane angle, at each of ``landscape_ranks``.
    :param angles: ``(Q,)`` in-plane angles (radians).
    :param references: ``(n,)`` the assigned reference of each particle (0-based).
    :param sweep_ranks: ``(k,)`` ranks of the accuracy sweep, the last full rank.
    :param correlation: ``(k,)`` correlation of all landscapes with full rank's.
    :param agreement: ``(k,)`` fraction of particles whose best reference and in-plane
        angle (within one angle step) are full rank's.
    :param align_seconds: ``(2,)`` seconds to align the particles at ``run_rank`` and at
        full rank (on the machine and backend of the run).
    :param run_rank: the run's rank (the automatic rank of the first CTF group when the
        run chose it).
    :param pairs: image-reference pairs of the timed alignments.
    """
    landscape_ranks: np.ndarray
    landscapes: np.ndarray
    angles: np.ndarray
    references: np.ndarray
    sweep_ranks: np.ndarray
    correlation: np.ndarray
    agreement: np.ndarray
    align_seconds: np.ndarray
    run_rank: int
    pairs: int

    def speedup(self):
        """Full-rank alignment time over the run's-rank time."""
        return float(self.align_seconds[1] / self.align_seconds[0])


def argmax_agreement(landscapes, full):
    """Fraction of images whose best ``(reference, angle)`` in ``landscapes``
    ``(n, references, Q)`` is full rank's, the angle within one step (cyclic)."""
    if landscapes.shape != full.shape:
        raise ShapeError(f"landscapes {landscapes.shape} and full-rank landscapes "
                         f"{full.shape} differ in shape")
    n, _, angles = full.shape
    best = landscapes.reshape(n, -1).argmax(axis=1)
    best_full = full.reshape(n, -1).argmax(axis=1)
    same_reference = best // angles == best_full // angles
    step = np.abs(best % angles - best_full % angles)
    return float(np.mean(same_reference & (np.minimum(step, angles - step) <= 1)))


def rank_diagnostics(aligner, polar_images, references, shifts, run_rank, ctf_params=None,
                     pixel_size=None):
    """:class:`RankDiagnostics` of ``polar_images`` with the run's radial-SVD ``aligner``.

    :param aligner: the run's :class:`~.radial_svd.RadialSVDAligner` (its grid and
        templates).
    :param polar_images: the particles on the aligner's polar grid.
    :param references: ``(n,)`` each particle's assigned reference (0-based).
    :param shifts: ``(n, 2)`` the assigned shifts (pixels), where landscapes are taken.
    :param run_rank: the run's rank ``H``.
    :param ctf_params, pixel_size: the particles' CTFs, as the run used them.
    """
    references = np.asarray(references, dtype=np.int64)
    options = dict(ctf_params=ctf_params, pixel_size=pixel_size)
    rings = aligner.grid.n_rings
    run_rank = int(min(max(run_rank, 1), rings))

    def landscapes(rank):
        return aligner.landscapes(polar_images, rank=rank, shifts=shifts, **options)

    full = landscapes(rings)
    sweep = np.unique(np.round(np.geomspace(1, rings, SWEEP_POINTS)).astype(np.int64))
    correlation, agreement, by_rank = [], [], {rings: full}
    for rank in sweep:
        by_rank[int(rank)] = landscape = full if rank == rings else landscapes(int(rank))
        correlation.append(np.corrcoef(landscape.ravel(), full.ravel())[0, 1])
        agreement.append(argmax_agreement(landscape, full))
    shown = np.array(sorted({min(1, rings), min(2, rings), min(4, rings), run_rank, rings}))
    rows = np.arange(len(references))
    stored = np.stack([(by_rank[int(rank)] if int(rank) in by_rank else
                        landscapes(int(rank)))[rows, references] for rank in shown])
    seconds = []
    for rank in (run_rank, rings):
        started = time.perf_counter()
        aligner.align(polar_images, rank=rank, **options)
        seconds.append(time.perf_counter() - started)
    return RankDiagnostics(
        landscape_ranks=shown, landscapes=stored.astype(np.float32),
        angles=np.asarray(aligner.grid.angles, dtype=np.float64), references=references,
        sweep_ranks=sweep, correlation=np.asarray(correlation),
        agreement=np.asarray(agreement), align_seconds=np.asarray(seconds),
        run_rank=run_rank, pairs=int(len(references) * full.shape[1]))


#: Ranks ``H = H_C = H_D`` of the volume rank sweep (then the full rank).
VOLUME_RANK_SWEEP = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@dataclass
class VolumeRankSweep(StoredFields):
    """The paper's Fig. 11 for a run's first volumes: the metrics of the compressed
    landscapes at ``H_C = H_D = H`` against the unreduced ones.

    :param ranks: ``(k,)`` the swept ``H``, the last the full rank.
    :param relative_error, correlation, backward_error: ``(k,)``
        :class:`~.metrics.LandscapeMetrics` at each rank.
    :param automatic_ranks: ``(2,)`` the ``H_C, H_D`` the aligner chose by itself.
    :param volumes: number of volumes the metrics cover.
    """
    ranks: np.ndarray
    relative_error: np.ndarray
    correlation: np.ndarray
    backward_error: np.ndarray
    automatic_ranks: np.ndarray
    volumes: int


def volume_rank_sweep(aligner, volumes):
    """:class:`VolumeRankSweep` of ``volumes`` ``(n, D, D, D)`` with a
    :class:`~.volumes.VolumeAligner` of automatic ranks."""
    full = max(aligner.shells.n_shells, aligner.shells.max_degree + 1)
    ranks = [rank for rank in VOLUME_RANK_SWEEP if rank < full] + [full]
    metrics = volume_rank_metrics(aligner, volumes, ranks)
    return VolumeRankSweep(
        ranks=np.asarray(ranks), relative_error=np.array([m.relative_error for m in metrics]),
        correlation=np.array([m.correlation for m in metrics]),
        backward_error=np.array([m.backward_error for m in metrics]),
        automatic_ranks=np.asarray(aligner.ranks), volumes=len(volumes))
