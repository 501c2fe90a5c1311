"""Translations by the factorised translation kernel (FTK; Rangan, Spivak, Andén, Barnett,
Inverse Problems 36 (2020) 024001), combined with the radial-SVD search.

Notation as :mod:`.radial_svd` (``docs/methods/radial_svd_alignment.md`` §1 and
§3): polar samples ``P[r, j] = Ahat(k_r, psi_j)``, ring coefficients
``a[r, q] = fft(P)[q] / Q``, frequencies ``k`` in cycles per box ``D``.

**Translation in the ring coefficients.**  Re-centring a particle found at
the core shift ``t = rho (cos omega, sin omega)`` pixels multiplies its
spectrum by ``exp(+2 pi i k.t / D) = exp(i z cos(psi - omega))`` with
``z = 2 pi k rho / D`` (:func:`.polar.shift_phases`); by Jacobi-Anger it is a
convolution over the angular frequency (§3 of the page; the FTK paper §2):

    a_t[r, q] = sum_p i^p J_p(z_r) exp(-i p omega) a[r, q - p].

**Factorisation** (the FTK paper §3).  For each Bessel order ``p >= 0`` the
kernel ``J_p(2 pi k rho / D)`` over the rings ``k_r`` (weights ``w_r``) and
the disc ``0 <= rho <= max_shift`` (Gauss-Jacobi nodes of ``rho d rho``,
weights ``u_d``) is factorised by the SVD of
``sqrt(w_r) J_p(2 pi k_r rho_d / D) sqrt(u_d)``; the left vectors ``U_pl``
whose singular values exceed ``tolerance`` times the largest of all orders
are kept (``J_-p = (-1)^p J_p`` reuses them).  Any shift radius then has the
factors ``e_pl(rho) = sum_r U_pl[r] sqrt(w_r) J_p(z_r(rho))``, and
``sqrt(w_r) J_p(z_r(rho)) ~= sum_l U_pl[r] e_pl(rho)`` with the error the
discarded singular values bound.  The number of terms grows with the band
times the disc's radius, not with the number of shifts.

**Landscape over shifts.**  With the CTF-free template ``b`` and ``a`` the
ring coefficients of the CTF-multiplied particle (**CTF** below), the
landscape ``X(gamma, t) = f sum_q exp(-i q gamma) Xhat(q, t)`` of
:mod:`.radial_svd` (``f = 2 pi / D^2``) has

    Xhat(q, t) = sum_p (-i)^p exp(i p omega) sum_l e_pl(rho) G_pl(q),
    G_pl(q) = sum_r conj(U_pl[r] a[r, q - p]) sqrt(w_r) b[r, q]:

one product per term and pair (independent of the shift), then for each
shift a weighted sum over the terms (one matrix product for all shifts,
:func:`shift_weights`, :func:`direction_spectra`) and a Hermitian FFT over
``q`` for all angles (:func:`angle_landscapes`), computed only where the bound
of the landscape can reach the image's best (:func:`_pruned_best`).

**Search** (:func:`align_translations`).  A radial-SVD search on a coarse
shift lattice (:func:`.radial_svd.shift_grid`, pruned at the automatic
``H``) keeps each image's best templates; the FTK then scores those
candidates at full rank over the whole sub-pixel disc of shifts and every
in-plane angle.  The cost of the fine shifts is paid for a few templates per
image instead of all of them: it grows with the candidates, not with the
templates times the shifts.

**Translation-aware kernel** (the radial-SVD paper's Discussion, eqs.
(118)-(121); ``docs/methods/radial_svd_alignment.md`` §3.5).  When particles
are only roughly centred, the principal rings should tell rotations apart
under random shifts too: averaging the kernel's objective over independent
isotropic Gaussian shifts (s.d. ``sigma`` px per axis) as well as rotations
gives, for a template's ring coefficients ``b``,

    C[r, r'] = eta_r eta_r' Re[E+(r, r') sum_q conj(b[r, q]) b[r', q]
                               - E-(r) E-(r') conj(b[r, 0]) b[r', 0]],

``E+(r, r') = exp(-(2 pi sigma / D)^2 (k_r - k_r')^2 / 2)``,
``E-(r) = exp(-(2 pi sigma k_r / D)^2 / 2)`` (:func:`translation_aware_kernel`);
``sigma = 0`` is the kernel of :func:`.radial_svd.radial_kernel`.

**CTF** (``docs/methods/radial_svd_alignment.md`` §1.6).  Every particle is
multiplied by its own CTF at the polar nodes and compared with the CTF-free
templates: ``<T_-t A, C R_gamma B> = <C T_-t A, R_gamma B>`` (both are
multiplications of the spectrum), an exact numerator.  The score divides by
``||A||`` and by ``||C R_gamma B||`` averaged over ``gamma``,
``sqrt(f sum_r w_r s_r^2 E_r(B))`` with the particle's root-mean-square CTF
``s_r`` per ring: exact for radial CTFs; with astigmatism the true norm varies
with ``gamma`` by about 0.5 % (§1.6 of the page), which the explicit loop's
refinement takes into account and this search does not.

**Default shift range.**  Picks are off by a few percent of the box, so the
default disc (:func:`default_max_shift`) is :data:`SHIFT_RANGE_FRACTION` of
the box (6.4 px at 128 px, 12.8 px at 256 px), searched every
:data:`DEFAULT_SHIFT_STEP` pixel.
"""
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.special

