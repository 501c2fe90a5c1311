"""CryoHessProtSimulate in a headless Scipion project, downstream sets and the viewer.

Runs under pytest (``tests/conftest.py`` sets up Scipion) and under
``scipion3 tests cryohess_plugin.tests.test_scipion_simulate``.
"""
import os

import numpy as np
from pwem.constants import ALIGN_PROJ, RELATION_CTF
from pwem.objects import Volume
from pwem.protocols import ProtSplitSet
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import (CONFORMATION, DEFOCUS_GROUP, HETEROGENEITY_LINEAR,
                                       HETEROGENEITY_RIGID_REGION, PHANTOM_CYCLIC,
                                       SOURCE_ATOMIC_MODEL, SOURCE_PHANTOM, SOURCE_VOLUME,
                                       VIEWS_POLAR_CAP)
from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic.atoms import gaussian_atom_volume
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.core.rotations import projection_directions
from cryohess_plugin.demo import savePlots
from cryohess_plugin.protocols import CryoHessProtSimulate
from cryohess_plugin.viewers import CryoHessSimulateViewer
from .helpers import relative_l2
from .scipion_base import CryoHessTestCase
from .scipion_data import SMALL, writePdb
from .scipion_data import SMALL_BOX as BOX
from .scipion_data import SMALL_PARTICLES as PARTICLES
from .scipion_data import SMALL_PIXEL as PIXEL


