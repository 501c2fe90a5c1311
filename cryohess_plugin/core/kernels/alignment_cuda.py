"""``numba.cuda`` kernels of the radial-SVD alignment.

Same contract as :mod:`.alignment_cpu` (:func:`prepare_templates`,
:func:`search`), same landscapes and the same order of comparisons, so both
backends pick the same poses.  One thread takes one (image, template) pair:
it forms ``Xhat[q] = sum_h conj(A[h, q]) B[h, q]`` for every shift of the
image, evaluates the landscape over the ``Q`` angles and keeps the pair's
best angle and shift (``Xhat[0]`` comes from the separate ``q = 0``
coefficients, as on the CPU); a second pass, one thread per image, merges the pairs
of a template block into the image's top-k list, which stays on the device
until all template blocks are done.

numba.cuda has no FFT, so the real DFT over ``q`` is summed directly from
precomputed cos/sin tables (``O(Q^2 / 4)`` per pair: as on the CPU, the sums
of table row ``j`` give the four angles ``j, j + Q/2, Q - j, Q/2 - j``).

There is no pruned twin of :mod:`.alignment_pruned_cpu`: the device
evaluates every pair's angle DFT (one thread per pair, no compaction).  The
CPU's pruning visits each image's templates in decreasing order of a bound
and stops early, a sequential, data-dependent walk; on the device it would
leave most threads of a warp idle rather than save work.  It does not change
the result.
"""
import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from ..errors import InvalidDataError
from .alignment_cpu import SearchStatistics, four_angles, four_values, insert_best

_THREADS = 128
#: CUDA caps grid dimension y at 65535; kernels stride over the remaining images.
_MAX_BLOCKS_Y = 65535
#: Per-thread buffer for ``Xhat``: at most this many frequencies ``Q / 2``.
MAX_HALF_ANGLES = 512


@dataclass(frozen=True)
class PreparedTemplates:
    """Compressed templates of one CTF group on the device, with the DFT tables."""
    real: object
    imag: object
    zero: object
    scale: object
    cos_table: object
    sin_table: object
    n_angles: int
    block_width: int
    dtype: np.dtype

    @property
    def n_templates(self):
        return self.scale.shape[0]


@functools.lru_cache(maxsize=None)
def _kernels(real_dtype):
    """The pair and merge kernels for real precision ``real_dtype``."""
    real = numba.from_dtype(np.dtype(real_dtype))

    @cuda.jit
    def pair_best(image_re, image_im, image_zero, n_shifts, template_re, template_im,
                  template_zero, scale, cos_table, sin_table, n_angles, template_start,
                  pair_score, pair_angle, pair_shift):
        b = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n_images, n_b = pair_score.shape
        if b >= n_b:
            return
        t = template_start + b
        rank = image_re.shape[1]
        n_freq = image_re.shape[2]  # q = 1 .. M - 1
        half = n_freq + 1
        xhat_re = cuda.local.array(MAX_HALF_ANGLES, real)
        xhat_im = cuda.local.array(MAX_HALF_ANGLES, real)
        for i in range(cuda.blockIdx.y, n_images, cuda.gridDim.y):
            best = -math.inf
            best_angle = 0
            best_shift = 0
            for s in range(n_shifts):
                row = i * n_shifts + s
                acc = real(0)
                for k in range(image_zero.shape[1]):
                    acc += image_zero[row, k] * template_zero[t, k]
                xhat_re[0] = acc
                xhat_im[0] = real(0)
                for f in range(n_freq):
                    acc_re = real(0)
                    acc_im = real(0)
                    for h in range(rank):
                        ar = image_re[row, h, f]
                        ai = image_im[row, h, f]
                        br = template_re[t, h, f]
                        bi = template_im[t, h, f]
                        acc_re += ar * br + ai * bi
                        acc_im += ar * bi - ai * br
                    xhat_re[f + 1] = acc_re
                    xhat_im[f + 1] = acc_im
                for j in range(cos_table.shape[0]):
                    cos_even = real(0)
                    cos_odd = real(0)
                    sin_even = real(0)
                    sin_odd = real(0)
                    for q in range(0, half, 2):
                        cos_even += xhat_re[q] * cos_table[j, q]
                        sin_even += xhat_im[q] * sin_table[j, q]
                    for q in range(1, half, 2):
                        cos_odd += xhat_re[q] * cos_table[j, q]
                        sin_odd += xhat_im[q] * sin_table[j, q]
                    # Written out rather than looped: no run-time tuple indexing on the device.
                    v0, v1, v2, v3 = four_values(cos_even, cos_odd, sin_even, sin_odd, scale[t])
                    a0, a1, a2, a3 = four_angles(j, n_angles)
                    if v0 > best:
                        best, best_angle, best_shift = v0, a0, s
                    if v1 > best:
                        best, best_angle, best_shift = v1, a1, s
                    if v2 > best:
                        best, best_angle, best_shift = v2, a2, s
                    if v3 > best:
                        best, best_angle, best_shift = v3, a3, s
            pair_score[i, b] = best
            pair_angle[i, b] = best_angle
            pair_shift[i, b] = best_shift

    @cuda.jit
    def merge(pair_score, pair_angle, pair_shift, template_start, top_score, top_template,
              top_angle, top_shift):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        n_images, n_b = pair_score.shape
        if i >= n_images:
            return
        for b in range(n_b):
            insert_best(top_score[i], top_template[i], top_angle[i], top_shift[i],
                        pair_score[i, b], template_start + b, pair_angle[i, b], pair_shift[i, b])

    return pair_best, merge


