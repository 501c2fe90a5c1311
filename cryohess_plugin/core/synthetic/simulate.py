"""Synthetic particle stacks and micrographs with known ground truth.

Everything is deterministic given ``rng`` (an integer seed or a
:class:`numpy.random.Generator`).  Independent quantities (poses, shifts,
CTFs, conformations, placement, noise) draw from separate child streams, so
changing, say, the SNR leaves the poses of a given seed unchanged.

**SNR.**  For clean, CTF-modulated particle images ``c_i`` (``box x box``) and
white Gaussian noise of standard deviation ``sigma``::

    SNR = mean_i( var(c_i) ) / sigma^2

where ``var(c_i)`` is the variance of image ``i`` over all its pixels (the
whole box, background included).  Particles may instead state it inside a band
(``snr_band``) and have coloured noise (``noise_spectrum``), as :mod:`.noise` defines.
For micrographs the whole-box formula is applied to the ``box x box`` windows of the
clean, CTF-modulated micrograph centred on the particles (or, with
``snr_definition="energy"``, the paper's Eq. (4) of micrograph EM, :mod:`..noise`).

**Images.**  Volumes are projected with :class:`.projector.FourierSliceProjector`
(voxel size = ``pixel_size``), CTF included.  Atomic models are projected
analytically with :func:`.atoms.project_atom_positions` about the model's
centroid and the CTF is applied with :func:`.ctf.apply_ctf`; with two states
(heterogeneity) every particle has its own map ``(1 - t) A + t B``, which is
why that path is analytic.
"""
from dataclasses import dataclass

import numpy as np

from .. import rotations as rot
from .atoms import AtomModel, gaussian_atom_volume, project_atom_positions
from ..ctf import CTFParams, apply_ctf, ctf_stack, filter_images, params_to_rows
from ..errors import InvalidDataError, ShapeError
from ..noise import noise_images, noise_sigma_for_energy_snr, noise_sigma_for_snr
from ..projector import FourierSliceProjector, validate_volume

DISTRIBUTIONS = ("uniform", "polar_cap", "equatorial_band", "top_view_preference")

#: The independent random streams of one data set's seed (:func:`stream_seed`): the
#: structure, the particles and the micrographs, so that changing the micrographs leaves
#: the phantom and the particles of a seed unchanged.
STRUCTURE_STREAM, PARTICLE_STREAM, MICROGRAPH_STREAM = 0, 1, 2


def stream_seed(seed, stream):
    """Seed of one independent random stream of a data set with seed ``seed``.

    :param seed: the data set's non-negative integer seed.
    :param stream: :data:`STRUCTURE_STREAM`, :data:`PARTICLE_STREAM` or
        :data:`MICROGRAPH_STREAM`.
    :returns: :class:`numpy.random.SeedSequence`, an ``rng`` for this module's functions.
    """
    return np.random.SeedSequence([int(seed), int(stream)])


def _streams(rng, count):
    """``count`` independent generators derived from a seed or a generator."""
    seeds = np.random.default_rng(rng).integers(0, 2 ** 63 - 1, size=count)
    return [np.random.default_rng(seed) for seed in seeds]


def _rotations_with_cos_tilt(cos_tilt, rng):
    """Rotations whose projection direction has the given ``cos(tilt)``, uniform azimuth and psi."""
    n = cos_tilt.shape[0]
    azimuth = rng.uniform(0.0, 360.0, n)
    psi = rng.uniform(0.0, 360.0, n)
    return rot.euler_to_matrix(azimuth, np.rad2deg(np.arccos(np.clip(cos_tilt, -1, 1))), psi)


def uniform_rotations(n, rng):
    """``(n, 3, 3)`` rotations from the Haar measure on SO(3)."""
    return rot.random_rotations(n, np.random.default_rng(rng))


def polar_cap_rotations(n, rng, cap_deg=30.0):
    """``(n, 3, 3)`` rotations whose projection direction ``R[2]`` is uniform on the cap
    within ``cap_deg`` of +z, with uniform in-plane angle."""
    rng = np.random.default_rng(rng)
    cos_tilt = rng.uniform(np.cos(np.deg2rad(cap_deg)), 1.0, n)
    return _rotations_with_cos_tilt(cos_tilt, rng)


