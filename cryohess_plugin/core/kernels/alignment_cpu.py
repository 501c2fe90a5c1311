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

At small ``H`` a pruned search replaces the GEMMs (:class:`PrunedTemplates`,
:func:`_search_pruned`).  There step 1 is small (``4 H (M - 1) + K``
multiply-adds per pair, 1393 at ``H = 7``, ``Q = 98``) next to the angle DFT
(2425), so :func:`_pair_bounds` computes every pair's ``Xhat`` and from it
the bound ``f (Xhat[0] + 2 sum_q |Xhat[q]|)`` of its landscape maximum, and
only the pairs whose bound reaches the image's running ``k``-th score,
visited in decreasing order of bound, get the angle DFT: well under 1 % of
the pairs on the simulated data, with or without noise.  Same top-k lists
as the dense search, up to rounding.  Only the low frequencies' ``|Xhat[q]|``
are computed (:func:`_exact_frequencies`, 15-16 of 48 on the benchmark); the
weak high ones enter the bound as ``||A_q|| ||B_q|| >= |Xhat[q]|``, one
multiply-add instead of ``4 H``.
"""
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

#: Templates per tile of :func:`_pair_bounds`: their compressed coefficients
#: (``2 H (M - 1)`` floats each, 340 KB at ``H = 7`` in float32) stay in the
#: L2 cache while every image row of the block passes over them; longer
#: inner loops were faster (64 ns per pair against 83 ns for 64 templates).
_BOUND_TILE = 128
#: Share of the templates' Cauchy-Schwarz sum left to the cheap tail of the
#: bound (:func:`_exact_frequencies`): on the 128 px benchmark 15-16 of 48
#: frequencies stay exact, and 0.48-0.87 % of pairs pass (0.48-0.73 % with all 48).
_BOUND_TAIL = 0.05
#: Image rows that :func:`_tile_bounds_rows` takes at once (written out for 4).
_ROWS = 4


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


def angle_tables(n_angles, factor, dtype):
    """Real DFT tables over ``j = 0 .. M // 2``: ``(cos_even, cos_odd, sin_even, sin_odd)``.

    Column ``i`` of a table multiplies the ``i``-th frequency of its parity in
    :func:`frequency_order` by ``2 factor cos(q gamma_j)`` (or ``sin``): ``q``
    and ``-q`` together.  ``cos_even`` starts with the column of ``q = 0``,
    ``factor``.
    """
    half = n_angles // 2
    gamma = 2 * np.pi * np.arange(half // 2 + 1) / n_angles
    q = np.arange(1, half)
    even, odd = q[q % 2 == 0], q[q % 2 == 1]

    def table(function, frequencies):
        return 2 * factor * function(gamma[:, None] * frequencies[None])

    cos_even = np.concatenate([np.full((gamma.size, 1), factor), table(np.cos, even)], axis=1)
    return tuple(np.ascontiguousarray(t, dtype=dtype) for t in
                 (cos_even, table(np.cos, odd), table(np.sin, even), table(np.sin, odd)))


def prepare_templates(coefficients, zero, scale, n_angles, factor, block_width, dtype,
                      pruned=False):
    """Lay out templates for :func:`search`.

    :param coefficients: ``(n_B, H, M - 1)`` complex, frequencies ``q = 1 .. M - 1``.
    :param zero: ``(n_B, K)`` real coefficients of ``q = 0``.
    :param scale: ``(n_B,)`` factor applied to each template's landscape (``>= 0``).
    :param factor: constant folded into the angle tables.
    :param block_width: templates per GEMM block (dense layout).
    :param pruned: :class:`PrunedTemplates` for the pruned search instead of
        the dense :class:`PreparedTemplates`.
    """
    tables = angle_tables(n_angles, factor, dtype)
    scale = np.ascontiguousarray(scale, dtype=dtype)
    if pruned:
        n_templates, rank, n_freq = coefficients.shape
        n_tiles = -(-n_templates // _BOUND_TILE)
        real, imag = (np.empty((n_templates, rank, n_freq), dtype) for _ in range(2))
        # The tiles of the bounds take the frequencies in natural order (q = 1 first).
        tile_real, tile_imag = (np.zeros((n_tiles, n_freq, rank, _BOUND_TILE), dtype)
                                for _ in range(2))
        tile_zero = np.zeros((n_tiles, zero.shape[1], _BOUND_TILE), dtype)
        tile_norms = np.zeros((n_tiles, n_freq, _BOUND_TILE), dtype)
        _pruned_layout(coefficients.transpose(1, 0, 2), zero, frequency_order(n_angles // 2),
                       real, imag, tile_real, tile_imag, tile_zero, tile_norms)
        mean_norms = tile_norms.sum(axis=(0, 2), dtype=np.float64) / n_templates
        return PrunedTemplates(real, imag, tile_real, tile_imag, tile_zero, tile_norms, scale,
                               tuple(np.ascontiguousarray(table.T) for table in tables),
                               int(n_angles), float(factor), _exact_frequencies(mean_norms))
    coefficients = coefficients[:, :, frequency_order(n_angles // 2)]
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


@njit(cache=True)
def _pruned_layout(coefficients, zero, order, real, imag, tile_real, tile_imag, tile_zero,
                   tile_norms):
    """The arrays of :class:`PrunedTemplates` from ``(H, n_B, M - 1)`` complex coefficients.

    One pass per array instead of several copies; the tiles are written
    contiguously (gathering over templates); padding templates stay zero.
    """
    rank, n_templates, n_freq = coefficients.shape
    n_tiles, _, _, width = tile_real.shape
    for tile in range(n_tiles):
        lo = tile * width
        count = min(width, n_templates - lo)
        for h in range(rank):
            for f in range(n_freq):
                for t in range(count):
                    value = coefficients[h, lo + t, f]
                    tile_real[tile, f, h, t] = value.real
                    tile_imag[tile, f, h, t] = value.imag
        for f in range(n_freq):
            norms = tile_norms[tile, f]
            for h in range(rank):
                re, im = tile_real[tile, f, h], tile_imag[tile, f, h]
                for t in range(width):
                    norms[t] += re[t] * re[t] + im[t] * im[t]
            for t in range(width):
                norms[t] = np.sqrt(norms[t])
        for k in range(zero.shape[1]):
            for t in range(count):
                tile_zero[tile, k, t] = zero[lo + t, k]
    for b in range(n_templates):  # in the order of the writes
        for h in range(rank):
            row = coefficients[h, b]
            for f in range(n_freq):
                value = row[order[f]]
                real[b, h, f] = value.real
                imag[b, h, f] = value.imag


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

    Dispatches on the layout :func:`prepare_templates` chose: the dense GEMMs
    for :class:`PreparedTemplates`, the pruned per-image kernel for
    :class:`PrunedTemplates`; both keep the same poses.

    :param image_coefficients: ``(n * n_shifts, H, M - 1)`` complex, rows of
        image ``i`` at ``i * n_shifts .. i * n_shifts + n_shifts - 1``.
    :param image_zero: ``(n * n_shifts, K)`` real ``q = 0`` coefficients.
    :param top_score, top_template, top_angle, top_shift: ``(n, k)`` arrays,
        updated in place (scores sorted descending; angle and shift are indices).
    """
    if isinstance(templates, PrunedTemplates):
        _search_pruned_layout(templates, image_coefficients, image_zero, n_shifts, top_score,
                              top_template, top_angle, top_shift)
        return
    dtype = templates.scale.dtype
    images, zero = _image_matrices(image_coefficients, image_zero, dtype)
    workspace = templates.workspace(images.shape[1])
    for start, block, zero_block in zip(templates.starts, templates.blocks, templates.zero_blocks):
        scale = templates.scale[start:start + block.shape[3]]
        sums = workspace.partial_landscapes(images, zero, templates, block, zero_block)
        reduce_block(*sums, n_shifts, scale, templates.n_angles, start, top_score,
                     top_template, top_angle, top_shift)


