"""What the end-to-end Scipion tests share: a base class with the simulated inputs and
rendered viewer plots, and the bad-particle checks of protocols that take aligned particles."""
import os
import signal
import time

from pwem.objects import SetOfParticles
from pwem.protocols import ProtImportParticles
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.tests import BaseTest, setupTestProject

from cryohess_plugin.demo import savePlots
from cryohess_plugin.protocols import CryoHessProtAlignParticles, CryoHessProtSimulate


class CryoHessTestCase(BaseTest):
    """A headless Scipion project test with the cryohess launch and viewer helpers."""

    @classmethod
    def launchSimulation(cls, label, settings, **overrides):
        """Run ``CryoHessProtSimulate`` with ``settings`` updated by ``overrides``."""
        protocol = cls.newProtocol(CryoHessProtSimulate, **dict(settings, **overrides))
        protocol.setObjLabel(label)
        return cls.launchProtocol(protocol)

    @classmethod
    def newCoarseAlignment(cls, simulation, **options):
        """A particle alignment of ``simulation``'s particles against its volume on a
        coarse grid (15 degrees, shifts up to 1 px), with form ``options``."""
        protocol = cls.newProtocol(CryoHessProtAlignParticles, angularStep=15.0, maxShift=1.0,
                                   shiftStep=1.0, **options)
        protocol.inputParticles.set(simulation.outputParticles)
        protocol.inputVolume.set(simulation.outputVolume)
        return protocol

    def killWhenWritten(self, protocol, fileKey, timeout=120, **fileArgs):
        """Launch ``protocol`` and SIGKILL its process as soon as its file ``fileKey``
        (``_getFileName(fileKey, **fileArgs)``) exists; the run must be left unfinished."""
        self.proj.launchProtocol(protocol, wait=False)
        path = protocol._getFileName(fileKey, **fileArgs)  # its run folder is known now
        deadline = time.time() + timeout
        while not os.path.exists(path):
            self.assertLess(time.time(), deadline, "%s was never written" % path)
            time.sleep(0.02)
        running = getProtocolFromDb(self.proj.path, protocol.getDbPath(), protocol.getObjId())
        os.kill(running.getPid(), signal.SIGKILL)
        time.sleep(0.5)
        self.proj._updateProtocol(protocol)
        steps = protocol.loadSteps()
        self.assertLess(sum(step.isFinished() for step in steps), len(steps),
                        "the run was not interrupted")

    def assertViewerPlots(self, viewerClass, protocol, prefix=None):
        """Every plot of the viewer renders to a non-trivial PNG."""
        prefix = str(protocol.getObjId()) if prefix is None else prefix
        for path in savePlots(viewerClass, self.proj, protocol, self.proj.path, prefix):
            self.assertGreater(os.path.getsize(path), 1000, path)


class ParticleValidationMixin:
    """Bad particle input and the checks every such protocol makes, for a test case.

    ``setUpClass`` simulates ``PARTICLES`` particles and their volume from ``SIMULATION``
    (``small``), the same with a box 8 px larger (``large``) and at 3 Å/px
    (``coarse``), and imports the small images without poses or CTF
    (``unaligned``).  A test class sets ``SIMULATION`` and ``PIXEL`` and
    defines ``_errors(particles=None, **kwargs)``, the protocol's validate().
    """
    SIMULATION = None
    PIXEL = None
    #: Enough for every check to pass but the one a test provokes.
    PARTICLES = 6

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        common = dict(cls.SIMULATION, numberOfParticles=cls.PARTICLES, numberOfDefocusGroups=2)
        cls.small = cls.newProtocol(CryoHessProtSimulate, **common)
        cls.launchProtocol(cls.small)
        cls.large = cls.newProtocol(CryoHessProtSimulate,
                                    **dict(common, boxSize=common['boxSize'] + 8))
        cls.launchProtocol(cls.large)
        cls.coarse = cls.newProtocol(CryoHessProtSimulate, **dict(common, samplingRate=3.0))
        cls.launchProtocol(cls.coarse)
        cls.unaligned = cls.newProtocol(ProtImportParticles,
                                        filesPath=os.path.abspath(cls.small._getExtraPath()),
                                        filesPattern='particles.mrcs', samplingRate=cls.PIXEL)
        cls.launchProtocol(cls.unaligned)

    def assertError(self, fragment, errors):
        self.assertTrue(any(fragment in error for error in errors), errors)

    def testParticlesWithoutAlignment(self):
        errors = self._errors(particles=self.unaligned.outputParticles)
        self.assertError("no 3D alignment", errors)
        self.assertError("3D refinement", errors)
        self.assertError("radial-SVD align particles", errors)

    def testAlignedParticlesWithoutCtf(self):
        withoutCtf = SetOfParticles(filename=self.proj.getTmpPath('no_ctf_particles.sqlite'))
        withoutCtf.copyInfo(self.small.outputParticles)
        withoutCtf.setHasCTF(False)
        withoutCtf.copyItems(self.small.outputParticles)
        withoutCtf.write()
        errors = self._errors(particles=withoutCtf)
        self.assertEqual(len(errors), 1, errors)
        self.assertError("no CTF: estimate the CTF", errors)

    def testEmptySet(self):
        empty = SetOfParticles(filename=self.proj.getTmpPath('empty_particles.sqlite'))
        empty.setSamplingRate(self.PIXEL)
        empty.write()
        self.assertIn("The set of particles is empty.", self._errors(particles=empty))
