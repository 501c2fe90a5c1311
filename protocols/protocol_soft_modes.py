"""Softest modes of the Hessian of the cryo-EM log-likelihood (Rangan et al. 2024)."""
import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, SetOfVolumes, Volume
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA
import pyworkflow.protocol.params as params
from pyworkflow.utils import getFloatListFromValues, getMemoryAvailable

from cryohess_plugin import convert
from cryohess_plugin.constants import (
    DESIGN_DISTRIBUTIONS, DISTRIBUTION_UNIFORM, EXPERIMENT_DESIGN, EXPERIMENT_PARTICLES,
    NOISE_SIGMA, NOISE_SNR, SOFT_MODE_EIGENVALUE, SOFT_MODE_EPSILON, SOFT_MODE_INDEX,
    SOFT_MODE_POSE_CHANGE, SOFT_MODE_RELATIVE_CHANGE, SOFT_MODE_SIGN)
from cryohess_plugin.core.ctf import CTFParams

from .protocol_base import CryoHessProtocolMixin

METRICS = ['riesz', 'l2']

# Output names as plain strings, not an Enum: two Enum members with the same
# class value would be aliases of one name.
OUTPUT_MODES = 'outputModes'
OUTPUT_PERTURBED = 'outputPerturbed'
OUTPUT_SENSITIVITY = 'outputSensitivity'
OUTPUT_PARTICLES = 'outputParticles'

#: Form parameters the experiment is built from, per experiment source.
EXPERIMENT_READS = {
    EXPERIMENT_PARTICLES: ('inputParticles', 'defocusTolerance'),
    EXPERIMENT_DESIGN: ('viewDistribution', 'viewSpread', 'numberOfImages', 'defocusValues',
                        'voltage', 'sphericalAberration', 'amplitudeContrast')}
ANALYSIS_READS = ('maxResolution', 'numberOfModes', 'iterations', 'implicitPoses',
                  'logLikelihoodRatio', 'metric')


