"""Radial-SVD alignment of particle images against templates (Rangan 2022, 2-D).

Notation and formulas follow ``docs/methods/radial_svd_alignment.md`` §1-§3
(with the paper's errata fixed, §8.1; section signs below are that page's);
frequencies are in cycles per box (:mod:`.polar`).

**Representation.**  An image is given by its polar Fourier samples
``P[r, j] = Ahat(radii[r], 2 pi j / Q)`` (:func:`.polar.polar_transform`,
:meth:`.projector.FourierSliceProjector.project_polar`); its ring
coefficients are ``a[r, q] = fft(P, axis=-1)[r, q] / Q`` with the Nyquist bin
zeroed (:func:`.polar.ring_coefficients`).  Images are real, ``Q`` is even,
so ``a[r, -q] = (-1)^q conj(a[r, q])`` and only ``q = 0 .. Q/2 - 1`` is kept.

**Landscape.**  For an image ``A`` and a template ``B`` rotated
counter-clockwise by ``gamma`` (+x towards +y; :mod:`.reference_alignment`)

    X(gamma_j) = <A, R_gamma B>
               = (2 pi / D^2) sum_q exp(-i q gamma_j) sum_r w_r conj(a[r, q]) b[r, q]

on the ``Q`` angles ``gamma_j = 2 pi j / Q``; with the quadrature weights
``w_r`` of the grid (``f df``, cycles per box) this is the real-space inner
product ``sum_x A(x) (R_gamma B)(x)`` of band-limited images.

**Radial SVD.**  The kernel of a set of noise-free templates,
``C = (1 / N_B) Re sum_b Y_b Y_b^H`` with ``Y_b[r, q] = eta_r b[r, q]``
over ``q != 0`` and ``eta_r = sqrt(w_r)`` (each template centred on its own
rotational average, ``centring="template"``: the paper's eqs. (83) and (85)),
measures how well each combination of rings tells rotations apart.
``centring="population"`` subtracts the population mean of the ``q = 0``
term instead, which adds the across-template covariance of the rotational
averages (``docs/methods/radial_svd_alignment.md`` §2.2).  With ``U_H`` its top
``H`` eigenvectors, ``atilde = U_H^T diag(eta) a`` and likewise ``btilde``,
the landscape becomes ``(2 pi / D^2) sum_q exp(-i q gamma) sum_h
conj(atilde[h, q]) btilde[h, q]``: ``H`` instead of ``R`` terms per
frequency, exact at ``H = R``.  ``H`` is the number of eigenvalues above
``tolerance * lambda_1``, clamped to ``[min_rank, R]``, unless set.

**Rotation-invariant term** [ours].  ``C`` leaves out ``q = 0`` by design: it
carries no angular information.  But the ``q = 0`` term of the landscape (the
product of the rotational averages) is what tells templates of different
views apart, and the top eigenvectors of ``C`` represent it poorly; compressed
with them, the best template changes for a third of the particles at
``H = 6`` (simulated 64 px data, 993 views), and even at ``H = 24`` for one
in ten.  It is also cheap: one real product over the ``R`` rings per pair,
against ``4 H`` per frequency for the rest.  So by default
(``exact_zero_frequency``) the ``q = 0`` term uses all rings and only
``q != 0`` is compressed; at ``H = R`` both choices are exact.

**Refinement** (principal-mode marching,
``docs/methods/radial_svd_alignment.md`` §2.3).  Views a few degrees apart can
score within 1e-4 of each other, below the error of a small ``H``.  So every
image's ``refine_candidates`` best templates from the compressed search are
scored again with all ``R`` rings, at all angles and shifts, and re-ranked: a
few exact landscapes per image, a small cost next to the ``n_B`` compressed
ones.  The scores :meth:`RadialSVDAligner.align` reports are then those of the
full-rank landscape.  With refinement the images' rings are transformed once,
all of them, and the search's compressed coefficients are projections of those
(projection and FFT commute).

**CTF** (``docs/methods/radial_svd_alignment.md`` §1.6).  The model of a
particle is ``A = alpha C (R_gamma B) + noise`` with its own CTF ``C`` fixed in
the image frame (astigmatism and all), and ``<A, C R_gamma B> = <C A, R_gamma
B>``: every image is multiplied by its CTF at the polar nodes and compared with
the CTF-free templates, an exact numerator.  Particles are grouped by their
root-mean-square CTF per ring ``s`` (:func:`group_ctfs`); each group's kernel
is ``diag(s) C diag(s)`` and its compression oblique, ``U_H^T diag(eta / s)``
on the CTF-multiplied images and ``U_H^T diag(eta s)`` on the templates: their
product is exact at ``H = R`` for any ``s``, the compression is the paper's for
templates multiplied by ``s``, and dividing ``C A`` by ``s`` makes its noise
white again on the rescaled rings.

**Shifts.**  Each candidate core shift ``t`` (particle centre offset from the
box centre, pixels) is undone on the polar samples before compression
(:func:`.polar.shift_phases`); every (image, shift) pair is one row.

**Score.**  ``X(gamma) / (||A|| ||C R_gamma B||)``, norms from all rings (full
rank, ``q = 0`` included): the normalised cross-correlation of the particle
with the CTF-modulated, rotated template, in ``[-1, 1]`` at full rank.  Per
image it ranks poses as the Gaussian log-likelihood does once the unknown
positive contrast of the particle is profiled out (``max_alpha 2 alpha X -
alpha^2 ||C R_gamma B||^2 = X^2 / ||C R_gamma B||^2``), so templates of
different norms (views, CTFs) compete fairly.  With astigmatism
``||C R_gamma B||`` depends on ``gamma``: the search uses the group's
rotation-averaged norm ``||s B||``, and the refinement the exact one of each
particle (:meth:`RadialSVDAligner._ctf_norms`), so it also runs at full rank
when there are CTFs.
"""
from dataclasses import astuple, dataclass

import numpy as np
import scipy.fft

from .. import rotations as rot
from ..contrast import polarity_from_scores
from ..errors import InvalidDataError, MissingMetadataError, ShapeError
from ..fourier import fft_workers, frequency_for_resolution, working_dtypes
from ..kernels import alignment_cpu, alignment_pruned_cpu, resolve_backend
from ..kernels.alignment_cpu import SearchStatistics
from ..progress import Reporter
from ..polar import PolarGrid, ctf_on_grid, shift_phases
from ..storage import load_fields, save_fields

