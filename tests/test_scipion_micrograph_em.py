"""CryoHessProtMicrographEM in a headless Scipion project: simulated micrographs → the
protocol → a map and picks that the RELION plugin's extraction writes out as they are (its
coordinate writer; the relion_preprocess binary is not installed); Continue after a stop;
the viewer; and the bad inputs its validation refuses.

Runs under pytest (``tests/conftest.py`` sets up Scipion) and under
``scipion3 tests cryohess_plugin.tests.test_scipion_micrograph_em``.
"""
import glob
import os
import signal
import time
import zipfile

import numpy as np
from pwem.objects import SetOfMicrographs
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.constants import PICK_SCORE, PLACEMENT_SEPARATED, SNR_ENERGY
from cryohess_plugin.core import mrc
from cryohess_plugin.protocols import CryoHessProtMicrographEM
from cryohess_plugin.viewers import CryoHessMicrographEMViewer

from .scipion_base import CryoHessTestCase

BOX = 24
PIXEL = 2.0
DIAMETER = 44.0  # Å: 11-px patches at 4 Å per working pixel (binning 2)
SIMULATION = dict(boxSize=BOX, samplingRate=PIXEL, numberOfParticles=4,
                  numberOfDefocusGroups=2, phantomAtoms=300, phantomRadius=14.0, snr=20.0,
                  doMicrographs=True, numberOfMicrographs=2, micrographSize=352,
                  micrographPlacement=PLACEMENT_SEPARATED, micrographDensity=0.4,
                  micrographSnr=SNR_ENERGY, randomSeed=2, numberOfThreads=1)
EM = dict(particleDiameter=DIAMETER, rotationResolution=15, degreeSchedule='2 4',
          stageIterations='3 3', batchFraction=0.5, heldOutPatches=60, numberOfStarts=2,
          micrographsPerStep=1, numberOfThreads=1)