def equatorial_band_rotations(n, rng, band_deg=15.0):
    """``(n, 3, 3)`` rotations with tilt uniform (by area) within ``band_deg`` of 90°."""
    rng = np.random.default_rng(rng)
    limit = np.sin(np.deg2rad(band_deg))
    return _rotations_with_cos_tilt(rng.uniform(-limit, limit, n), rng)


def top_view_preference_rotations(n, rng, fraction=0.5, cap_deg=15.0):
    """``(n, 3, 3)`` rotations: a ``fraction`` from the polar cap of ``cap_deg``
    around +z (top views), the rest uniform; the order is random."""
    rng = np.random.default_rng(rng)
    top = rng.random(n) < fraction
    out = uniform_rotations(n, rng)
    out[top] = polar_cap_rotations(int(top.sum()), rng, cap_deg)
    return out


def sample_rotations(kind, n, rng, **options):
    """Rotations from a named viewing distribution.

    :param kind: ``"uniform"``, ``"polar_cap"`` (option ``cap_deg``),
        ``"equatorial_band"`` (``band_deg``) or ``"top_view_preference"``
        (``fraction``, ``cap_deg``).
    :param n: number of rotations.
    :param rng: seed or :class:`numpy.random.Generator`.
    :returns: ``(n, 3, 3)`` float64 rotation matrices (:mod:`.rotations` convention).
    """
    samplers = {"uniform": uniform_rotations, "polar_cap": polar_cap_rotations,
                "equatorial_band": equatorial_band_rotations,
                "top_view_preference": top_view_preference_rotations}
    if kind not in samplers:
        raise ValueError(f"unknown viewing distribution {kind!r}; use one of {DISTRIBUTIONS}")
    return samplers[kind](int(n), rng, **options)


def random_ctf_params(count, rng, defocus_range=(10000.0, 25000.0), astigmatism=0.0,
                      voltage=300.0, cs=2.7, amplitude_contrast=0.1):
    """CTF parameters of ``count`` micrographs (defocus groups).

    The mean defocus is uniform in ``defocus_range``; ``defocus_u - defocus_v =
    astigmatism`` with a uniform astigmatism angle in [0, 180).

    :param defocus_range: ``(low, high)`` mean defocus in Å, underfocus positive.
    :param astigmatism: ``defocus_u - defocus_v`` in Å.
    :param voltage: kV.  :param cs: spherical aberration in mm.
    :param amplitude_contrast: fraction in [0, 1).
    :returns: list of :class:`.ctf.CTFParams`.
    """
    rng = np.random.default_rng(rng)
    low, high = defocus_range
    if not 0 <= low <= high:
        raise InvalidDataError(f"defocus_range must be (low, high) with 0 <= low <= high Å, "
                               f"got {defocus_range}")
    mean = rng.uniform(low, high, count)
    angle = rng.uniform(0.0, 180.0, count)
    return [CTFParams(m + 0.5 * astigmatism, m - 0.5 * astigmatism, a, voltage, cs,
                      amplitude_contrast) for m, a in zip(mean, angle)]


def _as_source(source, box):
    """Validate a volume or atomic model against the image box."""
    if isinstance(source, AtomModel):
        return source
    volume = validate_volume(source)
    if volume.shape[0] != box:
        raise ShapeError(f"volume box {volume.shape[0]} differs from the particle box {box}; "
                         "pass box equal to the volume size")
    return volume


def _is_trajectory(heterogeneity):
    """True for a model with its own states (e.g. :class:`.pretzel.Pretzel`)."""
    return hasattr(heterogeneity, "positions_at")


def ground_truth_maps(source, second_state, box, pixel_size):
    """The maps of a data set's ground truth: ``(map of A, map of B or None)``.

    An atomic model is sampled with :func:`.atoms.gaussian_atom_volume` about its
    centroid, and a second state about the first one's centroid: the centre every
    particle image of :func:`simulate_particles` is projected about, so the maps and
    the images share their origin.  A volume is its own map.

    :param source: :class:`.atoms.AtomModel` or ``(box, box, box)`` volume (state A).
    :param second_state: None or an :class:`.atoms.AtomModel` listing A's atoms (state B).
    :param box: edge of the maps in voxels.
    :param pixel_size: Å per voxel.
    :returns: ``(box, box, box)`` map of A and, with a second state, the map of B.
    """
    if not isinstance(source, AtomModel):
        return _as_source(source, box), None
    map_a = gaussian_atom_volume(source, box, pixel_size)
    if second_state is None:
        return map_a, None
    return map_a, gaussian_atom_volume(second_state, box, pixel_size, center=source.centroid())


