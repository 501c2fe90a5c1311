"""A run killed (SIGKILL) in the middle and continued from Scipion gives the results of an
uninterrupted run, and does not redo the steps that had finished (the alignment's case is in
test_scipion_continue.py, micrograph EM's in test_scipion_micrograph_em.py)."""
import numpy as np
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.constants import LOG_LIKELIHOOD, SOFT_MODE_EIGENVALUE
from cryohess_plugin.protocols import CryoHessProtFourierPosterior, CryoHessProtSoftModes
from .scipion_base import CryoHessTestCase

SIMULATION = dict(boxSize=32, samplingRate=2.5, numberOfParticles=160, numberOfDefocusGroups=2,
                  phantomAtoms=300, phantomRadius=25.0, snr=1.0, randomSeed=6,
                  numberOfThreads=1)
POSTERIOR = dict(doHalfMaps=True, numberOfSamples=4, particlesPerBatch=80, numberOfThreads=1)
SOFT_MODES = dict(maxResolution=25.0, numberOfModes=4, maxProducts=400, numberOfThreads=1)


class TestKilledRunsContinue(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation('particles', SIMULATION)

    def _posterior(self):
        protocol = self.newProtocol(CryoHessProtFourierPosterior, **POSTERIOR)
        protocol.inputParticles.set(self.simulation.outputParticles)
        return protocol

    def _finished(self, protocol):
        return {index: step.endTime.get() for index, step in enumerate(protocol.loadSteps())
                if step.isFinished()}

    def _reloaded(self, protocol):
        return getProtocolFromDb(self.proj.path, protocol.getDbPath(), protocol.getObjId())

    def testPosteriorKilledAfterItsFirstFit(self):
        killed = self._posterior()
        self.killWhenWritten(killed, 'posterior', part='full')
        finished = self._finished(killed)
        killed.runMode.set(MODE_RESUME)
        self.launchProtocol(killed)
        uninterrupted = self.launchProtocol(self._posterior())
        ends = self._finished(killed)
        self.assertEqual({index: ends[index] for index in finished}, finished)
        killed, uninterrupted = self._reloaded(killed), self._reloaded(uninterrupted)
        for output in ('outputVolume', 'outputUncertainty'):
            ours, _ = convert.volume_to_array(getattr(killed, output))
            theirs, _ = convert.volume_to_array(getattr(uninterrupted, output))
            np.testing.assert_array_equal(ours, theirs)
        likelihoods = [convert.particles_to_arrays(run.outputParticles, read_images=False,
                                                   need_alignment=False,
                                                   columns=(LOG_LIKELIHOOD,))
                       .columns[LOG_LIKELIHOOD] for run in (killed, uninterrupted)]
        np.testing.assert_array_equal(*likelihoods)

    def _softModes(self):
        protocol = self.newProtocol(CryoHessProtSoftModes, **SOFT_MODES)
        protocol.inputParticles.set(self.simulation.outputParticles)
        protocol.inputVolume.set(self.simulation.outputVolume)
        return protocol

    def testSoftModesKilledAfterTheNoiseEstimate(self):
        killed = self._softModes()
        self.killWhenWritten(killed, 'noise')
        finished = self._finished(killed)
        killed.runMode.set(MODE_RESUME)
        self.launchProtocol(killed)
        uninterrupted = self.launchProtocol(self._softModes())
        ends = self._finished(killed)
        self.assertEqual({index: ends[index] for index in finished}, finished)
        killed, uninterrupted = self._reloaded(killed), self._reloaded(uninterrupted)
        eigenvalues = [[convert.read_column(mode, SOFT_MODE_EIGENVALUE)
                        for mode in run.outputModes.iterItems(orderBy='id')]
                       for run in (killed, uninterrupted)]
        np.testing.assert_array_equal(*eigenvalues)
        ours, _ = convert.volume_to_array(killed.outputSensitivity)
        theirs, _ = convert.volume_to_array(uninterrupted.outputSensitivity)
        np.testing.assert_array_equal(ours, theirs)
