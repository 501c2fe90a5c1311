"""Softest modes of the Hessian of the cryo-EM log-likelihood (Rangan et al. 2024)."""
import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, SetOfVolumes, Volume
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA
import pyworkflow.protocol.params as params
from pyworkflow.utils import getFloatListFromValues

from cryohess_plugin import convert
from cryohess_plugin.constants import (
    DESIGN_DISTRIBUTIONS, DISTRIBUTION_UNIFORM, EXPERIMENT_DESIGN, EXPERIMENT_PARTICLES,
    NOISE_SIGMA, NOISE_SNR, SOFT_MODE_EIGENVALUE, SOFT_MODE_EPSILON, SOFT_MODE_INDEX,
    SOFT_MODE_POSE_CHANGE, SOFT_MODE_RELATIVE_CHANGE, SOFT_MODE_SIGN)
from cryohess_plugin.core.ctf import CTFParams, params_from_rows, params_to_rows

from .protocol_base import CryoHessProtocolMixin

METRICS = ['riesz', 'l2']

#: Particles projected to turn an SNR into a noise variance.
SNR_SAMPLE = 300

#: Fields of the core's SoftModeAnalysis kept in the analysis npz.
ANALYSIS_FIELDS = ('eigenvalues', 'perturbation', 'relative_change', 'mode_volumes',
                   'sensitivity', 'shell_frequencies', 'shell_profile', 'pose_changes',
                   'ritz_history', 'residuals', 'converged', 'log_determinant', 'max_degree',
                   'n_images', 'noise_variance', 'metric', 'implicit_poses', 'n_directions',
                   'grid_spacing_deg', 'group_pose_changes')

#: Pose change (degrees) above which the summary counts a particle's alignment as fragile.
POSE_CHANGE_FLAG_DEG = 1.0

