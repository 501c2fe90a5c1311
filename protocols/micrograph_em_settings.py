"""The micrograph-EM protocol's settings: its form, the checks of the micrographs and the
settings before a run and their translation into the core's EM settings."""
import numpy as np
from pwem.constants import RELATION_CTF
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.core import mrc
from cryohess_plugin.core.errors import CryoHessError

#: Form parameters every EM step reads.
GEOMETRY_PARAMS = ('inputMicrographs', 'particleDiameter', 'workingResolution')
EM_PARAMS = GEOMETRY_PARAMS + ('useCtf', 'ctfRelations', 'rotationResolution',
                               'degreeSchedule', 'stageIterations', 'batchFraction',
                               'lastStageBatchFraction', 'heldOutPatches', 'estimateNoise',
                               'randomSeed')


class MicrographEMSettings:
    """Form, checks and core settings of :class:`CryoHessProtMicrographEM` (a mixin of it,
    next to :class:`CryoHessProtocolMixin`, whose form blocks it uses)."""

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
        form.addParam('lastStageBatchFraction', params.FloatParam, default=0.0,
                      validators=[params.Range(0.0, 1.0)],
                      label='Minibatch fraction of the last stage',
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Share of the patches each iteration of the last stage uses; 0: "
                           "the minibatch fraction above. The map is solved from one "
                           "minibatch, so a small one leaves it noisy at high frequency: 1 "
                           "(every training patch) makes the last stage full EM, at the "
                           "cost of 1 / (minibatch fraction) minibatch iterations each.")
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
        form.addParam('referenceCoordinates', params.PointerParam,
                      pointerClass='SetOfCoordinates', allowsNull=True,
                      label='Reference coordinates (optional)',
                      help="Known particle positions in these micrographs (e.g. the "
                           "simulator's): the posterior picks are scored against them (F1 "
                           "of 'holds a particle' and of 'empty', share of shifts found "
                           "within 1 px) at the data's SNR and at lower SNRs made by adding "
                           "noise, for the viewer's picking curves.")
        form.addParam('micrographsPerStep', params.IntParam, default=20,
                      validators=[params.Positive], label='Micrographs per step',
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Micrographs are read and picked in independent steps of this "
                           "many.")
        form.addParallelSection(threads=2, mpi=0)

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

    # --------------------------- UTILS functions -----------------------------
    def _settings(self):
        from cryohess_plugin.core.micrograph_em import EMSettings
        return EMSettings(schedule=tuple(int(v) for v in self._numbers('degreeSchedule')),
                          iterations=tuple(int(v) for v in self._numbers('stageIterations')),
                          batch_fraction=self._batchFractions(),
                          rotation_resolution=self.rotationResolution.get(),
                          held_out=self.heldOutPatches.get(),
                          estimate_noise=self.estimateNoise.get(), backend=self._backend())

    def _batchFractions(self):
        """The minibatch fraction of every stage."""
        stages = len(self._numbers('degreeSchedule'))
        last = self.lastStageBatchFraction.get() or self.batchFraction.get()
        return (self.batchFraction.get(),) * max(stages - 1, 0) + (last,)

    def _numbers(self, name):
        return [float(v) for v in str(getattr(self, name).get()).replace(',', ' ').split()]
