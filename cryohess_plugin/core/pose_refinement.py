"""Local refinement of particle poses by descent on the Gaussian likelihood.

For image ``n`` with centred spectrum ``X_n`` on the half plane and the
model ``m_n = c_n exp(-2 pi i k.t_n / D) V(R_n^T k)`` of a reference map
(:class:`.projector.FourierSliceProjector`), the loss is the white-noise
negative log-likelihood up to constants, ``L_n = sum_k W_k |X_n(k) - m_n(k)|^2``
over a frequency disc (the real DC with weight 1/2).  Its derivatives with
respect to the left so(3) perturbation ``omega`` (:func:`.rotations.perturb`)
and the shift come from :meth:`.SliceOperator.slice_gradients`; each step is
a Levenberg-Marquardt (damped Gauss-Newton) step on the 5 pose parameters,
accepted only where the loss decreases.

Local descent finds the optimum of the basin it starts in: for (near-)
symmetric particles that may be a symmetry mate (paper §6.4, Fig. 6;
``docs/methods/fourier_slice_posterior.md`` §5.3), so start from a global search
(:mod:`.alignment.radial_svd`).  The disc radius grows over ``radii`` (coarse to
fine, :func:`refinement_radii`) so the basin is wide at the start.

The loss compares the particles with the map's projections as they are, so a map must
be on the particles' scale first: :func:`reference_on_particle_scale` fits their
amplitude against it (:func:`.contrast.fit_amplitude`), refuses dark particles and maps
the particles do not show, and scales the map.
"""
from dataclasses import dataclass, fields

import numpy as np

from . import ctf as ctf_model
from . import rotations as rot
from .contrast import fit_amplitude
from .errors import InvalidDataError, MissingMetadataError, ShapeError
from .fourier import frequency_for_resolution
from .progress import Reporter
from .projector import FourierSliceProjector
from .storage import StoredFields

_DAMPING_START = 1e-3


@dataclass
class PoseRefinementResult(StoredFields):
    """Refined poses and the loss before and after.

    :param rotations: ``(n, 3, 3)`` refined rotations.
    :param shifts: ``(n, 2)`` refined shifts in pixels.
    :param loss_start: ``(n,)`` loss of the starting poses at the final radius.
    :param loss: ``(n,)`` loss of the refined poses at the final radius.
    :param accepted_steps: ``(n,)`` number of accepted steps per particle.
    """
    rotations: np.ndarray
    shifts: np.ndarray
    loss_start: np.ndarray
    loss: np.ndarray
    accepted_steps: np.ndarray

    @classmethod
    def concatenate(cls, parts):
        """One result of consecutive batches of particles, in order."""
        return cls(*(np.concatenate([getattr(part, field.name) for part in parts])
                     for field in fields(cls)))

    def changes_from(self, rotations, shifts):
        """Angle (degrees) and shift (pixels) of every refined pose from ``rotations,
        shifts`` (e.g. the starting poses), by :func:`pose_errors`."""
        return pose_errors(self.rotations, self.shifts, rotations, shifts)


def _losses(residual, weight):
    return (np.abs(residual) ** 2) @ weight