# Output names as plain strings, not an Enum: two Enum members with the same
# class value would be aliases of one name.
OUTPUT_MODES = 'outputModes'
OUTPUT_PERTURBED = 'outputPerturbed'
OUTPUT_SENSITIVITY = 'outputSensitivity'
OUTPUT_PARTICLES = 'outputParticles'


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
        self._defineGpuParams(form, "the volume transforms and projections (the Hessian "
                                    "products run on BLAS)")
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
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      condition='experimentSource == %d' % EXPERIMENT_PARTICLES,
                      allowsNull=True, label='Particles',
                      help="Particles with 3D alignment (ALIGN_PROJ) and CTF, with the "
                           "reference's box and pixel size. Their shifts are used only to "
                           "estimate the noise.")
        form.addParam('defocusTolerance', params.FloatParam, default=1000.0,
                      condition='experimentSource == %d' % EXPERIMENT_PARTICLES,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Defocus grouping tolerance (Å)',
                      help="Particles whose defocus values differ by less than this "
                           "share one CTF group of the experiment.")
        form.addParam('viewDistribution', params.EnumParam, default=DISTRIBUTION_UNIFORM,
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      choices=DESIGN_DISTRIBUTIONS, label='Viewing distribution',
                      help="Uniform: every viewing direction equally likely.\n"
                           "Polar: directions concentrated around the poles (top views), "
                           "with the spread below.\n"
                           "Equatorial: directions concentrated around the equator (side "
                           "views), with the spread below.")
        form.addParam('viewSpread', params.FloatParam, default=20.0,
                      condition='experimentSource == %d and viewDistribution != %d'
                                % (EXPERIMENT_DESIGN, DISTRIBUTION_UNIFORM),
                      validators=[params.Range(0.5, 90.0)], label='Spread (deg)',
                      help="Angular width (standard deviation, degrees) of the polar or "
                           "equatorial concentration of the views.")
        form.addParam('numberOfImages', params.IntParam, default=1000,
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      validators=[params.Positive], label='Number of images',
                      help="Number of images of the planned data set. The eigenvalues "
                           "grow with it, so the nearby volumes shrink as 1/sqrt(images).")
        form.addParam('defocusValues', params.NumericListParam, default='10000 15000 20000',
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      label='Defocus values (Å)',
                      help="Mean defocus of each defocus group, in Å (underfocus "
                           "positive), separated by spaces; the images are split evenly "
                           "among them. Leave empty for images without CTF.")
        form.addParam('voltage', params.FloatParam, default=300.0,
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      validators=[params.Positive], label='Voltage (kV)',
                      help="Acceleration voltage of the planned experiment.")
        form.addParam('sphericalAberration', params.FloatParam, default=2.7,
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      validators=[params.GE(0.0)], label='Spherical aberration (mm)',
                      help="Cs of the objective lens.")
        form.addParam('amplitudeContrast', params.FloatParam, default=0.1,
                      condition='experimentSource == %d' % EXPERIMENT_DESIGN,
                      validators=[params.Range(0.0, 0.99)], label='Amplitude contrast',
                      help="Fraction of amplitude contrast, in [0, 1).")

        form.addSection(label='Noise')
        form.addParam('estimateNoise', params.BooleanParam, default=True,
                      condition='experimentSource == %d' % EXPERIMENT_PARTICLES,
                      label='Estimate the noise from the particles?',
                      help="Estimate the per-pixel noise variance from the residuals of "
                           "the particles against CTF-modulated projections of the "
                           "reference at their poses. Turn off to give a noise level.")
        form.addParam('noiseParticles', params.IntParam, default=2000,
                      condition='experimentSource == %d and estimateNoise'
                                % EXPERIMENT_PARTICLES,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Particles for the noise estimate',
                      help="The noise is estimated from this many particles (the first "
                           "ones of the set), which bounds the memory the images take.")
        form.addParam('marginaliseNoise', params.BooleanParam, default=False,
                      condition='experimentSource == %d and estimateNoise'
                                % EXPERIMENT_PARTICLES,
                      label='Marginalise the noise per particle?',
                      help="Integrate every particle's unknown noise level out (the paper's "
                           "noise marginalisation): each particle then counts with its own "
                           "precision 1/σ_j², estimated from its residual, so noisier "
                           "particles (thick ice, poor micrographs) pin the map down less. "
                           "Reads every particle. No: one noise variance for all.")
        noiseGiven = ('experimentSource == %d or not estimateNoise' % EXPERIMENT_DESIGN)
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
        self._insertFunctionStep(self.convertInputStep, needsGPU=False)
        self._insertFunctionStep(self.noiseStep, needsGPU=self._usesGpu())
        self._insertFunctionStep(self.analyseStep, needsGPU=self._usesGpu())
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

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
    def convertInputStep(self):
        """The viewing experiment: directions, CTF groups and image counts."""
        from cryohess_plugin.core.softmodes import analysis
        pixel = self._pixelSize()
        if self._fromParticles():
            particles = self._particleArrays(read_images=False)
            experiment = analysis.experiment_from_poses(
                particles.rotations, ctf_params=particles.ctfs, pixel_size=pixel,
                defocus_tolerance=self.defocusTolerance.get())
            direction, group = analysis.particle_assignment(
                particles.rotations, ctf_params=particles.ctfs,
                defocus_tolerance=self.defocusTolerance.get())
            self._saveNpz(self._getFileName('particles'), ids=particles.ids,
                          direction=direction, group=group)
        else:
            experiment = analysis.experiment_from_distribution(
                DESIGN_DISTRIBUTIONS[self.viewDistribution.get()], self.numberOfImages.get(),
                spread_deg=self.viewSpread.get(), ctf_params=self._designCtfs(),
                pixel_size=pixel)
        self._saveExperiment(self._getFileName('experiment'), experiment)
        self.info("Experiment: %g images over %d viewing directions, %s"
                  % (experiment.n_images, len(experiment.directions),
                     "%d CTF groups" % len(experiment.ctf_params) if experiment.ctf_params
                     else "no CTF"))

    def noiseStep(self):
        """Per-pixel noise variance: estimated from the particles or from the form."""
        if self._marginalised():
            self._marginaliseNoise()
            return
        if self._fromParticles() and self.estimateNoise:
            from cryohess_plugin.core.softmodes.analysis import estimate_noise_variance
            self._setDevices()
            volume = self._referenceArray()
            particles = self._particleArrays(read_images=True,
                                             limit=self.noiseParticles.get())
            variance = estimate_noise_variance(volume, particles.images,
                                               particles.rotations, particles.shifts,
                                               particles.ctfs, particles.pixel_size,
                                               backend=self._backend())
            how = ("estimated from the residuals of %d particles against the reference"
                   % len(particles.images))
        elif self.noiseLevelType.get() == NOISE_SIGMA:
            variance = self.noiseSigma.get() ** 2
            how = "given as a noise standard deviation of %g" % self.noiseSigma
        else:
            self._setDevices()
            variance = self._signalVariance() / self.snr.get()
            how = "set from an SNR of %g" % self.snr
        self._saveNpz(self._getFileName('noise'), variance=float(variance), how=how)
        self.info("Noise variance per pixel %.4g (%s)" % (variance, how))

    def _marginaliseNoise(self):
        """Per-particle noise variances; the experiment counts each particle by its precision."""
        from cryohess_plugin.core.softmodes import analysis
        self._setDevices()
        particles = self._particleArrays(read_images=True)
        variances = analysis.estimate_noise_variance(
            self._referenceArray(), particles.images, particles.rotations, particles.shifts,
            particles.ctfs, particles.pixel_size, backend=self._backend(), per_image=True)
        variance, weights = analysis.marginal_noise(variances)
        experiment = analysis.experiment_from_poses(
            particles.rotations, ctf_params=particles.ctfs, pixel_size=self._pixelSize(),
            defocus_tolerance=self.defocusTolerance.get(), weights=weights)
        self._saveExperiment(self._getFileName('marginalExperiment'), experiment)
        how = ("marginalised per particle: harmonic mean of %d particles' variances, which "
               "span %.3g-%.3g" % (len(variances), variances.min(), variances.max()))
        self._saveNpz(self._getFileName('noise'), variance=variance, how=how)
        self.info("Noise variance per pixel %.4g (%s)" % (variance, how))

    def analyseStep(self):
        from cryohess_plugin.core.softmodes.analysis import analyse_soft_modes
        self._setDevices()
        analysis = analyse_soft_modes(
            self._referenceArray(), self._pixelSize(), self._experiment(),
            self.maxResolution.get(), n_modes=self.numberOfModes.get(),
            iterations=self.iterations.get(), noise_variance=self._noiseVariance(),
            implicit_poses=self.implicitPoses.get(),
            log_likelihood_ratio=self.logLikelihoodRatio.get(),
            metric=METRICS[self.metric.get()], backend=self._backend(), progress=self._progressLog())
        self._saveNpz(self._getFileName('analysis'), **{
            name: getattr(analysis, name) for name in ANALYSIS_FIELDS})
        self.info("Eigenvalues: %s" % ", ".join("%.4g" % v for v in analysis.eigenvalues))
        unsettled = np.flatnonzero(~np.asarray(analysis.converged, dtype=bool)) + 1
        if unsettled.size:
            self.warning("Modes %s have not converged in %d Lanczos iterations; raise the "
                         "iterations for final numbers."
                         % (", ".join(map(str, unsettled)), self.iterations))

    def createOutputStep(self):
        analysis = self._loadAnalysis()
        reference = self._referenceArray()
        pixel = self.inputVolume.get().getSamplingRate()
        self._writeTable(analysis)

        modes = self._createSetOfVolumes('modes')
        modes.setSamplingRate(pixel)
        perturbed = self._createSetOfVolumes('perturbed')
        perturbed.setSamplingRate(pixel)
        for index, modeVolume in enumerate(analysis['mode_volumes']):
            number = index + 1
            columns = {SOFT_MODE_INDEX: [number],
                       SOFT_MODE_EIGENVALUE: [float(analysis['eigenvalues'][index])],
                       SOFT_MODE_EPSILON: [float(analysis['perturbation'][index])],
                       SOFT_MODE_RELATIVE_CHANGE: [float(analysis['relative_change'][index])]}
            mode = convert.array_to_volume(self._getFileName('mode', mode=number),
                                           modeVolume, pixel, overwrite=True)
            mode.setObjLabel("mode %d" % number)
            convert.set_columns(mode, columns, 0)
            modes.append(mode)
            epsilon = float(analysis['perturbation'][index])
            if not np.isfinite(epsilon):
                # A non-positive Ritz value has no ε: the mode is not pinned at all.
                self.warning("Mode %d has eigenvalue %.4g: no nearby volumes (raise the "
                             "iterations or check the experiment)."
                             % (number, analysis['eigenvalues'][index]))
                continue
            for sign, name in ((1, 'plus'), (-1, 'minus')):
                nearby = convert.array_to_volume(
                    self._getFileName('perturbed', mode=number, sign=name),
                    reference + sign * epsilon * modeVolume, pixel, overwrite=True)
                nearby.setObjLabel("mode %d %sε" % (number, '+' if sign > 0 else '-'))
                convert.set_columns(nearby, dict(columns, **{SOFT_MODE_SIGN: [sign]}), 0)
                perturbed.append(nearby)
        sensitivity = convert.array_to_volume(self._getFileName('sensitivity'),
                                              analysis['sensitivity'], pixel, overwrite=True)
        sensitivity.setObjLabel("sensitivity Σ ε²ΔF²")
        outputs = {OUTPUT_MODES: modes, OUTPUT_PERTURBED: perturbed,
                   OUTPUT_SENSITIVITY: sensitivity}
        if self._fromParticles():
            outputs[OUTPUT_PARTICLES] = self._outputParticles(analysis)
        self._defineOutputs(**outputs)
        sources = [self.inputVolume] + ([self.inputParticles] if self._fromParticles() else [])
        for source in sources:
            for output in outputs.values():
                self._defineSourceRelation(source, output)

    def _outputParticles(self, analysis):
        """A copy of the input particles with their largest pose change over the modes."""
        inputParticles = self.inputParticles.get()
        row = {int(partId): i for i, partId in enumerate(self._loadParticleDirections()['ids'])}
        columns = {SOFT_MODE_POSE_CHANGE: self._particlePoseChanges(analysis)}
        particles = self._createSetOfParticles()
        particles.copyInfo(inputParticles)

        def updateParticle(particle, _row=None):
            convert.set_columns(particle, columns, row[particle.getObjId()])

        particles.copyItems(inputParticles, updateItemCallback=updateParticle)
        return particles

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        volume = self.inputVolume.get()
        if volume is None:
            return ["Select the reference volume."]
        pixel = volume.getSamplingRate()
        errors = []
        if self._fromParticles():
            errors += self._validateParticles(volume)
        else:
            errors += self._validateDesign()
        errors += self._validateMaxResolution(pixel)
        if self.numberOfModes.get() >= self.iterations.get():
            errors.append("%d modes need more than %d Lanczos iterations; use at least %d "
                          "iterations (64 is the authors' choice) or fewer modes."
                          % (self.numberOfModes, self.iterations,
                             2 * self.numberOfModes.get()))
        return errors

    def _validateParticles(self, volume):
        particles = self.inputParticles.get()
        if particles is None:
            return ["Select the particles, or choose 'experiment design' to analyse a "
                    "viewing distribution without images."]
        if particles.getSize() == 0:
            return ["The set of particles is empty."]
        return (self._validateAlignedParticles(
                    particles, "choose 'experiment design' with no defocus values to study "
                    "views without CTF")
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

    def _summary(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return ["Output not ready yet."]
        analysis = self._loadAnalysis()
        summary = ["%s on %d viewing directions, 2πK = %d (max resolution %g Å), noise "
                   "variance %.4g per pixel (%s)."
                   % (self._imagesText(analysis), int(analysis['n_directions']),
                      int(analysis['max_degree']), self.maxResolution,
                      float(analysis['noise_variance']), self._noiseText()),
                   "%s poses, %s metric; nearby volumes F ± εΔF at log-likelihood ratio "
                   "%.4g (%.3g times less likely than F)."
                   % ("Implicit" if analysis['implicit_poses'] else "Fixed",
                      _metricText(analysis), self.logLikelihoodRatio,
                      np.exp(self.logLikelihoodRatio.get())),
                   "λ: Hessian eigenvalue per image (smaller: softer, less pinned down by "
                   "the data); ε: size of the nearby volumes along the unit mode ΔF; "
                   "‖εΔF‖/‖F‖: how much they change the map."]
        for index, (value, epsilon, change, converged) in enumerate(zip(
                analysis['eigenvalues'], analysis['perturbation'],
                analysis['relative_change'], analysis['converged'])):
            summary.append("Mode %d: λ = %.4g, ε = %.4g, ‖εΔF‖/‖F‖ = %.2f %%%s"
                           % (index + 1, value, epsilon, 100 * change,
                              "" if converged else " (not converged)"))
        if self._fromParticles():
            summary.append(self._poseChangeText(analysis))
        if not np.all(analysis['converged']):
            summary.append("Modes marked 'not converged' may still move: raise the Lanczos "
                           "iterations (the Ritz values per iteration of the viewer show "
                           "whether they have settled).")
        summary.append("Eigenvalue table: %s" % self._getFileName('table'))
        return summary

    def _methods(self):
        if not self.hasAttribute(OUTPUT_MODES):
            return []
        analysis = self._loadAnalysis()
        change = 100 * analysis['relative_change'][np.isfinite(analysis['relative_change'])]
        text = ("The %d softest modes of the Hessian of the negative log-likelihood of the "
                "images with respect to the map [Rangan2023hessian] were computed for the "
                "reference volume from %s, up to a band limit 2πK = %d (%g Å), with %d "
                "Lanczos iterations in the %s metric and %s. The "
                "noise variance was %s (%.4g per pixel). The softest eigenvalue is %.4g."
                % (len(analysis['eigenvalues']), self._imagesText(analysis),
                   int(analysis['max_degree']), self.maxResolution, self.iterations,
                   _metricText(analysis),
                   "implicit poses (every image re-aligned to the changed map)"
                   if analysis['implicit_poses'] else "fixed poses",
                   self._noiseText(), float(analysis['noise_variance']),
                   analysis['eigenvalues'][0]))
        if change.size:
            text += (" Nearby volumes F ± εΔF along each mode, %.3g times less likely than "
                     "F (log-likelihood ratio %.4g), differ from F by %.2g-%.2g %% "
                     "(relative L2 norm)."
                     % (np.exp(self.logLikelihoodRatio.get()), self.logLikelihoodRatio,
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
        defocus = self._defocusList()
        if not defocus:
            return None
        return [CTFParams(value, value, 0.0, self.voltage.get(),
                          self.sphericalAberration.get(), self.amplitudeContrast.get())
                for value in defocus]

    def _marginalised(self):
        return self._fromParticles() and self.estimateNoise and self.marginaliseNoise

    def _saveExperiment(self, path, experiment):
        self._saveNpz(path, directions=experiment.directions, counts=experiment.counts,
                      ctfs=params_to_rows(experiment.ctf_params), pixelSize=experiment.pixel_size)

    def _experiment(self):
        """The experiment of the analysis (particle-weighted when the noise is marginalised)."""
        from cryohess_plugin.core.softmodes.analysis import ViewingExperiment
        stored = np.load(self._getFileName(
            'marginalExperiment' if self._marginalised() else 'experiment'))
        return ViewingExperiment(stored['directions'],
                                 tuple(params_from_rows(stored['ctfs'])),
                                 stored['counts'], float(stored['pixelSize']))

    def _noiseVariance(self):
        return float(np.load(self._getFileName('noise'))['variance'])

    def _signalVariance(self):
        """Mean variance of CTF-modulated projections of the reference over the
        experiment's views, from a fixed sample of (direction, CTF group) pairs."""
        from cryohess_plugin.core import ctf, rotations
        from cryohess_plugin.core.projector import FourierSliceProjector
        from cryohess_plugin.core.synthetic.simulate import signal_variance
        experiment = self._experiment()
        weights = experiment.counts / experiment.counts.sum()
        picks = np.random.default_rng(0).choice(weights.size, size=SNR_SAMPLE,
                                                p=weights.ravel())
        direction, group = np.unravel_index(picks, weights.shape)
        volume = self._referenceArray()
        projector = FourierSliceProjector(volume, backend=self._backend())
        ctfStack = None
        if experiment.ctf_params:
            halfPlane = projector.half_plane
            ctfStack = ctf.ctf_stack([experiment.ctf_params[g] for g in group], halfPlane.kx,
                                     halfPlane.ky, volume.shape[0], experiment.pixel_size)
        poses = rotations.rotations_for_directions(experiment.directions[direction])
        return signal_variance(projector.project(poses, ctf=ctfStack))

    def _loadAnalysis(self):
        return np.load(self._getFileName('analysis'))

    def _loadParticleDirections(self):
        """Each particle's id, experiment direction and defocus group (in id order)."""
        return np.load(self._getFileName('particles'))

    def _particlePoseChanges(self, analysis=None):
        """``(J,)`` every particle's largest |Δτ| over the modes (degrees), in id order."""
        from cryohess_plugin.core.softmodes.analysis import particle_pose_changes
        analysis = self._loadAnalysis() if analysis is None else analysis
        assignment = self._loadParticleDirections()
        return np.rad2deg(particle_pose_changes(analysis['group_pose_changes'],
                                                assignment['direction'], assignment['group']))

    def _writeTable(self, analysis):
        """The eigenvalue table as text, next to its npz."""
        lines = ["# Hessian soft modes: 2πK = %d, %d images, noise variance %.6g, "
                 "log-likelihood ratio %.6g"
                 % (int(analysis['max_degree']), round(float(analysis['n_images'])),
                    float(analysis['noise_variance']), self.logLikelihoodRatio.get()),
                 "# %4s %14s %14s %14s %14s %9s"
                 % ('mode', 'eigenvalue', 'epsilon', 'rel_change', 'residual', 'converged')]
        for index in range(len(analysis['eigenvalues'])):
            lines.append("  %4d %14.6e %14.6e %14.6e %14.6e %9s"
                         % (index + 1, analysis['eigenvalues'][index],
                            analysis['perturbation'][index],
                            analysis['relative_change'][index],
                            analysis['residuals'][index],
                            bool(analysis['converged'][index])))
        with open(self._getFileName('table'), 'w') as table:
            table.write("\n".join(lines) + "\n")

    def _poseChangeText(self, analysis):
        """Summary line on the per-particle pose changes of outputParticles."""
        if not analysis['implicit_poses']:
            return ("Particle pose changes (column %s of %s): zero, since this run kept "
                    "the poses fixed; run with implicit poses to get them."
                    % (SOFT_MODE_POSE_CHANGE, OUTPUT_PARTICLES))
        changes = self._particlePoseChanges(analysis)
        return ("Particle pose changes (column %s of %s): the largest rotation of each "
                "particle's pose over the modes when the map becomes F ± εΔF (per viewing "
                "direction and defocus group); median %.3g°, top 1 %% above %.3g°, max "
                "%.3g°; %.1f %% of the particles turn by more than %g° (their alignment "
                "is fragile)."
                % (SOFT_MODE_POSE_CHANGE, OUTPUT_PARTICLES, np.median(changes),
                   np.percentile(changes, 99), changes.max(),
                   100.0 * np.mean(changes > POSE_CHANGE_FLAG_DEG), POSE_CHANGE_FLAG_DEG))

    def _experimentText(self):
        if self._fromParticles():
            return "poses and CTFs of the particles"
        text = "%s views" % DESIGN_DISTRIBUTIONS[self.viewDistribution.get()]
        if self.viewDistribution.get() != DISTRIBUTION_UNIFORM:
            text += " (spread %g deg)" % self.viewSpread
        defocus = self._defocusList()
        return text + (", defocus %s Å" % " ".join("%g" % d for d in defocus) if defocus
                       else ", no CTF")

    def _noiseText(self):
        return str(np.load(self._getFileName('noise'))['how'])

    def _imagesText(self, analysis):
        """How many images of which experiment, e.g. "300 images (poses and CTFs ...)"."""
        return "%d %simages (%s)" % (round(float(analysis['n_images'])),
                                     "" if self._fromParticles() else "planned ",
                                     self._experimentText())


def _metricText(analysis):
    return {'riesz': 'Riesz', 'l2': 'L2'}.get(str(analysis['metric']), str(analysis['metric']))