from ..errors import InvalidDataError, ShapeError
from ..fourier import fft_workers, working_dtypes
from ..kernels import resolve_backend, translations_cpu
from ..polar import PolarGrid, ctf_on_grid
from ..kernels.alignment_cpu import SearchStatistics
from ..progress import Reporter
from .radial_svd import AlignmentResult, RadialSVDAligner, shift_grid

#: Default radius of the searched shift disc, as a fraction of the box.
SHIFT_RANGE_FRACTION = 0.05
#: Default spacing of the searched shifts, pixels (sub-pixel).
DEFAULT_SHIFT_STEP = 0.5
#: Spacing of the coarse lattice of the candidate search, in periods of the
#: band's highest frequency (``D / f_max`` pixels).
COARSE_STEP_PERIODS = 0.25
#: Default singular-value tolerance of the factorisation.
DEFAULT_TOLERANCE = 1e-3
# Image-candidate pairs per batch of the FTK stage: their angular spectra at
# every shift, 34 MB in complex64 for the 1356 shifts of a 10 px disc.
_PAIR_CHUNK = 64


def coarse_shift_step(grid):
    """Spacing in pixels of the coarse lattice of :func:`align_translations`' candidates.

    A quarter of the shortest period of the band: a shift off the lattice by
    at most ``step / sqrt(2)`` turns the highest ring's phase by at most
    ``pi / (2 sqrt(2))``, so the right template stays among the best few
    (64 px, SNR 0.1, 200 particles: half a period lost 3 % of the particles'
    templates, a third 1.5 %, a quarter none).
    """
    return COARSE_STEP_PERIODS * grid.box / grid.max_frequency


def default_max_shift(box):
    """Default shift-search radius in pixels for a ``box``-pixel particle."""
    return SHIFT_RANGE_FRACTION * float(box)


def resolve_max_shift(max_shift, box):
    """The searched radius in pixels: ``max_shift``, or :func:`default_max_shift` of the
    ``box`` when ``max_shift`` is negative (the protocols' "default" value)."""
    return default_max_shift(box) if max_shift < 0 else float(max_shift)


class ParticleSearch:
    """Best template, in-plane angle and shift of particles within ``max_shift`` pixels.

    With ``max_shift > 0`` the search of :func:`align_translations`: a radial-SVD
    search over the coarse lattice (``shift_grid(max_shift, coarse_shift_step(grid))``,
    no full-rank re-scoring there) picks each image's candidates, and the FTK scores
    them over the disc ``PolarShifts.disc(max_shift, shift_step)``.  With
    ``max_shift == 0`` the radial-SVD search at the zero shift alone.

    :param options: further arguments of :class:`.radial_svd.RadialSVDAligner`
        (rank, tolerance, ctf_tolerance, backend, ...).
    """

    def __init__(self, grid, template_polar, max_shift, shift_step=DEFAULT_SHIFT_STEP,
                 **options):
        self.grid = grid
        self.template_polar = np.asarray(template_polar)
        self.max_shift = float(max_shift)
        if self.max_shift > 0:
            self.shifts = PolarShifts.disc(self.max_shift, shift_step)
            self.aligner = RadialSVDAligner(
                grid, self.template_polar, refine_candidates=0,
                shifts=shift_grid(self.max_shift, coarse_shift_step(grid)), **options)
        else:
            self.shifts = None
            self.aligner = RadialSVDAligner(grid, self.template_polar,
                                            shifts=shift_grid(self.max_shift), **options)

    @property
    def n_templates(self):
        return self.aligner.n_templates

    def align(self, image_polar, ctf_params=None, pixel_size=None, progress=None):
        """:class:`.radial_svd.AlignmentResult` of ``image_polar`` ``(n, R, Q)``, each image
        with its own CTF (``ctf_params``, or None for none)."""
        if self.shifts is None:
            return self.aligner.align(image_polar, ctf_params=ctf_params,
                                      pixel_size=pixel_size, progress=progress)
        return align_translations(self.aligner, self.template_polar, image_polar, self.shifts,
                                  ctf_params=ctf_params, pixel_size=pixel_size,
                                  progress=progress)