# ----------------------------------------------------------------------------- pruned search


@dataclass(frozen=True)
class PrunedTemplates:
    """Compressed templates of one CTF group for the pruned search (:func:`_search_pruned`).

    Frequencies ``q = 1 .. M - 1``.  ``real``, ``imag`` ``(n_B, H, M - 1)``
    in :func:`frequency_order` (frequencies contiguous: one pair's ``Xhat``,
    :func:`_pair_best`); for :func:`_pair_bounds`, which vectorises over
    templates, the same in natural order in tiles of ``T = _BOUND_TILE``
    templates (zero-padded), ``tile_real``, ``tile_imag`` ``(tiles, M - 1,
    H, T)``, with the ``q = 0`` coefficients ``zero`` ``(tiles, K, T)`` and
    the norms ``||B[:, q]||`` over the principal rings ``norms`` ``(tiles,
    M - 1, T)``; ``scale`` ``(n_B,)``; ``tables`` the transposes of
    :func:`angle_tables`, ``(frequencies, M // 2 + 1)``; ``exact`` the
    frequencies whose ``|Xhat[q]|`` the bounds compute
    (:func:`_exact_frequencies`).
    """
    real: np.ndarray
    imag: np.ndarray
    tile_real: np.ndarray
    tile_imag: np.ndarray
    zero: np.ndarray
    norms: np.ndarray
    scale: np.ndarray
    tables: tuple
    n_angles: int
    factor: float = 1.0
    exact: int = 0

    @property
    def n_templates(self):
        return self.scale.size


