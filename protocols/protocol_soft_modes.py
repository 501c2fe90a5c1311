"""Softest modes of the Hessian of the cryo-EM log-likelihood (Rangan et al. 2024)."""
import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, SetOfVolumes, Volume
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA
from pyworkflow.utils import getMemoryAvailable

from cryohess_plugin import convert
from cryohess_plugin.constants import (
    DESIGN_DISTRIBUTIONS, NOISE_SIGMA, SOFT_MODE_EIGENVALUE, SOFT_MODE_EPSILON, SOFT_MODE_INDEX,
    SOFT_MODE_POSE_CHANGE, SOFT_MODE_RELATIVE_CHANGE, SOFT_MODE_SIGN)

from .protocol_base import CryoHessProtocolMixin
from .soft_modes_settings import ANALYSIS_READS, EXPERIMENT_READS, METRICS, SoftModesSettings

#: Lanczos steps of each log-determinant probe.
LOG_DETERMINANT_STEPS = 30

# Output names as plain strings, not an Enum: two Enum members with the same
# class value would be aliases of one name.
OUTPUT_MODES = 'outputModes'
OUTPUT_PERTURBED = 'outputPerturbed'
OUTPUT_SENSITIVITY = 'outputSensitivity'
OUTPUT_PARTICLES = 'outputParticles'