@dataclass(frozen=True)
class PolarShifts:
    """Shifts on rings: radii ``rho_d = d * step`` and ``n_omega[d]`` directions each.

    Ring ``d`` holds the shifts ``rho_d (cos, sin)(2 pi m / n_omega[d])``,
    ``m = 0 .. n_omega[d] - 1``, at ``shifts[offsets[d] + m]``; directions
    are spaced at most ``step`` pixels apart (the centre is one shift).
    """
    radii: np.ndarray
    n_omega: np.ndarray
    step: float

    @classmethod
    def disc(cls, max_shift, step=DEFAULT_SHIFT_STEP):
        """The disc ``|t| <= max_shift`` pixels with spacing ``step``."""
        max_shift, step = float(max_shift), float(step)
        if not np.isfinite(max_shift) or max_shift < 0:
            raise InvalidDataError(f"the maximum shift must be a finite number >= 0 pixels, "
                                   f"got {max_shift}")
        if not np.isfinite(step) or step <= 0:
            raise InvalidDataError(f"the shift step must be positive, got {step} pixels")
        radii = step * np.arange(int(np.floor(max_shift / step + 1e-9)) + 1)
        n_omega = np.array([1] + [scipy.fft.next_fast_len(int(np.ceil(2 * np.pi * rho / step)))
                                  for rho in radii[1:]], dtype=np.int64)
        return cls(radii, n_omega, step)

    @property
    def max_shift(self):
        return float(self.radii[-1])

    @property
    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.n_omega)])

    @property
    def shifts(self):
        """``(n, 2)`` core shifts ``(tx, ty)`` in pixels, ring by ring."""
        return np.concatenate([
            rho * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            for rho, count in zip(self.radii, self.n_omega)
            for angles in [2 * np.pi * np.arange(count) / count]])

    def __len__(self):
        return int(self.n_omega.sum())