def _exact_frequencies(mean_norms):
    """Frequencies (from ``q = 1``) whose ``|Xhat[q]|`` :func:`_pair_bounds` computes.

    The others enter the bound as ``||A_q|| ||B_q||`` (1 multiply-add
    instead of ``4 H``): the fewest leading frequencies that leave at most
    :data:`_BOUND_TAIL` of the templates' mean ``sum_q ||B_q||`` to the tail.
    The templates' high frequencies are weak (CTF, B-factor), so the looser
    tail hardly lets more pairs through.  :param mean_norms: ``(M - 1,)`` the
    mean over templates of ``||B_q||``.
    """
    total = mean_norms.sum()
    if not total > 0:
        return 0
    tail = np.cumsum(mean_norms[::-1])[::-1] / total  # tail[n]: share of q >= n + 1
    return int(np.argmax(np.append(tail, 0.0) <= _BOUND_TAIL))


#: Diagnostics of the pruned search: (image row, template) pairs seen and
#: pairs whose angle DFT was evaluated, summed over calls (reset by hand).
PRUNING_COUNTS = np.zeros(2, np.int64)


def _search_pruned_layout(templates, image_coefficients, image_zero, n_shifts, top_score,
                          top_template, top_angle, top_shift):
    dtype = templates.scale.dtype
    natural_real, natural_imag = (x.astype(dtype) for x in (image_coefficients.real,
                                                             image_coefficients.imag))
    norms = np.sqrt(np.sum(natural_real * natural_real + natural_imag * natural_imag, axis=1))
    order = frequency_order(image_coefficients.shape[2] + 1)
    real, imag = (np.ascontiguousarray(x[:, :, order]) for x in (natural_real, natural_imag))
    rank, half = image_coefficients.shape[1], image_coefficients.shape[2] + 1
    # Relative rounding of both sides of the bound (see _pair_bounds), in ulps.
    margin = np.finfo(dtype).eps * (4 * (rank + half + image_zero.shape[1]) + 64)
    zero = np.ascontiguousarray(image_zero, dtype=dtype)
    padded = templates.tile_real.shape[0] * templates.tile_real.shape[3]
    x0 = np.empty((real.shape[0], padded), dtype)
    bound = np.empty((real.shape[0], padded))
    _pair_bounds(np.ascontiguousarray(natural_real.transpose(0, 2, 1)),
                 np.ascontiguousarray(natural_imag.transpose(0, 2, 1)), zero, norms,
                 templates.tile_real, templates.tile_imag, templates.zero, templates.norms,
                 templates.scale, templates.factor, margin, templates.exact, x0, bound)
    evaluated = np.zeros(top_score.shape[0], np.int64)
    _search_pruned(real, imag, n_shifts, x0, bound, templates.real, templates.imag,
                   templates.scale, *templates.tables, templates.n_angles, top_score,
                   top_template, top_angle, top_shift, evaluated)
    PRUNING_COUNTS[0] += image_coefficients.shape[0] * templates.n_templates
    PRUNING_COUNTS[1] += evaluated.sum()


