"""Simulated cryo-EM data sets with known ground truth."""
from enum import Enum

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import (SetOfCoordinates, SetOfCTF, SetOfMicrographs, SetOfParticles,
                          SetOfVolumes, Volume)
from pwem.protocols import EMProtocol
from pyworkflow.constants import BETA
from pyworkflow.object import Pointer

from cryohess_plugin import convert
from cryohess_plugin.constants import (CONFORMATION, DEFOCUS_GROUP, HETEROGENEITY_LINEAR,
                                       HETEROGENEITY_RIGID_REGION, PLACEMENT_MIN_DISTANCE,
                                       SOURCE_ATOMIC_MODEL, SOURCE_VOLUME)
from cryohess_plugin.core import mrc, synthetic
from cryohess_plugin.core.ctf import params_from_rows

from .protocol_base import CryoHessProtocolMixin
from .simulate_micrograph_settings import MICROGRAPH_PARAMS
from .simulate_settings import IMAGE_PARAMS, PARTICLE_PARAMS, STRUCTURE_PARAMS, SimulationSettings


class outputs(Enum):
    outputVolume = Volume
    outputVolumes = SetOfVolumes
    outputParticles = SetOfParticles
    outputMicrographs = SetOfMicrographs
    outputCTF = SetOfCTF
    outputCoordinates = SetOfCoordinates


#: The particles boxed from the simulated micrographs. Not a member of ``outputs``: an
#: Enum member whose value equals an earlier one's is only an alias of it.
OUTPUT_MICROGRAPH_PARTICLES = 'outputMicrographParticles'