@dataclass(frozen=True)
class TranslationFactorization:
    """Low-rank factors of the Bessel-expanded translation kernel (module docstring).

    :param grid: the polar grid of the rings.
    :param max_shift: radius of the disc of shifts, pixels.
    :param orders: ``(T,)`` Bessel order ``p`` of each term (both signs).
    :param ring_vectors: ``(T, R)`` left singular vectors ``U_pl[r]``.
    :param singular_values: ``(T,)``.
    """
    grid: PolarGrid
    max_shift: float
    tolerance: float
    orders: np.ndarray
    ring_vectors: np.ndarray
    singular_values: np.ndarray

    @classmethod
    def build(cls, grid, max_shift, tolerance=DEFAULT_TOLERANCE):
        """Factorise the kernel of ``grid``'s rings over the disc ``|t| <= max_shift``."""
        if not isinstance(grid, PolarGrid):
            raise TypeError(f"grid must be a PolarGrid, got {type(grid).__name__}")
        max_shift = float(max_shift)
        if not np.isfinite(max_shift) or max_shift < 0:
            raise InvalidDataError(f"the maximum shift must be a finite number >= 0 pixels, "
                                   f"got {max_shift}")
        if not 0 < tolerance < 1:
            raise InvalidDataError(f"the factorisation tolerance must lie in (0, 1), got "
                                   f"{tolerance}")
        z_max = 2 * np.pi * grid.max_frequency * max_shift / grid.box
        # Nodes enough for the oscillation of J_p(z) on [0, z_max]; orders past
        # z_max + 30 are below 1e-16 there.
        nodes, node_weights = scipy.special.roots_jacobi(int(np.ceil(z_max)) + 24, 0, 1)
        radii = max_shift * (1 + nodes) / 2
        radial_weights = (max_shift / 2) ** 2 * node_weights
        row = np.sqrt(grid.weights)[:, None]
        column = np.sqrt(radial_weights)[None, :]
        z = 2 * np.pi * np.outer(grid.radii, radii) / grid.box
        spectra = []
        for p in range(int(np.ceil(z_max)) + 31):
            vectors, values, _ = np.linalg.svd(row * scipy.special.jv(p, z) * column,
                                               full_matrices=False)
            spectra.append((p, vectors, values))
        largest = max(values[0] for _, _, values in spectra)
        orders, vectors, values = [], [], []
        for p, left, singular in spectra:
            keep = singular > tolerance * largest
            for sign in ((1,) if p == 0 else (1, -1)):
                orders.extend([sign * p] * int(keep.sum()))
                vectors.append(left[:, keep].T)
                values.append(singular[keep])
        return cls(grid, max_shift, float(tolerance), np.array(orders, dtype=np.int64),
                   np.concatenate(vectors), np.concatenate(values))

    @property
    def n_terms(self):
        return self.orders.size

    def radial_factors(self, radii):
        """``e_pl(rho)`` ``(n_radii, T)`` at shift radii ``radii`` (pixels)."""
        radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
        if np.any(radii > self.max_shift * (1 + 1e-9)):
            raise InvalidDataError(f"shift radii up to {radii.max():.3g} px lie outside the "
                                   f"factorised disc of {self.max_shift:.3g} px")
        grid = self.grid
        z = 2 * np.pi * np.outer(radii, grid.radii) / grid.box
        out = np.empty((radii.size, self.n_terms))
        magnitudes = np.abs(self.orders)
        for p in np.unique(magnitudes):
            terms = magnitudes == p
            bessel = scipy.special.jv(p, z) * np.sqrt(grid.weights)[None, :]
            out[:, terms] = bessel @ self.ring_vectors[terms].T
        # J_-p = (-1)^p J_p.
        return out * np.where((self.orders < 0) & (self.orders % 2 == 1), -1.0, 1.0)

    def translate(self, coefficients, shifts):
        """Ring coefficients ``(R, Q)`` re-centred by each of ``shifts`` ``(n, 2)``: ``(n, R, Q)``.

        The factorised form of multiplying the polar samples by
        :func:`.polar.shift_phases` (a reference for tests; the search uses
        :func:`translation_spectra`).
        """
        coefficients = np.asarray(coefficients)
        shifts = np.atleast_2d(np.asarray(shifts, dtype=np.float64))
        rho = np.hypot(shifts[:, 0], shifts[:, 1])
        omega = np.arctan2(shifts[:, 1], shifts[:, 0])
        factors = self.radial_factors(rho)
        weights = np.sqrt(self.grid.weights)
        out = np.zeros((shifts.shape[0],) + coefficients.shape, dtype=np.complex128)
        for t, p in enumerate(self.orders):
            bessel = self.ring_vectors[t][None, :] * factors[:, t, None] / weights[None, :]
            phase = (1j ** p) * np.exp(-1j * p * omega)
            out += (phase[:, None] * bessel)[..., None] * np.roll(coefficients, p, axis=-1)
        return out


