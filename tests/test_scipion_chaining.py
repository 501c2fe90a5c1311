"""How cryohess outputs chain into other Scipion protocols: simulated micrographs, CTFs,
coordinates and the particles boxed at them as an extraction protocol sees them; origins
of input maps kept on output maps; disabled items left out of every computation.

RELION's binaries are not installed here: the RELION extraction protocol is set up on the
simulated outputs in a headless project, validated, and its own input-writing code is run
(the micrograph STAR file with the CTFs, the coordinate files); ``relion_preprocess`` is
not run.
"""
import os
from unittest import mock

import mrcfile
import numpy as np
from pwem.constants import RELATION_CTF
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImportVolumes
from pyworkflow.project import Manager
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import SOURCE_VOLUME
from cryohess_plugin.core import mrc
from cryohess_plugin.core.alignment import VolumeAligner
from cryohess_plugin.core.alignment.diagnostics import VolumeRankSweep
from cryohess_plugin.core.ctf import params_from_rows
from cryohess_plugin.core.synthetic.atoms import gaussian_atom_volume
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.protocols import (CryoHessProtAlignParticles, CryoHessProtAlignVolumes,
                                       CryoHessProtSimulate)
from cryohess_plugin.viewers import CryoHessAlignVolumesViewer
from .scipion_base import CryoHessTestCase
from .scipion_data import SMALL

BOX, PIXEL = SMALL['boxSize'], SMALL['samplingRate']
ORIGIN = (-30.0, -28.5, -33.0)  # Å, as ProtImportVolumes stores x, y, z


def readStar(path):
    """Rows of the last data block of a STAR file: ``[{label: text}]``."""
    labels, rows = [], []
    for line in open(path):
        words = line.split()
        if not words or words[0].startswith(('data_', 'loop_', '#')):
            if words and words[0].startswith('data_'):
                labels, rows = [], []
            continue
        if words[0].startswith('_'):
            labels.append(words[0].split()[0])
        else:
            rows.append(dict(zip(labels, words)))
    return rows