class TestCryoHessSimulate(CryoHessTestCase):
    """A phantom data set with micrographs, a split of it and the viewer plots."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Simulating a phantom data set with micrographs"))
        cls.protSim = cls.newProtocol(CryoHessProtSimulate, objLabel='simulate phantom',
                                      viewDistribution=VIEWS_POLAR_CAP, viewAngle=40.0,
                                      doMicrographs=True, numberOfMicrographs=2,
                                      particlesPerMicrograph=5, micrographSize=160,
                                      randomSeed=3, **SMALL)
        cls.launchProtocol(cls.protSim)

    def testExtractionFindsTheCtfs(self):
        """Extraction protocols look for a micrograph's CTF through RELATION_CTF."""
        related = self.proj.getRelatedObjects(RELATION_CTF, self.protSim.outputMicrographs,
                                               refresh=True)
        self.assertIn(self.protSim.outputCTF.getObjId(), [pointer.get().getObjId() for pointer in related])

    def testParticles(self):
        parts = self.protSim.outputParticles
        self.assertSetSize(parts, PARTICLES)
        self.assertAlmostEqual(parts.getSamplingRate(), PIXEL)
        self.assertTrue(parts.hasCTF())
        self.assertEqual(parts.getAlignment(), ALIGN_PROJ)
        self.assertEqual(parts.getDimensions(), (BOX, BOX, 1))
        acquisition = parts.getAcquisition()
        self.assertAlmostEqual(acquisition.getVoltage(), 300.0)
        self.assertAlmostEqual(acquisition.getAmplitudeContrast(), 0.1)
        arrays = convert.particles_to_arrays(parts, need_ctf=True, need_alignment=True,
                                             columns=(CONFORMATION, DEFOCUS_GROUP))
        self.assertEqual(arrays.images.shape, (PARTICLES, BOX, BOX))
        self.assertTrue(np.all(arrays.columns[CONFORMATION] == 0.0))
        self.assertEqual(sorted(set(arrays.columns[DEFOCUS_GROUP])), [0, 1, 2, 3])
        tilt = np.degrees(np.arccos(projection_directions(arrays.rotations)[:, 2]))
        self.assertLessEqual(tilt.max(), 40.0 + 1e-6)
        truth = np.load(self.protSim._getExtraPath('particles_truth.npz'))
        np.testing.assert_allclose(arrays.rotations, truth['rotations'], atol=1e-9)
        np.testing.assert_allclose(arrays.shifts, truth['shifts'], atol=1e-9)
        groupDefocus = {}
        for group, ctf in zip(arrays.columns[DEFOCUS_GROUP], arrays.ctfs):
            groupDefocus.setdefault(group, set()).add(round(ctf.defocus_u, 3))
        self.assertTrue(all(len(values) == 1 for values in groupDefocus.values()))

    def testVolume(self):
        volume = self.protSim.outputVolume
        self.assertAlmostEqual(volume.getSamplingRate(), PIXEL)
        array, voxel = convert.volume_to_array(volume, pixel_size=PIXEL)
        self.assertEqual(array.shape, (BOX,) * 3)
        self.assertGreater(array.sum(), 0.0)
        self.assertFalse(hasattr(self.protSim, 'outputVolumes'))

    def testMicrographs(self):
        mics = self.protSim.outputMicrographs
        self.assertSetSize(mics, 2)
        self.assertAlmostEqual(mics.getSamplingRate(), PIXEL)
        self.assertEqual(mics.getDimensions(), (160, 160, 1))
        coords = self.protSim.outputCoordinates
        self.assertSetSize(coords, 10)
        self.assertEqual(coords.getBoxSize(), BOX)
        truth = np.load(self.protSim._getExtraPath('micrographs_truth.npz'))
        centres = convert.coordinates_to_arrays(coords)
        for index, micId in enumerate(sorted(centres)):
            np.testing.assert_array_equal(centres[micId], truth['coordinates'][index])
        ctfs = self.protSim.outputCTF
        self.assertSetSize(ctfs, 2)
        for ctf in ctfs:
            self.assertIsNotNone(ctf.getMicrograph())

    def testSplitKeepsColumns(self):
        print(magentaStr("\n==> Splitting the simulated particles"))
        protSplit = self.newProtocol(ProtSplitSet, numberOfSets=2, randomize=True)
        protSplit.inputSet.set(self.protSim)
        protSplit.inputSet.setExtended('outputParticles')
        self.launchProtocol(protSplit)
        original = convert.particles_to_arrays(self.protSim.outputParticles, need_ctf=True,
                                               columns=(CONFORMATION, DEFOCUS_GROUP))
        byId = {partId: i for i, partId in enumerate(original.ids)}
        seen = []
        for name in ('outputParticles01', 'outputParticles02'):
            subset = getattr(protSplit, name)
            self.assertTrue(subset.hasCTF())
            self.assertEqual(subset.getAlignment(), ALIGN_PROJ)
            part = convert.particles_to_arrays(subset, need_ctf=True,
                                               columns=(CONFORMATION, DEFOCUS_GROUP))
            rows = [byId[partId] for partId in part.ids]
            seen.extend(part.ids)
            np.testing.assert_array_equal(part.images, original.images[rows])
            np.testing.assert_allclose(part.rotations, original.rotations[rows], atol=1e-12)
            np.testing.assert_allclose(part.shifts, original.shifts[rows], atol=1e-12)
            np.testing.assert_array_equal(part.columns[DEFOCUS_GROUP],
                                          original.columns[DEFOCUS_GROUP][rows])
            np.testing.assert_array_equal(part.columns[CONFORMATION],
                                          original.columns[CONFORMATION][rows])
            self.assertEqual(part.ctfs, [original.ctfs[i] for i in rows])
        self.assertEqual(sorted(seen), sorted(original.ids))

    def testViewerPlots(self):
        paths = savePlots(CryoHessSimulateViewer, self.proj, self.protSim, self.proj.path,
                          'simulate')
        self.assertEqual(len(paths), 4)
        for path in paths:
            self.assertGreater(os.path.getsize(path), 1000, path)

    def testSummaryAndMethods(self):
        summary = ' '.join(self.protSim.summary())
        self.assertIn('%d particles' % PARTICLES, summary)
        methods = ' '.join(self.protSim.methods())
        self.assertIn('Kreymer', methods)
        self.assertEqual(self.protSim._citations(), ['Kreymer2023micrograph'])


