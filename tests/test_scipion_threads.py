"""CPU threads of the steps: the form's threads are shared by the steps that can really run
at once (each of k concurrent steps gets T // k for its numba kernels, FFTs and BLAS), so
on a CPU-only machine a run with 'Use GPU' on warns once and still uses both cores: two
threads in one step at a time, or one thread in each of two batch steps that run at the
same time (their start and end times overlap)."""
import json
import os
import re

from pyworkflow.tests import setupTestProject

from cryohess_plugin.core.kernels import cuda_available
from cryohess_plugin.protocols import CryoHessProtFourierPosterior
from .scipion_base import CryoHessTestCase

SIMULATION = dict(boxSize=32, samplingRate=2.5, numberOfParticles=40, numberOfDefocusGroups=2,
                  phantomAtoms=300, phantomRadius=30.0, snr=10.0, randomSeed=13,
                  numberOfThreads=1)


class TestStepThreads(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation('particles', SIMULATION)
        # One step at a time with both threads: numba may use two (the tests' default is one).
        numbaThreads = os.environ.get('NUMBA_NUM_THREADS')
        os.environ['NUMBA_NUM_THREADS'] = '2'
        try:
            cls.twoThreads = cls.launchProtocol(cls._alignment(numberOfThreads=2))
        finally:
            if numbaThreads is None:
                del os.environ['NUMBA_NUM_THREADS']
            else:
                os.environ['NUMBA_NUM_THREADS'] = numbaThreads
        cls.twoSteps = cls.launchProtocol(cls._alignment(numberOfThreads=3))

    @classmethod
    def _alignment(cls, particlesPerBatch=20, **options):
        return cls.newCoarseAlignment(cls.simulation, particlesPerBatch=particlesPerBatch,
                                      localRefinement=False, useGpu=True, **options)

    def setUp(self):
        if cuda_available():
            self.skipTest("this test describes a machine without a CUDA device")

    def loggedThreads(self, protocol):
        with open(protocol.getStdoutLog()) as log:
            return [int(threads)
                    for threads in re.findall(r"runs on the CPU with (\d+) thread", log.read())]

    def testThreadsPerStepFollowTheConcurrentSteps(self):
        # 40 particles: 2 batches of 20 or 4 of 10; Scipion runs threads - 1 steps at once.
        for threads, perBatch, concurrent, perStep in [(1, 20, 1, 1), (2, 20, 1, 2),
                                                       (3, 20, 2, 1), (3, 40, 1, 3),
                                                       (5, 20, 2, 2), (5, 10, 4, 1),
                                                       (9, 10, 4, 2)]:
            protocol = self._alignment(perBatch, numberOfThreads=threads)
            self.assertEqual(protocol._concurrentSteps(), concurrent, (threads, perBatch))
            self.assertEqual(protocol._stepThreads(), perStep, (threads, perBatch))
        posterior = self.newProtocol(CryoHessProtFourierPosterior, doHalfMaps=True,
                                     numberOfThreads=7)
        posterior.inputParticles.set(self.simulation.outputParticles)
        self.assertEqual((posterior._concurrentSteps(), posterior._stepThreads()), (3, 2))
        posterior.doHalfMaps.set(False)
        self.assertEqual((posterior._concurrentSteps(), posterior._stepThreads()), (1, 7))

    def testUseGpuWarnsOnceAndBothThreadsCompute(self):
        warnings = [w for w in self.twoThreads.warnings() if "Use GPU" in w]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertFalse(any(step.needsGPU() for step in self.twoThreads.loadSteps()))
        threads = self.loggedThreads(self.twoThreads)
        self.assertGreaterEqual(len(threads), 4)  # references, polarity, two batches
        self.assertEqual(set(threads), {2})
        for index in range(2):
            with open(self.twoThreads._getExtraPath('jobs', 'alignment_batch_%03d.json'
                                                    % index)) as jobFile:
                self.assertEqual(json.load(jobFile)['threads'], 2)

    def testTwoBatchStepsComputeAtOnce(self):
        self.assertEqual(set(self.loggedThreads(self.twoSteps)), {1})
        batches = [step for step in self.twoSteps.loadSteps()
                   if step.funcName.get() == 'alignBatchStep']
        self.assertEqual(len(batches), 2)
        (start1, end1), (start2, end2) = sorted((step.initTime.datetime(),
                                                 step.endTime.datetime()) for step in batches)
        self.assertLess(start2, end1, "the two batch steps ran one after the other")