class TestCryoHessMicrographEM(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.protSim = cls.launchSimulation('simulate separated micrographs', SIMULATION)
        cls.protEM = cls._launchEM('micrograph EM',
                                   referenceCoordinates=cls.protSim.outputCoordinates)

    @classmethod
    def _launchEM(cls, label, **overrides):
        protocol = cls._newEM(**overrides)
        protocol.setObjLabel(label)
        return cls.launchProtocol(protocol)

    @classmethod
    def _newEM(cls, micrographs=None, ctf=True, referenceCoordinates=None, **overrides):
        protocol = cls.newProtocol(CryoHessProtMicrographEM, **dict(EM, **overrides))
        if referenceCoordinates is not None:
            protocol.referenceCoordinates.set(referenceCoordinates)
        protocol.inputMicrographs.set(micrographs or cls.protSim.outputMicrographs)
        if ctf:
            protocol.ctfRelations.set(cls.protSim.outputCTF)
        return protocol

    def testVolumes(self):
        volume = self.protEM.outputVolume
        self.assertAlmostEqual(volume.getSamplingRate(), 4.0)
        self.assertEqual(volume.getDimensions(), (11, 11, 11))
        full = self.protEM.outputVolumeFullSize
        self.assertEqual(full.getDimensions(), (22, 22, 22))
        self.assertAlmostEqual(full.getSamplingRate(), PIXEL)
        data, _ = mrc.read_volume(full.getFileName())
        working, _ = mrc.read_volume(volume.getFileName())
        # The full-size map is the working map on a finer grid: same mean voxel value.
        self.assertAlmostEqual(float(data.mean()), float(working.mean()), delta=1e-3 * abs(
            working).max())
        with open(self.protEM._getFileName('chimerax')) as script:
            self.assertTrue(script.read().startswith("open volume.mrc\nvolume #1 style surface"))
        summary = "\n".join(self.protEM.summary())
        self.assertIn("Patches of 11 px at 4 Å/px (micrographs binned by 2)", summary)

    def testCoordinatesFeedExtraction(self):
        coordinates = self.protEM.outputCoordinates
        self.assertGreater(coordinates.getSize(), 0)
        self.assertEqual(coordinates.getBoxSize(), 22)
        micrographs = {mic.getObjId(): mic.clone()
                       for mic in self.protSim.outputMicrographs.iterItems()}
        # RELION's extraction writes the coordinates of each micrograph with this (its
        # binary, relion_preprocess, is not installed here; pwem's ProtExtractParticles is
        # an abstract base without an extractor).
        from relion.convert import writeMicCoordinates
        for micId, mic in micrographs.items():
            mine = [c.clone() for c in coordinates.iterItems() if c.getMicId() == micId]
            if not mine:
                continue
            path = self.proj.getTmpPath('mic%d_coords.star' % micId)
            writeMicCoordinates(mic, mine, path)
            with open(path) as star:
                rows = [line.split() for line in star if line.strip()[:1].isdigit()]
            self.assertEqual([(int(r[0]), int(r[1])) for r in rows],
                             [c.getPosition() for c in mine])
        # Every pick lies inside its micrograph, with a score in (0.5, 1].
        for coord in coordinates.iterItems():
            x, y = coord.getPosition()
            self.assertTrue(0 <= x < 352 and 0 <= y < 352)
            self.assertTrue(0.5 < float(getattr(coord, PICK_SCORE)) <= 1.0)

    def testRelionExtractionTakesTheCoordinatesAndCtfs(self):
        """RELION's extraction protocol takes our picks and the simulator's CTFs as they
        are: its input checks pass, pwem's loader pairs every pick with its micrograph and
        CTF, and the files it hands relion_preprocess hold our coordinates and defoci (the
        binary is not installed here: its command is captured, not run)."""
        from relion.protocols import ProtRelionExtractParticles
        coordinates = self.protEM.outputCoordinates
        prot = self.newProtocol(ProtRelionExtractParticles, boxSize=22, doInvert=False,
                                doNormalize=False)
        prot.inputCoordinates.set(coordinates)
        prot.ctfRelations.set(self.protSim.outputCTF)
        # The one complaint: RELION itself is not installed (its paths block follows).
        errors = prot.validate()
        installation = [e.startswith('Missing paths') for e in errors].index(True)
        self.assertEqual(errors[:installation], [])
        self.assertIn('RELION_HOME', errors[installation + 1])
        self.proj.saveProtocol(prot)
        prot.makePathsAndClean()
        prot._insertAllSteps()
        picked = convert.coordinates_to_arrays(coordinates)
        self.assertEqual(sorted(prot.coordDict), sorted(picked))
        commands = []
        prot.runJob = lambda program, args, **kwargs: commands.append((program, args))
        mics = list(prot.micDict.values())
        prot._extractMicrographList(mics, *prot._getExtractArgs())
        self.assertIn('relion_preprocess', commands[-1][0])  # (its MPI build, by default)
        self.assertIn('--extract_size 22', commands[-1][1])
        from emtable import Table
        defoci = {ctf.getMicrograph().getMicName(): ctf.getDefocusU()
                  for ctf in self.protSim.outputCTF.iterItems()}
        micTable = Table(fileName=prot._getPath(prot._getMicsStar(mics)), tableName='micrographs')
        self.assertEqual(len(micTable), len(mics))
        for row, mic in zip(micTable, mics):
            self.assertAlmostEqual(float(row.rlnDefocusU), defoci[mic.getMicName()], places=1)
            table = Table(fileName=prot._getMicPos(mic))
            xy = np.array([[float(r.rlnCoordinateX), float(r.rlnCoordinateY)] for r in table])
            np.testing.assert_array_equal(xy, picked[mic.getObjId()])

    def testPicksFindTheSimulatedParticles(self):
        truth = np.load(self.protSim._getFileName('micrographTruth'))
        found = convert.coordinates_to_arrays(self.protEM.outputCoordinates)
        distances = []
        for index, micId in enumerate(sorted(found)):
            true = truth['coordinates'][index][:truth['counts'][index]]
            distances += [np.min(np.hypot(*(true - p).T)) for p in found[micId]]
        # Each pick near a particle: within a third of the particle's box.
        self.assertGreater(np.mean(np.array(distances) <= BOX / 3), 0.7)

    def testConvergenceTable(self):
        with open(self.protEM._getFileName('convergence')) as table:
            lines = table.read().splitlines()
        self.assertTrue(lines[0].startswith("start iteration stage degree"))
        self.assertEqual({line.split()[0] for line in lines[1:]}, {'1', '2'})

    def testKilledRunContinuesFromItsLastIteration(self):
        """Killed during its start, Continue resumes from the saved iteration and ends as
        an uninterrupted run; Continue again re-runs nothing."""
        from cryohess_plugin.core.micrograph_em import EMState
        settings = dict(numberOfStarts=1, doPicking=False, stageIterations='4 4',
                        batchFraction=0.3)
        protocol = self._newEM(**settings)
        protocol.setObjLabel('micrograph EM, killed')
        self.proj.launchProtocol(protocol, wait=False)
        deadline = time.time() + 300
        state = None
        while state is None or state.iteration < 2:
            self.assertLess(time.time(), deadline, "the start never reached iteration 2")
            time.sleep(0.05)
            saved = glob.glob(protocol._getExtraPath('start_00_*.npz'))
            try:
                state = EMState.load(saved[0]) if saved else None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # caught mid-write
                state = None
        running = getProtocolFromDb(self.proj.path, protocol.getDbPath(), protocol.getObjId())
        os.kill(running.getPid(), signal.SIGKILL)
        time.sleep(0.5)
        self.proj._updateProtocol(protocol)
        self.assertFalse(protocol.isFinished())
        protocol.runMode.set(MODE_RESUME)
        self.launchProtocol(protocol)
        with open(protocol.getLogPaths()[0]) as log:
            self.assertIn("Start 1 continues from iteration", log.read())
        fresh = self._launchEM('micrograph EM, uninterrupted', **settings)
        resumed = EMState.load(protocol._getFileName('start', start=0))
        whole = EMState.load(fresh._getFileName('start', start=0))
        self.assertEqual(resumed.iteration, whole.iteration)
        np.testing.assert_allclose(resumed.coefficients, whole.coefficients, rtol=1e-5,
                                   atol=1e-6 * np.abs(whole.coefficients).max())
        ended = [step.endTime.get() for step in protocol.loadSteps()]
        protocol.runMode.set(MODE_RESUME)
        self.launchProtocol(protocol)
        self.assertEqual([step.endTime.get() for step in protocol.loadSteps()], ended)

    def testViewerPlots(self):
        self.assertViewerPlots(CryoHessMicrographEMViewer, self.protEM)
        viewer = CryoHessMicrographEMViewer(project=self.proj, protocol=self.protEM)
        self.assertIn('displayPickingCurves', viewer._getVisualizeDict())

    def testPickingCurvesAgainstTheSimulatedCoordinates(self):
        """The run given the simulator's coordinates writes the picking curves: the SNR
        falls from the data's, and the picks beat chance at the data's SNR."""
        from cryohess_plugin.core.micrograph_em import PickingCurves
        curves = PickingCurves.load(self.protEM._getFileName('pickingCurves'))
        self.assertTrue(np.all(np.diff(curves.snr) < 0))
        self.assertGreater(curves.shift_accuracy[0], curves.shift_accuracy[-1])
        self.assertGreater(curves.f1_nonempty[0], 0.6)

    # --------------------------- bad input -----------------------------------
    def _errors(self, **kwargs):
        return self._newEM(**kwargs).validate()

    def assertError(self, fragment, errors):
        self.assertTrue(any(fragment in error for error in errors), errors)

    def _copyMicrographs(self, name, change):
        """A copy of the simulated micrographs with ``change(mic, index)`` applied."""
        micrographs = SetOfMicrographs(filename=self.proj.getTmpPath(name + '.sqlite'))
        micrographs.copyInfo(self.protSim.outputMicrographs)
        for index, mic in enumerate(self.protSim.outputMicrographs.iterItems(orderBy='id')):
            copy = mic.clone()
            change(copy, index)
            micrographs.append(copy)
        micrographs.write()
        return micrographs

    def testValidInput(self):
        self.assertEqual(self._errors(), [])

    def _rewritten(self, name, change):
        """The first micrograph written anew as ``name`` with ``change(data)`` applied
        and 3 Å/px in its header when ``name`` says so."""
        import mrcfile
        data = mrc.read_stack(self.protSim._getFileName('micrograph', index=0))[0]
        path = self.proj.getTmpPath(name)
        with mrcfile.new(path, overwrite=True) as out:
            out.set_data(change(data.copy()))
            out.voxel_size = 3.0 if 'coarse' in name else PIXEL
        return path

    def _withFirstMicrograph(self, path, label):
        def replace(mic, index):
            if index == 0:
                mic.setLocation(path)
        return self._copyMicrographs(label, replace)

    def testDifferentPixelSizes(self):
        path = self._rewritten('coarse.mrc', lambda data: data)
        errors = self._errors(micrographs=self._withFirstMicrograph(path, 'mixed_pixels'))
        self.assertError("has 3 Å/px in its file but the set 2 Å/px", errors)

    def testParticleLargerThanAMicrograph(self):
        errors = self._errors(particleDiameter=1000.0, workingResolution=200.0)
        self.assertError("is larger than micrograph", errors)

    def testMissingCtf(self):
        errors = self._errors(ctf=False)
        self.assertError("no CTF estimation is selected", errors)
        self.assertEqual(self._errors(ctf=False, useCtf=False), [])

    def testDiameterGivingTooSmallPatches(self):
        errors = self._errors(workingResolution=20.0)
        self.assertError("the method needs at least 7 px", errors)

    def testNanInAMicrograph(self):
        def broken(data):
            data[10, 10] = np.nan
            return data
        path = self._rewritten('broken.mrc', broken)
        errors = self._errors(micrographs=self._withFirstMicrograph(path, 'with_nan'))
        self.assertError("has 1 NaN or infinite pixels", errors)
