"""The hyper-molecule protocol and its viewer in a headless Scipion project.

Simulated particles (32 px) of the phantom with a hinged domain (every particle at its own
conformation t, the simulator's ``_cryohess_conformation``), two chains as parallel steps;
Continue with nothing changed re-runs nothing; bad input is refused by _validate.
"""
import os

import mrcfile
import numpy as np
from pwem.protocols import ProtImportMask
from pyworkflow.object import Pointer
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.constants import (CONFORMATION, HETEROGENEITY_RIGID_REGION, HYPER_TAU,
                                       HYPER_TAU_MEAN, HYPER_TAU_STD)
from cryohess_plugin.core.hypermolecules import rank_correlation
from cryohess_plugin.protocols import CryoHessProtHyperMolecule
from cryohess_plugin.viewers import CryoHessHyperMoleculeViewer
from .scipion_base import CryoHessTestCase, ParticleValidationMixin

BOX, PIXEL = 32, 3.0
SIMULATION = dict(boxSize=BOX, samplingRate=PIXEL, numberOfParticles=800,
                  numberOfDefocusGroups=4, phantomAtoms=400, phantomRadius=30.0, snr=1.0,
                  heterogeneity=HETEROGENEITY_RIGID_REGION, domainFraction=0.35, hingeAngle=45.0,
                  randomSeed=3, numberOfThreads=1)
RUN = dict(stateDimension=1, stateOrder=2, chains=2, sweeps=40, burnIn=25, mapCount=5,
           numberOfThreads=2)


class TestHyperMolecule(CryoHessTestCase):
    """Two chains on a continuously moving domain; outputs, viewer and Continue."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation('hinged domain', SIMULATION)
        cls.hyper = cls.newProtocol(CryoHessProtHyperMolecule, **RUN)
        cls.hyper.inputParticles.set(cls.simulation.outputParticles)
        cls.hyper.setObjLabel('hyper-molecule')
        cls.launchProtocol(cls.hyper)

    def testOutputs(self):
        volumes = self.hyper.outputVolumes
        self.assertEqual(volumes.getSize(), RUN['mapCount'])
        self.assertEqual(self.hyper.outputSpread.getSize(), RUN['mapCount'])
        taus = sorted(np.atleast_1d(convert.read_column(v, HYPER_TAU))[0] for v in volumes)
        self.assertAlmostEqual(taus[0], 0.0)
        self.assertAlmostEqual(taus[-1], 1.0)
        first = volumes.getFirstItem()
        with mrcfile.open(convert.image_file(first.getFileName())) as handle:
            self.assertEqual(handle.data.shape, (BOX,) * 3)
            self.assertTrue(np.isfinite(handle.data).all())
        columns = [(np.atleast_1d(convert.read_column(p, HYPER_TAU_MEAN))[0],
                    np.atleast_1d(convert.read_column(p, HYPER_TAU_STD))[0],
                    convert.read_column(p, CONFORMATION))
                   for p in self.hyper.outputParticles.iterItems(orderBy='id')]
        self.assertEqual(len(columns), SIMULATION['numberOfParticles'])
        mean, spread, truth = np.array(columns).T
        self.assertTrue(np.all((mean >= 0) & (mean <= 1)) and np.all(spread > 0))
        self.assertGreater(abs(rank_correlation(mean, truth)), 0.6)
        self.assertTrue(os.path.exists(self.hyper._getFileName('morph', series=0)))

    def testViewer(self):
        self.assertViewerPlots(CryoHessHyperMoleculeViewer, self.hyper)

    def testContinueWithoutChangesRunsNothing(self):
        before = [step.endTime.get() for step in self.hyper.loadSteps()]
        self.hyper.runMode.set(MODE_RESUME)
        self.launchProtocol(self.hyper)
        self.assertEqual([step.endTime.get() for step in self.hyper.loadSteps()], before)


class TestHyperMoleculeValidation(ParticleValidationMixin, CryoHessTestCase):
    """Bad input is refused by _validate with a message naming the fix."""
    SIMULATION = SIMULATION
    PARTICLES = 50  # the fewest one state-basis map needs
    PIXEL = PIXEL

    def _errors(self, particles=None, masks=(), **kwargs):
        protocol = self.newProtocol(CryoHessProtHyperMolecule, **dict(dict(stateOrder=1), **kwargs))
        protocol.inputParticles.set(self.small.outputParticles if particles is None
                                    else particles)
        for mask in masks:
            protocol.componentMasks.append(Pointer(mask))
        return protocol.validate()

    def _mask(self, box):
        path = self.proj.getTmpPath('mask_%d.mrc' % box)
        with mrcfile.new(path, overwrite=True) as handle:
            handle.set_data(np.ones((box,) * 3, dtype=np.float32))
            handle.voxel_size = PIXEL
        protocol = self.newProtocol(ProtImportMask, maskPath=path, samplingRate=PIXEL)
        self.launchProtocol(protocol)
        return protocol.outputMask

    def testStateDimensionAboveThree(self):
        self.assertError("state dimension must be 1, 2 or 3", self._errors(stateDimension=4))

    def testOrderTheDataCannotSupport(self):
        self.assertError("cannot support a state basis of order 3", self._errors(stateOrder=3))

    def testMaskOfAnotherBox(self):
        errors = self._errors(masks=[self._mask(BOX + 8)], stateOrder=1)
        self.assertError("resize the mask to %d px" % BOX, errors)

    def testBurnInLongerThanTheRun(self):
        self.assertError("burn-in", self._errors(stateOrder=1, sweeps=10, burnIn=10))
