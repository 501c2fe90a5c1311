"""Posterior over a map from particles with known poses (Ullrich et al. 2019)."""
import itertools
import os
import time

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import FSC, SetOfParticles, Volume
from pwem.protocols import ProtReconstruct3D
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import (FIT_CLOSED_FORM, FIT_VARIATIONAL, LOG_LIKELIHOOD,
                                       PRIOR_FIXED, PRIOR_PER_SHELL, REFINED_ANGLE_CHANGE,
                                       REFINED_SHIFT_CHANGE)
from cryohess_plugin.core.ctf import params_from_rows, params_to_rows
from cryohess_plugin.core.fourier import FSC_THRESHOLDS, frequency_for_resolution, resolution_at

from .protocol_base import CryoHessProtocolMixin

# Output names as plain strings, not an Enum: two Enum members with the same
# class value would be aliases of one name.
OUTPUT_VOLUME = 'outputVolume'
OUTPUT_UNCERTAINTY = 'outputUncertainty'
OUTPUT_SINGLE_FIT_FSC = 'outputSingleFitFsc'
OUTPUT_HALF_MAP_FSC = 'outputHalfMapFsc'
OUTPUT_PARTICLES = 'outputParticles'

#: Posterior fits at the final poses: every particle and the two half sets.
#: The fits that give each pose-refinement round its reference are 'reference<round>'.
FULL, HALF_1, HALF_2 = 'full', 'half1', 'half2'
PART_TEXT = {FULL: 'full', HALF_1: 'half-set 1', HALF_2: 'half-set 2'}
FIT_TEXT = {FIT_CLOSED_FORM: 'closed-form', FIT_VARIATIONAL: 'minibatch variational'}