class TestCryoHessSimulateSources(CryoHessTestCase):
    """Atomic model files with linear heterogeneity, rigid motion and a volume source."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.modelA = os.path.abspath('stateA.pdb')
        cls.modelB = os.path.abspath('stateB.pdb')
        stateA = random_protein_phantom(200, 15.0, rng=1)
        writePdb(cls.modelA, stateA)
        stateA.positions[:50] += np.array([3.0, 0.0, 0.0])
        writePdb(cls.modelB, stateA)

    def _checkHeterogeneous(self, prot):
        parts = convert.particles_to_arrays(prot.outputParticles, columns=(CONFORMATION,),
                                            read_images=False)
        conformation = parts.columns[CONFORMATION]
        self.assertTrue(np.all((conformation >= 0) & (conformation <= 1)))
        self.assertGreater(np.ptp(conformation), 0.1)
        self.assertSetSize(prot.outputVolumes, 2)
        states = [convert.volume_to_array(v)[0] for v in prot.outputVolumes]
        self.assertGreater(np.abs(states[0] - states[1]).max(), 0.0)
        self.assertIn('Lederman2020hyper', prot._citations())

    def testAtomicModelLinear(self):
        print(magentaStr("\n==> Simulating from two atomic models"))
        prot = self.newProtocol(CryoHessProtSimulate, source=SOURCE_ATOMIC_MODEL,
                                atomicModel=self.modelA, heterogeneity=HETEROGENEITY_LINEAR,
                                secondModel=self.modelB, **SMALL)
        self.launchProtocol(prot)
        self.assertSetSize(prot.outputParticles, PARTICLES)
        self._checkHeterogeneous(prot)

    def testPhantomRigidRegion(self):
        print(magentaStr("\n==> Simulating a phantom with a moving domain"))
        prot = self.newProtocol(CryoHessProtSimulate, heterogeneity=HETEROGENEITY_RIGID_REGION,
                                hingeAngle=40.0, **SMALL)
        self.launchProtocol(prot)
        self._checkHeterogeneous(prot)

    def testVolumeSource(self):
        print(magentaStr("\n==> Simulating from a volume"))
        protPhantom = self.newProtocol(CryoHessProtSimulate, objLabel='phantom for volume',
                                       **SMALL)
        self.launchProtocol(protPhantom)
        prot = self.newProtocol(CryoHessProtSimulate, source=SOURCE_VOLUME,
                                **dict(SMALL, numberOfParticles=8, numberOfDefocusGroups=2))
        prot.inputVolume.set(protPhantom)
        prot.inputVolume.setExtended('outputVolume')
        self.launchProtocol(prot)
        arrays = convert.particles_to_arrays(prot.outputParticles, need_ctf=True)
        self.assertEqual(arrays.images.shape, (8, BOX, BOX))
        self.assertTrue(np.all(np.isfinite(arrays.images)))


class TestCryoHessSimulateCyclic(CryoHessTestCase):
    """The cyclic phantom: a ground truth with C_n symmetry about z."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    def testC4PhantomMapIsSymmetric(self):
        print(magentaStr("\n==> Simulating a C4 phantom"))
        # An odd box puts the symmetry axis (the centroid, voxel box // 2) on the array's
        # centre, so a quarter turn of the map is np.rot90.
        settings = dict(SMALL, boxSize=BOX + 1, numberOfParticles=6, numberOfDefocusGroups=2)
        prot = self.newProtocol(CryoHessProtSimulate, phantomSymmetry=PHANTOM_CYCLIC,
                                symmetryOrder=4, **settings)
        self.launchProtocol(prot)
        volume, _ = convert.volume_to_array(prot.outputVolume)
        self.assertLess(relative_l2(np.rot90(volume, axes=(1, 2)), volume), 1e-5)
        asymmetric = gaussian_atom_volume(random_protein_phantom(300, 18.0, rng=0), BOX + 1,
                                          PIXEL)
        self.assertGreater(relative_l2(np.rot90(asymmetric, axes=(1, 2)), asymmetric), 0.3)
        self.assertSetSize(prot.outputParticles, 6)
        self.assertIn('C4 phantom of 4 subunits of 75 atoms', ' '.join(prot.summary()))