def _atom_images(state_a, state_b, t, rotations, shifts, box, pixel_size):
    """Analytic projections of ``(1 - t) A + t B`` (or of ``A``, or of a trajectory's
    atoms at states ``t``) about A's centroid."""
    centred = state_a.positions - state_a.centroid()
    if _is_trajectory(state_b):
        positions = state_b.positions_at(t) - state_a.centroid()
    elif state_b is None:
        positions = centred
    else:
        positions = centred[None] + t[:, None, None] * (state_b.positions - state_a.positions)[None]
    return project_atom_positions(positions, state_a.amplitudes(), state_a.sigmas(), rotations,
                                  box, pixel_size, shifts=shifts)


@dataclass
class ParticleSimulation:
    """A simulated particle stack and its ground truth.

    :param images: ``(n, box, box)`` float32 noisy images.
    :param rotations: ``(n, 3, 3)`` true rotations.
    :param shifts: ``(n, 2)`` true shifts ``(tx, ty)`` in pixels.
    :param ctf_params: length-``n`` list of :class:`.ctf.CTFParams`, one per particle.
    :param group_ids: ``(n,)`` int defocus group (micrograph) of each particle.
    :param noise_sigma: per-pixel standard deviation of the added noise.
    :param pixel_size: Å per pixel.
    :param snr: requested SNR (``inf`` when noise-free), inside ``snr_band``.
    :param conformation: ``(n,)`` coordinate ``t`` in [0, 1], NaN when homogeneous; ``(n, d)``
        for a model with its own states (:class:`.pretzel.Pretzel`).
    :param clean_images: ``(n, box, box)`` float32 CTF-modulated images before
        noise, or None.
    :param snr_band: the band ``0 < |k| <= snr_band`` (cycles per box) the SNR is stated
        in, or None for the whole box.
    """
    images: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    ctf_params: list
    group_ids: np.ndarray
    noise_sigma: float
    pixel_size: float
    snr: float
    conformation: np.ndarray
    clean_images: np.ndarray = None
    snr_band: float = None

    def truth_arrays(self):
        """The ground truth as the arrays of a data set's truth file.

        :returns: ``{"rotations", "shifts", "groups": group_ids, "conformation": 0 for
            every particle when homogeneous, "ctfs": rows of`` :func:`.ctf.params_to_rows`
            ``, "noiseSigma"}``.
        """
        return {"rotations": self.rotations, "shifts": self.shifts, "groups": self.group_ids,
                "conformation": np.nan_to_num(self.conformation, nan=0.0),
                "ctfs": params_to_rows(self.ctf_params), "noiseSigma": self.noise_sigma}