class CryoHessProtSimulate(SimulationSettings, CryoHessProtocolMixin, EMProtocol):
    """Simulate a particle data set (and optionally micrographs) with known ground truth.

    The ground-truth structure is a built-in atomic phantom, an atomic model
    (PDB/mmCIF) or an existing volume.  Each particle is a projection at a
    pose drawn from the chosen viewing distribution, shifted, modulated by the
    CTF of its defocus group and corrupted by white Gaussian noise at the
    requested SNR (SNR = mean per-image signal variance / noise variance).
    Atomic models are projected analytically as Gaussian atoms.  With
    heterogeneity every particle shows its own conformation
    (1 - t) A + t B, t uniform in [0, 1], stored per particle.
    """
    _label = 'simulate data set'
    _devStatus = BETA
    _possibleOutputs = dict({member.name: member.value for member in outputs},
                            **{OUTPUT_MICROGRAPH_PARTICLES: SetOfParticles})

    # The form, its checks (_validate, _warnings) and the core arguments: SimulationSettings.

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        structure = self._shownParams(STRUCTURE_PARAMS)
        images = structure + self._shownParams(IMAGE_PARAMS)
        steps = [self._insertStep(self.writeGroundTruthStep, reads=structure),
                 self._insertStep(self.simulateParticlesStep, reads=images + PARTICLE_PARAMS,
                                  needsGPU=gpu)]
        if self.doMicrographs:
            steps.append(self._insertStep(self.simulateMicrographsStep,
                                          reads=images + MICROGRAPH_PARAMS, needsGPU=gpu))
        self._insertStep(self.createOutputStep, after=steps)

    def _filenameTemplates(self):
        return {
            'volume': self._getExtraPath('ground_truth.mrc'),
            'volumeB': self._getExtraPath('ground_truth_stateB.mrc'),
            'particles': self._getExtraPath('particles.mrcs'),
            'particleTruth': self._getExtraPath('particles_truth.npz'),
            'micrograph': self._getExtraPath('micrograph_%(index)03d.mrc'),
            'micrographTruth': self._getExtraPath('micrographs_truth.npz'),
            'micrographParticles': self._getExtraPath('micrograph_particles.mrcs'),
        }

    # --------------------------- STEPS functions -----------------------------
    def writeGroundTruthStep(self, digest):
        stateA, stateB = self._structure()
        if isinstance(stateA, synthetic.AtomModel):
            self.info("Ground truth: %d atoms" % stateA.n_atoms)
        pixel = self.samplingRate.get()
        mapA, mapB = synthetic.ground_truth_maps(stateA, stateB, self.boxSize.get(), pixel)
        mrc.write_volume(self._getFileName('volume'), mapA, pixel, overwrite=True)
        if mapB is not None:
            mrc.write_volume(self._getFileName('volumeB'), mapB, pixel, overwrite=True)

    def simulateParticlesStep(self, digest):
        self._setDevices()
        stateA, stateB = self._structure()
        box, pixel = self.boxSize.get(), self.samplingRate.get()
        self.info("Simulating %d particles of %d px at %g Å/px, SNR %g"
                  % (self.numberOfParticles, box, pixel, self.snr))
        sim = synthetic.simulate_particles(
            stateA, self.numberOfParticles.get(), box, pixel,
            rng=self._seed(synthetic.PARTICLE_STREAM),
            shift_sigma=self.shiftSigma.get(), n_groups=self.numberOfDefocusGroups.get(),
            heterogeneity=stateB, keep_clean=False, **self._imageSettings())
        mrc.write_stack(self._getFileName('particles'), sim.images, pixel, overwrite=True)
        self._saveNpz(self._getFileName('particleTruth'), **sim.truth_arrays())
        self.info("Particles written to %s (noise sigma %.4g)"
                  % (self._getFileName('particles'), sim.noise_sigma))

    def simulateMicrographsStep(self, digest):
        self._setDevices()
        stateA, _ = self._structure()
        size, pixel = self.micrographSize.get(), self.samplingRate.get()
        self.info("Simulating %d micrographs of %d x %d px (%s)"
                  % (self.numberOfMicrographs, size, size,
                     self.getEnumText('micrographPlacement')))
        sim = synthetic.simulate_micrographs(
            stateA, self.numberOfMicrographs.get(), self.boxSize.get(), pixel,
            shape=(size, size), rng=self._seed(synthetic.MICROGRAPH_STREAM), keep_clean=False,
            **dict(self._imageSettings(), **self._micrographSettings()))
        self.info("Placed %s particles (density %.3f)"
                  % ([len(c) for c in sim.coordinates], sim.density()))
        for index, micrograph in enumerate(sim.micrographs):
            mrc.write_stack(self._getFileName('micrograph', index=index), micrograph[None],
                            pixel, overwrite=True)
            self.info("Micrograph %d/%d written" % (index + 1, len(sim.micrographs)))
        mrc.write_stack(self._getFileName('micrographParticles'), sim.particle_windows(), pixel,
                        overwrite=True)
        self._saveNpz(self._getFileName('micrographTruth'), **sim.truth_arrays())

    def createOutputStep(self, digest):
        pixel = self.samplingRate.get()
        volume = Volume(location=self._getFileName('volume'))
        volume.setSamplingRate(pixel)
        if self.source.get() == SOURCE_VOLUME:
            convert.keep_origin(volume, self.inputVolume.get())
        outputsDict = {outputs.outputVolume.name: volume}

        truth = np.load(self._getFileName('particleTruth'))
        ctfs = params_from_rows(truth['ctfs'])
        particles = convert.arrays_to_particles(
            self, self._getFileName('particles'), pixel, rotations=truth['rotations'],
            shifts=truth['shifts'], ctfs=ctfs, alignment=ALIGN_PROJ,
            columns={CONFORMATION: truth['conformation'].astype(np.float64),
                     DEFOCUS_GROUP: truth['groups'].astype(np.int64)})
        outputsDict[outputs.outputParticles.name] = particles

        if self._isHeterogeneous():
            volumes = self._createSetOfVolumes()
            volumes.setSamplingRate(pixel)
            for conformation, key in ((0.0, 'volume'), (1.0, 'volumeB')):
                state = Volume(location=self._getFileName(key))
                convert.set_columns(state, {CONFORMATION: [conformation]}, 0)
                volumes.append(state)
            outputsDict[outputs.outputVolumes.name] = volumes
        self._defineOutputs(**outputsDict)
        if self.source.get() == SOURCE_VOLUME:
            for output in outputsDict.values():
                self._defineSourceRelation(self.inputVolume, output)

        if self.doMicrographs:
            self._createMicrographOutputs(ctfs[0])

    # --------------------------- INFO functions ------------------------------
    def _summary(self):
        summary = ["Ground truth: %s; box %d px at %g Å/px."
                   % (self._sourceText(), self.boxSize, self.samplingRate),
                   "%d particles, %s views, shift sigma %g px, SNR %g, %d defocus groups "
                   "(%g-%g Å)." % (self.numberOfParticles, self._viewText(),
                                   self.shiftSigma, self.snr, self.numberOfDefocusGroups,
                                   self.defocusMin, self.defocusMax)]
        if self._isHeterogeneous():
            summary.append("Heterogeneity: %s (column %s)."
                           % (self.getEnumText('heterogeneity'), CONFORMATION))
        if self.doMicrographs:
            summary.append("%d micrographs of %d px, particles %s."
                           % (self.numberOfMicrographs, self.micrographSize,
                              self._placementText()))
        if not self.hasAttribute(outputs.outputParticles.name):
            summary.append("Output not ready yet.")
        return summary

    def _methods(self):
        methods = ["We simulated %d particle images of %d x %d pixels at %g Å/pixel from "
                   "%s, with %s viewing directions, in-plane shifts of standard deviation "
                   "%g pixels, the CTFs of %d defocus groups between %g and %g Å "
                   "(%g kV, Cs %g mm, amplitude contrast %g) and white Gaussian noise at an "
                   "SNR of %g."
                   % (self.numberOfParticles, self.boxSize, self.boxSize, self.samplingRate,
                      self._sourceText(), self._viewText(), self.shiftSigma,
                      self.numberOfDefocusGroups, self.defocusMin, self.defocusMax,
                      self.voltage, self.sphericalAberration, self.amplitudeContrast,
                      self.snr)]
        if self.source.get() != SOURCE_VOLUME:
            methods.append("Atoms were modelled as Gaussians with the electron scattering "
                           "factors of Peng et al. (1996) and projected analytically.")
        else:
            methods.append("The volume was projected with a Fourier-slice projector "
                           "[Ullrich2019differentiable].")
        if self._isHeterogeneous():
            methods.append("Every particle shows its own conformation on the line between "
                           "two states, a continuum of states as in the hyper-molecule "
                           "framework [Lederman2020hyper].")
        if self.doMicrographs:
            methods.append("We also simulated %d micrographs of %d x %d pixels with %s, "
                           "following the micrograph formation model of "
                           "[Kreymer2023micrograph]."
                           % (self.numberOfMicrographs, self.micrographSize,
                              self.micrographSize, self._placementText()))
        return methods

    def _citations(self):
        cites = []
        if self.source.get() == SOURCE_VOLUME:
            cites.append('Ullrich2019differentiable')
        if self._isHeterogeneous():
            cites.append('Lederman2020hyper')
        if self.doMicrographs:
            cites.append('Kreymer2023micrograph')
        return cites

    # --------------------------- UTILS functions -----------------------------
    def _seed(self, stream):
        return synthetic.stream_seed(self.randomSeed.get(), stream)

    def _mayUseGpu(self):
        """Only volumes go through the projector; atoms are projected on the CPU."""
        return self.source.get() == SOURCE_VOLUME

    def _expectedOutputs(self):
        expected = {outputs.outputVolume.name, outputs.outputParticles.name}
        if self._isHeterogeneous():
            expected.add(outputs.outputVolumes.name)
        if self.doMicrographs:
            expected |= {outputs.outputMicrographs.name, outputs.outputCTF.name,
                         outputs.outputCoordinates.name, OUTPUT_MICROGRAPH_PARTICLES}
        return expected

    def _placementText(self):
        if self.micrographPlacement.get() == PLACEMENT_MIN_DISTANCE:
            return "%d non-overlapping particles each" % self.particlesPerMicrograph
        return "particles %s at target density %g" % (
            self.getEnumText('micrographPlacement'), self.micrographDensity)

    def _structure(self):
        """Ground truth: ``(state A, state B or None)``; atomic models or (A only) a map."""
        source, heterogeneity = self.source.get(), self.heterogeneity.get()
        if source == SOURCE_VOLUME:
            volume, _ = convert.volume_to_array(self.inputVolume.get(),
                                                pixel_size=self.samplingRate.get())
            return volume, None
        if source == SOURCE_ATOMIC_MODEL:
            stateB = (synthetic.read_atomic_model(self._modelPath('secondAtomStruct',
                                                                  'secondModel'))
                      if heterogeneity == HETEROGENEITY_LINEAR else None)
            return synthetic.read_atomic_model(self._modelPath()), stateB
        moving = heterogeneity == HETEROGENEITY_RIGID_REGION
        return synthetic.phantom_states(
            self.phantomAtoms.get(), self.phantomRadius.get(),
            self._seed(synthetic.STRUCTURE_STREAM), symmetry_order=self._symmetryOrder(),
            moving_fraction=self.domainFraction.get() if moving else None,
            hinge_angle_deg=self.hingeAngle.get())

    def _createMicrographOutputs(self, microscope):
        truth = np.load(self._getFileName('micrographTruth'))
        paths = [self._getFileName('micrograph', index=i)
                 for i in range(self.numberOfMicrographs.get())]
        micSet = convert.arrays_to_micrographs(self, paths, self.samplingRate.get(),
                                               convert.acquisition_from_params(microscope))
        self._defineOutputs(**{outputs.outputMicrographs.name: micSet})
        micPointer = Pointer(self, extended=outputs.outputMicrographs.name)
        micCtfs = params_from_rows(truth['ctfs'])
        ctfSet = convert.arrays_to_ctfs(self, micPointer, micCtfs)
        counts = truth['counts']
        placed = [centres[:count] for centres, count in zip(truth['coordinates'], counts)]
        coordSet = convert.arrays_to_coordinates(self, micPointer, placed, self.boxSize.get())
        self._defineOutputs(**{outputs.outputCTF.name: ctfSet,
                               outputs.outputCoordinates.name: coordSet})
        # Extraction protocols offer the CTFs of micrographs through this relation.
        self._defineCtfRelation(micPointer, ctfSet)
        self._defineSourceRelation(micPointer, coordSet)
        self._createMicrographParticles(micPointer, micCtfs, truth, placed)

    def _createMicrographParticles(self, micSet, micCtfs, truth, placed):
        """The boxes at the true picks, as an extraction at the coordinates gives them:
        each particle with its micrograph's id and name, its coordinate, its
        micrograph's CTF and its true pose (centred: no shift)."""
        counts = truth['counts']
        mics = convert.micrograph_names(micSet)
        micIds = list(mics)
        particles = convert.arrays_to_particles(
            self, self._getFileName('micrographParticles'), self.samplingRate.get(),
            rotations=np.concatenate([poses[:count] for poses, count
                                      in zip(truth['rotations'], counts)]),
            ctfs=[micCtfs[j] for j, count in enumerate(counts) for _ in range(count)],
            micIds=np.repeat(micIds, counts), coordinates=np.concatenate(placed),
            micNames=mics, alignment=ALIGN_PROJ, suffix='Micrograph')
        self._defineOutputs(**{OUTPUT_MICROGRAPH_PARTICLES: particles})
        self._defineSourceRelation(micSet, particles)