class CryoHessProtFourierPosterior(CryoHessProtocolMixin, ProtReconstruct3D):
    """Posterior mean and uncertainty of a map from particles with known poses.

    The Fourier-slice model of Ullrich et al. (2019): every particle is a
    CTF-modulated central slice of the map's Fourier transform plus white
    noise, with a Gaussian prior on every Fourier coefficient.  With known
    poses the mean-field posterior is Gaussian: its mean is the MAP map and
    its per-coefficient variance says where Fourier space is under-sampled
    (a missing cone stays at the prior).  The noise level and a per-shell
    prior are estimated by EM.  Outputs: the posterior-mean map (with half
    maps), its real-space standard deviation from posterior samples, the
    single-fit resolution curve (α/2)/(1+α/2) from the shell SNR α, the
    half-map FSC, and the particles with their log-likelihood (held out with
    half maps) and, optionally, poses refined by gradient descent on the
    likelihood.
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
        self._defineGpuParams(form, "the Fourier-slice projections")
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      pointerCondition='hasAlignmentProj', important=True,
                      label='Particles',
                      help="Particles with 3D alignment (ALIGN_PROJ, e.g. from a "
                           "refinement or 'radial-SVD align particles') and CTF. The input "
                           "set is never modified.")

        form.addSection(label='Model')
        form.addParam('estimateNoise', params.BooleanParam, default=True,
                      label='Estimate the noise?',
                      help="Estimate the per-pixel variance of the white noise by EM "
                           "(mean expected residual power under the posterior). No: give "
                           "its standard deviation below.")
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
                           "map (non-unitary DFT of the map, in the units of the "
                           "particles: a map of N voxels with per-voxel variance v has "
                           "E|V(k)|² of about N·v).")
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

        form.addSection(label='Pose refinement')
        form.addParam('doRefinePoses', params.BooleanParam, default=False,
                      label='Refine poses?',
                      help="Refine every particle's rotation and shift locally by "
                           "damped Gauss-Newton descent on the likelihood against a "
                           "reference, coarse to fine in resolution; the posterior is "
                           "then fitted at the refined poses. Local descent stays in the "
                           "basin it starts in: start from a global alignment.")
        form.addParam('refinementReference', params.PointerParam, pointerClass='Volume',
                      condition='doRefinePoses', allowsNull=True,
                      label='Reference volume',
                      help="Map the poses are refined against in the first round, with "
                           "the particles' box and pixel size. Empty: the posterior mean "
                           "at the input poses.")
        form.addParam('refineRounds', params.IntParam, default=3,
                      condition='doRefinePoses', validators=[params.Positive],
                      label='Rounds',
                      help="Rounds of refinement; each refines the poses against the "
                           "posterior mean at the previous round's poses (the first "
                           "round against the reference volume when one is given), so a "
                           "map blurred by the starting errors sharpens round by round.")
        form.addParam('refineIterations', params.IntParam, default=8,
                      condition='doRefinePoses', validators=[params.Positive],
                      label='Iterations per resolution',
                      help="Descent steps at each of the three resolution limits "
                           "(1/4, 1/2 and all of the max resolution's frequency).")
        form.addParam('maxResolution', params.FloatParam, default=0.0,
                      condition='doRefinePoses', validators=[params.GE(0.0)],
                      label='Max resolution (Å)',
                      help="Finest resolution compared by the refinement. 0: Nyquist "
                           "(one Fourier pixel below).")
        form.addParam('maxAngularStep', params.FloatParam, default=5.0,
                      condition='doRefinePoses', validators=[params.Positive],
                      label='Max rotation step (deg)',
                      help="Largest rotation of one descent step (trust region).")
        form.addParam('maxShiftStep', params.FloatParam, default=2.0,
                      condition='doRefinePoses', validators=[params.Positive],
                      label='Max shift step (px)',
                      help="Largest shift change of one descent step (trust region).")
        form.addParam('particlesPerBatch', params.IntParam, default=2000,
                      expertLevel=params.LEVEL_ADVANCED,
                      validators=[params.Positive], label='Particles per step',
                      help="Particles are read and converted in batches of this size "
                           "(which bounds the memory the images take) and refined in "
                           "independent steps of this size, which run in parallel with "
                           "several threads and let a stopped run continue where it "
                           "stopped.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        posesReady = [self._insertFunctionStep(self.convertInputStep, needsGPU=False)]
        for round_ in range(1, self._rounds() + 1):
            reference = posesReady
            if not self._givenReference(round_):
                reference = [self._insertFunctionStep(self.fitStep, _referencePart(round_),
                                                      round_ - 1, prerequisites=posesReady,
                                                      needsGPU=gpu)]
            batches = [self._insertFunctionStep(self.refineBatchStep, round_, index, first,
                                                count, prerequisites=reference, needsGPU=gpu)
                       for index, (first, count) in enumerate(self._batches())]
            posesReady = [self._insertFunctionStep(self.mergeRefinementStep, round_,
                                                   prerequisites=batches, needsGPU=False)]
        fits = [self._insertFunctionStep(self.fitStep, part, self._rounds(),
                                         prerequisites=posesReady, needsGPU=gpu)
                for part in self._finalParts()]
        likelihood = self._insertFunctionStep(self.logLikelihoodStep, prerequisites=fits,
                                              needsGPU=gpu)
        self._insertFunctionStep(self.createOutputStep, prerequisites=[likelihood],
                                 needsGPU=False)

    def _filenameTemplates(self):
        return {
            'input': self._getExtraPath('input_particles.npz'),
            'posterior': self._getExtraPath('posterior_%(part)s.npz'),
            'refineBatch': self._getExtraPath('refinement_round%(round)d_batch%(index)03d.npz'),
            'poses': self._getExtraPath('poses_round%(round)d.npz'),
            'likelihood': self._getExtraPath('log_likelihood.npz'),
            'mean': self._getExtraPath('posterior_mean.mrc'),
            'halfMap': self._getExtraPath('posterior_mean_%(part)s.mrc'),
            'std': self._getExtraPath('posterior_std.mrc'),
        }

    # --------------------------- STEPS functions -----------------------------
    def convertInputStep(self):
        """Images, poses and CTF parameters of the particles, in id order, with the
        model's half-plane spectra and CTF values as ``.npy`` files the fits open
        as memory maps.  Images are read and written in batches of
        ``particlesPerBatch``: no step holds every image."""
        from cryohess_plugin.core import ctf
        from cryohess_plugin.core.posterior.problem import PosteriorProblem, SpectraWriter
        partSet = self.inputParticles.get()
        particles = convert.particles_to_arrays(partSet, need_ctf=True,
                                                need_alignment=ALIGN_PROJ, read_images=False)
        count, pixel = len(particles.ids), particles.pixel_size
        ctfs = params_to_rows(particles.ctfs)
        step = max(1, self.particlesPerBatch.get())
        batches = (convert.particles_to_arrays(partSet, need_alignment=False, limit=step,
                                               skip=first).images
                   for first in range(0, count, step))
        firstBatch = next(batches)
        box = firstBatch.shape[1]
        kx, ky = PosteriorProblem.ctf_frequencies(box)
        paths = (self._imagesPath(), self._spectraPath(), self._ctfPath())
        imagesTmp, spectraTmp, ctfTmp = (path + '.tmp.npy' for path in paths)
        imagesOut = np.lib.format.open_memmap(imagesTmp, mode='w+', dtype=np.float32,
                                              shape=(count, box, box))
        ctfValues = np.lib.format.open_memmap(ctfTmp, mode='w+', dtype=np.float64,
                                              shape=(count, kx.size))
        done = 0
        with SpectraWriter(spectraTmp, count, box) as writer:
            for images in itertools.chain([firstBatch], batches):
                rows = slice(done, done + len(images))
                writer.write(images)
                imagesOut[rows] = images
                ctfValues[rows] = ctf.ctf_stack(params_from_rows(ctfs[rows]), kx, ky, box, pixel)
                done += len(images)
                self.info("  converted %d of %d particles" % (done, count))
        imagesOut.flush()
        ctfValues.flush()
        del imagesOut, ctfValues
        for tmp, path in zip((imagesTmp, spectraTmp, ctfTmp), paths):
            os.replace(tmp, path)
        # Written last: its presence means the conversion is complete.
        self._saveNpz(self._getFileName('input'), ids=particles.ids,
                      rotations=particles.rotations, shifts=particles.shifts, ctfs=ctfs,
                      pixelSize=pixel)
        self.info("%d particles of %d px at %g Å/px; spectra on disk: %.1f MiB"
                  % (count, box, pixel, os.path.getsize(self._spectraPath()) / 2 ** 20))

    def fitStep(self, part, poseRound):
        """Posterior of the particles of ``part`` at the poses after round ``poseRound``."""
        self._setDevices()
        problem = self._problem(self._particleIndex(part), poseRound)
        self.info("Fitting the %s posterior (%s) to %d particles"
                  % (_partText(part), FIT_TEXT[self.fitMethod.get()], problem.n_particles))
        started = time.perf_counter()
        posterior = self._fit(problem)
        seconds = time.perf_counter() - started
        history = posterior.history
        if 'steps' in history:
            self.info("  %d minibatch steps of %d particles"
                      % (history['steps'], history['batch_size']))
        self._saveNpz(self._getFileName('posterior', part=part), mean=posterior.mean,
                      variance=posterior.variance, priorVariance=posterior.prior_variance,
                      noiseVariance=posterior.noise_variance, interpolation=posterior.interpolation,
                      noisePower=posterior.noise_power, particles=problem.n_particles,
                      seconds=seconds)
        self.info("The %s posterior in %.1f s: noise variance %.4g per pixel"
                  % (_partText(part), seconds, posterior.noise_variance))

    def refineBatchStep(self, round_, index, first, count):
        from cryohess_plugin.core import ctf
        from cryohess_plugin.core.pose_refinement import refine_poses
        from cryohess_plugin.core.projector import FourierSliceProjector
        self._setDevices()
        started = time.perf_counter()
        data = np.load(self._getFileName('input'))
        part = slice(first, first + count)
        images = np.load(self._imagesPath(), mmap_mode='r')[part]
        box = images.shape[1]
        projector = FourierSliceProjector(self._refinementReference(round_),
                                          dtype=np.float64, backend=self._backend())
        halfPlane = projector.half_plane
        values = ctf.ctf_stack(params_from_rows(data['ctfs'][part]), halfPlane.kx, halfPlane.ky,
                               box, float(data['pixelSize']))
        rotations, shifts = self._poses(round_ - 1)
        result = refine_poses(projector, images, rotations[part], shifts[part], values,
                              radii=self._refinementRadii(box),
                              iterations=self.refineIterations.get(),
                              max_step_deg=self.maxAngularStep.get(),
                              max_shift_step=self.maxShiftStep.get())
        seconds = time.perf_counter() - started
        self._saveNpz(self._getFileName('refineBatch', round=round_, index=index),
                      rotations=result.rotations, shifts=result.shifts,
                      lossStart=result.loss_start, loss=result.loss,
                      acceptedSteps=result.accepted_steps, seconds=seconds)
        self.info("Round %d, batch %d: %d particles in %.1f s, loss lowered for %d"
                  % (round_, index + 1, count, seconds,
                     np.count_nonzero(result.loss < result.loss_start)))

    def mergeRefinementStep(self, round_):
        """The poses after round ``round_`` and their change from the input poses."""
        from cryohess_plugin.core.pose_refinement import pose_errors
        parts = [np.load(self._getFileName('refineBatch', round=round_, index=index))
                 for index in range(len(self._batches()))]
        merged = {key: np.concatenate([p[key] for p in parts])
                  for key in ('rotations', 'shifts', 'lossStart', 'loss', 'acceptedSteps')}
        data = np.load(self._getFileName('input'))
        angle, shift = pose_errors(merged['rotations'], merged['shifts'], data['rotations'],
                                   data['shifts'])
        self._saveNpz(self._getFileName('poses', round=round_), angleChange=angle,
                      shiftChange=shift, seconds=sum(float(p['seconds']) for p in parts),
                      **merged)
        self.info("Round %d: median change from the input poses %.3g deg and %.3g px (95 %% "
                  "below %.3g deg and %.3g px)"
                  % (round_, np.median(angle), np.median(shift), np.percentile(angle, 95),
                     np.percentile(shift, 95)))

    def logLikelihoodStep(self):
        """Per-particle log-likelihood: held out with half maps, else under the full fit."""
        from cryohess_plugin.core.posterior.fit import log_likelihood
        self._setDevices()
        count = len(np.load(self._getFileName('input'))['ids'])
        values = np.empty(count)
        if self.doHalfMaps:
            for own, other in ((HALF_1, HALF_2), (HALF_2, HALF_1)):
                index = self._particleIndex(own)
                values[index] = log_likelihood(self._problem(index, self._rounds()),
                                               self._loadPosterior(other))
        else:
            values[:] = log_likelihood(self._problem(slice(None), self._rounds()),
                                       self._loadPosterior(FULL))
        self._saveNpz(self._getFileName('likelihood'), logLikelihood=values,
                      heldOut=bool(self.doHalfMaps))
        self.info("Log-likelihood per particle (%s): median %.6g"
                  % (self._likelihoodText(), np.median(values)))

    def createOutputStep(self):
        from cryohess_plugin.core.fourier import fourier_shell_correlation
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
        frequencies, singleFit = self._singleFitCurve(full)
        outputs = {OUTPUT_VOLUME: volume, OUTPUT_UNCERTAINTY: std,
                   OUTPUT_SINGLE_FIT_FSC: convert.fsc_from_curve(
                       frequencies, singleFit, 'single fit (α/2)/(1+α/2)')}
        if self.doHalfMaps:
            halves = [self._loadPosterior(part).mean_map() for part in (HALF_1, HALF_2)]
            paths = [self._getFileName('halfMap', part=part) for part in (HALF_1, HALF_2)]
            for path, halfMap in zip(paths, halves):
                convert.array_to_volume(path, halfMap.astype(np.float32), pixel,
                                        overwrite=True)
            volume.setHalfMaps(paths)
            fsc = fourier_shell_correlation(*halves)[self._curveShells(full.box)]
            outputs[OUTPUT_HALF_MAP_FSC] = convert.fsc_from_curve(frequencies, fsc,
                                                                  'half-map FSC')
        outputs[OUTPUT_PARTICLES] = self._outputParticles()
        self._defineOutputs(**outputs)
        for output in outputs.values():
            self._defineSourceRelation(self.inputParticles, output)
            if self._givenReference(1):
                self._defineSourceRelation(self.refinementReference, output)

    def _outputParticles(self):
        """A copy of the input particles with the log-likelihood (and refined poses)."""
        inputParticles = self.inputParticles.get()
        ids = np.load(self._getFileName('input'))['ids']
        row = {int(partId): i for i, partId in enumerate(ids)}
        columns = {LOG_LIKELIHOOD: self._loadLikelihood()['logLikelihood']}
        refined = self._loadRefinement() if self._rounds() else None
        if refined is not None:
            columns[REFINED_ANGLE_CHANGE] = refined['angleChange']
            columns[REFINED_SHIFT_CHANGE] = refined['shiftChange']
        particles = self._createSetOfParticles()
        particles.copyInfo(inputParticles)

        def updateParticle(particle, _row=None):
            i = row[particle.getObjId()]
            if refined is not None:
                particle.setTransform(convert.transform_from_pose(
                    refined['rotations'][i], refined['shifts'][i], ALIGN_PROJ))
            convert.set_columns(particle, columns, i)

        particles.copyItems(inputParticles, updateItemCallback=updateParticle)
        return particles

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        particles = self.inputParticles.get()
        if particles is None:
            return ["Select the particles."]
        if particles.getSize() == 0:
            return ["The set of particles is empty."]
        errors = self._validateAlignedParticles(particles, "assign CTFs to the particles")
        width, height, _ = particles.getDim()
        if width != height:
            errors.append("The particles are %d x %d px; the Fourier-slice model needs "
                          "square images: extract them in a square box." % (width, height))
        if self.doHalfMaps and particles.getSize() < 2:
            errors.append("Half maps need at least 2 particles; switch them off.")
        pixel = particles.getSamplingRate()
        if self.doRefinePoses:
            errors += self._validateMaxResolution(pixel)
            reference = self.refinementReference.get()
            if reference is not None:
                errors += self._validateSameGeometry("reference volume", reference.getXDim(),
                                                     reference.getSamplingRate(), width, pixel)
        return errors

    def _summary(self):
        if not self.hasAttribute(OUTPUT_VOLUME):
            return ["Output not ready yet."]
        full = self._loadPosterior(FULL)
        summary = ["%d particles of %d px at %g Å/px, %s fit: noise variance %.4g per pixel "
                   "(%s; image units²), prior %s."
                   % (full.history['particles'], full.box, self._pixelSize(),
                      FIT_TEXT[self.fitMethod.get()], full.noise_variance,
                      "estimated" if self.estimateNoise else "given", self._priorText()),
                   "Single-fit curve (α/2)/(1+α/2): %s." % self._crossingText(
                       *convert.fsc_to_arrays(getattr(self, OUTPUT_SINGLE_FIT_FSC)))]
        if self.hasAttribute(OUTPUT_HALF_MAP_FSC):
            summary.append("Half-map FSC: %s." % self._crossingText(
                *convert.fsc_to_arrays(getattr(self, OUTPUT_HALF_MAP_FSC))))
        likelihood = self._loadLikelihood()['logLikelihood']
        summary.append("Log-likelihood per particle (nats; %s): median %.6g, 5-95 %% range "
                       "%.6g to %.6g." % (self._likelihoodText(), np.median(likelihood),
                                          *np.percentile(likelihood, [5, 95])))
        if self._rounds():
            refined = self._loadRefinement()
            summary.append("Pose refinement (%d rounds): median change %.3g deg and %.3g px; "
                           "in the last round the loss fell for %.1f %% of the particles."
                           % (self._rounds(), np.median(refined['angleChange']),
                              np.median(refined['shiftChange']),
                              100 * np.mean(refined['loss'] < refined['lossStart'])))
        return summary

    def _methods(self):
        if not self.hasAttribute(OUTPUT_VOLUME):
            return []
        full = self._loadPosterior(FULL)
        text = ("The mean-field Gaussian posterior over the Fourier coefficients of the "
                "map given %d particles with known poses and CTFs was computed with the "
                "Fourier-slice model of [Ullrich2019differentiable] (%s fit, noise "
                "variance %.4g per pixel %s, prior %s). The single-fit resolution curve "
                "(α/2)/(1+α/2) from the spectral-shell SNR α gives %s."
                % (full.history['particles'], FIT_TEXT[self.fitMethod.get()],
                   full.noise_variance, "estimated by EM" if self.estimateNoise else "given",
                   self._priorText(), self._crossingText(
                       *convert.fsc_to_arrays(getattr(self, OUTPUT_SINGLE_FIT_FSC)))))
        if self.hasAttribute(OUTPUT_HALF_MAP_FSC):
            text += (" Two half maps fitted independently to alternate particles gave a "
                     "half-map FSC of %s, and the log-likelihood of every particle was "
                     "evaluated under the posterior of the other half (held out)."
                     % self._crossingText(
                         *convert.fsc_to_arrays(getattr(self, OUTPUT_HALF_MAP_FSC))))
        if self._rounds():
            text += (" Before the final fit, the poses were refined locally by damped "
                     "Gauss-Newton descent on the likelihood in %d rounds (each against the "
                     "posterior mean of the previous poses%s), %d steps at each of three "
                     "resolution limits up to %s, with steps of at most %g deg and %g px."
                     % (self._rounds(),
                        "; the first against a given reference volume"
                        if self._givenReference(1) else "", self.refineIterations,
                        "%g Å" % self.maxResolution.get() if self.maxResolution.get()
                        else "Nyquist", self.maxAngularStep, self.maxShiftStep))
        return [text]

    # --------------------------- UTILS functions -----------------------------
    def _pixelSize(self):
        return self.inputParticles.get().getSamplingRate()

    def _finalParts(self):
        return [FULL] + ([HALF_1, HALF_2] if self.doHalfMaps else [])

    def _particleIndex(self, part):
        """Rows of the particles of a fit: every particle, or alternate ones per half."""
        count = len(np.load(self._getFileName('input'))['ids'])
        index = np.arange(count)
        return {HALF_1: index[0::2], HALF_2: index[1::2]}.get(part, index)

    def _batches(self):
        size = self.inputParticles.get().getSize()
        step = self.particlesPerBatch.get()
        return [(first, min(step, size - first)) for first in range(0, size, step)]

    def _rounds(self):
        """Pose-refinement rounds of this run (0 without refinement)."""
        return self.refineRounds.get() if self.doRefinePoses else 0

    def _givenReference(self, round_):
        """Whether round ``round_`` refines against the form's reference volume."""
        return (round_ == 1 and bool(self.doRefinePoses)
                and self.refinementReference.get() is not None)

    def _poses(self, poseRound):
        """Rotations and shifts of every particle after round ``poseRound`` (0: input)."""
        stored = (np.load(self._getFileName('poses', round=poseRound)) if poseRound
                  else np.load(self._getFileName('input')))
        return stored['rotations'], stored['shifts']

    def _imagesPath(self):
        """Particle images ``(n, D, D)`` float32 (convert step, ``.npy``)."""
        return self._getExtraPath('images.npy')

    def _spectraPath(self):
        """Half-plane spectra ``(n, m)`` of every particle (convert step, ``.npy``)."""
        return self._getExtraPath('spectra.npy')

    def _ctfPath(self):
        """CTF values ``(n, m)`` at the spectra's points (convert step, ``.npy``)."""
        return self._getExtraPath('ctf_values.npy')

    def _problem(self, index, poseRound):
        """The core's posterior problem for the particles ``index``: spectra and CTF
        values read batch by batch from the convert step's memory-mapped files."""
        from cryohess_plugin.core.posterior.problem import PosteriorProblem
        rotations, shifts = self._poses(poseRound)
        return PosteriorProblem(self._spectraPath(), rotations, shifts, self._ctfPath(),
                                backend=self._backend()).subset(index)

    def _fit(self, problem):
        from cryohess_plugin.core.posterior.fit import (fit_closed_form, fit_variational,
                                                        propagate_noise)
        noise = None if self.estimateNoise else self.noiseSigma.get() ** 2
        prior = self.priorVariance.get() if self.priorType.get() == PRIOR_FIXED else None
        if self.fitMethod.get() == FIT_CLOSED_FORM:
            return fit_closed_form(problem, noise, prior,
                                   em_iterations=self.emIterations.get(),
                                   progress=self._progressLog("  "))
        if noise is None or prior is None:
            count = min(problem.n_particles, self.estimationParticles.get())
            subset = np.unique(np.linspace(0, problem.n_particles - 1, count).astype(int))
            self.info("  noise and prior from a closed-form fit to %d particles"
                      % len(subset))
            estimate = fit_closed_form(problem.subset(subset), noise, prior,
                                       em_iterations=self.emIterations.get(), noise_probes=0,
                                       progress=self._progressLog("  "))
            noise, prior = estimate.noise_variance, estimate.prior_variance
        posterior = fit_variational(problem, noise, prior, batch_size=self.batchSize.get(),
                                    epochs=self.epochs.get(), progress=self._progressLog("  "))
        # The single-fit resolution curve needs the noise of the mean, as the closed form's.
        posterior.noise_power = propagate_noise(problem, posterior, progress=self._progressLog("  "))
        return posterior

    def _loadPosterior(self, part):
        """The stored :class:`FourierPosterior` of a fit (history: particles, seconds)."""
        from cryohess_plugin.core.posterior.result import FourierPosterior
        stored = np.load(self._getFileName('posterior', part=part))
        return FourierPosterior(stored['mean'], stored['variance'], stored['priorVariance'],
                                float(stored['noiseVariance']), str(stored['interpolation']),
                                {'particles': int(stored['particles']),
                                 'seconds': float(stored['seconds'])},
                                noise_power=stored['noisePower'])

    def _loadRefinement(self):
        """The poses after the last round, with their change from the input poses."""
        return np.load(self._getFileName('poses', round=self._rounds()))

    def _loadLikelihood(self):
        return np.load(self._getFileName('likelihood'))

    def _refinementReference(self, round_):
        if self._givenReference(round_):
            return convert.volume_to_array(self.refinementReference.get(),
                                           self._pixelSize())[0]
        return self._loadPosterior(_referencePart(round_)).mean_map()

    def _refinementRadii(self, box):
        """Disc radii (cycles per box) of the coarse-to-fine refinement."""
        finest = box / 2 - 1
        if self.maxResolution.get():
            finest = min(finest, frequency_for_resolution(box, self._pixelSize(),
                                                          self.maxResolution.get()))
        return [finest / 4, finest / 2, finest]

    @staticmethod
    def _curveShells(box):
        """Shells of the resolution curves: 1 up to the model's frequency disc."""
        return np.arange(1, box // 2)

    def _singleFitCurve(self, posterior):
        """``(frequencies 1/Å, (α/2)/(1+α/2))`` over :meth:`_curveShells`."""
        shells = self._curveShells(posterior.box)
        return (convert.shell_frequencies(shells, posterior.box, self._pixelSize()),
                posterior.resolution_curve(half_maps=True)[shells])

    def _priorText(self):
        if self.priorType.get() == PRIOR_FIXED:
            return "fixed at %g" % self.priorVariance
        return "estimated per shell"

    def _likelihoodText(self):
        return ("held out: each half under the other half's posterior" if self.doHalfMaps
                else "under the full posterior")

    @staticmethod
    def _crossingText(frequencies, curve):
        texts = []
        for threshold in FSC_THRESHOLDS:
            resolution = resolution_at(frequencies, curve, threshold)
            texts.append("%s at %g" % ("%.1f Å" % resolution if resolution
                                       else "beyond the last shell (%.1f Å)"
                                       % (1 / frequencies[-1]), threshold))
        return " and ".join(texts)


def _referencePart(round_):
    return 'reference%d' % round_


def _partText(part):
    return PART_TEXT.get(part, 'round %s reference' % part[len('reference'):])
