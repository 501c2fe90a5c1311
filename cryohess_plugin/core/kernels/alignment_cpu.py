"""CPU kernels of the radial-SVD alignment: BLAS GEMMs for the landscapes, numba for the reduction.

Inputs come from :mod:`..radial_svd`: per image row (an image at one
candidate shift) and per template, compressed ring coefficients for the
angular frequencies ``q = 1 .. M - 1`` (``M = Q / 2``; the Nyquist bin is zero
and negative ``q`` follow from Hermitian symmetry) and real coefficients of
the rotation-invariant frequency ``q = 0``.  For image row ``a`` and template ``b``

    Xhat[a, b, 0] = sum_k Z[a, k] Zb[b, k]
    Xhat[a, b, q] = sum_h conj(A[a, h, q]) B[b, h, q]                   (q >= 1)
    X[a, b, j]    = sum_{q=-M+1}^{M-1} Xhat[a, b, q] exp(-i q gamma_j),   gamma_j = 2 pi j / Q

is the landscape over the ``Q`` in-plane angles, up to the constant folded
into the angle tables.

Step 1 runs as real GEMMs: with ``[Ar Ai]`` the image coefficients side by
side, ``Re Xhat = [Ar Ai] @ [Br; Bi]`` and ``Im Xhat = [Ar Ai] @ [Bi; -Br]``,
batched over ``q``; ``Xhat[.., 0]`` is one more GEMM.

Step 2, the real DFT over ``q``, is a GEMM too, with precomputed cos/sin
tables, and uses the symmetries of the angle grid to do a quarter of the
work: with ``Ce, Co`` the sums of ``Re Xhat cos(q gamma_j)`` over even and odd
``q`` and ``Se, So`` those of ``Im Xhat sin(q gamma_j)``, only
``j = 0 .. M // 2`` are needed, since

    X[j]     = (Ce + Se) + (Co + So)      X[j + M] = (Ce + Se) - (Co + So)
    X[Q - j] = (Ce - Se) + (Co - So)      X[M - j] = (Ce - Se) - (Co - So)

(``gamma -> gamma + pi`` flips the odd ``q``, ``gamma -> -gamma`` the sines).
For the small ``Q`` of the method (about 100) these GEMMs beat a batched FFT
here: the plain DFT GEMM already ran at about 7e6 landscapes per second on two
cores against 2e6 for pocketfft's ``hfft``, and this is half of it.

:func:`reduce_block` then keeps, per image, the best angle and shift of every
template and merges the templates into a sorted top-k list, without ever
writing the ``Q`` angles of all pairs.

At small ``H`` the pruned search of :mod:`.alignment_pruned_cpu` replaces
these GEMMs; it shares :func:`frequency_order`, :func:`angle_tables` and the
top-k insertion with this module and keeps the same poses.  Both searches
return :class:`SearchStatistics`.
"""
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable


@dataclass(frozen=True)
class SearchStatistics:
    """What a search did: the (image row, template) pairs it compared and those whose
    angle DFT it evaluated (all of them, unless the search prunes)."""
    pairs: int = 0
    evaluated: int = 0

    def __add__(self, other):
        return SearchStatistics(self.pairs + other.pairs, self.evaluated + other.evaluated)


@dataclass(frozen=True)
class PreparedTemplates:
    """Compressed templates of one CTF group, laid out for the GEMMs.

    ``blocks[i]`` ``(2, M - 1, 2H, n_b)`` holds templates ``starts[i] ..
    starts[i] + n_b`` as ``[Br; Bi]`` (giving ``Re Xhat``) and ``[Bi; -Br]``
    (giving ``Im Xhat``) per frequency ``q >= 1`` in :func:`frequency_order`;
    ``zero_blocks[i]`` ``(K, n_b)`` their ``q = 0`` coefficients; ``scale``
    ``(n_B,)`` multiplies every landscape value before comparison (the
    template normalisation); ``tables`` are :func:`angle_tables`.
    """
    blocks: list
    zero_blocks: list
    starts: list
    scale: np.ndarray
    tables: tuple
    n_angles: int
    factor: float = 1.0
    workspaces: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_templates(self):
        return self.scale.size

    def workspace(self, rows):
        """GEMM outputs for ``rows`` image rows, kept for the next image block."""
        current = self.workspaces.get("gemm")
        if current is None or current.rows < rows:
            current = self.workspaces["gemm"] = _Workspace(self, rows)
        return current