#: How the templates are centred before their kernel (:func:`radial_kernel`).
KERNEL_CENTRINGS = ("template", "population")
#: When the CPU search prunes (:class:`RadialSVDAligner`, ``pruning``): below ``H = R / 2``
#: (``"auto"``), at every rank, full rank included (``"always"``), or never.
PRUNING_MODES = ("auto", "always", "never")
#: The paper's band, ``K = 48`` radians per half box, in cycles per box
#: (``docs/methods/radial_svd_alignment.md`` §1.1).
PAPER_MAX_FREQUENCY = 48 / np.pi
#: Ranks chosen by tolerance never drop below this (``docs/methods/radial_svd_alignment.md``
#: §2.3), for images and volumes alike.
MIN_RANK = 4
# Templates per chunk when their ring coefficients and kernel are computed.
_TEMPLATE_CHUNK = 512
# Images per chunk of the full-rank refinement.
_REFINE_CHUNK = 128
# With ``pruning="auto"``, once a pruned group of an ``align`` call evaluated the
# angle DFT of more than this share of its pairs, the call's later groups use the
# dense GEMMs: on the 128 px benchmark a pair's DFT alone costs about 3.5 times a
# dense pair, so pruning stops paying near a quarter (noisy, mismatched
# references at in-band SNR 0.1 pass half of the pairs; noise-free, under 1 %).
_PRUNED_SHARE = 0.2
# Images or templates per batch of ring FFTs: input and output stay in the
# L2 cache (10-15 % faster than batches of 128).
_FFT_CHUNK = 32
# A group's root-mean-square CTF is floored at this fraction of its maximum
# before the images are divided by it (``_Projections``): only rings the CTF
# all but removes are raised, and the product stays exact at ``H = R``.
_CTF_FLOOR = 1e-3


@dataclass
class AlignmentResult:
    """Best pose of every image; image ``i`` ≈ ``shift_t(R_angle template)``.

    :param template: ``(n,)`` index of the best template.
    :param angle: ``(n,)`` in-plane angle ``gamma`` in radians (counter-clockwise).
    :param shift: ``(n, 2)`` core shift ``t = (tx, ty)`` in pixels of the particle.
    :param score: ``(n,)`` normalised correlation (module docstring).
    :param group: ``(n,)`` CTF group of each image.
    :param ranks: ``(G,)`` number ``H`` of principal rings used per group.
    :param eigenvalues: ``(G, R)`` descending spectrum of the kernel of each group.
    :param group_ctf: ``(G, R)`` root-mean-square CTF of each group on every ring (ones
        without CTF).
    :param top_template, top_angle, top_shift, top_score: ``(n, k)`` the ``k``
        best templates, each at its best angle and shift, best first; None
        when ``top_k == 1``.
    :param statistics: :class:`.kernels.alignment_cpu.SearchStatistics` of the
        compressed search: the (image row, template) pairs compared and those
        whose angle DFT was evaluated (fewer when the search prunes).
    :param ids: ``(n,)`` identifiers the caller gives the images (e.g. particle
        ids), kept by :meth:`concatenate` and in the file; None unless set.
    """
    template: np.ndarray
    angle: np.ndarray
    shift: np.ndarray
    score: np.ndarray
    group: np.ndarray
    ranks: np.ndarray
    eigenvalues: np.ndarray
    group_ctf: np.ndarray
    top_template: np.ndarray = None
    top_angle: np.ndarray = None
    top_shift: np.ndarray = None
    top_score: np.ndarray = None
    statistics: SearchStatistics = None
    ids: np.ndarray = None

    def save(self, path):
        """Write the result to the ``.npz`` ``path``, one entry per field."""
        save_fields(path, self, statistics=None if self.statistics is None
                    else np.asarray(astuple(self.statistics)))

    @classmethod
    def load(cls, path):
        """The result written by :meth:`save`."""
        return load_fields(cls, path, statistics=lambda row: SearchStatistics(*row.tolist()))

    @classmethod
    def concatenate(cls, results):
        """One result of several (e.g. the batches of one particle set), in order.

        CTF groups are numbered per result; here they index the concatenated
        ``ranks``, ``eigenvalues`` and ``group_ctf``.
        """
        results = list(results)
        offsets = np.cumsum([0] + [len(r.ranks) for r in results[:-1]])

        def joined(name):
            parts = [getattr(r, name) for r in results]
            return None if any(p is None for p in parts) else np.concatenate(parts)

        arrays = {name: joined(name) for name in
                  ("template", "angle", "shift", "score", "ranks", "eigenvalues", "group_ctf",
                   "top_template", "top_angle", "top_shift", "top_score", "ids")}
        statistics = [r.statistics for r in results]
        return cls(group=np.concatenate([r.group + offset for r, offset in zip(results, offsets)]),
                   statistics=None if None in statistics else sum(statistics, SearchStatistics()),
                   **arrays)


@dataclass(frozen=True)
class CTFGroups:
    """Particles grouped by their CTF power (:func:`group_ctfs`).

    ``labels`` ``(n,)`` the group of each particle; ``profiles`` ``(G, R)``
    the root-mean-square CTF of each group on every ring; ``index`` ``(n,)``
    the distinct CTF of each particle and ``tables`` ``(m, R, Q)`` those CTFs
    at the grid's nodes (None without CTF).
    """
    labels: np.ndarray
    profiles: np.ndarray
    index: np.ndarray = None
    tables: np.ndarray = None


@dataclass(frozen=True)
class PrincipalRings:
    """Kernel of one CTF group and its eigen-decomposition.

    ``kernel`` ``(R, R)``; ``eigenvalues`` ``(R,)`` descending; ``vectors``
    ``(R, R)`` the matching eigenvectors as columns; ``rank`` the ``H`` used;
    ``ctf`` ``(R,)`` the group's root-mean-square CTF on every ring (floored at
    :data:`_CTF_FLOOR` of its maximum), the weight of the kernel, the
    compression and the search's template norms.
    """
    kernel: np.ndarray
    eigenvalues: np.ndarray
    vectors: np.ndarray
    rank: int
    ctf: np.ndarray


@dataclass(frozen=True)
class _Projections:
    """The real maps of one group (:meth:`RadialSVDAligner._projections`).

    ``image`` ``(H, R)`` and ``image_zero`` ``(K, R)`` act on the ring
    coefficients of CTF-multiplied images, ``template`` and ``template_zero``
    on those of CTF-free templates.
    """
    image: np.ndarray
    image_zero: np.ndarray
    template: np.ndarray
    template_zero: np.ndarray


def alignment_grid(box, pixel_size=None, resolution=None):
    """The :class:`.polar.PolarGrid` of an alignment of ``box``-pixel images.

    Up to ``resolution`` Å (with ``pixel_size`` Å/px), or the paper's band
    :data:`PAPER_MAX_FREQUENCY` by default, and at most ``box / 2 - 1`` cycles
    per box, where the polar interpolation's taps still fall inside the image's
    band (``docs/methods/radial_svd_alignment.md`` §5).
    """
    max_frequency = (frequency_for_resolution(box, pixel_size, resolution) if resolution
                     else PAPER_MAX_FREQUENCY)
    return PolarGrid.from_max_frequency(box, min(max_frequency, box / 2 - 1))


def shift_grid(max_shift, step=1.0, dimensions=2):
    """Candidate shifts: a lattice of ``step`` pixels inside the ball ``|t| <= max_shift``.

    The core shifts of particles (2-D) and the shifts of volumes (3-D).

    :returns: ``(n_shifts, dimensions)`` float64 ``(tx, ty[, tz])`` pixels: the
        zero shift first, then by length (so ties in a search go to the smallest
        shift); equal lengths counter-clockwise from +x in the ``(x, y)`` plane,
        then by ``z``.
    """
    max_shift, step = float(max_shift), float(step)
    if not np.isfinite(max_shift) or max_shift < 0:
        raise InvalidDataError(f"the maximum shift must be a finite number >= 0 pixels, got "
                               f"{max_shift}")
    if max_shift == 0:
        return np.zeros((1, dimensions))
    if not np.isfinite(step) or step <= 0:
        raise InvalidDataError(f"the shift step must be positive, got {step} pixels")
    count = int(np.floor(max_shift / step + 1e-9))
    offsets = step * np.arange(-count, count + 1)
    lattice = np.stack([axis.ravel() for axis in np.meshgrid(*[offsets] * dimensions)], -1)
    length = np.linalg.norm(lattice, axis=1)
    keep = length <= max_shift * (1 + 1e-9)
    lattice, length = lattice[keep], length[keep]
    angle = np.mod(np.arctan2(lattice[:, 1], lattice[:, 0]), 2 * np.pi)
    order = np.lexsort((*lattice[:, :1:-1].T, angle, np.round(length / step, 9)))
    return lattice[order]