@njit(parallel=True, cache=True)
def _pair_bounds(a_real, a_imag, a_zero, a_norms, real, imag, zero, norms, scale, factor, margin,
                 exact, x0, bound):
    """Upper bounds ``(rows, n_B)`` of the scaled landscapes of all (image row, template) pairs.

    ``X(gamma) = f (Xhat[0] + 2 sum_{q >= 1} Re(Xhat[q] e^{-i q gamma}))``, so
    ``max_gamma X <= f (Xhat[0] + 2 sum_q |Xhat[q]|)`` (``f >= 0`` folds the
    angle-table factor and the template scale), and ``|Xhat[q]| <= ||A[:, q]||
    ||B[:, q]||`` replaces the term of every frequency from ``exact`` on
    (:func:`_exact_frequencies`).  ``Xhat[q]`` of the ``exact`` first
    frequencies is computed here (``4 H`` multiply-adds each, vectorised over
    the templates of a tile, :data:`_ROWS` image rows per pass over it), the
    angle DFT (``(M // 2 + 1)(2 M - 1)``, 2425 at ``Q = 98``) only by
    :func:`_pair_best` for the few pairs that can reach the top-k.  The bound
    is raised by ``margin (|Xhat[0]| + S)`` with the
    Cauchy-Schwarz sum ``S = 2 sum_q ||A[:, q]|| ||B[:, q]||``, which bounds
    the terms of every ``Xhat[q]`` and of the DFT: more than the rounding of
    this ``Xhat`` and its sum (in any order, hence ``fastmath``), of
    :func:`_pair_best`'s ``Xhat`` and of its angle DFT, so a pair whose
    bound is below a computed score can be skipped without changing any
    result.  ``x0`` keeps ``Xhat[0]``, which :func:`_pair_best` uses as it is.

    :param a_real, a_imag: ``(rows, M - 1, H)`` image rows; ``a_norms`` ``(rows, M - 1)``.
    :param real, imag: ``(tiles, M - 1, H, T)`` templates in tiles of ``T``
        (:class:`PrunedTemplates`); ``zero`` ``(tiles, K, T)``, ``norms``
        ``(tiles, M - 1, T)``, all frequencies in natural order (``q = 1`` first);
        ``x0``, ``bound`` ``(rows, tiles * T)``.
    """
    rows = a_real.shape[0]
    n_tiles, _, _, width = real.shape
    dtype = a_real.dtype
    for tile in prange(n_tiles):
        buffers = np.empty((5, width), dtype)
        block = np.empty((_ROWS, 4, width), dtype)
        lo = tile * width
        for row in range(rows):
            if row % _ROWS == 0 and row + _ROWS <= rows:
                _tile_bounds_rows(a_real, a_imag, a_norms, row, real[tile], imag[tile],
                                  norms[tile], exact, block)
            if row - row % _ROWS + _ROWS <= rows:
                buffers[2] = block[row % _ROWS, 2]
                buffers[3] = block[row % _ROWS, 3]
                _zero_term(a_zero[row], zero[tile], buffers[4])
            else:
                _tile_bounds(a_real[row], a_imag[row], a_zero[row], a_norms[row], real[tile],
                             imag[tile], zero[tile], norms[tile], exact, buffers)
            for b in range(width):
                value = np.float64(buffers[4, b])
                x0[row, lo + b] = buffers[4, b]
                bound[row, lo + b] = ((value + 2 * np.float64(buffers[2, b])
                                       + margin * (abs(value) + 2 * np.float64(buffers[3, b])))
                                      * (np.float64(scale[lo + b]) * factor))


