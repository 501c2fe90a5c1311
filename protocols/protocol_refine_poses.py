"""Local refinement of particle poses on the Fourier-slice likelihood (Ullrich et al. 2019)."""
import time

import numpy as np
from pwem.objects import SetOfParticles
from pwem.protocols import ProtRefine3D
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import REFINED_ANGLE_CHANGE, REFINED_SHIFT_CHANGE
from cryohess_plugin.core.ctf import params_from_rows

from .protocol_fourier_slice_base import FourierSliceParticlesMixin

OUTPUT_PARTICLES = 'outputParticles'


class CryoHessProtRefinePoses(FourierSliceParticlesMixin, ProtRefine3D):
    """Refine every particle's rotation and shift locally on the likelihood.

    Each particle's pose descends by damped Gauss-Newton (Levenberg-Marquardt)
    steps on the white-noise likelihood of its image under a reference map
    (the Fourier-slice model of Ullrich et al. 2019, with the particle's own,
    astigmatic CTF; |CTF| for phase-flipped particles), comparing coarse
    frequencies first and finer ones later.  A given reference is first put
    on the particles' scale by their fitted amplitude against it (dark
    particles, or a map they do not show, stop the run).  Rounds repeat it
    against the posterior mean at the previous round's poses, so a map blurred
    by the starting errors sharpens round by round.  Local descent stays in
    the basin it starts in: start from a global alignment.  Output: the
    particles with the refined poses and their change from the input.
    """
    _label = 'Fourier-slice refine poses'
    _devStatus = BETA
    _possibleOutputs = {OUTPUT_PARTICLES: SetOfParticles}
    _references = ['Ullrich2019differentiable']
    stepsExecutionMode = STEPS_PARALLEL
    _keepImages = True

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineInput(
            form, "Particles with 3D alignment (ALIGN_PROJ, e.g. from a refinement or "
                  "'radial-SVD align particles') and CTF: the starting poses. The input "
                  "set is never modified.")
        form.addParam('refinementReference', params.PointerParam, pointerClass='Volume',
                      allowsNull=True, label='Reference volume',
                      help="Map the poses are refined against in the first round, with "
                           "the particles' box and pixel size, on any scale: it is put on "
                           "the particles' scale by their amplitude fitted against its "
                           "projections at the input poses (in the band of the first, "
                           "coarsest refinement stage). White particles are expected "
                           "(protein brighter than the solvent): particles that look dark "
                           "against it, or whose amplitude is within noise of zero, stop "
                           "the run. Empty: the posterior mean at the input poses.")
        form.addSection(label='Refinement')
        form.addParam('refineRounds', params.IntParam, default=3,
                      validators=[params.Positive], label='Rounds',
                      help="Rounds of refinement; each refines the poses against the "
                           "posterior mean at the previous round's poses (the first "
                           "round against the reference volume when one is given), so a "
                           "map blurred by the starting errors sharpens round by round. "
                           "The posterior is the closed-form fit with the noise and a "
                           "prior per resolution shell estimated by EM (the 'Fourier-slice "
                           "posterior' defaults).")
        form.addParam('refineIterations', params.IntParam, default=8,
                      validators=[params.Positive], label='Iterations per resolution',
                      help="Descent steps at each of the three resolution limits "
                           "(1/4, 1/2 and all of the max resolution's frequency).")
        form.addParam('maxResolution', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Max resolution (Å)',
                      help="Finest resolution compared by the refinement. 0: Nyquist "
                           "(one Fourier pixel below).")
        form.addParam('maxAngularStep', params.FloatParam, default=5.0,
                      validators=[params.Positive], label='Max rotation step (deg)',
                      help="Largest rotation of one descent step (trust region).")
        form.addParam('maxShiftStep', params.FloatParam, default=2.0,
                      validators=[params.Positive], label='Max shift step (px)',
                      help="Largest shift change of one descent step (trust region).")
        self._defineBatchSizeParam(
            form, "Particles are read and converted in batches of this size (which bounds "
                  "the memory the images take) and refined in independent steps of this "
                  "size, which run in parallel with several threads and let a stopped run "
                  "continue where it stopped.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        posesReady = self._insertStep(self.convertInputStep,
                                      reads=('inputParticles', 'particlesPerBatch'))
        reads = ('refineIterations', 'maxResolution', 'maxAngularStep', 'maxShiftStep')
        for round_ in range(1, self.refineRounds.get() + 1):
            if self._givenReference(round_):
                reference = self._insertStep(self.scaleReferenceStep,
                                             reads=('refinementReference', 'maxResolution'),
                                             after=[posesReady], needsGPU=gpu)
                roundReads = reads + ('refinementReference',)
            else:
                reference = self._insertStep(self.fitReferenceStep, round_,
                                             after=[posesReady], needsGPU=gpu)
                roundReads = reads
            batches = [self._insertStep(self.refineBatchStep, round_, index, first, count,
                                        reads=roundReads, after=[reference], needsGPU=gpu)
                       for index, (first, count) in enumerate(self._batches())]
            posesReady = self._insertStep(self.mergeRefinementStep, round_, after=batches)
        self._insertStep(self.createOutputStep, after=[posesReady])

    def _filenameTemplates(self):
        return dict(self._particleTemplates(),
                    refineBatch=self._getExtraPath('refinement_round%(round)d_batch%(index)03d.npz'),
                    poses=self._getExtraPath('poses_round%(round)d.npz'),
                    scaledReference=self._getExtraPath('reference_on_particle_scale.npz'))

    # --------------------------- STEPS functions -----------------------------
    def scaleReferenceStep(self, digest):
        """The given reference on the particles' scale: their amplitude against it at the
        input poses, checked (dark particles or an insignificant fit stop the run)."""
        from cryohess_plugin.core.pose_refinement import reference_on_particle_scale
        self._setDevices()
        data = self._inputData()
        reference = convert.volume_to_array(self.refinementReference.get(),
                                            self._pixelSize())[0]
        scaled, fit = reference_on_particle_scale(
            reference, self._particleFiles().image_batch(0, len(data['ids'])),
            data['rotations'], data['shifts'], params_from_rows(data['ctfs']),
            float(data['pixelSize']), max_resolution=self.maxResolution.get(),
            backend=self._backend())
        self._saveNpz(self._getFileName('scaledReference'), reference=scaled,
                      amplitude=fit.amplitude_all, standardError=fit.standard_error_all,
                      groupAmplitudes=fit.amplitude)
        self.info("The particles' amplitude against the reference: %.4g ± %.2g (z = %.1f; "
                  "%d defocus groups, %.4g to %.4g); the reference is scaled by it"
                  % (fit.amplitude_all, fit.standard_error_all, fit.z_score, fit.amplitude.size,
                     fit.amplitude.min(), fit.amplitude.max()))

    def fitReferenceStep(self, round_, digest):
        """The posterior mean at the poses after round ``round_ - 1``: the reference of
        round ``round_`` (the first round's map is checked for dark particles)."""
        self._setDevices()
        self._fitPosterior(self._poses(round_ - 1),
                           self._getFileName('posterior', part=_referencePart(round_)),
                           "round %d reference" % round_, checkPolarity=round_ == 1)

    def refineBatchStep(self, round_, index, first, count, digest):
        from cryohess_plugin.core.pose_refinement import PoseRefinementResult
        self._setDevices()
        started = time.perf_counter()
        data = self._inputData()
        part = slice(first, first + count)
        rotations, shifts = self._poses(round_ - 1)
        output = self._getFileName('refineBatch', round=round_, index=index)
        self._runBatchJob(
            'refine_particle_batch', output, "Round %d, batch %d: " % (round_, index + 1),
            arrays={'poses': dict(reference=self._reference(round_),
                                  rotations=rotations[part], shifts=shifts[part],
                                  ctfs=data['ctfs'][part], pixelSize=data['pixelSize'])},
            inputs={'particleFiles': self._getExtraPath()},
            options=dict(first=first, count=count, max_resolution=self.maxResolution.get(),
                         iterations=self.refineIterations.get(),
                         max_step_deg=self.maxAngularStep.get(),
                         max_shift_step=self.maxShiftStep.get()))
        result = PoseRefinementResult.load(output)
        self.info("Round %d, batch %d: %d particles in %.1f s, loss lowered for %d"
                  % (round_, index + 1, count, time.perf_counter() - started,
                     np.count_nonzero(result.loss < result.loss_start)))

    def mergeRefinementStep(self, round_, digest):
        """The poses after round ``round_``, all batches in one file."""
        from cryohess_plugin.core.pose_refinement import PoseRefinementResult
        merged = PoseRefinementResult.concatenate(
            [PoseRefinementResult.load(self._getFileName('refineBatch', round=round_,
                                                         index=index))
             for index in range(len(self._batches()))])
        merged.save(self._getFileName('poses', round=round_))
        angle, shift = merged.changes_from(*self._poses(0))
        self.info("Round %d: median change from the input poses %.3g deg and %.3g px (95 %% "
                  "below %.3g deg and %.3g px)"
                  % (round_, np.median(angle), np.median(shift), np.percentile(angle, 95),
                     np.percentile(shift, 95)))

    def createOutputStep(self, digest):
        refined = self._loadRefinement()
        angle, shift = self._poseChanges()
        particles = self._copyParticles(self._inputData()['ids'],
                                        {REFINED_ANGLE_CHANGE: angle, REFINED_SHIFT_CHANGE: shift},
                                        poses=(refined.rotations, refined.shifts))
        self._defineOutputs(**{OUTPUT_PARTICLES: particles})
        self._defineTransformRelation(self.inputParticles, particles)
        if self._givenReference(1):
            self._defineSourceRelation(self.refinementReference, particles)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        errors = self._validateParticles()
        if errors:
            return errors
        particles = self.inputParticles.get()
        pixel = particles.getSamplingRate()
        errors += self._validateMaxResolution(pixel)
        reference = self.refinementReference.get()
        if reference is not None:
            errors += convert.volume_file_errors(reference, "reference volume")
            errors += self._validateSameGeometry("reference volume", reference.getXDim(),
                                                 reference.getSamplingRate(),
                                                 particles.getXDim(), pixel)
        return errors + self._validateContinue()

    def _warnings(self):
        return self._resourceWarnings(1)

    def _summary(self):
        if not self.hasAttribute(OUTPUT_PARTICLES):
            return ["Output not ready yet."]
        refined = self._loadRefinement()
        angle, shift = self._poseChanges()
        summary = ["Pose refinement (%d rounds) of %d particles: median change %.3g deg and "
                   "%.3g px; in the last round the loss fell for %.1f %% of the particles."
                   % (self._rounds(), len(angle), np.median(angle), np.median(shift),
                      100 * np.mean(refined.loss < refined.loss_start))]
        if self._givenReference(1):
            scale = np.load(self._getFileName('scaledReference'))
            summary.append("The reference volume was put on the particles' scale: their "
                           "fitted amplitude against it is %.4g ± %.2g." %
                           (scale['amplitude'], scale['standardError']))
        if self._givenReference(1):
            return summary + self._contrastTexts()
        return summary + self._posteriorFacts(_referencePart(1))['contrast']

    def _methods(self):
        if not self.hasAttribute(OUTPUT_PARTICLES):
            return []
        return ["The poses of %d particles were refined locally by damped Gauss-Newton "
                "descent on the likelihood of the Fourier-slice model "
                "[Ullrich2019differentiable] in %d rounds (each against the posterior mean "
                "of the previous poses%s), %d steps at each of three resolution limits up "
                "to %s, with steps of at most %g deg and %g px."
                % (self.inputParticles.get().getSize(), self._rounds(),
                   "; the first against a given reference volume"
                   if self._givenReference(1) else "", self.refineIterations,
                   "%g Å" % self.maxResolution.get() if self.maxResolution.get()
                   else "Nyquist", self.maxAngularStep, self.maxShiftStep)]

    # --------------------------- UTILS functions -----------------------------
    def _rounds(self):
        return self.refineRounds.get()

    def _givenReference(self, round_):
        """Whether round ``round_`` refines against the form's reference volume."""
        return round_ == 1 and self.refinementReference.get() is not None

    def _poses(self, poseRound):
        """Rotations and shifts of every particle after round ``poseRound`` (0: input)."""
        if poseRound:
            refined = self._loadRefinement(poseRound)
            return refined.rotations, refined.shifts
        data = self._inputData()
        return data['rotations'], data['shifts']

    def _loadRefinement(self, round_=None):
        """The :class:`PoseRefinementResult` of every particle after round ``round_``
        (the last by default)."""
        from cryohess_plugin.core.pose_refinement import PoseRefinementResult
        return PoseRefinementResult.load(self._getFileName(
            'poses', round=self._rounds() if round_ is None else round_))

    def _poseChanges(self):
        """Angle (deg) and shift (px) of every particle's refined pose from its input pose."""
        return self._loadRefinement().changes_from(*self._poses(0))

    def _reference(self, round_):
        if self._givenReference(round_):
            return np.load(self._getFileName('scaledReference'))['reference']
        return self._loadPosterior(_referencePart(round_)).mean_map()


def _referencePart(round_):
    return 'reference%d' % round_