class TestCryoHessSimulateContinue(CryoHessTestCase):
    """Continue re-runs exactly the steps an edit affects and gives a fresh run's output."""
    SETTINGS = dict(SMALL, numberOfParticles=12, doMicrographs=True, numberOfMicrographs=2,
                    particlesPerMicrograph=4, micrographSize=128)

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    @staticmethod
    def _stepEnds(prot):
        return [(step.funcName.get(), step.endTime.get()) for step in prot.loadSteps()]

    def _continue(self, prot, **edits):
        for name, value in edits.items():
            getattr(prot, name).set(value)
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)
        return self._stepEnds(prot)

    def _assertSameData(self, prot, fresh):
        for name in sorted(os.listdir(fresh._getExtraPath())):
            mine, theirs = prot._getExtraPath(name), fresh._getExtraPath(name)
            if name.endswith('.npz'):
                mineArrays, theirArrays = np.load(mine), np.load(theirs)
                self.assertEqual(sorted(mineArrays.files), sorted(theirArrays.files))
                for key in theirArrays.files:
                    np.testing.assert_array_equal(mineArrays[key], theirArrays[key])
            else:
                np.testing.assert_array_equal(mrc.read_stack(mine), mrc.read_stack(theirs))
        mineParts = convert.particles_to_arrays(prot.outputParticles, need_ctf=True)
        theirParts = convert.particles_to_arrays(fresh.outputParticles, need_ctf=True)
        np.testing.assert_array_equal(mineParts.images, theirParts.images)
        np.testing.assert_array_equal(mineParts.rotations, theirParts.rotations)
        self.assertEqual(mineParts.ctfs, theirParts.ctfs)
        mineMics, _, _ = convert.micrographs_to_arrays(prot.outputMicrographs)
        theirMics, _, _ = convert.micrographs_to_arrays(fresh.outputMicrographs)
        np.testing.assert_array_equal(mineMics, theirMics)
        mineCoords = convert.coordinates_to_arrays(prot.outputCoordinates)
        theirCoords = convert.coordinates_to_arrays(fresh.outputCoordinates)
        for mineMic, theirMic in zip(sorted(mineCoords), sorted(theirCoords)):
            np.testing.assert_array_equal(mineCoords[mineMic], theirCoords[theirMic])

    def testContinueAfterEditingTheSnr(self):
        print(magentaStr("\n==> Simulating, then Continue without and with an edit"))
        prot = self.newProtocol(CryoHessProtSimulate, **self.SETTINGS)
        self.launchProtocol(prot)
        first = self._stepEnds(prot)
        self.assertEqual([name for name, _ in first],
                         ['writeGroundTruthStep', 'simulateParticlesStep',
                          'simulateMicrographsStep', 'createOutputStep'])
        self.assertEqual(self._continue(prot), first)

        edited = self._continue(prot, snr=0.3)
        self.assertEqual(edited[0], first[0])
        for (name, before), (_, after) in zip(first[1:], edited[1:]):
            self.assertNotEqual(before, after, name)
        fresh = self.newProtocol(CryoHessProtSimulate, **dict(self.SETTINGS, snr=0.3))
        self.launchProtocol(fresh)
        self._assertSameData(prot, fresh)

        prot.doMicrographs.set(False)
        prot.runMode.set(MODE_RESUME)
        self.assertIn('needs Restart', ' '.join(prot.validate()))

    def testEditedModelFileIsReRead(self):
        print(magentaStr("\n==> Continue after rewriting the atomic model file"))
        model = os.path.abspath('continue_model.pdb')
        writePdb(model, random_protein_phantom(150, 14.0, rng=4))
        settings = dict(SMALL, numberOfParticles=6, numberOfDefocusGroups=2)
        prot = self.newProtocol(CryoHessProtSimulate, source=SOURCE_ATOMIC_MODEL,
                                atomicModel=model, **settings)
        self.launchProtocol(prot)
        first = self._stepEnds(prot)
        writePdb(model, random_protein_phantom(150, 14.0, rng=5))
        edited = self._continue(prot)
        for (name, before), (_, after) in zip(first, edited):
            self.assertNotEqual(before, after, name)


