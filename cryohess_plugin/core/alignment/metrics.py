"""How close compressed landscapes are to the exact ones: the radial-SVD paper's metrics.

Rangan (2022) judges the radial-SVD (images, Fig. 8) and the degree-SVD
(volumes, Fig. 11) by three numbers of the compressed landscapes ``X_H`` against
the exact ones ``X`` as functions of the rank ``H``
(``docs/methods/radial_svd_alignment.md`` §2.6):

* the relative Frobenius error ``‖X_H − X‖_F / ‖X‖_F`` over the whole array
  (every pair and every grid rotation);
* the Pearson correlation of ``X_H`` with ``X`` over the whole array;
* the backward-error percentile ``f``: for each pair, the fraction of the grid
  rotations whose exact value does not exceed the exact value at the
  compressed argmax (``1`` when the compressed argmax is the exact one), the
  paper's eq. (88); reported as its mean over pairs.

A landscape array holds one landscape per pair on its trailing ``angle_axes``
axes: ``(n_images, n_templates, Q)`` with ``angle_axes=1`` for images,
``(n_volumes, N, n_β, N)`` with ``angle_axes=3`` for volumes.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError, ShapeError


@dataclass(frozen=True)
class LandscapeMetrics:
    """The paper's three metrics of one compressed landscape array against the exact one."""
    relative_error: float  #: ‖X_H − X‖_F / ‖X‖_F
    correlation: float  #: Pearson correlation over every pair and rotation
    backward_error: float  #: mean over pairs of the percentile ``f``
    percentiles: np.ndarray  #: ``f`` of every pair, shape of the leading axes


def _pairs(landscapes, angle_axes, name):
    landscapes = np.asarray(landscapes)
    if landscapes.ndim <= angle_axes:
        raise ShapeError(f"{name} must have at least one pair axis before its {angle_axes} "
                         f"angle axes, got shape {landscapes.shape}")
    if not np.all(np.isfinite(landscapes)):
        raise InvalidDataError(f"{name} contains NaN or infinite values")
    lead = landscapes.shape[:landscapes.ndim - angle_axes]
    return landscapes.reshape(int(np.prod(lead)), -1).astype(np.float64), lead


def backward_percentiles(estimate, exact, angle_axes=1):
    """Percentile ``f`` of every pair: ``#{rotations: X ≤ X(argmax X_H)} / #rotations``.

    :param estimate, exact: landscape arrays of one shape (module docstring).
    :returns: ``f`` with the shape of the pair axes.
    """
    estimate, lead = _pairs(estimate, angle_axes, "estimate")
    exact, exact_lead = _pairs(exact, angle_axes, "exact")
    if estimate.shape != exact.shape or lead != exact_lead:
        raise ShapeError(f"estimate and exact landscapes differ in shape: "
                         f"{lead + (estimate.shape[1],)} against {exact_lead}")
    chosen = np.take_along_axis(exact, estimate.argmax(axis=1)[:, None], axis=1)
    return (np.count_nonzero(exact <= chosen, axis=1) / exact.shape[1]).reshape(lead)


def landscape_metrics(estimate, exact, angle_axes=1):
    """:class:`LandscapeMetrics` of ``estimate`` (compressed) against ``exact``.

    :param estimate, exact: landscape arrays of one shape (module docstring).
    :param angle_axes: number of trailing axes that hold one pair's rotations.
    """
    percentiles = backward_percentiles(estimate, exact, angle_axes)
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    exact = np.asarray(exact, dtype=np.float64).ravel()
    exact_norm = np.linalg.norm(exact)
    if exact_norm == 0:
        raise InvalidDataError("the exact landscapes are all zero; their relative error is "
                               "undefined")
    centred_estimate, centred_exact = estimate - estimate.mean(), exact - exact.mean()
    spread = np.linalg.norm(centred_estimate) * np.linalg.norm(centred_exact)
    correlation = float(centred_estimate @ centred_exact / spread) if spread > 0 else 0.0
    return LandscapeMetrics(float(np.linalg.norm(estimate - exact) / exact_norm), correlation,
                            float(percentiles.mean()), percentiles)


def image_rank_metrics(aligner, image_polar, ranks, ctf_params=None, pixel_size=None,
                       shifts=None):
    """:class:`LandscapeMetrics` of a :class:`.radial_svd.RadialSVDAligner`'s landscapes at each
    rank ``H`` against its full-rank ones (the paper's Fig. 8).

    The aligner's options apply (e.g. ``exact_zero_frequency=False`` for the paper's
    form, which compresses the rotation-invariant term too).
    """
    def landscapes(rank):
        return aligner.landscapes(image_polar, rank=rank, ctf_params=ctf_params,
                                  pixel_size=pixel_size, shifts=shifts)

    exact = landscapes(aligner.grid.n_rings)
    return [landscape_metrics(landscapes(rank), exact) for rank in ranks]


def volume_rank_metrics(aligner, volumes, ranks):
    """:class:`LandscapeMetrics` of a :class:`.volumes.VolumeAligner`'s compressed landscapes
    at ``H_C = H_D = H`` (each capped at its full rank) against the unreduced ones, over
    the unreduced grid (the paper's Fig. 11).

    :param volumes: ``(n, D, D, D)`` maps of the reference's box.
    """
    shells = aligner.shells
    exact = np.stack([aligner.landscape(volume, full_rank=True)[3] for volume in volumes])
    out = []
    for rank in ranks:
        compressed = aligner.with_ranks(min(rank, shells.n_shells),
                                        min(rank, shells.max_degree + 1))
        estimate = np.stack([compressed.landscape(volume)[3] for volume in volumes])
        out.append(landscape_metrics(estimate, exact, angle_axes=3))
    return out
