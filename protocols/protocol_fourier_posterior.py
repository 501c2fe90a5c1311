"""Posterior over a map from particles with known poses (Ullrich et al. 2019)."""
import numpy as np
from pwem.objects import FSC, SetOfParticles, Volume
from pwem.protocols import ProtReconstruct3D
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import (FIT_CLOSED_FORM, FIT_VARIATIONAL, LOG_LIKELIHOOD,
                                       NOISE_PER_SHELL, NOISE_WHITE, PRIOR_FIXED,
                                       PRIOR_PER_SHELL)
from cryohess_plugin.core.fourier import FSC_THRESHOLDS, resolution_at

from .protocol_fourier_slice_base import FourierSliceParticlesMixin

# Output names as plain strings, not an Enum: two Enum members with the same
# class value would be aliases of one name.
OUTPUT_VOLUME = 'outputVolume'
OUTPUT_UNCERTAINTY = 'outputUncertainty'
OUTPUT_SINGLE_FIT_FSC = 'outputSingleFitFsc'
OUTPUT_HALF_MAP_FSC = 'outputHalfMapFsc'
OUTPUT_PARTICLES = 'outputParticles'

#: Posterior fits: every particle and the two half sets.
FULL, HALF_1, HALF_2 = 'full', 'half1', 'half2'
PART_TEXT = {FULL: 'full', HALF_1: 'half-set 1', HALF_2: 'half-set 2'}
FIT_TEXT = {FIT_CLOSED_FORM: 'closed-form', FIT_VARIATIONAL: 'minibatch variational'}
FIT_METHOD = {FIT_CLOSED_FORM: 'closed_form', FIT_VARIATIONAL: 'variational'}
NOISE_MODEL = {NOISE_PER_SHELL: 'per_shell', NOISE_WHITE: 'white'}