def translation_aware_kernel(template_polar, grid, shift_sigma):
    """Radial kernel ``(R, R)`` of CTF-free templates under random shifts (module docstring).

    :param template_polar: ``(n_B, R, Q)`` polar samples of the templates.
    :param shift_sigma: s.d. of the particles' shifts per axis, pixels.
    :returns: the template-averaged kernel, real symmetric positive semi-definite.
    """
    if not np.isfinite(shift_sigma) or shift_sigma < 0:
        raise InvalidDataError(f"the shift s.d. must be a finite number >= 0 pixels, got "
                               f"{shift_sigma}")
    template_polar = np.asarray(template_polar)
    if template_polar.ndim != 3 or template_polar.shape[1:] != (grid.n_rings, grid.n_angles):
        raise ShapeError(f"template_polar must have shape (n, {grid.n_rings}, {grid.n_angles}), "
                         f"got {template_polar.shape}")
    scaled = 2 * np.pi * shift_sigma * grid.radii / grid.box
    spread = np.exp(-0.5 * (scaled[:, None] - scaled[None, :]) ** 2)
    decay = np.exp(-0.5 * scaled ** 2)
    kernel = np.zeros((grid.n_rings, grid.n_rings))
    eta = np.sqrt(grid.weights)
    for start in range(0, template_polar.shape[0], 256):
        coefficients = scipy.fft.fft(template_polar[start:start + 256].astype(np.complex128),
                                     axis=-1, norm="forward", workers=fft_workers())
        coefficients[..., grid.n_angles // 2] = 0
        flat = coefficients.transpose(1, 0, 2).reshape(grid.n_rings, -1) * eta[:, None]
        zero = coefficients[..., 0].T * eta[:, None]
        kernel += (spread * (flat.conj() @ flat.T)).real
        kernel -= (np.outer(decay, decay) * (zero.conj() @ zero.T)).real
    return kernel / template_polar.shape[0]


def translation_spectra(factorization, image_coefficients, template_half, candidates,
                        template_weights, dtype=np.complex64):
    """Per-term spectra ``G[pair, t, q]`` of each image against its candidate templates.

    :param image_coefficients: ``(n, R, Q)`` full ring coefficients of the images.
    :param template_half: ``(R, n_B, Q/2)`` template coefficients ``q = 0 .. Q/2 - 1``.
    :param candidates: ``(n, k)`` template indices.
    :param template_weights: ``(n, R)`` ``sqrt(w_r) c_r`` of each image's CTF.
    :returns: ``(n k, T, Q/2)`` complex.
    """
    n_images, n_rings, n_angles = image_coefficients.shape
    half = n_angles // 2
    kept = candidates.shape[1]
    vectors = factorization.ring_vectors.astype(dtype)
    # Z[i, q, t, r] = U_t[r] a_i[r, q - p_t], shifted coefficients of every term.
    q_index = (np.arange(half)[:, None] - factorization.orders[None, :]) % n_angles
    shifted = image_coefficients.astype(dtype)[:, :, q_index]           # (n, R, Q/2, T)
    shifted = shifted.transpose(0, 2, 3, 1) * vectors[None, None]       # (n, Q/2, T, R)
    chosen = template_half[:, candidates].astype(dtype)                 # (R, n, k, Q/2)
    chosen = chosen * template_weights.T[:, :, None, None].astype(dtype)
    chosen = chosen.transpose(1, 3, 0, 2)                               # (n, Q/2, R, k)
    spectra = np.matmul(shifted.conj(), chosen)                         # (n, Q/2, T, k)
    return np.ascontiguousarray(spectra.transpose(0, 3, 2, 1).reshape(n_images * kept, -1, half))


def shift_weights(factorization, shifts):
    """``W[s, t] = (-i)^p_t exp(i p_t omega_s) e_t(rho_s)`` ``(S, T)``: terms to shifts."""
    points = shifts.shifts
    omega = np.arctan2(points[:, 1], points[:, 0])
    ring = np.repeat(np.arange(shifts.radii.size), shifts.n_omega)
    orders = factorization.orders
    return (factorization.radial_factors(shifts.radii)[ring] * (-1j) ** orders[None, :]
            * np.exp(1j * np.outer(omega, orders)))


def direction_spectra(spectra, weights):
    """Angular spectra ``Xhat(q; t)`` ``(pairs, S, Q/2)`` at every shift (module docstring).

    :param spectra: ``(pairs, T, Q/2)`` from :func:`translation_spectra`.
    :param weights: ``(S, T)`` from :func:`shift_weights`.
    """
    return np.matmul(weights.astype(spectra.dtype)[None], spectra)


def angle_landscapes(angular_spectra):
    """``Re[Xhat(0) + 2 sum_{q >= 1} Xhat(q) exp(-2 pi i q j / Q)]`` over the ``Q`` angles.

    :param angular_spectra: ``(..., Q/2)`` complex ``Xhat(q)``, ``q = 0 .. Q/2 - 1``.
    :returns: ``(..., Q)`` real (the Hermitian FFT; the Nyquist bin is zero).
    """
    half = angular_spectra.shape[-1]
    padded = np.zeros(angular_spectra.shape[:-1] + (half + 1,), dtype=angular_spectra.dtype)
    padded[..., :half] = angular_spectra
    return scipy.fft.hfft(padded, n=2 * half, axis=-1, overwrite_x=True, workers=fft_workers())


def align_translations(aligner, template_polar, image_polar, shifts, factorization=None,
                       candidates=8, ctf_params=None, pixel_size=None, progress=None):
    """Best template, angle and sub-pixel shift of every image: coarse search, then the FTK.

    :param aligner: :class:`.radial_svd.RadialSVDAligner` built with the coarse
        shift lattice (``shift_grid(max_shift, coarse_shift_step(grid))``); its
        search keeps each image's ``candidates`` best templates.  Build it with
        ``refine_candidates=0``: the FTK scores the candidates at full rank
        anyway, and the coarse refinement would double the coarse stage's cost.
    :param template_polar: ``(n_B, R, Q)`` the polar samples the aligner was built on.
    :param shifts: :class:`PolarShifts`, the fine disc the FTK scores.
    :param factorization: :class:`TranslationFactorization` over at least the
        disc of ``shifts``; None builds one at :data:`DEFAULT_TOLERANCE`.
    :returns: :class:`.radial_svd.AlignmentResult`; ``shift`` on the fine
        disc, ``score`` the full-rank normalised correlation, ``statistics``
        the FTK stage's (image, candidate, shift) rows and how many of them got
        the angle FFT (each pair's row of largest bound, then those passing the
        bound of :func:`_pruned_best`).  Both
        stages run on the aligner's backend (the FFTs on the CPU).
    """
    if not isinstance(shifts, PolarShifts):
        raise TypeError(f"shifts must be PolarShifts, got {type(shifts).__name__}")
    grid = aligner.grid
    if factorization is None:
        factorization = TranslationFactorization.build(grid, shifts.max_shift)
    elif factorization.grid != grid or factorization.max_shift < shifts.max_shift * (1 - 1e-9):
        raise InvalidDataError(
            f"the factorisation covers {factorization.max_shift:.3g} px on its own grid; the "
            f"search needs {shifts.max_shift:.3g} px on the aligner's grid: build it with "
            "TranslationFactorization.build(aligner.grid, shifts.max_shift)")
    image_polar = np.asarray(image_polar)
    if image_polar.ndim != 3 or image_polar.shape[1:] != (grid.n_rings, grid.n_angles):
        raise ShapeError(f"image_polar must have shape (n, {grid.n_rings}, {grid.n_angles}), "
                         f"got {image_polar.shape}")
    template_polar = np.asarray(template_polar)
    if template_polar.shape != (aligner.n_templates, grid.n_rings, grid.n_angles):
        raise ShapeError(f"template_polar must be the aligner's {aligner.n_templates} templates "
                         f"of shape ({grid.n_rings}, {grid.n_angles}), got {template_polar.shape}")
    kept = int(min(max(1, candidates), aligner.n_templates))
    coarse = aligner.align(image_polar, ctf_params, pixel_size, top_k=kept)
    chosen = coarse.top_template if kept > 1 else coarse.template[:, None]
    _, complex_dtype = working_dtypes(aligner.dtype)
    template_half = _half_coefficients(template_polar, complex_dtype)
    template_norms = _template_norms(template_half, grid)
    # Each particle's own CTF on the image side (docs/methods/radial_svd_alignment.md §1.6):
    # <T_-t A, C R B> = <C T_-t A, R B>, against the CTF-free templates.
    ctf = None if ctf_params is None else ctf_on_grid(ctf_params, grid, pixel_size,
                                                      aligner.dtype)
    shift_to_terms = shift_weights(factorization, shifts)
    bounds = _bound_kernels(aligner.backend)
    report = Reporter(progress)
    count = image_polar.shape[0]
    score = np.empty(count)
    template, angle, shift = (np.empty(count, np.int64) for _ in range(3))
    evaluated = 0
    per_chunk = max(1, _PAIR_CHUNK // kept)
    for start in range(0, count, per_chunk):
        index = np.arange(start, min(count, start + per_chunk))
        candidates_here = chosen[index]
        polar = image_polar[index].astype(complex_dtype)
        image_norm = np.sqrt(np.einsum("r,nrq->n", grid.weights,
                                       np.abs(_full_coefficients(polar)) ** 2))
        if ctf is None:
            power = np.ones((index.size, grid.n_rings))
        else:
            polar *= ctf[index]
            power = np.mean(ctf[index].astype(np.float64) ** 2, axis=-1)
        spectra = translation_spectra(factorization, _full_coefficients(polar), template_half,
                                      candidates_here,
                                      np.broadcast_to(np.sqrt(grid.weights), (index.size,
                                                                              grid.n_rings)),
                                      complex_dtype)
        # ||C R_gamma B|| averaged over gamma: exact for radial CTFs (module docstring).
        norm = image_norm[:, None] * np.sqrt(
            np.einsum("rnk,nr->nk", template_norms[:, candidates_here], power))
        scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0).reshape(-1)
        directions = direction_spectra(spectra, shift_to_terms)           # (pairs, S, Q/2)
        score[index], rank, angle[index], shift[index], rows = _pruned_best(directions, scale,
                                                                            kept, bounds)
        template[index] = candidates_here[np.arange(index.size), rank]
        evaluated += rows
        report("Images aligned over shifts", int(index[-1]) + 1, count)
    statistics = SearchStatistics(pairs=count * kept * len(shifts), evaluated=int(evaluated))
    return AlignmentResult(template, angle * grid.angular_step, shifts.shifts[shift], score,
                           coarse.group, coarse.ranks, coarse.eigenvalues, coarse.group_ctf,
                           statistics=statistics)


def _bound_kernels(backend):
    if resolve_backend(backend) == "cuda":
        from ..kernels import translations_cuda
        return translations_cuda
    return translations_cpu


def _pruned_best(directions, scale, kept, kernels):
    """Best score, candidate, angle and shift of each image, exact, from the angular spectra.

    :param directions: ``(n k, S, Q/2)`` ``Xhat(q; t)`` of each (image, candidate)
        pair at every shift (:func:`direction_spectra`, rings concatenated).
    :param scale: ``(n k,)`` ``1 / (||A|| ||c B||)``.
    :param kernels: the kernel module of the bounds (CPU or CUDA).
    ``scale (|Xhat(0)| + 2 sum_q |Xhat(q)|)`` bounds a (pair, shift)'s
    landscape over all angles (as ``docs/methods/radial_svd_alignment.md``
    §2.7); every image first scores each pair's shift of largest bound, and
    only the (pair, shift) rows whose bound reaches the best of those get the
    angle FFT.  :returns: score, candidate rank, angle index, shift index
    ``(n,)`` and the number of angle FFTs (one per pair for the threshold, then
    one per passing row).
    """
    pairs, n_shifts, _ = directions.shape
    bound = np.empty((pairs, n_shifts), dtype=directions.real.dtype)
    kernels.shift_bounds(directions, scale.astype(bound.dtype), bound)
    strongest = bound.argmax(axis=1)
    first = angle_landscapes(directions[np.arange(pairs), strongest]).max(axis=-1) * scale
    threshold = first.reshape(-1, kept).max(axis=1)
    # Float32 rounding of the bound and the FFT stays far below this margin.
    pair, shift = np.nonzero(bound * (1 + 1e-4) >= np.repeat(threshold, kept)[:, None])
    landscapes = angle_landscapes(directions[pair, shift]) * scale[pair, None]
    angle = landscapes.argmax(axis=1)
    value = landscapes[np.arange(pair.size), angle]
    image = pair // kept
    order = np.lexsort((-value, image))
    winner = order[np.flatnonzero(np.diff(image[order], prepend=-1))]
    return value[winner], pair[winner] % kept, angle[winner], shift[winner], pairs + pair.size


def _full_coefficients(polar):
    """Ring coefficients ``(n, R, Q)`` of polar samples, Nyquist bin zeroed."""
    coefficients = scipy.fft.fft(polar, axis=-1, norm="forward", workers=fft_workers())
    coefficients[..., polar.shape[-1] // 2] = 0
    return coefficients


def _half_coefficients(polar, dtype):
    """Ring-major coefficients ``q = 0 .. Q/2 - 1`` ``(R, n_B, Q/2)`` of polar samples."""
    half = polar.shape[-1] // 2
    coefficients = scipy.fft.fft(polar.astype(dtype, copy=False), axis=-1, norm="forward",
                                 workers=fft_workers())[..., :half]
    return np.ascontiguousarray(coefficients.transpose(1, 0, 2))


def _template_norms(template_half, grid):
    """``w_r sum_q |b[r, q]|^2`` over all ``q`` but Nyquist, ``(R, n_B)``, from halves."""
    energy = 2 * np.sum(np.abs(template_half) ** 2, axis=-1) - np.abs(template_half[..., 0]) ** 2
    return grid.weights[:, None] * energy