def group_ctfs(ctf_params, grid, pixel_size, tolerance=5e-2, dtype=np.float64):
    """Each particle's CTF on the grid, and groups of particles of similar CTF power.

    Every distinct parameter set's CTF is evaluated at the grid's nodes
    (:func:`.polar.ctf_on_grid`) and its root-mean-square over the angles of
    every ring, ``s[r] = sqrt(mean_j C[r, j]^2)``, computed.  Distinct sets
    are visited in order of first appearance; each joins the first group
    whose representative (its first member) is within ``tolerance`` in
    relative L2 distance of ``s`` on the rings, weighted by the quadrature
    (the disc's area), or starts a new group.  A group's profile is the root
    mean square over its particles (``sqrt`` of the mean ``s^2``): it weights
    the group's kernel and compression and its templates' norms in the search
    (``docs/methods/radial_svd_alignment.md`` §1.6), while every image is
    multiplied by its own CTF.

    :param ctf_params: one :class:`.ctf.CTFParams` per particle.
    :param dtype: precision of the CTF values (:func:`.ctf.ctf_rings`).
    :returns: :class:`CTFGroups`.
    """
    if pixel_size is None or not np.isfinite(pixel_size) or pixel_size <= 0:
        raise MissingMetadataError(f"the particles' CTFs need their pixel size, got "
                                   f"{pixel_size}; set the sampling rate of the particles")
    if tolerance < 0:
        raise InvalidDataError(f"the CTF grouping tolerance must be >= 0, got {tolerance}")
    distinct = {}
    index = np.array([distinct.setdefault(params, len(distinct)) for params in ctf_params])
    tables = ctf_on_grid(list(distinct), grid, pixel_size, dtype)
    power = np.mean(np.square(tables, dtype=np.float64), axis=-1)
    profiles = np.sqrt(power)
    weights = grid.weights

    def norm(values):
        return np.sqrt(np.sum(weights * values ** 2, axis=-1))

    representatives = []
    group_of = np.empty(len(profiles), dtype=np.int64)
    for u, profile in enumerate(profiles):
        if representatives:
            reps = np.array(representatives)
            close = np.flatnonzero(norm(profile - reps) <= tolerance * norm(reps))
            if close.size:
                group_of[u] = close[0]
                continue
        group_of[u] = len(representatives)
        representatives.append(profile)
    counts = np.bincount(index, minlength=len(profiles)).astype(np.float64)
    sums = np.zeros((len(representatives), grid.n_rings))
    np.add.at(sums, group_of, counts[:, None] * power)
    return CTFGroups(group_of[index], np.sqrt(sums / np.bincount(group_of, counts)[:, None]),
                     index, tables)