def simulate_particles(source, n, box, pixel_size, rng=0, distribution="uniform",
                       distribution_options=None, shift_sigma=0.0,
                       defocus_range=(10000.0, 25000.0), n_groups=10, astigmatism=0.0,
                       voltage=300.0, cs=2.7, amplitude_contrast=0.1, snr=0.1,
                       heterogeneity=None, keep_clean=True, batch_size=256,
                       backend="auto", snr_band=None, noise_spectrum=None):
    """Simulate a particle stack: project, modulate by the CTF, add white noise.

    :param source: ``(box, box, box)`` volume (voxel size ``pixel_size``) or an
        :class:`.atoms.AtomModel` (projected about its centroid); None with a model that
        has its own states (``heterogeneity``).
    :param n: number of particles.
    :param box: image size in pixels.
    :param pixel_size: Å per pixel.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param distribution: viewing distribution, see :func:`sample_rotations`.
    :param distribution_options: keyword options of that distribution, dict.
    :param shift_sigma: standard deviation of each shift component in pixels.
    :param defocus_range: ``(low, high)`` mean defocus in Å of the groups.
    :param n_groups: number of defocus groups (micrographs); particle ``i`` is
        in group ``i * n_groups // n``.
    :param astigmatism: ``defocus_u - defocus_v`` in Å.
    :param voltage: kV.  :param cs: mm.  :param amplitude_contrast: fraction.
    :param snr: SNR as defined in the module docstring; None for no noise.
    :param snr_band: state ``snr`` inside the band ``0 < |k| <= snr_band`` (cycles per
        box, :func:`.noise.noise_sigma_for_snr`); None: over the whole box.
    :param noise_spectrum: relative noise power ``S(|k|)`` (a function of the frequency
        in cycles per box, :func:`.noise.noise_images`); None: white noise.
    :param heterogeneity: None, or a second :class:`.atoms.AtomModel` with the
        same atoms as ``source`` (which must then be an atomic model): particle
        ``i`` shows ``(1 - t_i) A + t_i B`` with ``t_i`` uniform in [0, 1];
        amplitudes and widths are those of ``A``; or a model with its own states
        (:class:`.pretzel.Pretzel`, whose middle state replaces ``source``): particle ``i``
        shows it at states ``t_i`` uniform in ``[0, 1]^d`` (``conformation`` is ``(n, d)``).
    :param keep_clean: also return the noise-free images.
    :param backend: where volumes are projected: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param batch_size: particles projected at once (memory bound).
    :returns: :class:`ParticleSimulation`.
    """
    n, box = int(n), int(box)
    if n < 1 or n_groups < 1:
        raise InvalidDataError(f"need n >= 1 particles and n_groups >= 1, got {n}, {n_groups}")
    source = heterogeneity.reference if _is_trajectory(heterogeneity) else source
    source = _as_source(source, box)
    if heterogeneity is not None and not _is_trajectory(heterogeneity):
        if not isinstance(source, AtomModel) or not isinstance(heterogeneity, AtomModel):
            raise InvalidDataError("heterogeneity needs two atomic models (source and "
                                   "heterogeneity), not a volume")
        if (heterogeneity.n_atoms != source.n_atoms
                or np.any(heterogeneity.elements != source.elements)):
            raise InvalidDataError("the two conformations must list the same atoms in the "
                                   "same order")
    pose_rng, shift_rng, ctf_rng, state_rng, noise_rng = _streams(rng, 5)
    rotations = sample_rotations(distribution, n, pose_rng, **(distribution_options or {}))
    shifts = shift_sigma * shift_rng.standard_normal((n, 2))
    group_ctf = random_ctf_params(n_groups, ctf_rng, defocus_range, astigmatism, voltage, cs,
                                  amplitude_contrast)
    group_ids = np.arange(n) * n_groups // n
    if _is_trajectory(heterogeneity):
        conformation = state_rng.random((n, heterogeneity.state_dimension))
    else:
        conformation = state_rng.random(n) if heterogeneity is not None else np.full(n, np.nan)

    images = np.empty((n, box, box), dtype=np.float32)
    if isinstance(source, AtomModel):
        for group in np.unique(group_ids):
            members = np.flatnonzero(group_ids == group)
            for start in range(0, members.size, batch_size):
                idx = members[start:start + batch_size]
                clean = _atom_images(source, heterogeneity, conformation[idx], rotations[idx],
                                     shifts[idx], box, pixel_size)
                images[idx] = apply_ctf(clean, group_ctf[group], pixel_size)
    else:
        projector = FourierSliceProjector(source, dtype=np.float32, backend=backend)
        half_plane = projector.half_plane
        table = ctf_stack(group_ctf, half_plane.kx, half_plane.ky, box, pixel_size)
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            images[idx] = projector.project(rotations[idx], shifts[idx], table[group_ids[idx]])

    clean_images = images.copy() if keep_clean else None
    if snr is None:
        sigma, snr = 0.0, np.inf
    else:
        sigma = noise_sigma_for_snr(images, snr, snr_band, noise_spectrum)
        images += noise_images(noise_rng, images.shape, sigma, noise_spectrum)
    return ParticleSimulation(images, rotations, shifts, [group_ctf[g] for g in group_ids],
                              group_ids, sigma, float(pixel_size), float(snr), conformation,
                              clean_images, snr_band)