@njit(cache=True, fastmath={"contract"})
def _zero_term(a_zero, zero, out):
    """``out[b] = sum_k a_zero[k] zero[k, b]`` as a chain of fused multiply-adds in ``k``
    order; four ``k`` per pass over the tile (fewer loads and stores of ``out``)."""
    n_zero, width = zero.shape
    for b in range(width):
        out[b] = 0
    k = 0
    while k + 4 <= n_zero:
        v0, v1, v2, v3 = a_zero[k], a_zero[k + 1], a_zero[k + 2], a_zero[k + 3]
        z0, z1, z2, z3 = zero[k], zero[k + 1], zero[k + 2], zero[k + 3]
        for b in range(width):
            out[b] = out[b] + v0 * z0[b] + v1 * z1[b] + v2 * z2[b] + v3 * z3[b]
        k += 4
    while k < n_zero:
        v0, z0 = a_zero[k], zero[k]
        for b in range(width):
            out[b] = out[b] + v0 * z0[b]
        k += 1


@njit(cache=True, fastmath=True)
def _norm_products(a_norms, norms, first, last, out):
    """``out[b] = sum_{f = first}^{last - 1} a_norms[f] norms[f, b]``, four ``f`` per pass."""
    width = norms.shape[1]
    for b in range(width):
        out[b] = 0
    f = first
    while f + 4 <= last:
        v0, v1, v2, v3 = a_norms[f], a_norms[f + 1], a_norms[f + 2], a_norms[f + 3]
        n0, n1, n2, n3 = norms[f], norms[f + 1], norms[f + 2], norms[f + 3]
        for b in range(width):
            out[b] += v0 * n0[b] + v1 * n1[b] + v2 * n2[b] + v3 * n3[b]
        f += 4
    while f < last:
        v0, n0 = a_norms[f], norms[f]
        for b in range(width):
            out[b] += v0 * n0[b]
        f += 1


@njit(cache=True, fastmath=True)
def _tile_bounds(a_real, a_imag, a_zero, a_norms, real, imag, zero, norms, exact, buffers):
    """One image row against one tile: the bound's sum, ``sum_q ||A_q|| ||B_q||``, ``Xhat[0]``.

    The bound's sum is ``sum_q |Xhat[q]|`` over the first ``exact``
    frequencies and ``||A_q|| ||B_q||`` (Cauchy-Schwarz) over the others.
    Into ``buffers[2]``, ``[3]`` and ``[4]`` (``[0]``, ``[1]`` hold ``Xhat[q]``).
    Inputs are finite; written so that every inner loop runs over the tile.
    The remainder rows of :func:`_pair_bounds`; :func:`_tile_bounds_rows`
    takes the others.
    """
    n_freq, rank, width = real.shape
    xre, xim, total, schwarz = buffers[0], buffers[1], buffers[2], buffers[3]
    _zero_term(a_zero, zero, buffers[4])
    _norm_products(a_norms, norms, exact, n_freq, total)  # the tail
    _norm_products(a_norms, norms, 0, exact, schwarz)
    for b in range(width):
        schwarz[b] += total[b]
    for f in range(exact):
        for b in range(width):
            xre[b] = 0
            xim[b] = 0
        for h in range(rank):
            ar, ai = a_real[f, h], a_imag[f, h]
            re_h, im_h = real[f, h], imag[f, h]
            for b in range(width):
                xre[b] += ar * re_h[b] + ai * im_h[b]
                xim[b] += ar * im_h[b] - ai * re_h[b]
        for b in range(width):
            total[b] += np.sqrt(xre[b] * xre[b] + xim[b] * xim[b])