def radial_kernel(coefficients, weights, centring="template"):
    """Kernel ``C`` ``(R, R)`` of templates from their ring coefficients ``(n, R, Q)``.

    ``C = (1/n) Re sum_b Y_b Y_b^H`` with ``Y_b[r, q] = sqrt(w_r) b[r, q]`` over
    ``q != 0``: each template centred on its own rotational average
    (``centring="template"``, the paper's eqs. (83) and (85)).
    ``centring="population"`` centres them on the templates' mean rotational
    average instead, which adds the covariance over templates of the ``q = 0``
    coefficients.  The coefficients must be those of real images (Hermitian in
    ``q``, even ``Q``, as :func:`.polar.ring_coefficients` gives).
    """
    coefficients = np.asarray(coefficients)
    half = coefficients[..., :coefficients.shape[-1] // 2].transpose(1, 0, 2)
    return _kernel_from_half(half, weights, centring)


def _kernel_from_half(half, weights, centring):
    """:func:`radial_kernel` from ring-major ``(R, n, Q/2)``, ``q = 0 .. Q/2 - 1``.

    ``q`` and ``-q`` together give ``2 Re``.
    """
    n_rings, n, width = half.shape
    half = np.ascontiguousarray(half)
    interleaved = half.view(half.real.dtype).reshape(n_rings, n, 2 * width)
    kernel = np.zeros((n_rings, n_rings))
    for start in range(0, n, _TEMPLATE_CHUNK):
        # Re(conj(Y) Y^T) = Yr Yr^T + Yi Yi^T: one real symmetric product of the
        # interleaved floats, in float64.
        part = interleaved[:, start:start + _TEMPLATE_CHUNK, 2:]
        stacked = np.empty(part.shape)
        stacked[...] = part  # one pass: gather and widen
        stacked = stacked.reshape(n_rings, -1)
        kernel += 2 * (stacked @ stacked.T)
    kernel /= n
    if centring == "population":
        zero = half[:, :, 0].real.T.astype(np.float64)
        mean = zero.mean(axis=0)
        kernel += zero.T @ zero / n - np.outer(mean, mean)
    eta = np.sqrt(weights)
    return kernel * eta[:, None] * eta[None, :]


def choose_rank(eigenvalues, tolerance=1e-2, min_rank=MIN_RANK):
    """``H = #{h : lambda_h / lambda_1 > tolerance}`` clamped to ``[min_rank, R]``.

    The rule of the images' ``H`` and of the volumes' ``H_C`` and ``H_D``
    (``docs/methods/radial_svd_alignment.md`` §2.3).
    """
    eigenvalues = np.asarray(eigenvalues)
    above = (np.count_nonzero(eigenvalues / eigenvalues[0] > tolerance)
             if eigenvalues[0] > 0 else 0)
    return int(min(max(above, min_rank), eigenvalues.size))


def projection_templates(volume, grid, angular_step, backend="auto"):
    """Polar templates of a map seen from the viewing grid of ``angular_step`` degrees.

    :returns: ``(templates (n, R, Q), rotations (n, 3, 3))``, the rotations
        projecting along each direction of :func:`.rotations.viewing_grid` with ``psi = 0``.
    """
    from ..projector import FourierSliceProjector
    directions, _ = rot.viewing_grid(angular_step)
    rotations = rot.rotations_for_directions(directions)
    projector = FourierSliceProjector(volume, backend=backend)
    return projector.project_polar(rotations, grid.radii, grid.n_angles), rotations


def rotations_from_alignment(template_rotations, template_index, angle):
    """Particle rotations ``(n, 3, 3)`` whose projection is the template rotated by ``angle``.

    Template ``j`` is the projection at ``R_j``; rotating it counter-clockwise
    by ``gamma`` samples the volume at ``R_j^T R_z(-gamma) k``, i.e. it is the
    projection at ``R_z(gamma) R_j`` with the active in-plane rotation
    ``R_z(gamma) = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]``.
    """
    template_rotations, _ = rot.validate_poses(template_rotations)
    index = np.asarray(template_index, dtype=np.int64)
    angle = np.asarray(angle, dtype=np.float64)
    if index.shape != angle.shape:
        raise ShapeError(f"template_index {index.shape} and angle {angle.shape} differ in shape")
    return rot.in_plane_rotations(angle) @ template_rotations[index]


def _project_rings(projection, values):
    """``projection @ values`` over the ring axis (-2) for real ``projection`` ``(K, R)``.

    A real matrix acts on real and imaginary parts alike, so the complex
    ``values`` ``(..., R, m)`` go through one real GEMM as interleaved floats.
    """
    values = np.ascontiguousarray(values)
    real = values.view(values.real.dtype)
    return np.matmul(projection.astype(real.dtype), real).view(values.dtype)


def _validate_polar(polar, grid, name):
    """A finite, non-empty ``(n, R, Q)`` stack matching ``grid``."""
    polar = np.asarray(polar)
    expected = (grid.n_rings, grid.n_angles)
    if polar.ndim != 3 or polar.shape[1:] != expected:
        raise ShapeError(f"{name} must have shape (n, {expected[0]}, {expected[1]}) to match "
                         f"the polar grid (rings, angles), got {polar.shape}; compute it with "
                         "polar_transform or project_polar on the same grid")
    if polar.shape[0] == 0:
        raise InvalidDataError(f"{name} is empty: there is nothing to align; check the input set")
    flat = np.ascontiguousarray(polar).reshape(-1)
    if np.isfinite(flat.view(flat.real.dtype) if flat.dtype.kind == "c" else flat).all():
        return polar  # the common case, without a per-image reduction
    finite = np.isfinite(polar).reshape(polar.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidDataError(f"{name} has NaN or infinite values in {bad.size} entries (first: "
                               f"index {bad[0]}); fix or drop those images")
    return polar


class _TopPoses:
    """Per-image sorted candidates: score, template, angle index and shift index ``(n, k)``."""

    def __init__(self, count, kept, dtype):
        self.score = np.full((count, kept), -np.inf, dtype=dtype)
        self.template = np.full((count, kept), -1, dtype=np.int64)
        self.angle = np.zeros((count, kept), dtype=np.int64)
        self.shift = np.zeros((count, kept), dtype=np.int64)

    def select(self, index):
        """Copies of the rows ``index``, for the kernels to update."""
        return [self.score[index], self.template[index], self.angle[index], self.shift[index]]

    def store(self, index, block):
        for array, values in zip((self.score, self.template, self.angle, self.shift), block):
            array[index] = values


class RadialSVDAligner:
    """Align many images against many templates over in-plane angles and shifts.

    :param grid: :class:`.polar.PolarGrid` of the polar samples.
    :param template_polar: ``(n_B, R, Q)`` complex polar samples of the
        CTF-free templates (e.g. ``project_polar`` of a volume, or
        ``polar_transform`` of 2-D references); the aligner keeps a reference
        to them for the norms under astigmatic CTFs.
    :param rank: fixed number ``H`` of principal rings, or None to choose it
        per CTF group from ``tolerance``; ``H = R`` is the exact full-rank path.
    :param tolerance: keep the eigenvalues above ``tolerance * lambda_1``.
    :param min_rank: lower bound of the automatic ``H``.
    :param shifts: ``(n_shifts, 2)`` candidate core shifts in pixels
        (:func:`shift_grid`); None searches ``(0, 0)`` only.
    :param ctf_tolerance: relative distance within which root-mean-square CTFs
        share a group (:func:`group_ctfs`).
    :param kernel_centring: ``"template"`` (the paper's, default) or
        ``"population"`` (:func:`radial_kernel`).
    :param exact_zero_frequency: compute the rotation-invariant term from all
        rings (module docstring); False compresses it too, as the paper does.
    :param refine_candidates: templates per image re-scored with all rings
        after the compressed search (module docstring); 0 reports the
        compressed scores as they are.
    :param dtype: ``np.float32`` (production) or ``np.float64`` for the
        landscapes; kernels and eigenvectors are always float64.
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"`` (:mod:`.kernels`) for
        :meth:`align`; :meth:`landscapes` always runs on the CPU.
    :param block_size: image rows (images x shifts) per block; a block pairs
        them with enough templates to make ``block_size^2`` (image row,
        template) pairs, so small CTF groups still make large GEMMs.  The CPU
        keeps about ``150 * block_size^2 * 4`` bytes of work arrays (float32,
        ``Q`` about 100).
    :param band_tolerance: the compressed search (``H < R``) whose candidates
        the full-rank refinement re-scores keeps the angular frequencies
        ``q < M'`` that hold all but this share of its compressed templates'
        energy (:meth:`_search_band`; 0 keeps all ``Q / 2``), on the same ``Q``
        angles.  Without refinement every frequency is kept.
    :param pruning: when the CPU search prunes (below): ``"auto"`` below
        ``H = R / 2`` while the bounds leave out most pairs (a call's groups
        turn dense after one that evaluated more than :data:`_PRUNED_SHARE`),
        ``"always"`` at every rank (full rank included: the exact
        baseline that compression is measured against), ``"never"`` evaluates
        every pair.  The poses are the same in every mode; only the time
        differs.  The CUDA kernels never prune.
    By default (``pruning="auto"``), below ``H = R / 2`` the CPU search
    prunes (:mod:`.kernels.alignment_pruned_cpu`): it computes every pair's
    compressed ``Xhat`` at the low angular frequencies (cheap at small ``H``;
    Cauchy-Schwarz for the weak high ones) and from it an exact upper bound of
    the pair's landscape, and evaluates the angle DFT, the larger part of a
    pair's cost, only for the pairs whose bound reaches the image's top-k,
    visited in decreasing order of bound; same poses as evaluating every
    pair.  Without noise well under 1 % of the pairs pass; with noise and a
    reference that is not the particles' map about half do, and the dense
    GEMMs are faster, so ``"auto"`` turns to them for the rest of the call.
    At higher rank, full rank included, the dense GEMMs are used unless
    ``pruning="always"``.  The CUDA kernels evaluate every pair (the pruning
    is a data-dependent walk per image that would idle most threads of a
    warp).
    """

    def __init__(self, grid, template_polar, rank=None, tolerance=1e-2, min_rank=MIN_RANK,
                 shifts=None, ctf_tolerance=5e-2, kernel_centring="template", dtype=np.float32,
                 backend="auto", block_size=256, exact_zero_frequency=True, refine_candidates=4,
                 pruning="auto", band_tolerance=1e-4):
        if not isinstance(grid, PolarGrid):
            raise TypeError(f"grid must be a PolarGrid, got {type(grid).__name__}")
        self.grid = grid
        template_polar = _validate_polar(template_polar, grid, "template_polar")
        if kernel_centring not in KERNEL_CENTRINGS:
            raise ValueError(f"kernel_centring must be one of {KERNEL_CENTRINGS}, got "
                             f"{kernel_centring!r}")
        if not 0 <= tolerance < 1:
            raise InvalidDataError(f"the rank tolerance must lie in [0, 1), got {tolerance}")
        if int(min_rank) < 1:
            raise InvalidDataError(f"min_rank must be at least 1, got {min_rank}")
        if int(block_size) < 1:
            raise InvalidDataError(f"block_size must be at least 1, got {block_size}")
        if ctf_tolerance < 0:
            raise InvalidDataError(f"the CTF grouping tolerance must be >= 0, got {ctf_tolerance}")
        if pruning not in PRUNING_MODES:
            raise ValueError(f"pruning must be one of {PRUNING_MODES}, got {pruning!r}")
        self.pruning = pruning
        if not 0 <= band_tolerance < 1:
            raise InvalidDataError(f"the band tolerance must lie in [0, 1), got {band_tolerance}")
        self.band_tolerance = float(band_tolerance)
        self.dtype, self.complex_dtype = working_dtypes(dtype)
        self.rank = None if rank is None else self._checked_rank(rank)
        self.tolerance = float(tolerance)
        self.min_rank = int(min_rank)
        self.shifts = self._checked_shifts(shifts)
        self.ctf_tolerance = float(ctf_tolerance)
        self.kernel_centring = kernel_centring
        self.exact_zero_frequency = bool(exact_zero_frequency)
        if int(refine_candidates) != refine_candidates or refine_candidates < 0:
            raise InvalidDataError(f"refine_candidates must be an integer >= 0, got "
                                   f"{refine_candidates}")
        self.refine_candidates = int(refine_candidates)
        self.backend = resolve_backend(backend)
        if self.backend == "cuda":
            from ..kernels import alignment_cuda as kernels
        else:
            kernels = alignment_cpu
        self._kernels = kernels
        self.block_size = int(block_size)
        self._eta = np.sqrt(grid.weights)
        # Landscapes in units of real-space inner products (module docstring).
        self._factor = 2 * np.pi / grid.box ** 2
        # Ring-major (R, n_B, Q/2): compressing all templates is one GEMM.
        self._templates = self._half_coefficients(template_polar)
        self._template_energy = self._ring_energy(self._templates)
        # Kept for the ring coefficients of |B|^2 that astigmatic CTFs need
        # (_template_power), computed on the first such call.
        self._template_polar = template_polar
        self._power_coefficients = None
        self._template_kernel = _kernel_from_half(self._templates, grid.weights, kernel_centring)

    @property
    def n_templates(self):
        return self._templates.shape[1]

    # ----------------------------------------------------------------- checks
    def _checked_rank(self, rank):
        n_rings = self.grid.n_rings
        if int(rank) != rank or rank < 1:
            raise InvalidDataError(f"the rank H must be a positive integer, got {rank}")
        if rank > n_rings:
            raise InvalidDataError(
                f"the rank H = {rank} exceeds the {n_rings} rings of the polar grid; use "
                f"H <= {n_rings} (H = {n_rings} is exact), leave H automatic, or align at a "
                "finer resolution, which has more rings")
        return int(rank)

    def _checked_shifts(self, shifts):
        if shifts is None:
            return np.zeros((1, 2))
        shifts = np.asarray(shifts, dtype=np.float64)
        if shifts.ndim != 2 or shifts.shape[1] != 2 or shifts.shape[0] == 0:
            raise ShapeError(f"shifts must have shape (n_shifts, 2) with n_shifts >= 1, got "
                             f"{shifts.shape}; build them with shift_grid")
        if not np.isfinite(shifts).all():
            raise InvalidDataError("the candidate shifts contain NaN or infinite values")
        return shifts

    def _groups(self, ctf_params, pixel_size, count):
        if ctf_params is None:
            return CTFGroups(np.zeros(count, dtype=np.int64), np.ones((1, self.grid.n_rings)))
        if len(ctf_params) != count:
            raise ShapeError(f"got {len(ctf_params)} CTFs for {count} images; give one CTF per "
                             "image, or None to align without CTF")
        return group_ctfs(ctf_params, self.grid, pixel_size, self.ctf_tolerance, self.dtype)

    # ----------------------------------------------------------------- representation
    def _half_coefficients(self, polar, power=False):
        """Ring coefficients ``q = 0 .. Q/2 - 1`` ring-major ``(R, n, Q/2)`` of polar samples,
        or with ``power`` of their squared moduli ``|P[r, j]|^2`` (samples real or complex)."""
        half = self.grid.n_angles // 2
        out = np.empty((polar.shape[1], polar.shape[0], half), dtype=self.complex_dtype)
        for start in range(0, polar.shape[0], _FFT_CHUNK):
            part = polar[start:start + _FFT_CHUNK]
            if power:
                squared = (np.square(part.real, dtype=self.dtype)
                           + np.square(part.imag, dtype=self.dtype) if np.iscomplexobj(part)
                           else np.square(part, dtype=self.dtype))
                part = scipy.fft.rfft(squared, axis=-1, norm="forward", workers=fft_workers())
            else:
                part = scipy.fft.fft(part.astype(self.complex_dtype, copy=False), axis=-1,
                                     norm="forward", workers=fft_workers())
            out[:, start:start + _FFT_CHUNK] = part[..., :half].transpose(1, 0, 2)
        return out

    @staticmethod
    def _ring_energy(half):
        """``sum_q |a[r, q]|^2`` over all ``q`` but Nyquist, ``(n, R)``, from ring-major halves."""
        return alignment_cpu.ring_energy(half) - (np.abs(half[..., 0]) ** 2).T

    def _image_energy(self, polar):
        """:meth:`_ring_energy` from polar samples: Parseval, minus the Nyquist bin."""
        return alignment_cpu.polar_energy(polar)

    @property
    def _template_power(self):
        """Ring coefficients ``(R, n_B, Q/2)`` of the templates' ``|B|^2``."""
        if self._power_coefficients is None:
            self._power_coefficients = self._half_coefficients(self._template_polar, power=True)
        return self._power_coefficients

    def _norms(self, energy, ctf):
        """Full-rank norms ``sqrt(2 pi / D^2 sum_r w_r c_r^2 E_r)`` of ring energies ``(n, R)``."""
        # Not a BLAS matrix-vector product: that small product woke BLAS threads,
        # which waited for cores held by numba's spinning threads (~1 ms a call).
        return np.sqrt(self._factor * np.einsum("nr,r->n", energy, self.grid.weights * ctf ** 2))

    def _angle_landscape(self, xhat):
        """``X(gamma_j)`` ``(..., Q)`` from ``Xhat`` ``q = 0 .. Q/2 - 1`` ``(..., Q/2)``.

        ``q`` and ``-q`` together; times the landscape's factor ``2 pi / D^2``.
        """
        n_angles = self.grid.n_angles
        spectrum = np.zeros(xhat.shape[:-1] + (n_angles,), xhat.dtype)
        spectrum[..., 0] = xhat[..., 0].real
        spectrum[..., 1:n_angles // 2] = 2 * xhat[..., 1:]
        # A few hundred short transforms: one thread (handing them to a second
        # one cost more than it saved, ~3 ms per run on 2 cores).
        return scipy.fft.fft(spectrum, axis=-1, workers=1).real * self._factor

    def _ctf_norms(self, power, candidates):
        """``||C_i R_gamma B_t||`` ``(n, k, Q)`` (or ``(n, k, 1)``) of each image's CTF with
        its ``candidates`` ``(n, k)``.

        ``||C R_gamma B||^2 = (2 pi / D^2) sum_r w_r mean_j C[r, j]^2
        |B[r, j - gamma]|^2``, a circular correlation over the angles of ``C^2``
        and ``|B|^2``, is evaluated like a landscape from their ring
        coefficients, ``power`` ``(n, R, Q/2)`` (:meth:`_ctf_power`).  Radial
        CTFs give ``power`` ``(n, R)``, the ring means of ``C^2``, and norms
        that do not depend on ``gamma``: ``(2 pi / D^2) sum_r w_r mean_j
        C[r, j]^2 E_t[r]``.
        """
        if power.ndim == 2:
            energy = self._template_energy[candidates] * self.grid.weights
            return np.sqrt(self._factor * np.einsum("nr,nkr->nk", power, energy))[..., None]
        xhat = alignment_cpu.candidate_spectra(power[:, None], self.grid.weights,
                                               self._template_power, candidates)
        return np.sqrt(np.maximum(self._angle_landscape(xhat)[:, 0], 0))

    # ----------------------------------------------------------------- kernel
    def principal_rings(self, ctf_profile=None, rank=None):
        """Kernel, spectrum and rank of templates weighted by the CTF profile ``(R,)``.

        The kernel of :func:`radial_kernel` of the templates multiplied by
        ``s = ctf_profile`` on every ring, ``diag(s) C diag(s)``: the profile is
        a group's root-mean-square CTF (:func:`group_ctfs`), floored at
        :data:`_CTF_FLOOR` of its maximum.

        :param rank: ``H`` to use, or None for the aligner's rank (fixed or automatic).
        """
        ctf = (np.ones(self.grid.n_rings) if ctf_profile is None
               else np.asarray(ctf_profile, dtype=np.float64))
        if ctf.shape != (self.grid.n_rings,):
            raise ShapeError(f"the CTF profile must have shape ({self.grid.n_rings},), got "
                             f"{ctf.shape}")
        if not (np.all(ctf >= 0) and ctf.max() > 0):
            raise InvalidDataError("the CTF profile is a root-mean-square CTF: it must be >= 0 "
                                   "and not zero on every ring; check the particles' CTFs")
        ctf = np.maximum(ctf, _CTF_FLOOR * ctf.max())
        kernel = ctf[:, None] * self._template_kernel * ctf[None, :]
        eigenvalues, vectors = np.linalg.eigh(kernel)
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
        if rank is None:
            rank = (self.rank if self.rank is not None
                    else choose_rank(eigenvalues, self.tolerance, self.min_rank))
        else:
            rank = self._checked_rank(rank)
        return PrincipalRings(kernel, eigenvalues, vectors, rank, ctf)

    def _projections(self, rings):
        """The real maps of one group from ring coefficients to compressed ones.

        ``docs/methods/radial_svd_alignment.md`` §2.4: with ``U_H`` the
        group's principal rings and ``s`` its profile, CTF-multiplied images
        take ``U_H^T diag(eta / s)`` and CTF-free templates ``U_H^T diag(eta
        s)``, so the compressed product approximates ``sum_r w_r conj(c a_r)
        b_r`` and equals it at ``H = R``.  ``q = 0`` keeps all rings
        (``diag(eta)`` on both sides) with :attr:`exact_zero_frequency`.
        """
        basis = rings.vectors[:, :rings.rank].T * self._eta[None, :]
        image = np.ascontiguousarray(basis / rings.ctf[None, :])
        template = np.ascontiguousarray(basis * rings.ctf[None, :])
        if self.exact_zero_frequency:
            return _Projections(image, np.diag(self._eta), template, np.diag(self._eta))
        return _Projections(image, image, template, template)

    def _compress(self, polar, projections, band=None):
        """Coefficients ``(n, H, M' - 1)`` of ``q = 1 .. M' - 1`` and ``(n, K)`` of ``q = 0``.

        ``polar`` are CTF-multiplied image samples; ``band`` ``M'`` (None:
        ``Q/2``).  The rings are projected first and then transformed over the
        angles (the two commute), so only ``H`` rings go through the FFT.
        """
        n_angles = self.grid.n_angles
        polar = np.ascontiguousarray(polar, dtype=self.complex_dtype)
        rings = _project_rings(projections.image, polar)
        coefficients = scipy.fft.fft(rings, axis=-1, workers=fft_workers())[
            ..., 1:n_angles // 2 if band is None else band]
        coefficients /= n_angles
        zero = polar.mean(axis=-1).real @ projections.image_zero.T
        return coefficients.astype(self.complex_dtype), zero

    def _compressed_templates(self, rings_list):
        """Compressed templates of several groups from one GEMM.

        The template coefficients (tens of MB) are read once for all groups
        instead of once per group.  :returns: per group ``(H, n_B, Q/2)``
        complex coefficients and ``(n_B, K)`` real ``q = 0`` coefficients.
        """
        n_rings, n_templates, half = self._templates.shape
        stacked = [self._projections(rings) for rings in rings_list]
        projection = np.concatenate([p.template for p in stacked])
        compressed = _project_rings(projection, self._templates.reshape(n_rings, -1))
        compressed = compressed.reshape(-1, n_templates, half)
        zero_coefficients = self._templates[:, :, 0].real.T
        out, start = [], 0
        for p in stacked:
            out.append((compressed[start:start + p.template.shape[0]],
                        zero_coefficients @ p.template_zero.T))
            start += p.template.shape[0]
        return out

    def _prepare_templates(self, rings, kernels, rows, scale, compressed=None, band=None):
        """Templates of one group, compressed, for a kernel module.

        Blocks hold ``block_size^2 / rows`` templates for image blocks of
        ``rows`` rows; ``scale`` ``(n_B,)`` multiplies each template's
        landscape; ``compressed`` the group's entry of
        :meth:`_compressed_templates` when computed already; ``band`` the
        frequencies ``q < band`` kept (None: all).
        """
        width = max(1, min(self.n_templates, self.block_size ** 2 // rows))
        if compressed is None:
            compressed = self._compressed_templates([rings])[0]
        compressed, zero = compressed
        return kernels.prepare_templates(compressed[:, :, 1:band].transpose(1, 0, 2), zero, scale,
                                         self.grid.n_angles, self._factor, width, self.dtype)

    def _search_band(self, compressed, rank):
        """Frequencies ``M'`` the compressed search keeps (``q < M'``; ``Q / 2``: all).

        The fewest leading frequencies whose compressed template coefficients
        ``compressed`` ``(H, n_B, Q/2)`` leave at most :attr:`band_tolerance` of
        their energy over ``q >= 1`` out.  The principal rings favour the
        strong inner rings, whose angular band is narrow: on the 128 px
        benchmark, ``H = 7`` leaves 1e-4 of the energy above ``q = 22`` of 48,
        so the angle DFT and the products cost half.  Full rank keeps all.
        """
        half = self.grid.n_angles // 2
        if rank >= self.grid.n_rings or self.band_tolerance == 0:
            return half
        energy = np.einsum("hbq,hbq->q", compressed[:, :, 1:].real, compressed[:, :, 1:].real,
                           dtype=np.float64)
        energy += np.einsum("hbq,hbq->q", compressed[:, :, 1:].imag, compressed[:, :, 1:].imag,
                            dtype=np.float64)
        if not energy.sum() > 0:
            return half
        # tails[n]: the share of the energy at q >= n + 1.
        tails = np.cumsum(energy[::-1])[::-1] / energy.sum()
        return int(np.argmax(np.append(tails, 0.0) <= self.band_tolerance)) + 1

    def _prunes(self, rank):
        """Whether the search of a group of rank ``rank`` prunes (:attr:`pruning`)."""
        if self.backend != "cpu" or self.pruning == "never":
            return False
        return self.pruning == "always" or 2 * rank <= self.grid.n_rings

    # ----------------------------------------------------------------- alignment
    def align(self, image_polar, ctf_params=None, pixel_size=None, top_k=1, progress=None,
              rank=None):
        """Best template, in-plane angle and shift of every image.

        :param image_polar: ``(n, R, Q)`` polar samples of the particle images.
        :param ctf_params: one :class:`.ctf.CTFParams` per image, or None (no CTF).
        :param pixel_size: Å per pixel, needed with ``ctf_params``.
        :param top_k: also keep the ``top_k`` best templates of every image.
        :param progress: None or a callable taking a :class:`.progress.Progress` as images
            are finished.
        :param rank: override of ``H`` for this call (None: the aligner's).
        :returns: :class:`AlignmentResult`.
        """
        image_polar = _validate_polar(image_polar, self.grid, "image_polar")
        count = image_polar.shape[0]
        report = Reporter(progress)
        if int(top_k) != top_k or not 1 <= top_k <= self.n_templates:
            raise InvalidDataError(f"top_k must be an integer between 1 and the {self.n_templates} "
                                   f"templates, got {top_k}")
        top_k = int(top_k)
        groups = self._groups(ctf_params, pixel_size, count)
        power = self._ctf_power(groups)
        n_shifts = self.shifts.shape[0]
        phases = shift_phases(self.grid, self.shifts).astype(self.complex_dtype)
        # Only the zero shift (the default): no phases to multiply by.
        identity = n_shifts == 1 and bool(np.all(phases == 1))
        per_block = max(1, self.block_size // n_shifts)
        kept = min(max(top_k, self.refine_candidates), self.n_templates)
        top = _TopPoses(count, kept, self.dtype)
        image_norm = np.empty(count)
        n_groups = groups.profiles.shape[0]
        eigenvalues = np.empty((n_groups, self.grid.n_rings))
        ranks = np.empty(n_groups, dtype=np.int64)
        done = 0
        all_rings = [self.principal_rings(profile, rank) for profile in groups.profiles]
        pruned = [self._prunes(rings.rank) for rings in all_rings]
        # The templates of the pruned groups of small H are compressed together in
        # one GEMM (at large H, all groups' at once would take hundreds of MB).
        batched = [p and 2 * rings.rank <= self.grid.n_rings for rings, p in zip(all_rings, pruned)]
        compressed = dict(zip(np.flatnonzero(batched), self._compressed_templates(
            [rings for rings, b in zip(all_rings, batched) if b]) if any(batched) else []))
        statistics = SearchStatistics()
        prune_pays = True
        for g, rings in enumerate(all_rings):
            eigenvalues[g], ranks[g] = rings.eigenvalues, rings.rank
            members = np.flatnonzero(groups.labels == g)
            template_scale = self._template_scale(rings.ctf)
            prunes = pruned[g] and (prune_pays or self.pruning == "always")
            kernels = alignment_pruned_cpu if prunes else self._kernels
            # The search's norms are the group's; the refinement scores with each
            # image's own CTF, so it also runs at full rank when there is one.
            refine = self.refine_candidates > 0 and (rings.rank < self.grid.n_rings
                                                     or power is not None)
            group_templates = compressed.pop(g, None) or self._compressed_templates([rings])[0]
            # Only a search whose candidates are re-scored leaves out frequencies.
            band = self._search_band(group_templates[0], rings.rank) if refine else None
            templates = self._prepare_templates(rings, kernels,
                                                min(per_block, members.size) * n_shifts,
                                                template_scale, group_templates, band)
            projections = self._projections(rings)
            for start in range(0, members.size, per_block):
                index = members[start:start + per_block]
                polar = image_polar[index]
                image_norm[index] = self._norms(self._image_energy(polar),
                                                np.ones(self.grid.n_rings))
                ctf = None if groups.tables is None else groups.tables[groups.index[index]]
                if refine:
                    # The refinement needs every ring's coefficients: transform all
                    # rings once and compress those (projection and FFT commute).
                    full = self._full_coefficients(polar, ctf, None if identity else phases)
                    coefficients, zero = self._compress_coefficients(full, projections, band)
                else:
                    if ctf is not None:
                        polar = polar * ctf
                    rows = [self._compress(polar if identity else polar * phase, projections,
                                           band) for phase in phases]
                    coefficients = np.stack([c for c, _ in rows], axis=1).reshape(
                        (-1,) + rows[0][0].shape[1:])
                    zero = np.stack([z for _, z in rows], axis=1).reshape(-1,
                                                                          rows[0][1].shape[1])
                block = top.select(index)
                searched = kernels.search(templates, coefficients, zero, n_shifts, *block)
                statistics += searched
                if prunes and searched.evaluated > _PRUNED_SHARE * searched.pairs:
                    prune_pays = False
                if refine:
                    block = self._refine(full, None if power is None
                                         else power[groups.index[index]], template_scale,
                                         block[1])
                top.store(index, block)
                done += index.size
                report("Images aligned", done, count)
        inverse_norm = np.divide(1.0, image_norm, out=np.zeros_like(image_norm),
                                 where=image_norm > 0)
        scores = top.score[:, :top_k].astype(np.float64) * inverse_norm[:, None]
        templates_found = top.template[:, :top_k]
        angles = top.angle[:, :top_k] * self.grid.angular_step
        shifts = self.shifts[top.shift[:, :top_k]]
        result = AlignmentResult(templates_found[:, 0].copy(), angles[:, 0].copy(),
                                 shifts[:, 0].copy(), scores[:, 0].copy(), groups.labels, ranks,
                                 eigenvalues, groups.profiles, statistics=statistics)
        if top_k > 1:
            result.top_template, result.top_angle = templates_found, angles
            result.top_shift, result.top_score = shifts, scores
        return result

    def _ctf_power(self, groups):
        """The squared CTFs that :meth:`_ctf_norms` needs, one per distinct CTF.

        Their ring coefficients ``(m, R, Q/2)`` when some CTF is astigmatic,
        else (``C^2`` constant on every ring) their ring means ``(m, R)``;
        None without CTF.
        """
        if groups.tables is None:
            return None
        tables = groups.tables
        if np.all(tables == tables[..., :1]):
            return np.mean(np.square(tables, dtype=np.float64), axis=-1)
        return np.ascontiguousarray(
            self._half_coefficients(tables, power=True).transpose(1, 0, 2))

    def _template_scale(self, ctf):
        """``1 / ||c B||`` of every template (0 for empty templates) for a radial ``c``."""
        norms = self._norms(self._template_energy, ctf)
        return np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)

    def _full_coefficients(self, polar, ctf, phases):
        """Ring coefficients ``q = 0 .. Q/2 - 1`` ``(n, S, R, Q/2)`` of the shifted images.

        ``ctf`` ``(n, R, Q)`` multiplies the images first (None: no CTF);
        ``phases`` None: the zero shift only (``S = 1``).
        """
        half = self.grid.n_angles // 2
        n_shifts = 1 if phases is None else phases.shape[0]
        out = np.empty((polar.shape[0], n_shifts, polar.shape[1], half), self.complex_dtype)
        # One work array for every chunk: the shifted copies (tens of MB a chunk)
        # would otherwise be fresh memory, page faults and all, every time.
        work = np.empty((min(_FFT_CHUNK, polar.shape[0]), n_shifts) + polar.shape[1:],
                        self.complex_dtype)
        for start in range(0, polar.shape[0], _FFT_CHUNK):
            chunk = slice(start, start + _FFT_CHUNK)
            part = polar[chunk, None].astype(self.complex_dtype, copy=False)
            if ctf is not None:
                part = part * ctf[chunk, None]
            shifted = work[:part.shape[0]]
            if phases is None:
                shifted[...] = part
            else:
                np.multiply(part, phases[None], out=shifted)
            out[chunk] = scipy.fft.fft(shifted, axis=-1, overwrite_x=True, norm="forward",
                                       workers=fft_workers())[..., :half]
        return out

    def _compress_coefficients(self, full, projections, band=None):
        """:meth:`_compress` of :meth:`_full_coefficients`: ``(n S, H, M' - 1)``, ``(n S, K)``.

        Projecting the coefficients equals transforming the projected rings.
        """
        rows = full.shape[0] * full.shape[1]
        compressed = _project_rings(projections.image, full[..., :band])[..., 1:]
        zero = full[..., 0].real.reshape(rows, -1) @ projections.image_zero.T
        return compressed.reshape((rows,) + compressed.shape[2:]), zero

    def _refine(self, full, power, template_scale, candidates):
        """Full-rank scores of each image's ``candidates`` ``(n, k)``, re-ranked.

        The landscape with ``H = R``, evaluated per (image, candidate) at every
        shift and angle from the images' :meth:`_full_coefficients` ``full``,
        over ``||C_i R_gamma B||`` from each image's CTF ``power``
        (:meth:`_ctf_norms`) or, without CTF, times ``template_scale``.
        :returns: score, template, angle and shift arrays ``(n, k)``, best first.
        """
        n_angles = self.grid.n_angles
        n_images, kept = candidates.shape
        out = [np.empty((n_images, kept), dtype) for dtype in
               (self.dtype, np.int64, np.int64, np.int64)]
        for start in range(0, n_images, _REFINE_CHUNK):
            chunk = slice(start, start + _REFINE_CHUNK)
            chosen = candidates[chunk]
            landscape = self._angle_landscape(alignment_cpu.candidate_spectra(
                full[chunk], self.grid.weights, self._templates, chosen))
            if power is None:
                landscape *= template_scale[chosen][:, None, :, None]
            else:
                norms = self._ctf_norms(power[chunk], chosen)[:, None]
                landscape = np.divide(landscape, norms, out=np.zeros_like(landscape),
                                      where=norms > 0)
            flat = landscape.transpose(0, 2, 1, 3).reshape(len(chosen), kept, -1)
            best = flat.argmax(axis=-1)
            score = np.take_along_axis(flat, best[..., None], -1)[..., 0]
            order = np.argsort(-score, axis=1, kind="stable")
            for array, values in zip(out, (score, chosen, best % n_angles, best // n_angles)):
                array[chunk] = np.take_along_axis(values, order, 1)
        return out

    def landscapes(self, image_polar, rank=None, ctf_params=None, pixel_size=None, shifts=None,
                   normalized=False):
        """Full landscapes ``(n, n_B, Q)`` over the ``Q`` angles, for small inputs.

        ``X[i, b, j] = <C_i A_i, R_{gamma_j} B_b> = <A_i, C_i R_{gamma_j} B_b>``
        (the real-space inner product, compressed to ``H`` rings, with each
        image's own CTF ``C_i``), or with ``normalized`` the score of
        :meth:`align`'s refinement, ``X / (||A_i|| ||C_i R_{gamma_j} B_b||)``.

        :param rank: ``H``; None uses the aligner's (fixed or automatic per group).
        :param shifts: None, one core shift ``(2,)`` or one per image ``(n, 2)``,
            undone on the images before comparing.
        """
        image_polar = _validate_polar(image_polar, self.grid, "image_polar")
        count = image_polar.shape[0]
        groups = self._groups(ctf_params, pixel_size, count)
        power = self._ctf_power(groups)
        if shifts is not None:
            shifts = np.broadcast_to(np.asarray(shifts, dtype=np.float64), (count, 2))
        out = np.empty((count, self.n_templates, self.grid.n_angles), dtype=self.dtype)
        every_template = np.arange(self.n_templates)
        for g, profile in enumerate(groups.profiles):
            rings = self.principal_rings(profile, rank)
            members = np.flatnonzero(groups.labels == g)
            templates = self._prepare_templates(rings, alignment_cpu, members.size,
                                                np.ones(self.n_templates))
            polar = image_polar[members]
            if groups.tables is not None:
                polar = polar * groups.tables[groups.index[members]]
            if shifts is not None:
                polar = polar * shift_phases(self.grid, shifts[members])
            coefficients, zero = self._compress(polar, self._projections(rings))
            out[members] = alignment_cpu.landscapes(templates, coefficients, zero)
            if not normalized:
                continue
            norm = self._norms(self._image_energy(image_polar[members]),
                               np.ones(self.grid.n_rings))
            out[members] *= np.divide(1.0, norm, out=np.zeros_like(norm),
                                      where=norm > 0)[:, None, None].astype(self.dtype)
            if power is None:
                out[members] *= self._template_scale(rings.ctf)[None, :, None].astype(self.dtype)
            else:
                norms = self._ctf_norms(power[groups.index[members]],
                                        np.broadcast_to(every_template, (members.size,
                                                                         self.n_templates)))
                out[members] = np.divide(out[members], norms, out=np.zeros_like(out[members]),
                                         where=norms > 0)
        return out


def polarity_against_templates(aligner, image_polar, ctf_params=None, pixel_size=None):
    """Polarity of particles without poses: their best scores against the negated images'.

    White particles (``docs/conventions.md``, "Contrast") match the templates
    better than their negatives do; a search maximises the correlation, so a
    dark particle also finds a positive best score, and only the comparison
    with its negative tells the sign.  The images and their negatives are
    aligned in one call of ``aligner`` (:meth:`RadialSVDAligner.align`, or
    :meth:`.translations.ParticleSearch.align` for the search a run uses, with
    the images' CTFs).

    :param image_polar: ``(n, R, Q)`` polar samples of a few particles (``n >= 2``).
    :returns: :class:`.contrast.PolarityTest`; its ``check()`` raises
        :class:`.contrast.PolarityError`, naming the fix, for dark particles.
    """
    image_polar = _validate_polar(image_polar, aligner.grid, "image_polar")
    count = image_polar.shape[0]
    ctfs = None if ctf_params is None else list(ctf_params) * 2
    scores = aligner.align(np.concatenate([image_polar, -image_polar]), ctfs, pixel_size).score
    return polarity_from_scores(scores[:count], scores[count:])