def prepare_templates(coefficients, zero, scale, n_angles, factor, block_width, dtype):
    """Upload templates; arguments as :func:`.alignment_cpu.prepare_templates`."""
    half = n_angles // 2
    if half > MAX_HALF_ANGLES:
        raise InvalidDataError(
            f"the CUDA alignment handles at most {2 * MAX_HALF_ANGLES} in-plane angles, got "
            f"{n_angles}; use the CPU backend or a coarser polar grid")
    gamma = 2 * np.pi * np.arange(half // 2 + 1) / n_angles
    q = np.arange(half)
    weight = factor * np.where(q == 0, 1.0, 2.0)
    phase = gamma[:, None] * q[None]
    dtype = np.dtype(dtype)

    def upload(array):
        return cuda.to_device(np.ascontiguousarray(array, dtype=dtype))

    return PreparedTemplates(upload(coefficients.real), upload(coefficients.imag), upload(zero),
                             upload(scale), upload(weight * np.cos(phase)),
                             upload(weight * np.sin(phase)), int(n_angles), int(block_width),
                             dtype)


def search(templates, image_coefficients, image_zero, n_shifts, top_score, top_template,
           top_angle, top_shift):
    """Device version of :func:`.alignment_cpu.search`; the top-k arrays are host arrays."""
    n_images = top_score.shape[0]
    pairs = image_coefficients.shape[0] * templates.n_templates
    if n_images == 0:
        return SearchStatistics(pairs, pairs)
    pair_best, merge = _kernels(templates.dtype)

    def upload(array):
        return cuda.to_device(np.ascontiguousarray(array, dtype=templates.dtype))

    image_re, image_im = upload(image_coefficients.real), upload(image_coefficients.imag)
    image_zero = upload(image_zero)
    tops = [cuda.to_device(np.ascontiguousarray(a)) for a in
            (top_score, top_template, top_angle, top_shift)]
    width = min(templates.block_width, templates.n_templates)
    pair_score = cuda.device_array((n_images, width), templates.dtype)
    pair_angle = cuda.device_array((n_images, width), np.int64)
    pair_shift = cuda.device_array((n_images, width), np.int64)
    for start in range(0, templates.n_templates, width):
        n_b = min(width, templates.n_templates - start)
        scores, angles, shifts = pair_score[:, :n_b], pair_angle[:, :n_b], pair_shift[:, :n_b]
        blocks = ((n_b + _THREADS - 1) // _THREADS, min(n_images, _MAX_BLOCKS_Y))
        pair_best[blocks, _THREADS](image_re, image_im, image_zero, n_shifts, templates.real,
                                    templates.imag, templates.zero, templates.scale,
                                    templates.cos_table, templates.sin_table,
                                    templates.n_angles, start, scores, angles, shifts)
        merge[(n_images + _THREADS - 1) // _THREADS, _THREADS](scores, angles, shifts, start,
                                                               *tops)
    for host, device in zip((top_score, top_template, top_angle, top_shift), tops):
        host[...] = device.copy_to_host()
    return SearchStatistics(pairs, pairs)