@dataclass
class MicrographSimulation:
    """Simulated micrographs and their ground truth.

    :param micrographs: ``(m, H, W)`` float32 noisy micrographs.
    :param coordinates: length-``m`` list of ``(k_j, 2)`` int arrays, particle
        centres ``(x, y)`` in micrograph pixels (column, row index).
    :param rotations: length-``m`` list of ``(k_j, 3, 3)`` true rotations.
    :param ctf_params: length-``m`` list of :class:`.ctf.CTFParams`.
    :param defocus: ``(m,)`` mean defocus ``(dU + dV) / 2`` in Å.
    :param noise_sigma: standard deviation of the added white noise.
    :param pixel_size: Å per pixel.
    :param box: particle box in pixels.
    :param snr: requested SNR (``inf`` when noise-free).
    :param clean_micrographs: ``(m, H, W)`` float32 before noise, or None.
    :param target_count: particles per micrograph asked for (the separation rule may
        place fewer: ``coordinates`` has those placed).
    :param ctf_applied: False when the micrographs have no CTF (``ctf_params`` are then
        what a CTF estimation would have been given, unused).
    """
    micrographs: np.ndarray
    coordinates: list
    rotations: list
    ctf_params: list
    defocus: np.ndarray
    noise_sigma: float
    pixel_size: float
    box: int
    snr: float
    clean_micrographs: np.ndarray = None
    target_count: int = None
    ctf_applied: bool = True

    def top_left(self, micrograph):
        """``(k, 2)`` top-left pixel ``(y, x)`` of micrograph ``micrograph``'s particle boxes."""
        centres = np.asarray(self.coordinates[micrograph])
        return centres[:, ::-1] - self.box // 2

    def particle_windows(self):
        """``(K, box, box)`` float32 boxes of the noisy micrographs at every true centre,
        micrograph by micrograph (the order of ``coordinates``): what an extraction at
        the true picks gives, each particle centred (zero shift) with its true pose."""
        boxes = [self.micrographs[j, y:y + self.box, x:x + self.box]
                 for j in range(len(self.coordinates)) for y, x in self.top_left(j)]
        return np.stack(boxes).astype(np.float32) if boxes else np.zeros(
            (0, self.box, self.box), dtype=np.float32)

    def density(self):
        """Share of the micrograph area covered by particle boxes, ``γ = T L² / N²``."""
        area = self.micrographs.shape[1] * self.micrographs.shape[2]
        return float(np.mean([len(c) for c in self.coordinates]) * self.box ** 2 / area)

    def truth_arrays(self):
        """The ground truth as the arrays of a data set's micrograph truth file.

        :returns: ``{"coordinates": (m, k, 2), "rotations": (m, k, 3, 3), "ctfs": rows of``
            :func:`.ctf.params_to_rows` ``, "noiseSigma"}``.
        """
        counts = np.array([len(c) for c in self.coordinates])
        padded = np.full((len(counts), counts.max(initial=0), 2), -1, dtype=np.int64)
        poses = np.zeros((len(counts), counts.max(initial=0), 3, 3))
        for j, (centres, rotations) in enumerate(zip(self.coordinates, self.rotations)):
            padded[j, :len(centres)] = centres
            poses[j, :len(centres)] = rotations
        return {"coordinates": padded, "rotations": poses, "counts": counts,
                "ctfs": params_to_rows(self.ctf_params), "noiseSigma": self.noise_sigma}


def place_particles(shape, count, box, min_distance, rng, max_attempts=None):
    """Non-overlapping particle centres by rejection sampling.

    Centres are integer pixels ``(x, y)`` with the whole ``box x box`` window
    inside the micrograph; a candidate is accepted when it is at least
    ``min_distance`` pixels from every accepted centre.

    :param shape: ``(H, W)`` micrograph size in pixels.
    :param count: number of particles to place.
    :param box: particle box in pixels.
    :param min_distance: minimum centre-to-centre distance in pixels.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param max_attempts: candidate draws before giving up (default ``1000 * count + 1000``).
    :returns: ``(count, 2)`` int64 array of ``(x, y)``.
    :raises InvalidDataError: the particles do not fit.
    """
    rng = np.random.default_rng(rng)
    height, width = shape
    half = box // 2
    if height < box or width < box:
        raise InvalidDataError(f"micrograph {shape} is smaller than the particle box {box}")
    max_attempts = 1000 * count + 1000 if max_attempts is None else max_attempts
    placed = np.empty((count, 2), dtype=np.int64)
    accepted = 0
    for _ in range(max_attempts):
        if accepted == count:
            break
        candidate = np.array([rng.integers(half, width - box + half + 1),
                              rng.integers(half, height - box + half + 1)])
        distance = np.hypot(*(placed[:accepted] - candidate).T)
        if accepted == 0 or distance.min() >= min_distance:
            placed[accepted] = candidate
            accepted += 1
    if accepted < count:
        raise InvalidDataError(
            f"placed only {accepted} of {count} particles {min_distance} px apart in a "
            f"{height}x{width} micrograph; lower the density or the minimum distance")
    return placed