class CryoHessProtSoftModes(SoftModesSettings, CryoHessProtocolMixin, ProtAnalysis3D):
    """Which features of a map the images barely pin down.

    The softest eigenvectors of the Hessian of the negative log-likelihood of
    the images, with every image's pose following the volume (implicit
    poses), are the volume changes the data constrain least.  The Hessian is
    the accumulated one of the experiment (its views, image counts, CTFs and
    noise) around the given map.  The experiment is a set of aligned particles
    with CTF (their poses and defocus values; the map is put on the particles'
    scale by fitting their amplitude, and the noise spectrum is estimated from
    their residuals) or, for experiment design, a viewing distribution, a
    number of images and defocus values without images.  Fourier components
    no view samples are reported as a null space.  Outputs: the soft modes
    (W-unit volumes), the nearby volumes ``F ± ε·mode`` at which the data are
    20 times less likely, a sensitivity map (``Σ ε_i² ΔF_i²``: where the
    nearby volumes move the map most) and the eigenvalue table.  From
    particles also a copy of them whose column ``_cryohess_softModePoseChange``
    is the largest rotation (degrees) of the particle's pose over the modes
    when the map becomes a nearby volume: a large value flags an alignment a
    barely detectable change of the map would move.
    """
    _label = 'Hessian soft modes'
    _devStatus = BETA
    _possibleOutputs = {OUTPUT_MODES: SetOfVolumes, OUTPUT_PERTURBED: SetOfVolumes,
                        OUTPUT_SENSITIVITY: Volume, OUTPUT_PARTICLES: SetOfParticles}
    _references = ['Rangan2023hessian']

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        experiment = self._insertStep(self.convertInputStep, reads=(
            'inputVolume', 'experimentSource') + EXPERIMENT_READS[self.experimentSource.get()])
        noise = self._insertStep(self.noiseStep, reads=self._noiseReads(), after=[experiment],
                                 needsGPU=gpu)
        analysis = self._insertStep(self.analyseStep, reads=ANALYSIS_READS, after=[noise],
                                    needsGPU=gpu)
        self._insertStep(self.createOutputStep, after=[analysis])

    def _filenameTemplates(self):
        return {
            'experiment': self._getExtraPath('experiment.npz'),
            'noise': self._getExtraPath('noise.npz'),
            'scale': self._getExtraPath('map_scale.npz'),
            'marginalExperiment': self._getExtraPath('experiment_marginalised.npz'),
            'particles': self._getExtraPath('particle_directions.npz'),
            'analysis': self._getExtraPath('soft_modes.npz'),
            'table': self._getExtraPath('eigenvalues.txt'),
            'mode': self._getExtraPath('mode_%(mode)02d.mrc'),
            'perturbed': self._getExtraPath('mode_%(mode)02d_%(sign)s.mrc'),
            'sensitivity': self._getExtraPath('sensitivity.mrc'),
        }

    # --------------------------- STEPS functions -----------------------------
    def convertInputStep(self, digest):
        """The viewing experiment: directions, CTF groups and image counts."""
        from cryohess_plugin.core import softmodes
        pixel = self._pixelSize()
        if self._fromParticles():
            particles = self._particleArrays(read_images=False)
            tolerance = self.defocusTolerance.get()
            experiment = softmodes.experiment_from_poses(
                particles.rotations, ctf_params=particles.ctfs, pixel_size=pixel,
                defocus_tolerance=tolerance)
            softmodes.ParticleAssignment.from_poses(
                particles.ids, particles.rotations, particles.ctfs,
                tolerance).save(self._getFileName('particles'))
        else:
            experiment = softmodes.experiment_from_distribution(
                DESIGN_DISTRIBUTIONS[self.viewDistribution.get()], self.numberOfImages.get(),
                spread_deg=self.viewSpread.get(), ctf_params=self._designCtfs(),
                pixel_size=pixel)
        experiment.save(self._getFileName('experiment'))
        self.info("Experiment: %g images over %d viewing directions, %s"
                  % (experiment.n_images, len(experiment.directions),
                     "%d CTF groups" % len(experiment.ctf_params) if experiment.ctf_params
                     else "no CTF"))

    def noiseStep(self, digest):
        """The map's scale on the particles (a polarity check) and the noise: fitted to
        the particles or from the form."""
        from cryohess_plugin.core.softmodes import MapScale, NoiseLevel
        self._setDevices()
        reference = self._referenceArray()
        experiment = self._experiment(marginalised=False)
        groups = max(len(experiment.ctf_params), 1)
        if self._fromParticles():
            marginalise = bool(self.estimateNoise.get() and self.marginaliseNoise.get())
            particles = self._particleArrays(
                read_images=True, limit=None if marginalise else self.noiseParticles.get())
            tolerance = self.defocusTolerance.get()
            scale = MapScale.from_particles(reference, particles, groups, tolerance,
                                            backend=self._backend())
        else:
            scale = MapScale.unit(groups)
        if self._fromParticles() and self.estimateNoise:
            noise, weighted = NoiseLevel.from_particles(
                reference, particles, scale.particle_amplitudes(particles, tolerance),
                backend=self._backend(), marginalise=marginalise, defocus_tolerance=tolerance)
            if weighted is not None:
                weighted.save(self._getFileName('marginalExperiment'))
        elif self.noiseLevelType.get() == NOISE_SIGMA:
            noise = NoiseLevel.from_sigma(self.noiseSigma.get())
        else:
            noise = NoiseLevel.from_snr(scale.map_scale * reference, experiment,
                                        self.snr.get(), backend=self._backend())
        scale.save(self._getFileName('scale'))
        noise.save(self._getFileName('noise'))
        self.info("Map scale %.4g (%s)" % (scale.map_scale, scale.how))
        self.info("Noise variance per pixel %.4g (%s)" % (noise.variance, noise.how))

    def analyseStep(self, digest):
        from cryohess_plugin.core.softmodes import analyse_soft_modes
        self._setDevices()
        noise, scale = self._noise(), self._scale()
        probes = self.logDetProbes.get()
        analysis = analyse_soft_modes(
            self._referenceArray(), self._pixelSize(), self._experiment(),
            self.maxResolution.get(), n_modes=self.numberOfModes.get(),
            max_products=self.maxProducts.get(), tolerance=self.tolerance.get(),
            noise_variance=noise.variance, noise_spectrum=noise.spectrum,
            implicit_poses=self.implicitPoses.get(),
            log_likelihood_ratio=self.logLikelihoodRatio.get(),
            metric=METRICS[self.metric.get()], backend=self._backend(),
            progress=self._progressLog(), map_scale=scale.map_scale,
            group_scales=scale.group_scales,
            log_determinant=(probes, LOG_DETERMINANT_STEPS) if probes else None,
            memory_budget=self._harmonicsBudget())
        analysis.save(self._getFileName('analysis'))
        self.info("Eigenvalues: %s" % ", ".join("%.4g" % v for v in analysis.eigenvalues))
        unsettled = np.flatnonzero(~np.asarray(analysis.converged, dtype=bool)) + 1
        if unsettled.size:
            self.warning("Modes %s have not converged to a relative residual of %g in %d "
                         "Hessian products: they get no nearby volumes; raise the budget."
                         % (", ".join(map(str, unsettled)), self.tolerance, analysis.products))

    def createOutputStep(self, digest):
        analysis = self._loadAnalysis(volumes=True)
        analysis.write_table(self._getFileName('table'))
        reference = self._referenceArray()
        pixel = self._pixelSize()
        modes = self._createSetOfVolumes('modes')
        modes.setSamplingRate(pixel)
        perturbed = self._createSetOfVolumes('perturbed')
        perturbed.setSamplingRate(pixel)
        for index, modeVolume in enumerate(analysis.mode_volumes):
            number = index + 1
            epsilon = float(analysis.perturbation[index])
            columns = {SOFT_MODE_INDEX: [number],
                       SOFT_MODE_EIGENVALUE: [float(analysis.eigenvalues[index])],
                       SOFT_MODE_EPSILON: [epsilon],
                       SOFT_MODE_RELATIVE_CHANGE: [float(analysis.relative_change[index])]}
            mode = convert.array_to_volume(self._getFileName('mode', mode=number),
                                           modeVolume, pixel, overwrite=True)
            mode.setObjLabel("mode %d" % number if analysis.converged[index]
                             else "mode %d (not converged)" % number)
            convert.set_columns(mode, columns, 0)
            convert.keep_origin(mode, self.inputVolume.get())
            modes.append(mode)
            if not np.isfinite(epsilon):
                # Unconverged, or a non-positive eigenvalue: no ε, so no nearby volumes.
                continue
            for sign, name in ((1, 'plus'), (-1, 'minus')):
                nearby = convert.array_to_volume(
                    self._getFileName('perturbed', mode=number, sign=name),
                    analysis.nearby_volume(reference, index, sign), pixel, overwrite=True)
                nearby.setObjLabel("mode %d %sε" % (number, '+' if sign > 0 else '-'))
                convert.set_columns(nearby, dict(columns, **{SOFT_MODE_SIGN: [sign]}), 0)
                convert.keep_origin(nearby, self.inputVolume.get())
                perturbed.append(nearby)
        sensitivity = convert.array_to_volume(self._getFileName('sensitivity'),
                                              analysis.sensitivity, pixel, overwrite=True)
        sensitivity.setObjLabel("sensitivity Σ ε²ΔF²")
        convert.keep_origin(sensitivity, self.inputVolume.get())
        outputs = {OUTPUT_MODES: modes, OUTPUT_PERTURBED: perturbed,
                   OUTPUT_SENSITIVITY: sensitivity}
        if self._fromParticles():
            assignment = self._particleAssignment()
            outputs[OUTPUT_PARTICLES] = self._copyParticles(
                assignment.ids, {SOFT_MODE_POSE_CHANGE: assignment.pose_changes_deg(analysis)})
        self._defineOutputs(**outputs)
        sources = [self.inputVolume] + ([self.inputParticles] if self._fromParticles() else [])
        for source in sources:
            for output in outputs.values():
                self._defineSourceRelation(source, output)

    # --------------------------- INFO functions ------------------------------
    def _expectedOutputs(self):
        outputs = {OUTPUT_MODES, OUTPUT_PERTURBED, OUTPUT_SENSITIVITY}
        return outputs | {OUTPUT_PARTICLES} if self._fromParticles() else outputs

    def _warnings(self):
        from cryohess_plugin.core.softmodes import analysis_warnings
        volume = self.inputVolume.get()
        if volume is None or self._validateMaxResolution(volume.getSamplingRate()):
            return []
        return analysis_warnings(volume.getXDim(), volume.getSamplingRate(),
                                 self.maxResolution.get(), self.numberOfModes.get(),
                                 getMemoryAvailable() * 2 ** 20)

    def _summary(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return ["Output not ready yet."]
        analysis = self._loadAnalysis()
        summary = ["%s on %d viewing directions, 2πK = %d (max resolution %g Å), noise "
                   "variance %.4g per pixel (%s)."
                   % (self._imagesText(analysis), analysis.n_directions, analysis.max_degree,
                      self.maxResolution, analysis.noise_variance, self._noise().how),
                   "Map scale: the map times %.4g is on the images' scale (%s); ε, the modes "
                   "and the sensitivity map are on that scale, the nearby volumes on the "
                   "map's own." % (analysis.map_scale, self._scale().how)]
        summary += analysis.spectrum_lines()
        if self._fromParticles():
            summary.append(self._poseChangeText(analysis))
        return summary + ["Eigenvalue table: %s" % self._getFileName('table')]

    def _methods(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return []
        analysis = self._loadAnalysis()
        change = 100 * analysis.relative_change[np.isfinite(analysis.relative_change)]
        text = ("The %d softest modes of the accumulated Hessian of the negative "
                "log-likelihood of the images with respect to the map [Rangan2023hessian] "
                "were computed for the reference volume from %s, up to a band limit 2πK = %d "
                "(%g Å), by a preconditioned block Davidson eigensolver to a relative "
                "residual of %g (%d of them converged, in %d Hessian products) in the %s "
                "metric and %s, off a null space of %d unsampled Fourier components. The "
                "noise variance was %s (%.4g per pixel). The softest eigenvalue is %.4g."
                % (len(analysis.eigenvalues), self._imagesText(analysis), analysis.max_degree,
                   self.maxResolution, analysis.tolerance, int(np.sum(analysis.converged)),
                   analysis.products, analysis.metric_name,
                   "implicit poses (every image re-aligned to the changed map)"
                   if analysis.implicit_poses else "fixed poses", analysis.null_dimension,
                   self._noise().how, analysis.noise_variance, analysis.eigenvalues[0]))
        if change.size:
            text += (" Nearby volumes F ± εΔF along each mode, %.3g times less likely than "
                     "F (log-likelihood ratio %.4g), differ from F by %.2g-%.2g %% "
                     "(relative L2 norm)."
                     % (np.exp(analysis.log_likelihood_ratio), analysis.log_likelihood_ratio,
                        change.min(), change.max()))
        return [text]

    # --------------------------- UTILS functions -----------------------------
    def _pixelSize(self):
        return self.inputVolume.get().getSamplingRate()

    def _referenceArray(self):
        volume, _ = convert.volume_to_array(self.inputVolume.get())
        return volume

    def _particleArrays(self, read_images, limit=None):
        return convert.particles_to_arrays(self.inputParticles.get(), need_ctf=True,
                                           need_alignment=ALIGN_PROJ,
                                           read_images=read_images, limit=limit)

    def _experiment(self, marginalised=None):
        """The experiment of the analysis (particle-weighted when the noise is marginalised;
        ``marginalised=False``: the one of the input step)."""
        from cryohess_plugin.core.softmodes import ViewingExperiment
        if marginalised is None:
            marginalised = bool(self._fromParticles() and self.estimateNoise.get()
                                and self.marginaliseNoise.get())
        return ViewingExperiment.load(self._getFileName(
            'marginalExperiment' if marginalised else 'experiment'))

    def _noise(self):
        from cryohess_plugin.core.softmodes import NoiseLevel
        return NoiseLevel.load(self._getFileName('noise'))

    def _scale(self):
        from cryohess_plugin.core.softmodes import MapScale
        return MapScale.load(self._getFileName('scale'))

    def _harmonicsBudget(self):
        """Bytes of cached harmonics: a third of the memory available now, at least 1 GiB."""
        return max(1 << 30, getMemoryAvailable() * 2 ** 20 // 3)

    def _loadAnalysis(self, volumes=False):
        """The stored :class:`SoftModeAnalysis`; the mode volumes and sensitivity map only
        with ``volumes``."""
        from cryohess_plugin.core.softmodes import SoftModeAnalysis
        return SoftModeAnalysis.load(self._getFileName('analysis'), volumes=volumes)

    def _particleAssignment(self):
        from cryohess_plugin.core.softmodes import ParticleAssignment
        return ParticleAssignment.load(self._getFileName('particles'))

    def _particlePoseChanges(self, analysis=None):
        """``(J,)`` every particle's largest |Δτ| over the modes (degrees), in id order."""
        return self._particleAssignment().pose_changes_deg(analysis or self._loadAnalysis())

    def _poseChangeText(self, analysis):
        """Summary line on the per-particle pose changes of outputParticles."""
        from cryohess_plugin.core.softmodes import PoseChangeStatistics
        if not analysis.implicit_poses:
            return ("Particle pose changes (column %s of %s): zero, since this run kept "
                    "the poses fixed; run with implicit poses to get them."
                    % (SOFT_MODE_POSE_CHANGE, OUTPUT_PARTICLES))
        stats = PoseChangeStatistics.of(self._particlePoseChanges(analysis))
        return ("Particle pose changes (column %s of %s): the largest rotation of each "
                "particle's pose over the modes when the map becomes F ± εΔF (per viewing "
                "direction and defocus group); median %.3g°, top 1 %% above %.3g°, max "
                "%.3g°; %.1f %% of the particles turn by more than %g° (their alignment "
                "is fragile)."
                % (SOFT_MODE_POSE_CHANGE, OUTPUT_PARTICLES, stats.median, stats.top_percent,
                   stats.maximum, stats.fragile_percent, stats.fragile_deg))
