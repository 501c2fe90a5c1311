"""Micrograph EM: an ab-initio map from whole micrographs, without particle picking."""
import dataclasses
import os

import numpy as np
from pwem.objects import SetOfCoordinates, Volume
from pwem.protocols import EMProtocol
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL

from cryohess_plugin import convert
from cryohess_plugin.constants import PICK_SCORE
from cryohess_plugin.core import mrc
from cryohess_plugin.core.errors import CryoHessError
from cryohess_plugin.core.micrograph_em import patches as patch_model

from .micrograph_em_settings import EM_PARAMS, GEOMETRY_PARAMS, MicrographEMSettings
from .protocol_base import CryoHessProtocolMixin

#: The outputs (a dict: two of them are Volumes, which an Enum would merge into one).
OUTPUTS = {'outputVolume': Volume, 'outputVolumeFullSize': Volume,
           'outputCoordinates': SetOfCoordinates}


class CryoHessProtMicrographEM(MicrographEMSettings, CryoHessProtocolMixin, EMProtocol):
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
        if self.referenceCoordinates.get() is not None:
            self._insertStep(self.pickingCurvesStep, reads=('referenceCoordinates',),
                             after=[select], needsGPU=gpu)
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
            'pickingCurves': self._getExtraPath('picking_curves.npz'),
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
        """One random start through the whole schedule, as a batch job; continues from its
        checkpoint."""
        from cryohess_plugin.core.micrograph_em import EMState
        self._setDevices()
        checkpoint = self._getFileName('checkpoint', start=start, digest=digest)
        if os.path.exists(checkpoint):
            self.info("Start %d continues from iteration %d"
                      % (start + 1, EMState.load(checkpoint).iteration))
        arrays, inputs, options = self._emJob()
        self._runBatchJob('run_micrograph_em_start', self._getFileName('start', start=start),
                          "", arrays=arrays, inputs=dict(inputs, checkpoint=checkpoint),
                          options=dict(options, settings=dataclasses.asdict(self._settings()),
                                       start=start, seed=self.randomSeed.get()))

    def selectStartStep(self, digest):
        from cryohess_plugin.core.micrograph_em import EMState, combine_starts, surface_level
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
            script.write("open volume.mrc\nvolume #1 style surface level %.6g\nview\n"
                         % surface_level(result.volume))
        self.info("Best start %d (held-out log-likelihood per patch %s)"
                  % (result.best_start + 1, np.round(result.start_scores, 3)))

    def pickStep(self, first, count, digest):
        """Posterior picks of the micrographs ``first .. first + count - 1``, as a batch job."""
        self._setDevices()
        arrays, inputs, options = self._emJob()
        picks = self._runBatchJob(
            'pick_micrographs', self._getFileName('picks', batch=first), "", arrays=arrays,
            inputs=dict(inputs, result=self._getFileName('result')),
            options=dict(options, first=first, count=count,
                         rotation_resolution=self.rotationResolution.get()))
        self.info("Micrographs %d-%d: %d picks" % (first + 1, first + count, picks['picks']))

    def _emJob(self):
        """Input arrays, files and options every micrograph-EM job takes: the CTF images
        and the patch files."""
        ctfs = self._ctfImages()
        patches = {'patches_%d' % index: self._getFileName('patches', batch=first)
                   for index, (first, _) in enumerate(self._micrographBatches())}
        return ({'ctfs': {} if ctfs is None else {'ctfs': np.stack(ctfs)}}, patches,
                dict(patch_files=len(patches)))

    def pickingCurvesStep(self, digest):
        """The posterior picks scored against the reference coordinates over SNR."""
        from cryohess_plugin.core.micrograph_em import picking_curves, reference_states
        self._setDevices()
        patch_set = self._patchSet()
        found = convert.coordinates_to_arrays(self._parallelStepSet('referenceCoordinates'))
        centres = [found.get(mic.getObjId(), np.zeros((0, 2))) for mic in self._micrographs()]
        operator, model = self._resultModel()
        curves = picking_curves(patch_set, operator, model,
                                reference_states(patch_set, centres), self._ctfImages(),
                                backend=self._backend())
        curves.save(self._getFileName('pickingCurves'))
        self.info("Picks against %d reference particles: F1 of 'holds a particle' %.3f, "
                  "shifts within 1 px %.3f at the data's SNR %.3g"
                  % (sum(len(c) for c in centres), curves.f1_nonempty[0],
                     curves.shift_accuracy[0], curves.snr[0]))

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
                self._parallelStepSet('inputMicrographs').iterItems(orderBy='id',
                                                                    where=convert.ENABLED)]

    def _micrographBatches(self):
        count, step = len(self._micrographs()), self.micrographsPerStep.get()
        return [(first, min(step, count - first)) for first in range(0, count, step)]

    def _pixelSize(self):
        return float(self.inputMicrographs.get().getSamplingRate())

    def _geometry(self):
        return patch_model.working_geometry(self.particleDiameter.get(), self._pixelSize(),
                                            self.workingResolution.get() or None)

    def _patchSet(self):
        return patch_model.PatchSet.concatenate(
            patch_model.PatchSet.load(self._getFileName('patches', batch=first))
            for first, _ in self._micrographBatches())

    def _resultModel(self):
        """The projection operator and the model of the selected start."""
        from cryohess_plugin.core.micrograph_em import MicrographEMResult
        result = MicrographEMResult.load(self._getFileName('result'))
        return result.operator_and_model(self.rotationResolution.get())

    def _ctfImages(self):
        """Per micrograph the ``(L, L)`` CTF at the working pixel size, or None."""
        if not self.useCtf:
            return None
        from cryohess_plugin.core.micrograph_em import ctf_image
        box, _, working = self._geometry()
        return [ctf_image(p, box, working)
                for p in convert.micrograph_ctfs(self._parallelStepSet('ctfRelations'),
                                                 self._parallelStepSet('inputMicrographs'))]