def place_separated(shape, count, box, separation, rng, attempts=None):
    """Particle boxes by random sequential placement under a separation rule.

    The paper's regime (Kreymer, Singer & Bendory, §II, with its Eq. (5) read as "or"):
    each accepted particle reserves the ``separation²`` square at its box's top-left
    corner; a candidate corner, uniform over the corners whose square fits, is accepted
    when its square is free, i.e. when ``max(|Δx|, |Δy|) >= separation`` to every accepted
    corner.  ``separation = 2 box - 1`` leaves at most one particle in any ``box²`` tile of
    the micrograph; ``separation = box`` only forbids overlap ("arbitrary spacing").
    Stops after ``attempts`` candidates (default ``4 count``), so fewer than ``count`` may
    be placed.

    :returns: ``(k, 2)`` int64 particle centres ``(x, y)`` (top-left plus ``box // 2``).
    """
    rng = np.random.default_rng(rng)
    height, width = shape
    separation = int(separation)
    if separation < box:
        raise InvalidDataError(f"the separation ({separation} px) must be at least the box "
                               f"({box} px): particles may not overlap")
    if height < separation or width < separation:
        raise InvalidDataError(f"micrograph {shape} is smaller than the separation square "
                               f"{separation}")
    attempts = 4 * count if attempts is None else attempts
    taken = np.zeros((height, width), dtype=bool)
    corners = []
    for _ in range(int(attempts)):
        if len(corners) == count:
            break
        y = int(rng.integers(0, height - separation + 1))
        x = int(rng.integers(0, width - separation + 1))
        if not taken[y:y + separation, x:x + separation].any():
            taken[y:y + separation, x:x + separation] = True
            corners.append((x, y))
    return np.array(corners, dtype=np.int64).reshape(-1, 2) + box // 2