class TestCryoHessSimulateValidation(CryoHessTestCase):
    """``_validate`` explains what is wrong before anything runs."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        volumeFile = os.path.abspath('volume_3A.mrc')
        mrc.write_volume(volumeFile, np.zeros((BOX,) * 3, np.float32), 3.0, overwrite=True)
        cls.volumeFile = volumeFile

    def _errors(self, **kwargs):
        prot = self.newProtocol(CryoHessProtSimulate, **dict(SMALL, **kwargs))
        return ' '.join(prot.validate())

    def testValidDefaults(self):
        self.assertEqual(self._errors(), '')

    def testBoxTooSmall(self):
        self.assertIn('at least 16', self._errors(boxSize=8))

    def testSnrMustBePositive(self):
        self.assertIn('SNR must be positive', self._errors(snr=0.0))
        self.assertIn('SNR must be positive', self._errors(snr=-1.0))

    def testMissingModelFile(self):
        self.assertIn('does not exist',
                      self._errors(source=SOURCE_ATOMIC_MODEL, atomicModel='/no/such/file.pdb'))
        self.assertIn('Give the atomic model', self._errors(source=SOURCE_ATOMIC_MODEL))
        self.assertIn('second atomic model',
                      self._errors(source=SOURCE_PHANTOM, heterogeneity=HETEROGENEITY_LINEAR))

    def testPhantomDoesNotFit(self):
        self.assertIn('does not fit', self._errors(phantomRadius=40.0))

    def testDefocusAndGroups(self):
        self.assertIn('exceeds', self._errors(defocusMin=30000.0, defocusMax=20000.0))
        self.assertIn('more defocus groups', self._errors(numberOfDefocusGroups=50))
        self.assertIn('would be negative', self._errors(defocusMin=1000.0, astigmatism=3000.0))

    def testMicrographsTooSmall(self):
        self.assertIn('do not fit', self._errors(doMicrographs=True, micrographSize=64,
                                                 particlesPerMicrograph=10))

    def testCyclicPhantom(self):
        cyclic = dict(phantomSymmetry=PHANTOM_CYCLIC, symmetryOrder=7)
        self.assertEqual(self._errors(**cyclic), '')
        self.assertIn('at least 7 atoms', self._errors(phantomAtoms=5, **cyclic))
        self.assertIn('asymmetric phantom only',
                      self._errors(heterogeneity=HETEROGENEITY_RIGID_REGION, **cyclic))

    def testModelFileThatIsNoModel(self):
        text = os.path.abspath('notes.pdb')
        with open(text, 'w') as handle:
            handle.write("REMARK a model will follow\n")
        errors = self._errors(source=SOURCE_ATOMIC_MODEL, atomicModel=text)
        self.assertIn('atomic model file is unusable', errors)
        self.assertIn('no ATOM or HETATM record', errors)
        errors = self._errors(source=SOURCE_ATOMIC_MODEL, atomicModel=self.volumeFile)
        self.assertIn('not a text file', errors)

    def _volumeErrors(self, path):
        volume = Volume(location=path)
        volume.setSamplingRate(PIXEL)
        prot = self.newProtocol(CryoHessProtSimulate, source=SOURCE_VOLUME, **SMALL)
        prot.inputVolume.set(volume)
        return ' '.join(prot.validate())

    def testVolumeFileChecks(self):
        good = os.path.abspath('good_volume.mrc')
        mrc.write_volume(good, np.ones((BOX,) * 3, np.float32), PIXEL, overwrite=True)
        self.assertEqual(self._volumeErrors(good), '')
        flat = os.path.abspath('flat_volume.mrc')
        mrc.write_stack(flat, np.ones((BOX // 2, BOX, BOX), np.float32), PIXEL, overwrite=True)
        self.assertIn('needs a cubic map', self._volumeErrors(flat))
        truncated = os.path.abspath('truncated_volume.mrc')
        with open(good, 'rb') as source, open(truncated, 'wb') as target:
            target.write(source.read()[:-1000])
        errors = self._volumeErrors(truncated)
        self.assertIn('The ground-truth volume is unusable', errors)
        self.assertIn('truncated_volume.mrc', errors)
        self.assertIn('is unusable', self._volumeErrors(os.path.abspath('missing.mrc')))

    def _warnings(self, **kwargs):
        prot = self.newProtocol(CryoHessProtSimulate, **dict(SMALL, **kwargs))
        return prot, ' '.join(prot._warnings())  # without the machine's 'Use GPU' warning

    def testWarnings(self):
        prot, warnings = self._warnings()
        self.assertEqual(warnings, '')
        # Box 32 px, phantom radius 9 px: a 6 px shift sigma moves many particles out.
        self.assertIn('past the edge of the 32 px box', self._warnings(shiftSigma=6.0)[1])
        model = os.path.abspath('big_model.pdb')
        writePdb(model, random_protein_phantom(200, 15.0, rng=2))
        _, warnings = self._warnings(source=SOURCE_ATOMIC_MODEL, atomicModel=model,
                                     samplingRate=0.5)
        self.assertIn('About 100 % of the particles will reach past the edge', warnings)
        prot._freeDisk = lambda: 1000
        prot._availableMemory = lambda: 2000
        warnings = ' '.join(prot.warnings())
        self.assertIn('only 1000 bytes are free in the project', warnings)
        self.assertIn('of memory but only 2 kB are available', warnings)

    def testMismatchedSamplingRate(self):
        from pwem.protocols import ProtImportVolumes
        protImport = self.newProtocol(ProtImportVolumes, filesPath=self.volumeFile,
                                      samplingRate=3.0)
        self.launchProtocol(protImport)
        prot = self.newProtocol(CryoHessProtSimulate, source=SOURCE_VOLUME, **SMALL)
        prot.inputVolume.set(protImport)
        prot.inputVolume.setExtended('outputVolume')
        errors = ' '.join(prot.validate())
        self.assertIn('does not match the pixel size', errors)
        prot.samplingRate.set(3.0)
        prot.boxSize.set(BOX + 2)
        errors = ' '.join(prot.validate())
        self.assertNotIn('does not match', errors)
        self.assertIn('set the box size to %d' % BOX, errors)
