"""Continue after an edit of the form, or after a kill, gives what a fresh run gives.

Every case compares the poses and scores of each particle with those of a fresh run
with the final settings (same batches, so the same arithmetic: bit for bit), and
checks which steps ran again from the steps' end times.
"""

import numpy as np
from pwem.constants import ALIGN_PROJ
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import ALIGN_SCORE, ALIGN_TEMPLATE
from cryohess_plugin.protocols import CryoHessProtAlignParticles
from .scipion_base import CryoHessTestCase

SIMULATION = dict(boxSize=32, samplingRate=2.5, numberOfDefocusGroups=3, phantomAtoms=300,
                  phantomRadius=25.0, snr=10.0, shiftSigma=1.0, numberOfThreads=1)
#: The settings every alignment starts from; a case edits some of them (the local
#: refinement is switched on by the case that tests it). The steps counted here are the
#: search and refinement ones: no rank diagnostics (tests/test_alignment_diagnostics.py).
SETTINGS = dict(angularStep=15.0, maxShift=2.0, shiftStep=1.0, particlesPerBatch=20,
                localRefinement=False, diagnosticParticles=0, numberOfThreads=1)
#: Seconds a killed run may take to write its second batch.
KILL_TIMEOUT = 120


class TestAlignParticlesContinue(CryoHessTestCase):
    """Edits and kills of a finished or running alignment, then Continue."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Editing and killing alignments, then continuing them"))
        cls.simulation = cls.launchSimulation('particles', SIMULATION, numberOfParticles=80,
                                              randomSeed=3)
        cls.otherMap = cls.launchSimulation('other map', SIMULATION, numberOfParticles=4,
                                            randomSeed=9)
        cls.freshRuns = {}

    def _alignment(self, **overrides):
        settings = dict(SETTINGS, **overrides)
        volume = settings.pop('volume', self.simulation.outputVolume)
        prot = self.newProtocol(CryoHessProtAlignParticles, **settings)
        prot.inputParticles.set(self.simulation.outputParticles)
        prot.inputVolume.set(volume)
        return prot

    def _fresh(self, **overrides):
        """A finished run with these settings, run once for all the tests that need it."""
        key = tuple(sorted((name, getattr(value, 'getObjId', lambda: value)())
                           for name, value in overrides.items()))
        if key not in self.freshRuns:
            self.freshRuns[key] = self.launchProtocol(self._alignment(**overrides))
        return self.freshRuns[key]

    def _continue(self, prot, **edits):
        for name, value in edits.items():
            getattr(prot, name).set(value)
        self.assertEqual(prot.validate(), [])
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)

    @staticmethod
    def _endTimes(prot):
        return [step.endTime.get() for step in prot.loadSteps()]

    def _output(self, prot):
        """Poses and columns of the output as the run left it on disk (a protocol object
        of the test keeps the output set it read first)."""
        run = getProtocolFromDb(self.proj.path, prot.getDbPath(), prot.getObjId())
        return convert.particles_to_arrays(run.outputParticles, read_images=False,
                                           need_alignment=ALIGN_PROJ,
                                           columns=(ALIGN_SCORE, ALIGN_TEMPLATE))

    def assertSameOutput(self, prot, fresh):
        """The same template, rotation, shift and score for every particle."""
        ours, theirs = self._output(prot), self._output(fresh)
        np.testing.assert_array_equal(ours.ids, theirs.ids)
        np.testing.assert_array_equal(ours.rotations, theirs.rotations)
        np.testing.assert_array_equal(ours.shifts, theirs.shifts)
        for column in (ALIGN_SCORE, ALIGN_TEMPLATE):
            np.testing.assert_array_equal(ours.columns[column], theirs.columns[column])

    def _killAfterTwoBatches(self, prot):
        """Launch ``prot``, SIGKILL its process once its second batch is written."""
        self.killWhenWritten(prot, 'batch', KILL_TIMEOUT, index=1)

    def testEditsThenContinue(self):
        """(e) no edit re-runs nothing; (a) a coarser angular step, (b) another reference map,
        (c) another batch size each give what a fresh run with the new settings gives."""
        prot = self._alignment(angularStep=7.5)
        self.launchProtocol(prot)
        before = self._endTimes(prot)
        self._continue(prot)
        self.assertEqual(self._endTimes(prot), before)

        self._continue(prot, angularStep=15.0)
        self.assertSameOutput(prot, self._fresh())
        self.assertTrue(all(a != b for a, b in zip(self._endTimes(prot), before)))
        self.assertIn("15-degree", " ".join(prot.methods()))

        self._continue(prot, inputVolume=self.otherMap.outputVolume)
        self.assertSameOutput(prot, self._fresh(volume=self.otherMap.outputVolume))

        references = self._endTimes(prot)[0]
        self._continue(prot, particlesPerBatch=30)
        self.assertSameOutput(prot, self._fresh(volume=self.otherMap.outputVolume,
                                                particlesPerBatch=30))
        # The references did not depend on the batch size and were kept.
        self.assertEqual(self._endTimes(prot)[0], references)
        # References, polarity check, three batches, output.
        self.assertEqual(len(prot.loadSteps()), 1 + 1 + 3 + 1)

    def testKillEditContinue(self):
        """(d) killed after two batches, max shift 3 -> 0 px: every batch searches 0 px."""
        prot = self._alignment(maxShift=3.0)
        self._killAfterTwoBatches(prot)
        self._continue(prot, maxShift=0.0)
        self.assertSameOutput(prot, self._fresh(maxShift=0.0))
        self.assertFalse(np.any(self._output(prot).shifts))

    def testKillContinue(self):
        """(f) killed mid-batch and continued: the output of an uninterrupted run."""
        prot = self._alignment()
        self._killAfterTwoBatches(prot)
        finished = {i: step.endTime.get() for i, step in enumerate(prot.loadSteps())
                    if step.isFinished()}
        self._continue(prot)
        self.assertSameOutput(prot, self._fresh())
        # The steps finished before the kill were not run again.
        ends = self._endTimes(prot)
        self.assertEqual({i: ends[i] for i in finished}, finished)

    def testRefinementSwitchedOnEditedOff(self):
        """(g) local refinement switched on re-runs only the refinement steps and the output,
        fewer iterations only those again, switched off only the output; each time the
        output of a fresh run, and the searches are never repeated."""
        prot = self._alignment()
        self.launchProtocol(prot)
        searchSteps = 2 + len(prot._batches())
        searched = self._endTimes(prot)[:searchSteps]

        self._continue(prot, localRefinement=True)
        refined = self._endTimes(prot)
        self.assertEqual(refined[:searchSteps], searched)
        self.assertEqual(len(refined), searchSteps + len(prot._batches()) + 1)
        self.assertSameOutput(prot, self._fresh(localRefinement=True))
        # Shifts off the search's lattice.
        self.assertTrue(np.any(self._output(prot).shifts % 1.0))
        self.assertIn("refined locally", " ".join(prot.summary()))
        self.assertIn("Gauss-Newton", " ".join(prot.methods()))

        self._continue(prot, refineIterations=4)
        ends = self._endTimes(prot)
        self.assertEqual(ends[:searchSteps], searched)
        self.assertTrue(all(a != b for a, b in zip(ends[searchSteps:], refined[searchSteps:])))
        self.assertSameOutput(prot, self._fresh(localRefinement=True, refineIterations=4))

        self._continue(prot, localRefinement=False)
        ends = self._endTimes(prot)
        self.assertEqual(ends[:searchSteps], searched)
        self.assertEqual(len(ends), searchSteps + 1)
        self.assertSameOutput(prot, self._fresh())
        self.assertNotIn("refined locally", " ".join(prot.summary()))