def simulate_micrographs(source, n_micrographs, box, pixel_size, shape=(1024, 1024), rng=0,
                         particles_per_micrograph=None, area_fraction=0.25, min_distance=None,
                         distribution="uniform", distribution_options=None,
                         defocus_range=(10000.0, 25000.0), astigmatism=0.0, voltage=300.0,
                         cs=2.7, amplitude_contrast=0.1, snr=0.1, keep_clean=True,
                         backend="auto", separation=None, projector=None, ctf=True,
                         ctf_per_particle=False, snr_definition="variance"):
    """Simulate micrographs: projections pasted at non-overlapping positions, CTF, noise.

    Each particle's projection (``box x box``, centred at its integer
    coordinate, no sub-pixel shift) is added to the micrograph; the
    micrograph's CTF then filters the whole micrograph (periodic boundary),
    and white noise at the SNR of the module docstring (measured on the
    particle windows of the clean micrographs, all micrographs together) is
    added.

    The micrograph-EM regime (``docs/methods/micrograph_em.md`` §10): ``separation``
    places particles by :func:`place_separated` (``2 box - 1``: well separated; ``box``:
    arbitrary spacing), with ``area_fraction`` the target density ``γ = T box² / (H W)``;
    ``ctf_per_particle`` filters each particle's box by the CTF instead of the whole
    micrograph (the patch model's forward operator); ``snr_definition="energy"`` states the
    SNR as the paper's Eq. (4), mean ``|I_t|²_F / (box² σ²)`` over the particle boxes;
    ``projector`` replaces the projection of ``source`` by any forward model (e.g. the
    basis of :mod:`..micrograph_em`, for data that follow it exactly).

    :param source: ``(box, box, box)`` volume or :class:`.atoms.AtomModel`.
    :param n_micrographs: number of micrographs ``m``.
    :param box: particle box in pixels.
    :param pixel_size: Å per pixel.
    :param shape: ``(H, W)`` micrograph size in pixels.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param particles_per_micrograph: particles per micrograph; when None,
        ``round(area_fraction * H * W / box^2)``.
    :param area_fraction: fraction of the micrograph area covered by particle boxes.
    :param min_distance: minimum centre distance in pixels (default ``box``).
    :param distribution, distribution_options: viewing distribution, see
        :func:`sample_rotations`.
    :param defocus_range, astigmatism, voltage, cs, amplitude_contrast: CTF per
        micrograph, see :func:`random_ctf_params`.
    :param snr: SNR, or None for no noise.
    :param keep_clean: also return the noise-free micrographs.
    :param backend: where volumes are projected: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param separation: None (centres ``min_distance`` apart, all placed) or the side of the
        square each particle reserves (:func:`place_separated`).
    :param projector: None, or ``projector(rotations (n, 3, 3), ctf_params or None)`` →
        ``(n, box, box)`` projections with that CTF applied; ``source`` may then be None.
    :param ctf: apply the micrographs' CTFs (False: the paper's CTF-free model).
    :param ctf_per_particle: filter each particle box, not the whole micrograph.
    :param snr_definition: ``"variance"`` (module docstring) or ``"energy"`` (Eq. (4)).
    :returns: :class:`MicrographSimulation`.
    """
    box = int(box)
    height, width = (int(s) for s in shape)
    if snr_definition not in ("variance", "energy"):
        raise ValueError(f"snr_definition must be 'variance' or 'energy', got "
                         f"{snr_definition!r}")
    if projector is None:
        source = _as_source(source, box)
    count = (int(particles_per_micrograph) if particles_per_micrograph is not None
             else int(round(area_fraction * height * width / box ** 2)))
    if count < 1:
        raise InvalidDataError(f"the density gives {count} particles per micrograph; raise "
                               "particles_per_micrograph or area_fraction")
    min_distance = float(box if min_distance is None else min_distance)
    pose_rng, ctf_rng, place_rng, noise_rng = _streams(rng, 4)
    ctf_params = random_ctf_params(n_micrographs, ctf_rng, defocus_range, astigmatism, voltage,
                                   cs, amplitude_contrast)
    if projector is None and not isinstance(source, AtomModel):
        volume_projector = FourierSliceProjector(source, backend=backend)
        half_plane = volume_projector.half_plane

        def projector(poses, params):
            table = None if params is None else ctf_stack(
                [params], half_plane.kx, half_plane.ky, box, pixel_size)
            return volume_projector.project(poses, ctf=table)
    elif projector is None:
        def projector(poses, params):
            images = _atom_images(source, None, None, poses, None, box, pixel_size)
            return images if params is None else apply_ctf(images, params, pixel_size)
    half = box // 2
    micrographs = np.zeros((n_micrographs, height, width), dtype=np.float32)
    coordinates, all_rotations = [], []
    for j in range(n_micrographs):
        if separation is None:
            centres = place_particles((height, width), count, box, min_distance, place_rng)
        else:
            centres = place_separated((height, width), count, box, separation, place_rng)
        poses = sample_rotations(distribution, len(centres), pose_rng,
                                 **(distribution_options or {}))
        per_particle = ctf_params[j] if ctf and ctf_per_particle else None
        projections = np.asarray(projector(poses, per_particle), dtype=np.float64)
        canvas = np.zeros((height, width))
        for (x, y), projection in zip(centres, projections):
            canvas[y - half:y - half + box, x - half:x - half + box] += projection
        if ctf and not ctf_per_particle:
            canvas = filter_images(canvas, ctf_params[j], pixel_size)
        micrographs[j] = canvas
        coordinates.append(centres)
        all_rotations.append(poses)

    clean = micrographs.copy() if keep_clean else None
    if snr is None:
        sigma, snr = 0.0, np.inf
    else:
        windows = np.stack([micrographs[j, y - half:y - half + box, x - half:x - half + box]
                            for j, centres in enumerate(coordinates) for x, y in centres])
        sigma = (noise_sigma_for_energy_snr(windows, snr) if snr_definition == "energy"
                 else noise_sigma_for_snr(windows, snr))
        noise = noise_rng.standard_normal(micrographs.shape, dtype=np.float32)
        micrographs += noise * np.float32(sigma)
    defocus = np.array([0.5 * (p.defocus_u + p.defocus_v) for p in ctf_params])
    return MicrographSimulation(micrographs, coordinates, all_rotations, ctf_params, defocus,
                                sigma, float(pixel_size), box, float(snr), clean, count,
                                bool(ctf))