def frequency_order(half_angles):
    """Positions in ``q = 1 .. M - 1`` of the even frequencies, then of the odd ones."""
    q = np.arange(1, half_angles)
    return np.concatenate([np.flatnonzero(q % 2 == 0), np.flatnonzero(q % 2 == 1)])


def angle_tables(n_angles, factor, dtype, band=None):
    """Real DFT tables over ``j = 0 .. M // 2``: ``(cos_even, cos_odd, sin_even, sin_odd)``.

    Column ``i`` of a table multiplies the ``i``-th frequency of its parity in
    :func:`frequency_order` by ``2 factor cos(q gamma_j)`` (or ``sin``): ``q``
    and ``-q`` together.  ``cos_even`` starts with the column of ``q = 0``,
    ``factor``.  ``band``: the frequencies ``q < band`` the landscapes keep
    (None: all, ``M``), still on the ``Q`` angles.
    """
    half = n_angles // 2
    gamma = 2 * np.pi * np.arange(half // 2 + 1) / n_angles
    q = np.arange(1, half if band is None else band)
    even, odd = q[q % 2 == 0], q[q % 2 == 1]

    def table(function, frequencies):
        return 2 * factor * function(gamma[:, None] * frequencies[None])

    cos_even = np.concatenate([np.full((gamma.size, 1), factor), table(np.cos, even)], axis=1)
    return tuple(np.ascontiguousarray(t, dtype=dtype) for t in
                 (cos_even, table(np.cos, odd), table(np.sin, even), table(np.sin, odd)))



def prepare_templates(coefficients, zero, scale, n_angles, factor, block_width, dtype):
    """Lay out templates for :func:`search`.

    :param coefficients: ``(n_B, H, M' - 1)`` complex, frequencies ``q = 1 .. M' - 1``
        (``M' <= M``: the landscapes leave out the frequencies above).
    :param zero: ``(n_B, K)`` real coefficients of ``q = 0``.
    :param scale: ``(n_B,)`` factor applied to each template's landscape (``>= 0``).
    :param factor: constant folded into the angle tables.
    :param block_width: templates per GEMM block.
    :returns: :class:`PreparedTemplates`.
    """
    band = coefficients.shape[2] + 1
    tables = angle_tables(n_angles, factor, dtype, band)
    scale = np.ascontiguousarray(scale, dtype=dtype)
    coefficients = coefficients[:, :, frequency_order(band)]
    blocks, zero_blocks, starts = [], [], []
    for start in range(0, coefficients.shape[0], block_width):
        part = coefficients[start:start + block_width].transpose(2, 1, 0)  # (M - 1, H, n_b)
        real, imag = part.real, part.imag
        blocks.append(np.ascontiguousarray(np.stack([np.concatenate([real, imag], axis=1),
                                                     np.concatenate([imag, -real], axis=1)]),
                                           dtype=dtype))
        zero_blocks.append(np.ascontiguousarray(zero[start:start + block_width].T, dtype=dtype))
        starts.append(start)
    return PreparedTemplates(blocks, zero_blocks, starts, scale, tables, int(n_angles),
                             float(factor))


def _image_matrices(coefficients, zero, dtype):
    """``(M - 1, rows, 2H)`` ``[Ar Ai]`` per frequency in :func:`frequency_order`, and ``zero``."""
    part = coefficients[:, :, frequency_order(coefficients.shape[2] + 1)].transpose(2, 0, 1)
    images = np.ascontiguousarray(np.concatenate([part.real, part.imag], axis=2), dtype=dtype)
    return images, np.ascontiguousarray(zero, dtype=dtype)


class _Workspace:
    """GEMM outputs for the largest block, reused so every block skips fresh page faults.

    ``products`` holds ``Xhat`` as real rows, each ``rows x n_b``: ``q = 0``,
    then ``Re`` of every ``q >= 1``, then ``Im``, in :func:`frequency_order`,
    so each table of :func:`angle_tables` meets a contiguous range of rows.
    """

    def __init__(self, templates, rows):
        _, n_freq, _, n_b = templates.blocks[0].shape
        n_rows = templates.tables[0].shape[0]
        dtype = templates.scale.dtype
        self.rows = rows
        self.products = np.empty((1 + 2 * n_freq) * rows * n_b, dtype)
        self.sums = np.empty((4, n_rows * rows * n_b), dtype)

    def spectra(self, images, zero, block, zero_block):
        """Step 1: ``Xhat`` of one template block as ``(1 + 2 (M - 1), rows * n_b)`` real rows."""
        n_freq, rows, _ = images.shape
        n_b = block.shape[3]
        pairs = rows * n_b
        flat = self.products[:(1 + 2 * n_freq) * pairs].reshape(1 + 2 * n_freq, pairs)
        np.matmul(zero, zero_block, out=flat[0].reshape(rows, n_b))
        np.matmul(images, block, out=flat[1:].reshape(2, n_freq, rows, n_b))
        return flat

    def dft(self, flat, templates, columns):
        """Step 2 on the first ``columns`` columns of ``flat``: ``(Ce, Co, Se, So)``, each
        ``(M // 2 + 1, columns)``."""
        n_freq = (flat.shape[0] - 1) // 2
        cos_even, cos_odd, sin_even, sin_odd = templates.tables
        n_even = sin_even.shape[1]
        ranges = ((cos_even, 0, 1 + n_even), (cos_odd, 1 + n_even, 1 + n_freq),
                  (sin_even, 1 + n_freq, 1 + n_freq + n_even),
                  (sin_odd, 1 + n_freq + n_even, 1 + 2 * n_freq))
        n_rows = cos_even.shape[0]
        out = []
        for index, (table, first, last) in enumerate(ranges):
            target = self.sums[index, :n_rows * columns].reshape(n_rows, columns)
            np.matmul(table, flat[first:last, :columns], out=target)
            out.append(target)
        return out

    def partial_landscapes(self, images, zero, templates, block, zero_block):
        """``(Ce, Co, Se, So)``, each ``(M // 2 + 1, rows, n_b)``, of one template block."""
        rows, n_b = images.shape[1], block.shape[3]
        flat = self.spectra(images, zero, block, zero_block)
        return [part.reshape(-1, rows, n_b) for part in self.dft(flat, templates, rows * n_b)]


def landscapes(templates, image_coefficients, image_zero):
    """Full landscapes ``(rows, n_B, Q)`` times the template scale (small inputs).

    :param image_coefficients: ``(rows, H, M - 1)`` complex; :param image_zero: ``(rows, K)``.
    """
    dtype = templates.scale.dtype
    images, zero = _image_matrices(image_coefficients, image_zero, dtype)
    rows = images.shape[1]
    n_angles = templates.n_angles
    half = n_angles // 2
    out = np.empty((rows, templates.n_templates, n_angles), dtype)
    workspace = templates.workspace(rows)
    for start, block, zero_block in zip(templates.starts, templates.blocks, templates.zero_blocks):
        cos_even, cos_odd, sin_even, sin_odd = workspace.partial_landscapes(
            images, zero, templates, block, zero_block)
        columns = slice(start, start + block.shape[3])
        scale = templates.scale[None, columns]
        for j in range(cos_even.shape[0]):
            plus, minus = cos_even[j] + sin_even[j], cos_even[j] - sin_even[j]
            odd_plus, odd_minus = cos_odd[j] + sin_odd[j], cos_odd[j] - sin_odd[j]
            out[:, columns, (n_angles - j) % n_angles] = (minus + odd_minus) * scale
            out[:, columns, half - j] = (minus - odd_minus) * scale
            out[:, columns, j] = (plus + odd_plus) * scale
            out[:, columns, j + half] = (plus - odd_plus) * scale
    return out


def search(templates, image_coefficients, image_zero, n_shifts, top_score, top_template,
           top_angle, top_shift):
    """Merge the best poses of images against all templates into the top-k arrays.

    :param templates: :class:`PreparedTemplates` (:func:`prepare_templates`).
    :param image_coefficients: ``(n * n_shifts, H, M - 1)`` complex, rows of
        image ``i`` at ``i * n_shifts .. i * n_shifts + n_shifts - 1``.
    :param image_zero: ``(n * n_shifts, K)`` real ``q = 0`` coefficients.
    :param top_score, top_template, top_angle, top_shift: ``(n, k)`` arrays,
        updated in place (scores sorted descending; angle and shift are indices).
    :returns: :class:`SearchStatistics` (every pair is evaluated).
    """
    dtype = templates.scale.dtype
    images, zero = _image_matrices(image_coefficients, image_zero, dtype)
    workspace = templates.workspace(images.shape[1])
    for start, block, zero_block in zip(templates.starts, templates.blocks, templates.zero_blocks):
        scale = templates.scale[start:start + block.shape[3]]
        sums = workspace.partial_landscapes(images, zero, templates, block, zero_block)
        reduce_block(*sums, n_shifts, scale, templates.n_angles, start, top_score,
                     top_template, top_angle, top_shift)
    pairs = image_coefficients.shape[0] * templates.n_templates
    return SearchStatistics(pairs, pairs)


def candidate_spectra(images, weights, templates, candidates):
    """Full-rank ``Xhat`` ``(n, S, k, M)`` of each image with its own few candidate templates.

    ``Xhat[n, s, c, q] = sum_r conj(images[n, s, r, q]) weights[r] templates[r, t, q]``
    with ``t = candidates[n, c]`` (ring-major ``templates``), for the
    refinement of :mod:`..radial_svd`.  Complex arrays travel as interleaved
    floats.
    """
    images = np.ascontiguousarray(images)
    out = np.empty(images.shape[:2] + (candidates.shape[1], images.shape[3]), images.dtype)
    real = images.real.dtype
    _candidate_spectra(images.view(real), weights.astype(real), templates.view(real),
                       np.ascontiguousarray(candidates), out.view(real))
    return out


@njit(parallel=True, cache=True)
def _candidate_spectra(images, weights, templates, candidates, out):
    n_images, n_shifts, n_rings, width = images.shape
    half = width // 2
    kept = candidates.shape[1]
    for n in prange(n_images):
        # Weighted image rings, split into real and imaginary parts once per
        # row for all candidates; separate accumulators keep the q loops vectorisable.
        image_re = np.empty((n_rings, half), images.dtype)
        image_im = np.empty((n_rings, half), images.dtype)
        acc_re = np.empty((1, half), images.dtype)
        acc_im = np.empty((1, half), images.dtype)
        for s in range(n_shifts):
            for r in range(n_rings):
                for q in range(half):
                    image_re[r, q] = weights[r] * images[n, s, r, 2 * q]
                    image_im[r, q] = weights[r] * images[n, s, r, 2 * q + 1]
            for c in range(kept):
                t = candidates[n, c]
                for q in range(half):
                    acc_re[0, q] = 0
                    acc_im[0, q] = 0
                for r in range(n_rings):
                    for q in range(half):
                        ar = image_re[r, q]
                        ai = image_im[r, q]
                        br = templates[r, t, 2 * q]
                        bi = templates[r, t, 2 * q + 1]
                        acc_re[0, q] += ar * br + ai * bi
                        acc_im[0, q] += ar * bi - ai * br
                for q in range(half):
                    out[n, s, c, 2 * q] = acc_re[0, q]
                    out[n, s, c, 2 * q + 1] = acc_im[0, q]


def ring_energy(half):
    """``2 sum_q |a[r, q]|^2`` ``(n, R)``, accumulated in float64, from ring-major ``(R, n, M)``."""
    half = np.ascontiguousarray(half)
    out = np.empty(half.shape[1::-1])
    _ring_energy(half.view(half.real.dtype), out)
    return out


@njit(cache=True)
def _ring_energy(values, out):
    n_rings, count, width = values.shape
    for r in range(n_rings):
        for n in range(count):
            total = 0.0
            for m in range(width):
                total += np.float64(values[r, n, m]) * np.float64(values[r, n, m])
            out[n, r] = 2 * total


def polar_energy(polar):
    """Ring energies ``(n, R)`` float64 from complex polar samples ``(n, R, Q)``, ``Q`` even.

    Parseval: ``mean_j |P[r, j]|^2 - |mean_j (-1)^j P[r, j]|^2``, all but the
    Nyquist coefficient; :func:`ring_energy` of the ring coefficients.
    """
    polar = np.ascontiguousarray(polar)
    if polar.dtype.kind != "c":
        polar = polar.astype(np.complex128)
    out = np.empty(polar.shape[:2])
    _polar_energy(polar.view(polar.real.dtype), out)
    return out


@njit(cache=True, fastmath={"reassoc", "contract"})
def _polar_energy(values, out):
    count, n_rings, width = values.shape
    n_angles = width // 2
    # (-1)^j on the real (imaginary) part of sample j, 0 on the other: unit-stride loops.
    sign_re = np.zeros(width)
    sign_im = np.zeros(width)
    for j in range(n_angles):
        sign_re[2 * j] = 1.0 - 2.0 * (j % 2)
        sign_im[2 * j + 1] = 1.0 - 2.0 * (j % 2)
    for n in range(count):
        for r in range(n_rings):
            total = 0.0
            nyquist_re = 0.0
            nyquist_im = 0.0
            for k in range(width):
                value = np.float64(values[n, r, k])
                total += value * value
                nyquist_re += value * sign_re[k]
                nyquist_im += value * sign_im[k]
            out[n, r] = (total - (nyquist_re * nyquist_re + nyquist_im * nyquist_im)
                         / n_angles) / n_angles


@register_jitable
def _before(score, template, other_score, other_template):
    """Ranking of the top-k lists: higher score first, then the lower template index."""
    return score > other_score or (score == other_score and template < other_template)


@register_jitable
def insert_best(scores, templates, angles, shifts, score, template, angle, shift):
    """Insert one candidate into a descending top-k list; equal scores rank by template index.

    Templates arriving in increasing order (the unpruned search) thus keep
    the earlier entry first, and the pruned search, which visits some
    templates early, gets the same lists.
    """
    last = scores.size - 1
    if not _before(score, template, scores[last], templates[last]):
        return
    position = last
    while position > 0 and _before(score, template, scores[position - 1],
                                   templates[position - 1]):
        scores[position] = scores[position - 1]
        templates[position] = templates[position - 1]
        angles[position] = angles[position - 1]
        shifts[position] = shifts[position - 1]
        position -= 1
    scores[position] = score
    templates[position] = template
    angles[position] = angle
    shifts[position] = shift


@register_jitable
def four_angles(j, n_angles):
    """Indices of the angles ``j, j + M, Q - j, M - j`` given by row ``j`` of the tables."""
    half = n_angles // 2
    return j, j + half, (n_angles - j) % n_angles, half - j


@register_jitable
def four_values(cos_even, cos_odd, sin_even, sin_odd, scale):
    """Scaled landscape values at :func:`four_angles`, in that order."""
    plus = cos_even + sin_even
    minus = cos_even - sin_even
    odd_plus = cos_odd + sin_odd
    odd_minus = cos_odd - sin_odd
    return ((plus + odd_plus) * scale, (plus - odd_plus) * scale,
            (minus + odd_minus) * scale, (minus - odd_minus) * scale)


@njit(cache=True)
def _fold_maximum(best, cos_even, cos_odd, sin_even, sin_odd, scale):
    """``best[b] = max(best[b], the four values of template b)``; a plain loop that vectorises.

    ``scale >= 0``, so the largest of the four is ``max(plus + |odd_plus|,
    minus + |odd_minus|) * scale``, bit for bit the largest of :func:`four_values`.
    """
    for b in range(best.size):
        plus = cos_even[b] + sin_even[b]
        minus = cos_even[b] - sin_even[b]
        first = plus + abs(cos_odd[b] + sin_odd[b])
        second = minus + abs(cos_odd[b] - sin_odd[b])
        value = max(first, second) * scale[b]
        if value > best[b]:
            best[b] = value


@njit(cache=True)
def _kth_largest(values, k):
    """The ``k``-th largest of ``values`` (``k`` small: one insertion pass)."""
    top = np.full(k, -np.inf, values.dtype)
    for value in values:
        if value > top[k - 1]:
            position = k - 1
            while position > 0 and value > top[position - 1]:
                top[position] = top[position - 1]
                position -= 1
            top[position] = value
    return top[k - 1]


@njit(cache=True)
def _first_best_pose(cos_even, cos_odd, sin_even, sin_odd, scale, n_angles, row_start, n_shifts,
                     b):
    """Value, angle and shift index of template ``b``'s best pose, the first in scan order.

    Scan order: shifts, table rows ``j``, then :func:`four_angles`; only a
    strictly larger value replaces the best, as in the CUDA kernel.
    """
    best = -np.inf
    best_angle = 0
    best_shift = 0
    for s in range(n_shifts):
        row = row_start + s
        for j in range(cos_even.shape[0]):
            values = four_values(cos_even[j, row, b], cos_odd[j, row, b], sin_even[j, row, b],
                                 sin_odd[j, row, b], scale[b])
            angles = four_angles(j, n_angles)
            for m in range(4):
                if values[m] > best:
                    best, best_angle, best_shift = values[m], angles[m], s
    return best, best_angle, best_shift


@njit(parallel=True, cache=True)
def reduce_block(cos_even, cos_odd, sin_even, sin_odd, n_shifts, scale, n_angles, template_start,
                 top_score, top_template, top_angle, top_shift):
    """Best angle and shift of every (image, template) pair of a block, merged into the top-k.

    The four partial landscapes ``(M // 2 + 1, n * n_shifts, n_b)`` come from
    :class:`_Workspace`.  A vectorised pass takes every template's maximum
    over shifts and angles; only templates that can enter the image's top-k
    (at least the block's ``k``-th largest and above the current ``k``-th
    score) are scanned again for the pose of that maximum, while the image's
    data are still in cache.
    """
    _, rows, n_b = cos_even.shape
    k = top_score.shape[1]
    for i in prange(rows // n_shifts):
        best = np.full(n_b, -np.inf, cos_even.dtype)
        for s in range(n_shifts):
            row = i * n_shifts + s
            for j in range(cos_even.shape[0]):
                _fold_maximum(best, cos_even[j, row], cos_odd[j, row], sin_even[j, row],
                              sin_odd[j, row], scale)
        threshold = _kth_largest(best, min(k, n_b))
        for b in range(n_b):
            if best[b] >= threshold and best[b] > top_score[i, k - 1]:
                score, angle, shift = _first_best_pose(cos_even, cos_odd, sin_even, sin_odd,
                                                       scale, n_angles, i * n_shifts, n_shifts, b)
                insert_best(top_score[i], top_template[i], top_angle[i], top_shift[i], score,
                            template_start + b, angle, shift)