@njit(cache=True, fastmath=True)
def _tile_bounds_rows(a_real, a_imag, a_norms, rows, real, imag, norms, exact, buffers):
    """:func:`_tile_bounds` but ``Xhat[0]`` for :data:`_ROWS` image rows ``rows`` at once.

    Each tile value loaded from the cache serves all the rows (the tile is
    larger than L1: one row at a time, the loads from L2 bound the speed).
    ``buffers`` ``(_ROWS, 4, T)``: ``Xhat[q]`` real and imaginary, the bound's
    sum, ``sum_q ||A_q|| ||B_q||``.
    """
    n_freq, rank, width = real.shape
    for k in range(_ROWS):
        _norm_products(a_norms[rows + k], norms, exact, n_freq, buffers[k, 2])  # the tail
        _norm_products(a_norms[rows + k], norms, 0, exact, buffers[k, 3])
        for b in range(width):
            buffers[k, 3, b] += buffers[k, 2, b]
    for f in range(exact):
        for k in range(_ROWS):
            for b in range(width):
                buffers[k, 0, b] = 0
                buffers[k, 1, b] = 0
        for h in range(rank):
            ar = a_real[rows:rows + _ROWS, f, h]
            ai = a_imag[rows:rows + _ROWS, f, h]
            ar0, ar1, ar2, ar3 = ar[0], ar[1], ar[2], ar[3]
            ai0, ai1, ai2, ai3 = ai[0], ai[1], ai[2], ai[3]
            re_h, im_h = real[f, h], imag[f, h]
            x0r, x0i, x1r, x1i = buffers[0, 0], buffers[0, 1], buffers[1, 0], buffers[1, 1]
            x2r, x2i, x3r, x3i = buffers[2, 0], buffers[2, 1], buffers[3, 0], buffers[3, 1]
            for b in range(width):
                rb, ib = re_h[b], im_h[b]
                x0r[b] += ar0 * rb + ai0 * ib
                x0i[b] += ar0 * ib - ai0 * rb
                x1r[b] += ar1 * rb + ai1 * ib
                x1i[b] += ar1 * ib - ai1 * rb
                x2r[b] += ar2 * rb + ai2 * ib
                x2i[b] += ar2 * ib - ai2 * rb
                x3r[b] += ar3 * rb + ai3 * ib
                x3i[b] += ar3 * ib - ai3 * rb
        for k in range(_ROWS):
            xr, xi, total = buffers[k, 0], buffers[k, 1], buffers[k, 2]
            for b in range(width):
                total[b] += np.sqrt(xr[b] * xr[b] + xi[b] * xi[b])


@njit(cache=True, fastmath={"contract"})
def _pair_best(a_real, a_imag, x0, real, imag, b, cos_even, cos_odd, sin_even, sin_odd, scale,
               n_angles, xre, xim, sums):
    """Best value and angle index of one (image row, template) landscape, first in scan order.

    Scan order and comparisons as :func:`_first_best_pose`: table rows
    ``j``, then :func:`four_angles`, only a strictly larger value replaces.
    ``Xhat`` runs over the frequencies and the DFT over the table rows in
    the inner loops, so both vectorise.
    """
    rank, n_freq = a_real.shape
    xre[:] = 0
    xim[:] = 0
    for h in range(rank):
        ar, ai, br, bi = a_real[h], a_imag[h], real[b, h], imag[b, h]
        for f in range(n_freq):
            xre[f] += ar[f] * br[f] + ai[f] * bi[f]
            xim[f] += ar[f] * bi[f] - ai[f] * br[f]
    n_rows = cos_even.shape[1]
    n_even = sin_even.shape[0]
    ce, co, se, so = sums[0], sums[1], sums[2], sums[3]
    first = cos_even[0]
    for j in range(n_rows):
        ce[j] = x0 * first[j]
        co[j] = 0
        se[j] = 0
        so[j] = 0
    for f in range(n_even):
        re, im = xre[f], xim[f]
        cos_row, sin_row = cos_even[1 + f], sin_even[f]
        for j in range(n_rows):
            ce[j] += re * cos_row[j]
            se[j] += im * sin_row[j]
    for f in range(n_freq - n_even):
        re, im = xre[n_even + f], xim[n_even + f]
        cos_row, sin_row = cos_odd[f], sin_odd[f]
        for j in range(n_rows):
            co[j] += re * cos_row[j]
            so[j] += im * sin_row[j]
    best = -np.inf
    best_angle = 0
    for j in range(n_rows):
        values = four_values(ce[j], co[j], se[j], so[j], scale)
        angles = four_angles(j, n_angles)
        for m in range(4):
            if values[m] > best:
                best, best_angle = values[m], angles[m]
    return best, best_angle


