"""Micrograph EM: an ab-initio map from whole micrographs, without particle picking."""
import os
import shutil

import numpy as np
from pwem.constants import RELATION_CTF
from pwem.objects import SetOfCoordinates, Volume
from pwem.protocols import EMProtocol
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import PICK_SCORE
from cryohess_plugin.core import mrc
from cryohess_plugin.core.errors import CryoHessError
from cryohess_plugin.core.micrograph_em import patches as patch_model

from .protocol_base import CryoHessProtocolMixin

#: Form parameters every EM step reads.
GEOMETRY_PARAMS = ('inputMicrographs', 'particleDiameter', 'workingResolution')
EM_PARAMS = GEOMETRY_PARAMS + ('useCtf', 'ctfRelations', 'rotationResolution',
                               'degreeSchedule', 'stageIterations', 'batchFraction',
                               'heldOutPatches', 'estimateNoise', 'randomSeed')


#: The outputs (a dict: two of them are Volumes, which an Enum would merge into one).
OUTPUTS = {'outputVolume': Volume, 'outputVolumeFullSize': Volume,
           'outputCoordinates': SetOfCoordinates}


class CryoHessProtMicrographEM(CryoHessProtocolMixin, EMProtocol):
    """Estimate a map directly from micrographs by approximate expectation-maximisation.

    The micrographs are binned to a working pixel size and cut into patches of the
    particle's size; each patch is modelled as empty or a (partial) projection of the map
    at one of the shifts of the patch and one rotation of a grid, and the map, the prior
    of the shifts and each micrograph's noise variance are estimated by minibatch EM
    with frequency marching (Kreymer, Singer & Bendory 2023). No particle is picked; the
    posterior of every patch gives picks afterwards. The particles should be well
    separated (at least a particle diameter of ice between them).
    """
    _label = 'micrograph EM'
    _devStatus = BETA
    _possibleOutputs = OUTPUTS
    stepsExecutionMode = STEPS_PARALLEL
    _references = ['Kreymer2023micrograph']

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the posterior of the patches")
        form.addSection(label='Input')
        form.addParam('inputMicrographs', params.PointerParam, pointerClass='SetOfMicrographs',
                      important=True, label='Micrographs',
                      help="Micrographs of one pixel size, particles white (Scipion's "
                           "contrast), well separated.")
        form.addParam('useCtf', params.BooleanParam, default=True, label='Use CTF?',
                      help="Model each micrograph's CTF on the projections (needs a CTF "
                           "estimation of every micrograph).")
        form.addParam('ctfRelations', params.RelationParam, allowsNull=True,
                      condition='useCtf', relationName=RELATION_CTF,
                      attributeName='getInputMicrographs', label='CTF estimation',
                      help="The CTF estimation of the micrographs (e.g. CTFFIND).")
        form.addParam('particleDiameter', params.FloatParam, default=100.0,
                      validators=[params.Positive], label='Particle diameter (Å)',
                      help="Largest diameter of the particle: the patch is the smallest odd "
                           "number of working pixels that holds it.")
        form.addParam('workingResolution', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Working resolution (Å)',
                      help="The micrographs are binned to half this pixel size. 0: the "
                           "binning that makes the particle 11 px wide (the paper's). The "
                           "patch size L and the binning are shown in the summary; the cost "
                           "grows about as L^6.")
        form.addSection(label='EM')
        form.addParam('rotationResolution', params.IntParam, default=25,
                      validators=[params.GE(10)], label='Rotation grid resolution',
                      help="Resolution of the quaternion rotation grid: 15, 20, 25, 50 give "
                           "76, 299, 552 (the paper's, about 29° apart), 4484 rotations; the "
                           "cost is linear in the number of rotations.")
        form.addParam('degreeSchedule', params.NumericListParam, default='6 8 10',
                      label='Degrees per stage',
                      help="Maximum spherical-harmonic degree of each frequency-marching "
                           "stage; the last one is the map's. At most the patch size's "
                           "limit (10 for 11-px patches).")
        form.addParam('stageIterations', params.NumericListParam, default='20 10 10',
                      label='Iterations per stage',
                      help="Most iterations of each stage; a stage also ends when the "
                           "held-out log-likelihood stops improving.")
        form.addParam('batchFraction', params.FloatParam, default=0.05,
                      validators=[params.Range(0.0001, 1.0)], label='Minibatch fraction',
                      help="Share of the patches each iteration uses (fresh each time).")
        form.addParam('heldOutPatches', params.IntParam, default=1000,
                      validators=[params.GE(0)], label='Held-out patches',
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Patches kept out of training that score every iteration "
                           "(at most a fifth of all).")
        form.addParam('numberOfStarts', params.IntParam, default=3,
                      validators=[params.Positive], label='Random starts',
                      help="Independent random initial maps; the one with the best "
                           "held-out log-likelihood is the output. Starts run in parallel "
                           "steps.")
        form.addParam('estimateNoise', params.BooleanParam, default=True,
                      label='Estimate the noise?',
                      help="Update each micrograph's noise variance in every M-step "
                           "(otherwise the first estimate, from the quietest patches, "
                           "stays).")
        form.addParam('randomSeed', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Random seed', help="Seed of the starts and minibatches.")
        form.addSection(label='Picks')
        form.addParam('doPicking', params.BooleanParam, default=True,
                      label='Pick particles?',
                      help="Mark every patch whose posterior of 'empty' is below one half "
                           "and output the particle centres with 1 - P(empty) as score.")
        form.addParam('micrographsPerStep', params.IntParam, default=20,
                      validators=[params.Positive], label='Micrographs per step',
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Micrographs are read and picked in independent steps of this "
                           "many.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        batches = self._micrographBatches()
        prepare = [self._insertStep(self.preparePatchesStep, first, count, reads=GEOMETRY_PARAMS)
                   for first, count in batches]
        starts = [self._insertStep(self.runStartStep, start, reads=EM_PARAMS, after=prepare,
                                   needsGPU=gpu) for start in range(self.numberOfStarts.get())]
        select = self._insertStep(self.selectStartStep, reads=('numberOfStarts',), after=starts)
        picks = []
        if self.doPicking:
            picks = [self._insertStep(self.pickStep, first, count, after=[select],
                                      needsGPU=gpu) for first, count in batches]
        self._insertStep(self.createOutputStep, after=[select] + picks)

    def _filenameTemplates(self):
        return {
            'patches': self._getExtraPath('patches_%(batch)03d.npz'),
            'checkpoint': self._getExtraPath('start_%(start)02d_%(digest)s.npz'),
            'start': self._getExtraPath('start_%(start)02d.npz'),
            'result': self._getExtraPath('result.npz'),
            'volume': self._getExtraPath('volume_working.mrc'),
            'volumeFull': self._getExtraPath('volume.mrc'),
            'convergence': self._getExtraPath('convergence.txt'),
            'chimerax': self._getExtraPath('volume.cxc'),
            'picks': self._getExtraPath('picks_%(batch)03d.npz'),
        }

    # --------------------------- STEPS functions -----------------------------
    def preparePatchesStep(self, first, count, digest):
        """Bin and cut the micrographs ``first .. first + count - 1`` into patches."""
        box, binning, _ = self._geometry()
        mics = self._micrographs()[first:first + count]
        patch_set = patch_model.cut_patches(
            [convert.read_image(mic, check_finite=False) for mic in mics], box,
            self._pixelSize(), binning, names=[mic.getMicName() for mic in mics],
            subtract_mean=True, first=first)
        patch_set.save(self._getFileName('patches', batch=first))
        self.info("Micrographs %d-%d: %d patches of %d px (binning %.3g)"
                  % (first + 1, first + count, patch_set.count, box, binning))

    def runStartStep(self, start, digest):
        """One random start through the whole schedule; continues from its checkpoint."""
        from cryohess_plugin.core.micrograph_em import EMState, run_start
        self._setDevices()
        checkpoint = self._getFileName('checkpoint', start=start, digest=digest)
        state = EMState.load(checkpoint) if os.path.exists(checkpoint) else None
        if state is not None:
            self.info("Start %d continues from iteration %d" % (start + 1, state.iteration))
        state = run_start(self._patchSet(), self._settings(), start, self.randomSeed.get(),
                          self._ctfImages(), state=state,
                          checkpoint=lambda current: current.save(checkpoint),
                          progress=self._progressLog())
        shutil.copyfile(checkpoint, self._getFileName('start', start=start))

    def selectStartStep(self, digest):
        from cryohess_plugin.core.micrograph_em import EMState, combine_starts
        box, binning, working = self._geometry()
        states = [EMState.load(self._getFileName('start', start=start))
                  for start in range(self.numberOfStarts.get())]
        result = combine_starts(states, working, box)
        result.save(self._getFileName('result'))
        mrc.write_volume(self._getFileName('volume'), result.volume, working, overwrite=True)
        full = int(round(box * binning))
        mrc.write_volume(self._getFileName('volumeFull'),
                         result.basis().to_volume(result.coefficients, full),
                         working * box / full, overwrite=True)
        result.write_table(self._getFileName('convergence'))
        with open(self._getFileName('chimerax'), 'w') as script:
            # A surface at the map's mean plus two standard deviations, then fit to view.
            level = float(result.volume.mean() + 2 * result.volume.std())
            script.write("open volume.mrc\nvolume #1 style surface level %.6g\nview\n" % level)
        self.info("Best start %d (held-out log-likelihood per patch %s)"
                  % (result.best_start + 1, np.round(result.start_scores, 3)))

    def pickStep(self, first, count, digest):
        """Posterior picks of the micrographs ``first .. first + count - 1``."""
        from cryohess_plugin.core.micrograph_em import (MicrographEMResult, Model,
                                                        ProjectionOperator, pick_centres,
                                                        pick_patches, quaternion_grid)
        self._setDevices()
        result = MicrographEMResult.load(self._getFileName('result'))
        patch_set = self._patchSet()
        mine = np.flatnonzero((patch_set.micrograph >= first)
                              & (patch_set.micrograph < first + count))
        operator = ProjectionOperator(result.basis(),
                                      quaternion_grid(self.rotationResolution.get()))
        model = Model(result.coefficients, result.shift_prior, result.empty_mass,
                      result.noise_variance)
        picks = pick_patches(patch_set, operator, model, self._ctfImages(), mine,
                             backend=self._backend())
        rows = pick_centres(patch_set, picks, mine)
        rows[:, 1:3] *= patch_set.binning  # binned to original pixels
        self._saveNpz(self._getFileName('picks', batch=first), rows=rows)
        self.info("Micrographs %d-%d: %d picks" % (first + 1, first + count, len(rows)))

    def createOutputStep(self, digest):
        box, binning, working = self._geometry()
        volume = Volume(location=self._getFileName('volume'))
        volume.setSamplingRate(working)
        full = Volume(location=self._getFileName('volumeFull'))
        full.setSamplingRate(working * box / int(round(box * binning)))
        outputsDict = {'outputVolume': volume, 'outputVolumeFullSize': full}
        self._defineOutputs(**outputsDict)
        for output in outputsDict.values():
            self._defineSourceRelation(self.inputMicrographs, output)
        if self.doPicking:
            rows = np.concatenate([np.load(self._getFileName('picks', batch=first))['rows']
                                   for first, _ in self._micrographBatches()])
            count = len(self._micrographs())
            mine = [rows[rows[:, 0] == m] for m in range(count)]
            coordinates = convert.arrays_to_coordinates(
                self, self.inputMicrographs, [r[:, 1:3] for r in mine],
                int(round(box * binning)), columns={PICK_SCORE: [r[:, 3] for r in mine]})
            self._defineOutputs(outputCoordinates=coordinates)
            self._defineSourceRelation(self.inputMicrographs, coordinates)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        mics = self.inputMicrographs.get()
        if mics is None:
            return ["Select the micrographs."]
        if mics.getSize() == 0:
            return ["The set of micrographs is empty."]
        pixel = self._pixelSize()
        errors = []
        try:
            box, binning, working = self._geometry()
        except CryoHessError as error:
            errors.append("Patch size: %s." % error)
        for mic in self._micrographs():
            name = mic.getMicName()
            if not convert.same_sampling(mic.getSamplingRate(), pixel):
                errors.append("Micrograph %s has %g Å/px but the set %g Å/px: all "
                              "micrographs need one pixel size (resample them first)."
                              % (name, mic.getSamplingRate(), pixel))
            try:
                shape, headerPixel = mrc.read_header(convert.image_file(mic.getFileName()))
                data = convert.read_image(mic, check_finite=False)
            except CryoHessError as error:
                errors.append("Micrograph %s: %s" % (name, error))
                continue
            if headerPixel > 0 and not convert.same_sampling(headerPixel, pixel):
                errors.append("Micrograph %s has %g Å/px in its file but the set %g Å/px: "
                              "all micrographs need one pixel size." % (name, headerPixel,
                                                                        pixel))
            if self.particleDiameter.get() / pixel > min(shape[-2:]):
                errors.append("The particle (%g Å, %d px) is larger than micrograph %s "
                              "(%d x %d px): check the diameter."
                              % (self.particleDiameter, self.particleDiameter.get() / pixel,
                                 name, shape[-1], shape[-2]))
            bad = np.count_nonzero(~np.isfinite(data))
            if bad:
                errors.append("Micrograph %s has %d NaN or infinite pixels: repair it or "
                              "leave it out of the set." % (name, bad))
        if self.useCtf:
            errors += self._validateCtf()
        if not errors:
            errors += self._validateSchedule(box)
        return errors + self._validateContinue()

    def _validateCtf(self):
        ctfs = self.ctfRelations.get()
        if ctfs is None:
            return ["'Use CTF' is on but no CTF estimation is selected: estimate the CTF of "
                    "the micrographs (e.g. CTFFIND) or switch 'Use CTF' off."]
        try:
            params = convert.micrograph_ctfs(ctfs, self.inputMicrographs.get())
        except CryoHessError as error:
            return ["CTF estimation: %s" % error]
        missing = [mic.getMicName() for mic, p in zip(self._micrographs(), params) if p is None]
        if missing:
            return ["%d micrographs have no CTF in the selected estimation (%s): estimate "
                    "their CTF or switch 'Use CTF' off." % (len(missing),
                                                             ", ".join(missing[:5]))]
        return []

    def _validateSchedule(self, box):
        try:
            self._settings().check(box)
        except (CryoHessError, ValueError) as error:
            return ["Schedule: %s." % error]
        return []

    def _summary(self):
        lines = []
        try:
            box, binning, working = self._geometry()
            lines.append("Patches of %d px at %.3g Å/px (micrographs binned by %.3g)."
                         % (box, working, binning))
        except CryoHessError:
            pass
        if os.path.exists(self._getFileName('result')):
            from cryohess_plugin.core.micrograph_em import MicrographEMResult
            result = MicrographEMResult.load(self._getFileName('result'))
            lines.append("Best of %d starts: %d; empty share of the patches %.3f; mean noise "
                         "variance %.4g." % (len(result.start_scores), result.best_start + 1,
                                             result.empty_mass,
                                             float(np.mean(result.noise_variance))))
        if not self.hasAttribute('outputVolume'):
            lines.append("Output not ready yet.")
        return lines

    def _methods(self):
        if not self.hasAttribute('outputVolume'):
            return []
        box, binning, working = self._geometry()
        return ["A map was estimated directly from %d micrographs, without particle "
                "picking, by stochastic approximate expectation-maximisation over %d-px "
                "patches at %.3g Å/px [Kreymer2023micrograph]."
                % (len(self._micrographs()), box, working)]

    # --------------------------- UTILS functions -----------------------------
    def getInputMicrographs(self):
        return self.inputMicrographs.get()

    def _micrographs(self):
        """The input micrographs in id order, read through their own database connection
        (batch steps run side by side)."""
        return [mic.clone() for mic in
                self._parallelStepSet('inputMicrographs').iterItems(orderBy='id')]

    def _micrographBatches(self):
        count, step = len(self._micrographs()), self.micrographsPerStep.get()
        return [(first, min(step, count - first)) for first in range(0, count, step)]

    def _pixelSize(self):
        return float(self.inputMicrographs.get().getSamplingRate())

    def _geometry(self):
        return patch_model.working_geometry(self.particleDiameter.get(), self._pixelSize(),
                                            self.workingResolution.get() or None)

    def _settings(self):
        from cryohess_plugin.core.micrograph_em import EMSettings
        return EMSettings(schedule=tuple(int(v) for v in self._numbers('degreeSchedule')),
                          iterations=tuple(int(v) for v in self._numbers('stageIterations')),
                          batch_fraction=self.batchFraction.get(),
                          rotation_resolution=self.rotationResolution.get(),
                          held_out=self.heldOutPatches.get(),
                          estimate_noise=self.estimateNoise.get(), backend=self._backend())

    def _numbers(self, name):
        return [float(v) for v in str(getattr(self, name).get()).replace(',', ' ').split()]

    def _patchSet(self):
        return patch_model.PatchSet.concatenate(
            patch_model.PatchSet.load(self._getFileName('patches', batch=first))
            for first, _ in self._micrographBatches())

    def _ctfImages(self):
        """Per micrograph the ``(L, L)`` CTF at the working pixel size, or None."""
        if not self.useCtf:
            return None
        from cryohess_plugin.core.micrograph_em import ctf_image
        box, _, working = self._geometry()
        return [ctf_image(p, box, working)
                for p in convert.micrograph_ctfs(self._parallelStepSet('ctfRelations'),
                                                 self._parallelStepSet('inputMicrographs'))]