class CryoHessProtSoftModes(CryoHessProtocolMixin, ProtAnalysis3D):
    """Which features of a map the images barely pin down.

    The softest eigenvectors of the Hessian of the negative log-likelihood of
    the images, with every image's pose following the volume (implicit
    poses), are the volume changes the data constrain least.  The experiment
    is a set of aligned particles with CTF (their poses and defocus values;
    the noise is estimated from the particles against projections of the
    reference) or, for experiment design, a viewing distribution, a number of
    images and defocus values without images.  Outputs: the soft modes
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

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the volume transforms, the projections and the "
                                    "Hessian products")
        particles = 'experimentSource == %d' % EXPERIMENT_PARTICLES
        design = 'experimentSource == %d' % EXPERIMENT_DESIGN
        form.addSection(label='Input')
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume',
                      important=True, label='Reference volume',
                      help="Map whose soft modes are computed, e.g. the result of a "
                           "refinement. It is not modified; the outputs get its sampling "
                           "rate.")
        form.addParam('experimentSource', params.EnumParam, default=EXPERIMENT_PARTICLES,
                      choices=['particles', 'experiment design'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Experiment from',
                      help="Particles: the poses (ALIGN_PROJ) and CTFs of a set of "
                           "particles define the experiment.\n"
                           "Experiment design: a viewing distribution, a number of images "
                           "and defocus values, without images (noise-free templates "
                           "weighted by viewing density, as the authors do), to see which "
                           "views or defocus values a data set would need.")
        self._defineParticlesParam(
            form, "Particles with 3D alignment (ALIGN_PROJ) and CTF, with the reference's "
                  "box and pixel size. Their shifts are used only to estimate the noise.",
            condition=particles, allowsNull=True, pointerCondition='hasAlignmentProj')
        form.addParam('defocusTolerance', params.FloatParam, default=1000.0,
                      condition=particles, expertLevel=params.LEVEL_ADVANCED,
                      validators=[params.Positive], label='Defocus grouping tolerance (Å)',
                      help="Particles whose defocus values differ by less than this "
                           "share one CTF group of the experiment.")
        form.addParam('viewDistribution', params.EnumParam, default=DISTRIBUTION_UNIFORM,
                      condition=design, choices=DESIGN_DISTRIBUTIONS,
                      label='Viewing distribution',
                      help="Uniform: every viewing direction equally likely.\n"
                           "Polar: directions concentrated around the poles (top views), "
                           "with the spread below.\n"
                           "Equatorial: directions concentrated around the equator (side "
                           "views), with the spread below.")
        form.addParam('viewSpread', params.FloatParam, default=20.0,
                      condition='%s and viewDistribution != %d' % (design, DISTRIBUTION_UNIFORM),
                      validators=[params.Range(0.5, 90.0)], label='Spread (deg)',
                      help="Angular width (standard deviation, degrees) of the polar or "
                           "equatorial concentration of the views.")
        form.addParam('numberOfImages', params.IntParam, default=1000, condition=design,
                      validators=[params.Positive], label='Number of images',
                      help="Number of images of the planned data set. The eigenvalues "
                           "grow with it, so the nearby volumes shrink as 1/sqrt(images).")
        form.addParam('defocusValues', params.NumericListParam, default='10000 15000 20000',
                      condition=design, label='Defocus values (Å)',
                      help="Mean defocus of each defocus group, in Å (underfocus "
                           "positive), separated by spaces; the images are split evenly "
                           "among them. Leave empty for images without CTF.")
        self._defineMicroscopeParams(form, condition=design)

        form.addSection(label='Noise')
        form.addParam('estimateNoise', params.BooleanParam, default=True, condition=particles,
                      label='Estimate the noise from the particles?',
                      help="Estimate the per-pixel noise variance from the residuals of "
                           "the particles against CTF-modulated projections of the "
                           "reference at their poses. Turn off to give a noise level.")
        form.addParam('noiseParticles', params.IntParam, default=2000,
                      condition='%s and estimateNoise' % particles,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Particles for the noise estimate',
                      help="The noise is estimated from this many particles (the first "
                           "ones of the set), which bounds the memory the images take.")
        form.addParam('marginaliseNoise', params.BooleanParam, default=False,
                      condition='%s and estimateNoise' % particles,
                      label='Marginalise the noise per particle?',
                      help="Integrate every particle's unknown noise level out (the paper's "
                           "noise marginalisation): each particle then counts with its own "
                           "precision 1/σ_j², estimated from its residual, so noisier "
                           "particles (thick ice, poor micrographs) pin the map down less. "
                           "Reads every particle. No: one noise variance for all.")
        noiseGiven = '%s or not estimateNoise' % design
        form.addParam('noiseLevelType', params.EnumParam, default=NOISE_SNR,
                      condition=noiseGiven, choices=['SNR', 'noise standard deviation'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Noise level as',
                      help="SNR: the noise variance is the mean variance of the "
                           "CTF-modulated projections of the reference (whole box) "
                           "divided by the SNR, as in 'simulate data set'.\n"
                           "Noise standard deviation: per pixel, in the units of the "
                           "reference map's projections.")
        form.addParam('snr', params.FloatParam, default=0.1,
                      condition='(%s) and noiseLevelType == %d' % (noiseGiven, NOISE_SNR),
                      validators=[params.Positive], label='SNR',
                      help="Signal-to-noise ratio per image (0.1 is typical of cryo-EM "
                           "particles). A lower SNR gives smaller eigenvalues and larger "
                           "nearby volumes.")
        form.addParam('noiseSigma', params.FloatParam, default=1.0,
                      condition='(%s) and noiseLevelType == %d' % (noiseGiven, NOISE_SIGMA),
                      validators=[params.Positive], label='Noise standard deviation',
                      help="Standard deviation of the white noise per pixel, in the units "
                           "of the projections of the reference.")

        form.addSection(label='Analysis')
        form.addParam('maxResolution', params.FloatParam, default=20.0,
                      validators=[params.Positive], label='Max resolution (Å)',
                      help="Finest resolution of the analysis. It sets the band limit "
                           "2πK, also the highest spherical-harmonic degree, about "
                           "π × box size (Å) / resolution: the cost grows like (2πK)^4. "
                           "The authors work at 2πK = 8 to 48; the summary shows it.")
        form.addParam('numberOfModes', params.IntParam, default=8,
                      validators=[params.Positive], label='Number of modes',
                      help="How many of the softest modes are computed.")
        form.addParam('iterations', params.IntParam, default=64,
                      validators=[params.Positive], label='Lanczos iterations',
                      help="Size of the Krylov space of the eigensolver (Hessian-vector "
                           "products). 64 as the authors at 2πK = 32; it must exceed the "
                           "number of modes.")
        form.addParam('implicitPoses', params.BooleanParam, default=True,
                      label='Implicit poses?',
                      help="Yes: every image's pose follows the volume (the reduced "
                           "Hessian H_FF - H_Fτ H_ττ⁺ H_τF), as the data would re-align to "
                           "a changed map. No: poses stay fixed (H_FF), which makes "
                           "modes look stiffer than they are.")
        form.addParam('logLikelihoodRatio', params.FloatParam, default=float(np.log(20)),
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Log-likelihood ratio',
                      help="The nearby volumes F ± ε·mode are this much less likely "
                           "(in natural log) than F: log 20 = %.3f, the paper's "
                           "hypothesis-test threshold." % np.log(20))
        form.addParam('metric', params.EnumParam, default=0, choices=['Riesz', 'L2'],
                      expertLevel=params.LEVEL_ADVANCED,
                      display=params.EnumParam.DISPLAY_HLIST, label='Metric',
                      help="Norm in which the modes have unit length. Riesz (the "
                           "authors'): shells weighted by f df, the real-space L2 norm "
                           "with a 1/|k| weight. L2: shells weighted by f² df, the "
                           "real-space L2 norm of the band-limited map.")
        form.addParallelSection(threads=2, mpi=0)

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

    def _noiseReads(self):
        if self._fromParticles() and self.estimateNoise:
            return 'estimateNoise', 'noiseParticles', 'marginaliseNoise'
        level = 'noiseSigma' if self.noiseLevelType.get() == NOISE_SIGMA else 'snr'
        return 'estimateNoise', 'noiseLevelType', level

    def _filenameTemplates(self):
        return {
            'experiment': self._getExtraPath('experiment.npz'),
            'noise': self._getExtraPath('noise.npz'),
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
        """Per-pixel noise variance: estimated from the particles or from the form."""
        from cryohess_plugin.core.softmodes import NoiseLevel
        self._setDevices()
        if self._fromParticles() and self.estimateNoise:
            marginalise = self.marginaliseNoise.get()
            particles = self._particleArrays(
                read_images=True, limit=None if marginalise else self.noiseParticles.get())
            noise, weighted = NoiseLevel.from_particles(
                self._referenceArray(), particles, backend=self._backend(),
                marginalise=marginalise, defocus_tolerance=self.defocusTolerance.get())
            if weighted is not None:
                weighted.save(self._getFileName('marginalExperiment'))
        elif self.noiseLevelType.get() == NOISE_SIGMA:
            noise = NoiseLevel.from_sigma(self.noiseSigma.get())
        else:
            noise = NoiseLevel.from_snr(self._referenceArray(), self._experiment(),
                                        self.snr.get(), backend=self._backend())
        noise.save(self._getFileName('noise'))
        self.info("Noise variance per pixel %.4g (%s)" % (noise.variance, noise.how))

    def analyseStep(self, digest):
        from cryohess_plugin.core.softmodes import analyse_soft_modes
        self._setDevices()
        analysis = analyse_soft_modes(
            self._referenceArray(), self._pixelSize(), self._experiment(),
            self.maxResolution.get(), n_modes=self.numberOfModes.get(),
            iterations=self.iterations.get(), noise_variance=self._noise().variance,
            implicit_poses=self.implicitPoses.get(),
            log_likelihood_ratio=self.logLikelihoodRatio.get(),
            metric=METRICS[self.metric.get()], backend=self._backend(),
            progress=self._progressLog())
        analysis.save(self._getFileName('analysis'))
        self.info("Eigenvalues: %s" % ", ".join("%.4g" % v for v in analysis.eigenvalues))
        unsettled = np.flatnonzero(~np.asarray(analysis.converged, dtype=bool)) + 1
        if unsettled.size:
            self.warning("Modes %s have not converged in %d Lanczos iterations; raise the "
                         "iterations for final numbers."
                         % (", ".join(map(str, unsettled)), self.iterations))

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
            mode.setObjLabel("mode %d" % number)
            convert.set_columns(mode, columns, 0)
            modes.append(mode)
            if not np.isfinite(epsilon):
                # A non-positive Ritz value has no ε: the mode is not pinned at all.
                self.warning("Mode %d has eigenvalue %.4g: no nearby volumes (raise the "
                             "iterations or check the experiment)."
                             % (number, analysis.eigenvalues[index]))
                continue
            for sign, name in ((1, 'plus'), (-1, 'minus')):
                nearby = convert.array_to_volume(
                    self._getFileName('perturbed', mode=number, sign=name),
                    analysis.nearby_volume(reference, index, sign), pixel, overwrite=True)
                nearby.setObjLabel("mode %d %sε" % (number, '+' if sign > 0 else '-'))
                convert.set_columns(nearby, dict(columns, **{SOFT_MODE_SIGN: [sign]}), 0)
                perturbed.append(nearby)
        sensitivity = convert.array_to_volume(self._getFileName('sensitivity'),
                                              analysis.sensitivity, pixel, overwrite=True)
        sensitivity.setObjLabel("sensitivity Σ ε²ΔF²")
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
    def _validate(self):
        volume = self.inputVolume.get()
        if volume is None:
            return ["Select the reference volume."]
        errors = convert.volume_file_errors(volume, "reference volume")
        errors += self._validateParticles(volume) if self._fromParticles() else self._validateDesign()
        errors += self._validateMaxResolution(volume.getSamplingRate())
        if self.numberOfModes.get() >= self.iterations.get():
            errors.append("%d modes need more than %d Lanczos iterations; use at least %d "
                          "iterations (64 is the authors' choice) or fewer modes."
                          % (self.numberOfModes, self.iterations,
                             2 * self.numberOfModes.get()))
        return errors + self._validateContinue()

    def _validateParticles(self, volume):
        particles = self.inputParticles.get()
        if particles is None:
            return ["Select the particles, or choose 'experiment design' to analyse a "
                    "viewing distribution without images."]
        errors = self._validateParticleSelection(particles)
        if errors:
            return errors
        return (self._validateAlignedParticles(
                    particles, "choose 'experiment design' with no defocus values to study "
                    "views without CTF")
                + convert.image_file_errors(particles)
                + self._validateSameGeometry("reference volume", volume.getXDim(),
                                             volume.getSamplingRate(), particles.getXDim(),
                                             particles.getSamplingRate()))

    def _validateDesign(self):
        try:
            defocus = self._defocusList()
        except ValueError:
            return ["The defocus values must be numbers in Å separated by spaces, e.g. "
                    "'10000 20000'."]
        if any(value < 0 for value in defocus):
            return ["The defocus values must be positive (underfocus, Å)."]
        return []

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
                                 self.iterations.get(), getMemoryAvailable() * 2 ** 20)

    def _summary(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return ["Output not ready yet."]
        analysis = self._loadAnalysis()
        summary = ["%s on %d viewing directions, 2πK = %d (max resolution %g Å), noise "
                   "variance %.4g per pixel (%s)."
                   % (self._imagesText(analysis), analysis.n_directions, analysis.max_degree,
                      self.maxResolution, analysis.noise_variance, self._noise().how)]
        summary += analysis.spectrum_lines()
        if self._fromParticles():
            summary.append(self._poseChangeText(analysis))
        if not np.all(analysis.converged):
            summary.append("Modes marked 'not converged' may still move: raise the Lanczos "
                           "iterations (the Ritz values per iteration of the viewer show "
                           "whether they have settled).")
        return summary + ["Eigenvalue table: %s" % self._getFileName('table')]

    def _methods(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return []
        analysis = self._loadAnalysis()
        change = 100 * analysis.relative_change[np.isfinite(analysis.relative_change)]
        text = ("The %d softest modes of the Hessian of the negative log-likelihood of the "
                "images with respect to the map [Rangan2023hessian] were computed for the "
                "reference volume from %s, up to a band limit 2πK = %d (%g Å), with %d "
                "Lanczos iterations in the %s metric and %s. The "
                "noise variance was %s (%.4g per pixel). The softest eigenvalue is %.4g."
                % (len(analysis.eigenvalues), self._imagesText(analysis), analysis.max_degree,
                   self.maxResolution, self.iterations, analysis.metric_name,
                   "implicit poses (every image re-aligned to the changed map)"
                   if analysis.implicit_poses else "fixed poses",
                   self._noise().how, analysis.noise_variance, analysis.eigenvalues[0]))
        if change.size:
            text += (" Nearby volumes F ± εΔF along each mode, %.3g times less likely than "
                     "F (log-likelihood ratio %.4g), differ from F by %.2g-%.2g %% "
                     "(relative L2 norm)."
                     % (np.exp(analysis.log_likelihood_ratio), analysis.log_likelihood_ratio,
                        change.min(), change.max()))
        return [text]

    # --------------------------- UTILS functions -----------------------------
    def _fromParticles(self):
        return self.experimentSource.get() == EXPERIMENT_PARTICLES

    def _pixelSize(self):
        return self.inputVolume.get().getSamplingRate()

    def _referenceArray(self):
        volume, _ = convert.volume_to_array(self.inputVolume.get())
        return volume

    def _particleArrays(self, read_images, limit=None):
        return convert.particles_to_arrays(self.inputParticles.get(), need_ctf=True,
                                           need_alignment=ALIGN_PROJ,
                                           read_images=read_images, limit=limit)

    def _defocusList(self):
        return getFloatListFromValues(self.defocusValues.get() or '')

    def _designCtfs(self):
        """One CTF per defocus group of the design, or None without defocus values."""
        return [CTFParams(value, value, 0.0, self.voltage.get(), self.sphericalAberration.get(),
                          self.amplitudeContrast.get())
                for value in self._defocusList()] or None

    def _experiment(self):
        """The experiment of the analysis (particle-weighted when the noise is marginalised)."""
        from cryohess_plugin.core.softmodes import ViewingExperiment
        marginalised = self._fromParticles() and self.estimateNoise and self.marginaliseNoise
        return ViewingExperiment.load(self._getFileName(
            'marginalExperiment' if marginalised else 'experiment'))

    def _noise(self):
        from cryohess_plugin.core.softmodes import NoiseLevel
        return NoiseLevel.load(self._getFileName('noise'))

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

    def _experimentText(self):
        if self._fromParticles():
            return "poses and CTFs of the particles"
        text = "%s views" % DESIGN_DISTRIBUTIONS[self.viewDistribution.get()]
        if self.viewDistribution.get() != DISTRIBUTION_UNIFORM:
            text += " (spread %g deg)" % self.viewSpread
        defocus = self._defocusList()
        return text + (", defocus %s Å" % " ".join("%g" % d for d in defocus) if defocus
                       else ", no CTF")

    def _imagesText(self, analysis):
        """How many images of which experiment, e.g. "300 images (poses and CTFs ...)"."""
        return "%d %simages (%s)" % (round(analysis.n_images),
                                     "" if self._fromParticles() else "planned ",
                                     self._experimentText())