@njit(cache=True)
def _visit(i, b, n_shifts, bound, x0, a_real, a_imag, real, imag, scale, tables, n_angles, xre,
           xim, sums, top_score, top_template, top_angle, top_shift):
    """Evaluate template ``b`` for image ``i`` (shifts whose bound reaches the ``k``-th score).

    Shifts left out have every value below that score, so they can neither
    enter the list nor tie with a pose that does.  :returns: pairs evaluated.
    """
    cos_even, cos_odd, sin_even, sin_odd = tables
    threshold = top_score[i, top_score.shape[1] - 1]
    best = -np.inf
    best_angle = 0
    best_shift = 0
    count = 0
    for s in range(n_shifts):
        row = i * n_shifts + s
        if bound[row, b] < threshold:
            continue
        value, angle = _pair_best(a_real[row], a_imag[row], x0[row, b], real, imag, b, cos_even,
                                  cos_odd, sin_even, sin_odd, scale[b], n_angles, xre, xim, sums)
        count += 1
        if value > best:
            best, best_angle, best_shift = value, angle, s
    if count:
        insert_best(top_score[i], top_template[i], top_angle[i], top_shift[i], best, b,
                    best_angle, best_shift)
    return count


@njit(parallel=True, cache=True)
def _search_pruned(a_real, a_imag, n_shifts, x0, bound, real, imag, scale, cos_even, cos_odd,
                   sin_even, sin_odd, n_angles, top_score, top_template, top_angle, top_shift,
                   evaluated):
    """Top-k of every image against all templates, evaluating only pairs that can enter it.

    Per image, with the bounds of :func:`_pair_bounds`: the ``k`` templates
    of largest bound are evaluated first, which sets a high ``k``-th score;
    the other templates whose bound reaches it are visited in decreasing
    order of bound, stopping at the first below the current ``k``-th score.
    Every template left out has all its values below a score of a full
    list, so the lists equal those of evaluating every pair.
    """
    n_freq = a_real.shape[2]
    n_b = scale.size
    k = top_score.shape[1]
    tables = (cos_even, cos_odd, sin_even, sin_odd)
    dtype = scale.dtype
    for i in prange(a_real.shape[0] // n_shifts):
        xre = np.empty(n_freq, dtype)
        xim = np.empty(n_freq, dtype)
        sums = np.empty((4, cos_even.shape[1]), dtype)
        # Best bound of every template over the shifts; the k largest are the seeds.
        best_bound = np.empty(n_b)
        n_seeds = min(k, n_b)
        seeds = np.full(n_seeds, -1, np.int64)
        seed_bound = np.full(n_seeds, -np.inf)
        for b in range(n_b):
            value = bound[i * n_shifts, b]
            for s in range(1, n_shifts):
                value = max(value, bound[i * n_shifts + s, b])
            best_bound[b] = value
            if value > seed_bound[n_seeds - 1]:
                position = n_seeds - 1
                while position > 0 and value > seed_bound[position - 1]:
                    seed_bound[position] = seed_bound[position - 1]
                    seeds[position] = seeds[position - 1]
                    position -= 1
                seed_bound[position] = value
                seeds[position] = b
        count = 0
        for position in range(n_seeds):
            b = seeds[position]
            if b < 0:
                continue
            if not best_bound[b] < top_score[i, k - 1]:
                count += _visit(i, b, n_shifts, bound, x0, a_real, a_imag, real, imag, scale,
                                tables, n_angles, xre, xim, sums, top_score, top_template,
                                top_angle, top_shift)
            best_bound[b] = -np.inf  # not visited again
        candidates = np.flatnonzero(~(best_bound < top_score[i, k - 1]))
        order = np.argsort(-best_bound[candidates])
        for position in range(candidates.size):
            b = candidates[order[position]]
            if best_bound[b] < top_score[i, k - 1]:
                break
            count += _visit(i, b, n_shifts, bound, x0, a_real, a_imag, real, imag, scale,
                            tables, n_angles, xre, xim, sums, top_score, top_template, top_angle,
                            top_shift)
        evaluated[i] = count


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