def refine_poses(reference, images, rotations, shifts=None, ctf=None, radii=None,
                 iterations=8, max_step_deg=5.0, max_shift_step=2.0, batch_size=256,
                 progress=None):
    """Refine rotations and shifts of ``images`` against a ``reference`` map.

    :param reference: ``(D, D, D)`` map or a :class:`.FourierSliceProjector` of it.
    :param images: ``(n, D, D)`` particle images.
    :param rotations: ``(n, 3, 3)`` starting rotations.
    :param shifts: ``(n, 2)`` starting shifts in pixels, or None for zero.
    :param ctf: ``(n, m)`` CTF values at the projector's half-plane points, or None.
    :param radii: increasing disc radii in cycles per box (default ``D/8, D/4,
        D/2 - 1``); ``iterations`` steps are taken at each.
    :param max_step_deg: largest rotation step per iteration (trust region).
    :param max_shift_step: largest shift step per iteration in pixels.
    :param batch_size: particles refined together.
    :param progress: callback of :class:`.progress.Progress` events, one per stage of
        each group of ``batch_size`` particles.
    :returns: :class:`PoseRefinementResult`.
    """
    projector = (reference if isinstance(reference, FourierSliceProjector)
                 else FourierSliceProjector(reference, dtype=np.float64, backend="cpu"))
    box = projector.box
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (box, box):
        raise ShapeError(f"images must be (n, {box}, {box}) to match the reference box {box}, "
                         f"got {images.shape}; resample the reference or the particles")
    if rotations is None:
        raise MissingMetadataError("local refinement needs starting poses; run a global "
                                   "alignment first")
    n = images.shape[0]
    rotations, shifts = rot.validate_poses(rotations, shifts, count=n)
    hp = projector.half_plane
    if ctf is not None:
        ctf = np.asarray(ctf, dtype=np.float64)
        if ctf.shape != (n, hp.size):
            raise ShapeError(f"ctf must have shape ({n}, {hp.size}) (values at the projector's "
                             f"half-plane points), got {ctf.shape}")
    if not np.isfinite(images).all():
        raise InvalidDataError("images contain NaN or infinite values; remove those particles")
    radii = [box / 8, box / 4, box / 2 - 1] if radii is None else list(radii)
    radius = np.hypot(hp.kx, hp.ky)
    base_weight = np.where(radius == 0, 0.5, 1.0)
    final_weight = base_weight * (radius < radii[-1])
    out_rot, out_shift = rotations.copy(), shifts.copy()
    loss_start, loss_end = np.empty(n), np.empty(n)
    accepted = np.zeros(n, dtype=np.int64)
    max_rot = np.deg2rad(max_step_deg)
    report = Reporter(progress)
    stages = len(radii) * -(-n // batch_size)
    for start in range(0, n, batch_size):
        part = slice(start, min(start + batch_size, n))
        spectra = hp.transform(images[part])
        c = None if ctf is None else ctf[part]
        model = projector.project_fourier(out_rot[part], out_shift[part], c)
        loss_start[part] = _losses(spectra - model, final_weight)
        for r_max in radii:
            weight = base_weight * (radius < r_max)
            rot_p, shift_p, acc = _descend(projector, spectra, out_rot[part], out_shift[part], c,
                                           weight, iterations, max_rot, max_shift_step)
            out_rot[part], out_shift[part] = rot_p, shift_p
            accepted[part] += acc
            report(f"particles {part.start + 1}-{part.stop}: {iterations} steps up to "
                   f"{r_max:.1f} Fourier pixels, {np.count_nonzero(acc)} moved",
                   start // batch_size * len(radii) + radii.index(r_max) + 1, stages)
        model = projector.project_fourier(out_rot[part], out_shift[part], c)
        loss_end[part] = _losses(spectra - model, final_weight)
    return PoseRefinementResult(out_rot, out_shift, loss_start, loss_end, accepted)


def _descend(projector, spectra, rotations, shifts, ctf, weight, iterations, max_rot, max_shift):
    """Levenberg-Marquardt on ``(omega, t)`` for one batch at one disc radius."""
    n = spectra.shape[0]
    damping = np.full(n, _DAMPING_START)
    accepted = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        derivatives = projector.pose_derivatives(rotations, shifts, ctf, domain="fourier")
        residual = spectra - derivatives.images
        loss = _losses(residual, weight)
        jac = np.concatenate([derivatives.d_rotation, derivatives.d_shift], axis=1)  # (n, 5, m)
        # L = sum W |X - m|^2: gradient -2 Re J W conj(r), Gauss-Newton Hessian 2 Re J W J^H.
        gradient = -2 * np.einsum("nam,m,nm->na", jac, weight, np.conj(residual)).real
        hessian = 2 * np.einsum("nam,m,nbm->nab", jac, weight, np.conj(jac)).real
        diagonal = np.einsum("naa->na", hessian)
        damped = hessian + (damping[:, None] * diagonal)[:, :, None] * np.eye(5)[None]
        step = -np.linalg.solve(damped, gradient[:, :, None])[:, :, 0]
        # Trust region: cap the rotation and shift steps.
        rot_norm = np.linalg.norm(step[:, :3], axis=1)
        shift_norm = np.linalg.norm(step[:, 3:], axis=1)
        cap = np.minimum(1.0, np.minimum(max_rot / np.maximum(rot_norm, 1e-300),
                                         max_shift / np.maximum(shift_norm, 1e-300)))
        step *= cap[:, None]
        trial_rot = rot.perturb(rotations, step[:, :3])
        trial_shift = shifts + step[:, 3:]
        trial = projector.project_fourier(trial_rot, trial_shift, ctf)
        better = _losses(spectra - trial, weight) < loss
        rotations = np.where(better[:, None, None], trial_rot, rotations)
        shifts = np.where(better[:, None], trial_shift, shifts)
        damping = np.where(better, damping / 3, damping * 10)
        accepted += better
    return rotations, shifts, accepted


def pose_errors(rotations, shifts, true_rotations, true_shifts):
    """Angular error in degrees and shift error in pixels of every particle."""
    return (rot.angular_distance(rotations, true_rotations),
            np.linalg.norm(np.asarray(shifts) - np.asarray(true_shifts), axis=1))


def refinement_radii(box, pixel_size, max_resolution=None):
    """Disc radii (cycles per box) of coarse-to-fine refinement: 1/4, 1/2 and all of the
    finest frequency, ``D/2 - 1`` or that of ``max_resolution`` (Å) if coarser."""
    finest = box / 2 - 1
    if max_resolution:
        finest = min(finest, frequency_for_resolution(box, pixel_size, max_resolution))
    return [finest / 4, finest / 2, finest]


def reference_on_particle_scale(reference, images, rotations, shifts, ctf_params, pixel_size,
                                max_resolution=None, backend="cpu"):
    """The reference map on the particles' scale, and the amplitude fit that put it there.

    Maps from EMDB or another program come on arbitrary scales.  The particles' amplitude
    against the map's CTF-modulated projections at their starting poses is fitted by
    least squares (:func:`.contrast.fit_amplitude`; particles that share a CTF form a
    defocus group) and checked; the map is multiplied by the overall amplitude, so the
    refinement sees the same map however the given one was scaled
    (``docs/methods/fourier_slice_posterior.md`` §5.5).  The fit uses the band of the
    refinement's first, coarsest stage (:func:`refinement_radii`): starting poses a few
    degrees off decorrelate the finer frequencies, which would pull the amplitude towards
    zero (at 4° and 64 px: 0.51 over the whole band, 0.86 in the coarse one, against 1.0 at
    the true poses), and a reference of another B-factor differs least there.

    :param reference: ``(D, D, D)`` map at the particles' pixel size.
    :param images: ``(n, D, D)`` particles (an array or a memory map).
    :param rotations, shifts: ``(n, 3, 3)`` and ``(n, 2)`` poses.
    :param ctf_params: one :class:`.ctf.CTFParams` per particle, or None for particles
        without CTF (one group).
    :param pixel_size: Å per pixel.
    :param max_resolution: finest resolution compared (Å), or None for Nyquist.
    :returns: ``(scaled map, AmplitudeFit)``.
    :raises PolarityError: the particles are dark against the map.
    :raises AmplitudeFitError: the fitted amplitude is within noise of zero.
    """
    reference = np.asarray(reference, dtype=np.float64)
    box = reference.shape[-1]
    if ctf_params is None:
        groups = np.zeros(len(images), dtype=np.int64)
    else:
        _, groups = np.unique(ctf_model.params_to_rows(ctf_params), axis=0,
                              return_inverse=True)
    fit = fit_amplitude(reference, images, rotations, shifts, ctf_params, pixel_size,
                        groups=np.ravel(groups),
                        max_frequency=refinement_radii(box, pixel_size, max_resolution)[0],
                        backend=backend).check()
    return fit.amplitude_all * reference, fit


def refine_particle_poses(reference, images, rotations, shifts, ctf_params, pixel_size,
                          max_resolution=None, iterations=8, max_step_deg=5.0,
                          max_shift_step=2.0, backend="cpu", progress=None):
    """Refine particle poses against a map with the particles' CTFs, coarse to fine.

    The map is projected by the cubic, 2x padded float64 :class:`.FourierSliceProjector`;
    the disc grows over :func:`refinement_radii` (``docs/methods/fourier_slice_posterior.md``
    §5.2, §5.4).

    :param reference: ``(D, D, D)`` map at the particles' pixel size.
    :param images: ``(n, D, D)`` particle images.
    :param rotations, shifts: ``(n, 3, 3)`` and ``(n, 2)`` starting poses.
    :param ctf_params: one :class:`.ctf.CTFParams` per particle, or None for particles
        without CTF.
    :param pixel_size: Å per pixel.
    :param max_resolution: finest resolution compared (Å), or None for Nyquist.
    :param iterations, max_step_deg, max_shift_step: see :func:`refine_poses`.
    :param backend: backend of the projector.
    :param progress: callback of :class:`.progress.Progress` events.
    :returns: :class:`PoseRefinementResult`.
    """
    projector = FourierSliceProjector(reference, dtype=np.float64, backend=backend)
    hp = projector.half_plane
    box = projector.box
    values = (None if ctf_params is None
              else ctf_model.ctf_stack(ctf_params, hp.kx, hp.ky, box, pixel_size))
    return refine_poses(projector, images, rotations, shifts, values,
                        radii=refinement_radii(box, pixel_size, max_resolution),
                        iterations=iterations, max_step_deg=max_step_deg,
                        max_shift_step=max_shift_step, progress=progress)


def refine_search_poses(reference, images, rotations, shifts, ctf_params, pixel_size,
                        max_resolution=None, iterations=8, backend="cpu", progress=None):
    """Continuous poses from the grid poses of a global search (projection matching).

    A search assigns each particle the nearest of its viewing directions, in-plane
    angles and shifts, so its error is spread up to half a grid step; local descent
    from there (:func:`refine_particle_poses`) lifts the quantisation
    (``docs/methods/fourier_slice_posterior.md`` §5.2).  The map comes on any scale:
    it is first put on the particles' (:func:`reference_on_particle_scale`, which also
    stops dark particles and maps the particles do not show).

    :param reference: ``(D, D, D)`` map at the particles' pixel size, on any scale.
    :param images: ``(n, D, D)`` particle images.
    :param rotations, shifts: ``(n, 3, 3)`` and ``(n, 2)`` poses found by the search.
    :param ctf_params: one :class:`.ctf.CTFParams` per particle, or None.
    :param pixel_size: Å per pixel.
    :param max_resolution: finest resolution compared (Å), or None for Nyquist.
    :param iterations: descent steps at each of the three disc radii.
    :param backend: backend of the projectors.
    :param progress: callback of :class:`.progress.Progress` events.
    :returns: ``(PoseRefinementResult, AmplitudeFit)``.
    """
    scaled, fit = reference_on_particle_scale(reference, images, rotations, shifts, ctf_params,
                                              pixel_size, max_resolution, backend=backend)
    return refine_particle_poses(scaled, images, rotations, shifts, ctf_params, pixel_size,
                                 max_resolution=max_resolution, iterations=iterations,
                                 backend=backend, progress=progress), fit


def refine_candidates(reference, images, candidates, shifts=None, ctf=None, **options):
    """Refine several starting poses per particle and keep the one of lowest loss.

    The remedy for multi-modal pose landscapes (paper §6.4;
    ``docs/methods/fourier_slice_posterior.md`` §5.3): a global search proposes its
    ``k`` best poses, local descent settles each.

    :param candidates: ``(n, k, 3, 3)`` starting rotations.
    :param shifts: ``(n, k, 2)`` or ``(n, 2)`` starting shifts, or None.
    :param options: passed to :func:`refine_poses`.
    :returns: :class:`PoseRefinementResult` of the winners.
    """
    candidates = np.asarray(candidates, dtype=np.float64)
    if candidates.ndim != 4 or candidates.shape[2:] != (3, 3):
        raise ShapeError(f"candidates must have shape (n, k, 3, 3), got {candidates.shape}")
    n, k = candidates.shape[:2]
    if shifts is not None:
        shifts = np.asarray(shifts, dtype=np.float64)
        shifts = np.broadcast_to(shifts[:, None] if shifts.ndim == 2 else shifts, (n, k, 2))
    projector = (reference if isinstance(reference, FourierSliceProjector)
                 else FourierSliceProjector(reference, dtype=np.float64, backend="cpu"))
    results = [refine_poses(projector, images, candidates[:, j],
                            None if shifts is None else shifts[:, j], ctf, **options)
               for j in range(k)]
    best = np.argmin(np.stack([r.loss for r in results]), axis=0)
    pick = np.arange(n)
    return PoseRefinementResult(
        np.stack([r.rotations for r in results], 1)[pick, best],
        np.stack([r.shifts for r in results], 1)[pick, best],
        np.stack([r.loss_start for r in results], 1)[pick, best],
        np.stack([r.loss for r in results], 1)[pick, best],
        np.stack([r.accepted_steps for r in results], 1)[pick, best])