class CryoHessProtFourierPosterior(FourierSliceParticlesMixin, ProtReconstruct3D):
    """Posterior mean and uncertainty of a map from particles with known poses.

    The Fourier-slice model of Ullrich et al. (2019): every particle is a
    CTF-modulated central slice of the map's Fourier transform (each particle's
    own, astigmatic CTF; |CTF| for phase-flipped particles) plus Gaussian noise,
    with a Gaussian prior on every Fourier coefficient.  With known poses the
    mean-field posterior is Gaussian: its mean is the MAP map and its
    per-coefficient variance says where Fourier space is under-sampled (a
    missing cone stays at the prior).  The noise spectrum (per resolution
    shell, or white) and a per-shell prior are estimated by EM.  Particles must
    be white (protein brighter than the solvent): a mean map darker in its
    middle than in its solvent stops the run.  Outputs: the posterior-mean map
    (with half maps), its real-space standard deviation from posterior samples, the
    single-fit resolution curve (α/2)/(1+α/2) from the shell SNR α, the
    half-map FSC, and the particles with their log-likelihood (held out with
    half maps).  To refine the poses first, run 'Fourier-slice refine poses'.
    """
    _label = 'Fourier-slice posterior'
    _devStatus = BETA
    _possibleOutputs = {OUTPUT_VOLUME: Volume, OUTPUT_UNCERTAINTY: Volume,
                        OUTPUT_SINGLE_FIT_FSC: FSC, OUTPUT_HALF_MAP_FSC: FSC,
                        OUTPUT_PARTICLES: SetOfParticles}
    _references = ['Ullrich2019differentiable']
    stepsExecutionMode = STEPS_PARALLEL

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineInput(
            form, "Particles with 3D alignment (ALIGN_PROJ, e.g. from a refinement, "
                  "'radial-SVD align particles' or 'Fourier-slice refine poses') and CTF. "
                  "The input set is never modified.")

        form.addSection(label='Model')
        form.addParam('estimateNoise', params.BooleanParam, default=True,
                      label='Estimate the noise?',
                      help="Estimate the noise by EM from the expected residual power "
                           "under the posterior, per resolution shell or white (below). "
                           "No: give the standard deviation of white noise below.")
        form.addParam('noiseModel', params.EnumParam, default=NOISE_PER_SHELL,
                      choices=['per shell', 'white'], condition='estimateNoise',
                      display=params.EnumParam.DISPLAY_HLIST, label='Noise spectrum',
                      help="Per shell: one noise variance for every resolution shell of "
                           "the images, as the detector's transfer and the ice colour the "
                           "noise of real particles (coloured noise).\n"
                           "White: one noise variance for every shell, the special case "
                           "for noise that is white.")
        form.addParam('noiseSigma', params.FloatParam, default=1.0,
                      condition='not estimateNoise', validators=[params.Positive],
                      label='Noise standard deviation',
                      help="Standard deviation of the white noise per pixel, in the "
                           "units of the particle images.")
        form.addParam('priorType', params.EnumParam, default=PRIOR_PER_SHELL,
                      choices=['estimated per shell', 'fixed'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Prior',
                      help="Estimated per shell: the prior variance of the Fourier "
                           "coefficients of every resolution shell is learned by EM "
                           "(empirical Bayes), which adapts to the map's power spectrum.\n"
                           "Fixed: one prior variance for every coefficient, as in the "
                           "paper (which uses 1).")
        form.addParam('priorVariance', params.FloatParam, default=1.0,
                      condition='priorType == %d' % PRIOR_FIXED,
                      validators=[params.Positive], label='Prior variance',
                      help="Prior variance E|V(k)|² of every Fourier coefficient of the "
                           "map, in image units² (the non-unitary DFT of a map on the "
                           "particles' scale: a map of N voxels with per-voxel variance v, "
                           "in the units of the particle images, has E|V(k)|² of about "
                           "N·v).")
        form.addParam('emIterations', params.IntParam, default=4,
                      condition='estimateNoise or priorType == %d' % PRIOR_PER_SHELL,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='EM iterations',
                      help="Rounds of EM when the noise or the prior is estimated; each "
                           "solves for the posterior mean by conjugate gradients.")
        form.addParam('fitMethod', params.EnumParam, default=FIT_CLOSED_FORM,
                      choices=['closed form', 'minibatch variational'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Fit',
                      help="Closed form: the exact MAP mean by conjugate gradients and "
                           "the mean-field variance from the sampling density (fast and "
                           "deterministic).\n"
                           "Minibatch variational: the paper's stochastic fit of the ELBO "
                           "over minibatches of particles (agrees with the closed form); "
                           "the noise and prior it needs come from a closed-form fit on a "
                           "subset when they are estimated.")
        form.addParam('batchSize', params.IntParam, default=64,
                      condition='fitMethod == %d' % FIT_VARIATIONAL,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Minibatch size', help="Particles per minibatch.")
        form.addParam('epochs', params.IntParam, default=20,
                      condition='fitMethod == %d' % FIT_VARIATIONAL,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Epochs', help="Passes over the particles.")
        form.addParam('estimationParticles', params.IntParam, default=2000,
                      condition='fitMethod == %d and (estimateNoise or priorType == %d)'
                                % (FIT_VARIATIONAL, PRIOR_PER_SHELL),
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Particles for the estimates',
                      help="The noise and the per-shell prior of the variational fit "
                           "are estimated by a closed-form fit on this many particles, "
                           "spread evenly over the set.")

        form.addSection(label='Outputs')
        form.addParam('doHalfMaps', params.BooleanParam, default=True,
                      label='Half maps?',
                      help="Also fit the two halves of the set (alternate particles) "
                           "independently: gives half maps, their FSC to compare with the "
                           "single-fit curve, and a held-out log-likelihood (each "
                           "particle under the other half's posterior). No: the "
                           "log-likelihood is under the full posterior.")
        form.addParam('numberOfSamples', params.IntParam, default=16,
                      validators=[params.GE(2)], label='Posterior samples',
                      help="Maps drawn from the posterior for the real-space standard "
                           "deviation (at least 2). With a diagonal Fourier posterior its "
                           "pattern comes from the interpolation kernel's correction "
                           "(largest at the centre), not from the structure: read it as "
                           "a global uncertainty level, not a local resolution.")
        self._defineBatchSizeParam(
            form, "Particles are read and converted to spectra in batches of this size, "
                  "which bounds the memory the images take.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        converted = self._insertStep(self.convertInputStep,
                                     reads=('inputParticles', 'particlesPerBatch'))
        fits = [self._insertStep(self.fitStep, part, reads=self._fitReads(), after=[converted],
                                 needsGPU=gpu)
                for part in self._parts()]
        likelihood = self._insertStep(self.logLikelihoodStep, after=fits, needsGPU=gpu)
        self._insertStep(self.createOutputStep, reads=('numberOfSamples',), after=[likelihood])

    def _filenameTemplates(self):
        return dict(self._particleTemplates(),
                    likelihood=self._getExtraPath('log_likelihood.npz'),
                    mean=self._getExtraPath('posterior_mean.mrc'),
                    halfMap=self._getExtraPath('posterior_mean_%(part)s.mrc'),
                    std=self._getExtraPath('posterior_std.mrc'))

    # --------------------------- STEPS functions -----------------------------
    def fitStep(self, part, digest):
        """Posterior of the particles of ``part``: all of them or one half set."""
        from cryohess_plugin.core.posterior import half_sets
        self._setDevices()
        data = self._inputData()
        rows = None if part == FULL else dict(zip((HALF_1, HALF_2),
                                                  half_sets(len(data['ids']))))[part]
        noise = None if self.estimateNoise else self.noiseSigma.get() ** 2
        prior = self.priorVariance.get() if self.priorType.get() == PRIOR_FIXED else None
        self._fitPosterior((data['rotations'], data['shifts']),
                           self._getFileName('posterior', part=part),
                           "%s (%s)" % (PART_TEXT[part], FIT_TEXT[self.fitMethod.get()]),
                           rows=rows, checkPolarity=part == FULL,
                           noise_model=NOISE_MODEL[self.noiseModel.get()],
                           noise_variance=noise, prior_variance=prior,
                           method=FIT_METHOD[self.fitMethod.get()],
                           em_iterations=self.emIterations.get(),
                           batch_size=self.batchSize.get(), epochs=self.epochs.get(),
                           estimation_particles=self.estimationParticles.get())

    def logLikelihoodStep(self, digest):
        """Per-particle log-likelihood: held out with half maps, else under the full fit."""
        from cryohess_plugin.core.posterior import held_out_log_likelihood, log_likelihood
        self._setDevices()
        problem = self._problem()
        if self.doHalfMaps:
            values = held_out_log_likelihood(problem, self._loadPosterior(HALF_1),
                                             self._loadPosterior(HALF_2))
        else:
            values = log_likelihood(problem, self._loadPosterior(FULL))
        self._saveNpz(self._getFileName('likelihood'), logLikelihood=values,
                      heldOut=bool(self.doHalfMaps))
        self.info("Log-likelihood per particle (%s): median %.6g"
                  % (self._likelihoodText(), np.median(values)))

    def createOutputStep(self, digest):
        pixel = self._pixelSize()
        full = self._loadPosterior(FULL)
        volume = convert.array_to_volume(self._getFileName('mean'),
                                         full.mean_map().astype(np.float32), pixel,
                                         overwrite=True)
        std = convert.array_to_volume(
            self._getFileName('std'),
            full.real_space_std(self.numberOfSamples.get()).astype(np.float32), pixel,
            overwrite=True)
        volume.setObjLabel('posterior mean')
        std.setObjLabel('posterior standard deviation (real space)')
        frequencies = convert.shell_frequencies(full.curve_shells(), full.box, pixel)
        outputs = {OUTPUT_VOLUME: volume, OUTPUT_UNCERTAINTY: std,
                   OUTPUT_SINGLE_FIT_FSC: convert.fsc_from_curve(
                       frequencies, full.single_fit_curve(), 'single fit (α/2)/(1+α/2)')}
        if self.doHalfMaps:
            halves = [self._loadPosterior(part) for part in (HALF_1, HALF_2)]
            paths = [self._getFileName('halfMap', part=part) for part in (HALF_1, HALF_2)]
            for path, half in zip(paths, halves):
                convert.array_to_volume(path, half.mean_map().astype(np.float32), pixel,
                                        overwrite=True)
            volume.setHalfMaps(paths)
            outputs[OUTPUT_HALF_MAP_FSC] = convert.fsc_from_curve(
                frequencies, halves[0].half_map_fsc(halves[1]), 'half-map FSC')
        outputs[OUTPUT_PARTICLES] = self._copyParticles(
            self._inputData()['ids'], {LOG_LIKELIHOOD: self._loadLikelihood()['logLikelihood']})
        self._defineOutputs(**outputs)
        for output in outputs.values():
            self._defineSourceRelation(self.inputParticles, output)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        errors = self._validateParticles()
        if errors:
            return errors
        if self.doHalfMaps and self.inputParticles.get().getSize() < 2:
            errors.append("Half maps need at least 2 particles; switch them off.")
        return errors + self._validateContinue()

    def _warnings(self):
        return self._resourceWarnings(self._concurrentSteps())

    def _expectedOutputs(self):
        outputs = set(self._possibleOutputs)
        return outputs if self.doHalfMaps else outputs - {OUTPUT_HALF_MAP_FSC}

    def _summary(self):
        if not self.hasAttribute(OUTPUT_VOLUME):
            return ["Output not ready yet."]
        full = self._posteriorFacts(FULL)
        summary = ["%d particles of %d px at %g Å/px, %s fit: %s (%s; image units²), "
                   "prior %s."
                   % (full['particles'], full['box'], self._pixelSize(),
                      FIT_TEXT[self.fitMethod.get()], full['noise'],
                      "estimated" if self.estimateNoise else "given", self._priorText())]
        summary += full['contrast']
        summary.append("Single-fit curve (α/2)/(1+α/2): %s."
                       % self._crossingText(OUTPUT_SINGLE_FIT_FSC))
        if self.hasAttribute(OUTPUT_HALF_MAP_FSC):
            summary.append("Half-map FSC: %s." % self._crossingText(OUTPUT_HALF_MAP_FSC))
        likelihood = self._loadLikelihood()['logLikelihood']
        summary.append("Log-likelihood per particle (nats; %s): median %.6g, 5-95 %% range "
                       "%.6g to %.6g." % (self._likelihoodText(), np.median(likelihood),
                                          *np.percentile(likelihood, [5, 95])))
        return summary

    def _methods(self):
        if not self.hasAttribute(OUTPUT_VOLUME):
            return []
        full = self._posteriorFacts(FULL)
        text = ("The mean-field Gaussian posterior over the Fourier coefficients of the "
                "map given %d particles with known poses and CTFs was computed with the "
                "Fourier-slice model of [Ullrich2019differentiable] (%s fit, %s %s, prior "
                "%s). The single-fit resolution curve (α/2)/(1+α/2) from the "
                "spectral-shell SNR α gives %s."
                % (full['particles'], FIT_TEXT[self.fitMethod.get()],
                   full['noise'], "estimated by EM" if self.estimateNoise else "given",
                   self._priorText(), self._crossingText(OUTPUT_SINGLE_FIT_FSC)))
        if self.hasAttribute(OUTPUT_HALF_MAP_FSC):
            text += (" Two half maps fitted independently to alternate particles gave a "
                     "half-map FSC of %s, and the log-likelihood of every particle was "
                     "evaluated under the posterior of the other half (held out)."
                     % self._crossingText(OUTPUT_HALF_MAP_FSC))
        return [text]

    # --------------------------- UTILS functions -----------------------------
    def _parts(self):
        return [FULL] + ([HALF_1, HALF_2] if self.doHalfMaps else [])

    def _parallelSteps(self):
        return len(self._parts())

    def _estimates(self):
        """Whether the noise or the prior is estimated (by EM)."""
        return bool(self.estimateNoise) or self.priorType.get() == PRIOR_PER_SHELL

    def _fitReads(self):
        """The form parameters the fits read with the current settings."""
        reads = ['estimateNoise', 'priorType', 'fitMethod']
        reads += ['noiseModel'] if self.estimateNoise else ['noiseSigma']
        reads += ['priorVariance'] if self.priorType.get() == PRIOR_FIXED else []
        reads += ['emIterations'] if self._estimates() else []
        if self.fitMethod.get() == FIT_VARIATIONAL:
            reads += ['batchSize', 'epochs'] + (['estimationParticles'] if self._estimates()
                                                else [])
        return reads

    def _loadLikelihood(self):
        return np.load(self._getFileName('likelihood'))

    def _priorText(self):
        if self.priorType.get() == PRIOR_FIXED:
            return "fixed at %g image units² (E|V(k)|² of the map's DFT)" % self.priorVariance
        return "estimated per shell"

    def _likelihoodText(self):
        return ("held out: each half under the other half's posterior" if self.doHalfMaps
                else "under the full posterior")

    def _crossingText(self, outputName):
        """Where the output curve ``outputName`` crosses the FSC thresholds."""
        frequencies, curve = convert.fsc_to_arrays(getattr(self, outputName))
        texts = []
        for threshold in FSC_THRESHOLDS:
            resolution = resolution_at(frequencies, curve, threshold)
            texts.append("%s at %g" % ("%.1f Å" % resolution if resolution
                                       else "beyond the last shell (%.1f Å)"
                                       % (1 / frequencies[-1]), threshold))
        return " and ".join(texts)
