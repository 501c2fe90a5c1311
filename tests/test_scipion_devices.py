"""Where protocol steps run: on a CPU-only machine 'Use GPU' warns once, no step waits for a
GPU, the batch steps of a run with several threads run at the same time, and every step
says in the run log where it ran; GPU ids are checked before anything runs."""
import re

from pyworkflow.tests import setupTestProject

from cryohess_plugin.core.kernels import cuda_available
from .scipion_base import CryoHessTestCase


class TestStepsOnCpuOnlyMachine(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation(
            'particles', dict(boxSize=32, samplingRate=2.5, numberOfParticles=48,
                              numberOfDefocusGroups=2, phantomAtoms=300, phantomRadius=30.0,
                              snr=10.0, randomSeed=3, numberOfThreads=1))
        cls.alignment = cls._newAlignment(useGpu=True, numberOfThreads=3)
        cls.launchProtocol(cls.alignment)

    @classmethod
    def _newAlignment(cls, **options):
        return cls.newCoarseAlignment(cls.simulation, particlesPerBatch=12, **options)

    def setUp(self):
        if cuda_available():
            self.skipTest("this test describes a machine without a CUDA device")

    def testUseGpuWarnsOnce(self):
        gpuWarnings = [w for w in self.alignment.warnings() if "Use GPU" in w]
        self.assertEqual(len(gpuWarnings), 1, self.alignment.warnings())
        self.assertIn("scipion-em-cryohess[gpu]", gpuWarnings[0])
        self.assertFalse(any("Use GPU" in w
                             for w in self._newAlignment(useGpu=False).warnings()))

    def testNoStepWaitsForGpu(self):
        self.assertFalse(any(step.needsGPU() for step in self.alignment.loadSteps()))

    def testBatchStepsRunConcurrently(self):
        batches = [step for step in self.alignment.loadSteps()
                   if step.funcName.get() == 'alignBatchStep']
        self.assertEqual(len(batches), 4)
        spans = sorted((step.initTime.datetime(), step.endTime.datetime()) for step in batches)
        overlapping = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
        self.assertGreaterEqual(overlapping, 1, spans)

    def testRunLogSaysWhereStepsRan(self):
        with open(self.alignment.getStdoutLog()) as log:
            lines = re.findall(r"runs on the CPU with (\d+) thread", log.read())
        self.assertGreaterEqual(len(lines), 4)
        self.assertTrue(all(int(threads) >= 1 for threads in lines))

    def testGpuIdsAreChecked(self):
        for gpuList in ('one', '-1'):
            errors = self._newAlignment(useGpu=True, gpuList=gpuList).validate()
            self.assertTrue(any("GPU IDs" in error for error in errors), errors)
        self.assertFalse(any("GPU IDs" in error
                             for error in self._newAlignment(useGpu=True, gpuList='0 1')
                             .validate()))
