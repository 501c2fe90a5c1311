"""CPU kernel of the pruned radial-SVD search: the exact bound of every pair, then the angle
DFT of only the pairs that can reach an image's top-k.

Same inputs, outputs and poses as the dense search of :mod:`.alignment_cpu`
(which holds the pieces both share: the angle tables, the frequency order, the
top-k insertion).  At small ``H`` the dense search's step 1 is small (``4 H
(M - 1) + K`` multiply-adds per pair, 1393 at ``H = 7``, ``Q = 98``) next to the
angle DFT (2425), so here :func:`_pair_bounds` computes every pair's ``Xhat``
and from it the bound ``f (Xhat[0] + 2 sum_q |Xhat[q]|)`` of its landscape
maximum, and only the pairs whose bound reaches the image's running ``k``-th
score, visited in decreasing order of bound, get the angle DFT
(:func:`_search_pruned`): well under 1 % of the pairs on the simulated data,
with or without noise.  Same top-k lists as the dense search, up to rounding.
Only the low frequencies' ``|Xhat[q]|`` are computed
(:func:`_exact_frequencies`, 15-16 of 48 on the benchmark); the weak high ones
enter the bound as ``||A_q|| ||B_q|| >= |Xhat[q]|``, one multiply-add instead
of ``4 H``.  The bound and its rounding margin are derived in
``docs/methods/radial_svd_alignment.md`` §2.7.
"""
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .alignment_cpu import (SearchStatistics, angle_tables, four_angles, four_values,
                            frequency_order, insert_best)

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


def prepare_templates(coefficients, zero, scale, n_angles, factor, block_width, dtype):
    """Lay out templates for :func:`search`; arguments as :func:`.alignment_cpu.prepare_templates`.

    ``block_width`` is not used: the bounds take the templates in tiles of
    :data:`_BOUND_TILE` whatever the image block.
    """
    n_templates, rank, n_freq = coefficients.shape
    tables = angle_tables(n_angles, factor, dtype, n_freq + 1)
    scale = np.ascontiguousarray(scale, dtype=dtype)
    n_tiles = -(-n_templates // _BOUND_TILE)
    real, imag = (np.empty((n_templates, rank, n_freq), dtype) for _ in range(2))
    # The tiles of the bounds take the frequencies in natural order (q = 1 first).
    tile_real, tile_imag = (np.zeros((n_tiles, n_freq, rank, _BOUND_TILE), dtype)
                            for _ in range(2))
    tile_zero = np.zeros((n_tiles, zero.shape[1], _BOUND_TILE), dtype)
    tile_norms = np.zeros((n_tiles, n_freq, _BOUND_TILE), dtype)
    _pruned_layout(coefficients.transpose(1, 0, 2), zero, frequency_order(n_freq + 1),
                   real, imag, tile_real, tile_imag, tile_zero, tile_norms)
    mean_norms = tile_norms.sum(axis=(0, 2), dtype=np.float64) / n_templates
    return PrunedTemplates(real, imag, tile_real, tile_imag, tile_zero, tile_norms, scale,
                           tuple(np.ascontiguousarray(table.T) for table in tables),
                           int(n_angles), float(factor), _exact_frequencies(mean_norms))


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


def _exact_frequencies(mean_norms):
    """Frequencies (from ``q = 1``) whose ``|Xhat[q]|`` :func:`_pair_bounds` computes.

    The others enter the bound as ``||A_q|| ||B_q||`` (1 multiply-add
    instead of ``4 H``): the fewest leading frequencies that leave at most
    :data:`_BOUND_TAIL` of the templates' mean ``sum_q ||B_q||`` to the tail.
    The templates' high frequencies are weak (CTF, B-factor), so the looser
    tail hardly lets more pairs through.  :param mean_norms: ``(M - 1,)`` the
    mean over templates of ``||B_q||``.
    """
    tails = np.cumsum(mean_norms[::-1])[::-1]  # tails[n]: sum over q >= n + 1
    if not tails.size or not tails[0] > 0:
        return 0
    # Shares of the full sum itself, so the first is exactly 1 (the sum of
    # mean_norms can round differently from its cumulative sum).
    share = tails / tails[0]
    return int(np.argmax(np.append(share, 0.0) <= _BOUND_TAIL))


def search(templates, image_coefficients, image_zero, n_shifts, top_score, top_template,
           top_angle, top_shift):
    """The pruned version of :func:`.alignment_cpu.search`, same arguments and top-k lists.

    :returns: :class:`.alignment_cpu.SearchStatistics`: the pairs whose
        angle DFT was evaluated are the few whose bound reached the top-k.
    """
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
    return SearchStatistics(image_coefficients.shape[0] * templates.n_templates,
                            int(evaluated.sum()))


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

    Scan order and comparisons as :func:`.alignment_cpu._first_best_pose`: table rows
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
