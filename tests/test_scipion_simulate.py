"""CryoHessProtSimulate in a headless Scipion project, downstream sets and the viewer.

Runs under pytest (``tests/conftest.py`` sets up Scipion) and under
``scipion3 tests cryohess_plugin.tests.test_scipion_simulate``.
"""
import os

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.protocols import ProtSplitSet
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import (CONFORMATION, DEFOCUS_GROUP, HETEROGENEITY_LINEAR,
                                       HETEROGENEITY_RIGID_REGION, SOURCE_ATOMIC_MODEL,
                                       SOURCE_PHANTOM, SOURCE_VOLUME, VIEWS_POLAR_CAP)
from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.core.rotations import projection_directions
from cryohess_plugin.demo import savePlots
from cryohess_plugin.protocols import CryoHessProtSimulate
from cryohess_plugin.viewers import CryoHessSimulateViewer
from .scipion_base import CryoHessTestCase

BOX = 32
PIXEL = 2.0
PARTICLES = 20
SMALL = dict(boxSize=BOX, samplingRate=PIXEL, numberOfParticles=PARTICLES,
             numberOfDefocusGroups=4, phantomAtoms=300, phantomRadius=18.0, snr=1.0,
             shiftSigma=1.5, numberOfThreads=1)


def writePdb(path, model):
    """Write an AtomModel as a minimal PDB file (one residue per atom)."""
    with open(path, 'w') as pdb:
        for i, ((x, y, z), element) in enumerate(zip(model.positions, model.elements)):
            name = element.upper()
            pdb.write("ATOM  %5d %-4s ALA A%4d    %8.3f%8.3f%8.3f  1.00 30.00          %2s\n"
                      % (i + 1, name, i % 9999 + 1, x, y, z, name))
        pdb.write("END\n")


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