class TestSimulatedMicrographsChain(CryoHessTestCase):
    """Simulated micrographs, their CTFs and coordinates, and the particles at the picks."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Simulating micrographs for extraction"))
        cls.protSim = cls.launchSimulation('simulate micrographs', SMALL, doMicrographs=True,
                                           numberOfMicrographs=2, particlesPerMicrograph=4,
                                           micrographSize=128, randomSeed=5)

    def testMicrographParticlesCarryMicrographAndCoordinate(self):
        particles = self.protSim.outputMicrographParticles
        coords = convert.coordinates_to_arrays(self.protSim.outputCoordinates)
        self.assertSetSize(particles, sum(len(xy) for xy in coords.values()))
        mics = {mic.getObjId(): mic.clone() for mic in self.protSim.outputMicrographs}
        ctfs = {ctf.getMicrograph().getMicName(): ctf.clone() for ctf in self.protSim.outputCTF}
        seen = {micId: [] for micId in coords}
        for particle in particles:
            micId = particle.getMicId()
            mic = mics[micId]
            coord = particle.getCoordinate()
            self.assertEqual(coord.getMicId(), micId)
            self.assertEqual(coord.getMicName(), mic.getMicName())
            seen[micId].append(coord.getPosition())
            # The micrograph's CTF, as an extraction with the CTF relation attaches it.
            self.assertAlmostEqual(particle.getCTF().getDefocusU(),
                                   ctfs[mic.getMicName()].getDefocusU(), places=3)
            # The image is the micrograph's box centred at the coordinate.
            with mrcfile.open(convert.image_file(mic.getFileName()), permissive=True) as f:
                data = np.asarray(f.data).reshape(f.data.shape[-2:])
            x, y = coord.getPosition()
            window = data[y - BOX // 2:y + BOX - BOX // 2, x - BOX // 2:x + BOX - BOX // 2]
            np.testing.assert_array_equal(convert.read_image(particle), window)
        for micId, xy in coords.items():
            np.testing.assert_array_equal(np.asarray(seen[micId], dtype=float), xy)

    def testMicrographParticlesHaveTheTruePoses(self):
        truth = np.load(self.protSim._getFileName('micrographTruth'))
        arrays = convert.particles_to_arrays(self.protSim.outputMicrographParticles,
                                             need_alignment=True, read_images=False)
        expected = np.concatenate([poses[:count] for poses, count
                                   in zip(truth['rotations'], truth['counts'])])
        np.testing.assert_allclose(arrays.rotations, expected, atol=1e-9)
        np.testing.assert_allclose(arrays.shifts, 0.0, atol=1e-9)

    def testRelionExtractionTakesTheSimulatedInputs(self):
        """RELION's extraction form offers the simulated CTFs for the simulated micrographs,
        validates, and writes our coordinates and CTFs into its inputs."""
        from relion.protocols import ProtRelionExtractParticles
        from relion.convert import createWriter
        from relion.convert.convert31 import OpticsGroups
        # The project as the GUI loads it (the test's protocol objects were updated from
        # the run's own database, whose object ids differ).
        project = Manager().loadProject(self.proj.getName())
        simulation = project.getProtocol(self.protSim.getObjId())
        prot = project.newProtocol(ProtRelionExtractParticles, boxSize=BOX, doInvert=False,
                                   objLabel='relion extraction')
        prot.inputCoordinates.set(simulation)
        prot.inputCoordinates.setExtended('outputCoordinates')
        offered = project.getRelatedObjects(RELATION_CTF, prot.getInputMicrographs(),
                                            refresh=True)
        ctfSet = simulation.outputCTF
        self.assertEqual([pointer.get().getObjId() for pointer in offered],
                         [ctfSet.getObjId()])
        prot.ctfRelations.set(ctfSet)
        project.saveProtocol(prot)
        # The only errors are RELION's missing installation: the form (pointers, the CTF
        # relation, the box) and the protocol's own checks accept the simulated inputs.
        installation = prot.validateInstallation()
        self.assertIn('RELION_HOME', ' '.join(installation))
        self.assertEqual(prot.validate(), installation)

        os.makedirs(prot._getTmpPath(), exist_ok=True)
        prot.micDict, prot.coordDict = {}, {}
        micDict = prot._loadInputList()
        self.assertEqual(len(micDict), 2)
        prot._setupBasicProperties()
        mics = list(micDict.values())
        micsStar = prot._getPath('micrographs.star')
        createWriter(rootDir=prot.getWorkingDir(), outputDir=prot._getTmpPath(),
                     optics=OpticsGroups.fromImages(prot.getInputMicrographs())
                     ).writeSetOfMicrographs(mics, micsStar)
        micRows = readStar(micsStar)
        self.assertEqual(len(micRows), 2)
        truth = np.load(self.protSim._getFileName('micrographTruth'))
        simulated = [params.defocus_u for params in params_from_rows(truth['ctfs'])]
        np.testing.assert_allclose(sorted(float(row['_rlnDefocusU']) for row in micRows),
                                   sorted(simulated), atol=1e-5)
        coords = convert.coordinates_to_arrays(self.protSim.outputCoordinates)
        for mic in mics:
            prot._convertCoordinates(mic, prot.coordDict[mic.getObjId()])
            written = [(int(float(r['_rlnCoordinateX'])), int(float(r['_rlnCoordinateY'])))
                       for r in readStar(prot._getMicPos(mic))]
            np.testing.assert_array_equal(np.asarray(written, dtype=float),
                                          coords[mic.getObjId()])


class TestOriginsAndDisabledItems(CryoHessTestCase):
    """Maps made in an input map's frame keep its origin; disabled items are not read."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Importing a map with an origin"))
        folder = cls.proj.getTmpPath()
        model = random_protein_phantom(300, 18.0, rng=2, bfactor=100.0)
        mrc.write_volume(os.path.join(folder, 'map.mrc'),
                         gaussian_atom_volume(model, BOX, PIXEL), PIXEL)
        cls.protMap = cls.newProtocol(ProtImportVolumes, filesPath=folder,
                                      filesPattern='map.mrc', samplingRate=PIXEL,
                                      setOrigCoord=True, x=ORIGIN[0], y=ORIGIN[1],
                                      z=ORIGIN[2])
        cls.launchProtocol(cls.protMap)
        cls.origin = cls.protMap.outputVolume.getOrigin().getShifts()
        cls.protSim = cls.newProtocol(CryoHessProtSimulate, source=SOURCE_VOLUME, **SMALL)
        cls.protSim.inputVolume.set(cls.protMap.outputVolume)
        cls.launchProtocol(cls.protSim)
        cls.protAlign = cls.newProtocol(CryoHessProtAlignVolumes, numberOfThreads=1)
        cls.protAlign.inputVolumes.set(cls.protSim.outputVolume)
        cls.protAlign.referenceVolume.set(cls.protMap.outputVolume)
        cls.launchProtocol(cls.protAlign)

    def testImportedMapHasTheOrigin(self):
        self.assertFalse(np.allclose(self.origin, 0.0))

    def testSimulatedGroundTruthKeepsTheOrigin(self):
        np.testing.assert_allclose(self.protSim.outputVolume.getOrigin().getShifts(),
                                   self.origin)

    def testAlignedVolumesKeepTheReferenceOrigin(self):
        for volume in self.protAlign.outputVolumes:
            np.testing.assert_allclose(volume.getOrigin().getShifts(), self.origin)

    def testVolumeViewerReadsTheRankMetrics(self):
        """The rank metrics are a step of the run; the viewer plots them without aligning."""
        sweep = VolumeRankSweep.load(self.protAlign._getFileName('rankMetrics'))
        self.assertEqual(sweep.volumes, 1)
        self.assertAlmostEqual(sweep.correlation[-1], 1.0)
        with mock.patch.object(VolumeAligner, 'landscape', side_effect=AssertionError(
                "the viewer computed landscapes")):
            self.assertViewerPlots(CryoHessAlignVolumesViewer, self.protAlign)

    def _withDisabled(self, disabled):
        """A copy of the simulated particles in which the given ids are disabled."""
        path = self.proj.getTmpPath('particles_%s.sqlite' % '_'.join(map(str, disabled)))
        if os.path.exists(path):
            os.remove(path)
        source = self.protSim.outputParticles
        copy = SetOfParticles(filename=path)
        copy.copyInfo(source)
        for particle in source:
            particle.setEnabled(particle.getObjId() not in disabled)
            copy.append(particle)
        copy.write()
        return copy

    def testDisabledParticlesAreNotRead(self):
        disabled = (2, 5, 6)
        particles = self._withDisabled(disabled)
        self.assertEqual(particles.getSize(), SMALL['numberOfParticles'])
        self.assertEqual(convert.enabled_count(particles),
                         SMALL['numberOfParticles'] - len(disabled))
        arrays = convert.particles_to_arrays(particles, need_ctf=True, need_alignment=True)
        expected = [i for i in range(1, SMALL['numberOfParticles'] + 1) if i not in disabled]
        np.testing.assert_array_equal(arrays.ids, expected)
        full = convert.particles_to_arrays(self.protSim.outputParticles)
        np.testing.assert_array_equal(arrays.images, full.images[np.asarray(expected) - 1])
        # Batches read the enabled particles only, in order.
        batch = convert.particles_to_arrays(particles, limit=4, skip=4)
        np.testing.assert_array_equal(batch.ids, expected[4:8])

    def testBatchesCountEnabledParticles(self):
        prot = self.newProtocol(CryoHessProtAlignParticles, particlesPerBatch=6)
        prot.inputParticles.set(self._withDisabled((1, 2, 3, 4)))
        self.assertEqual(prot._batches(), [(0, 6), (6, 6), (12, 4)])

