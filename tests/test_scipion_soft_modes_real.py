"""The soft-mode protocol on particles as a Scipion project gets them from RELION.

The simulator's particles are written as a RELION 3.1 star file (white particles, RELION's
CTF columns; tests/relion_star.py) and imported with pwem's ProtImportParticles through
scipion-em-relion.  The imported set gives the soft-mode spectrum of the simulator's own set;
the map times 3 gives the same ε/‖F‖ and sensitivity map (the fitted map scale,
docs/methods/hessian_soft_modes.md §2.3); dark particles, a map the particles do not show
and CTFs with defocus 0 or NaN stop the run with the fix and write no output.
"""
import os
from types import SimpleNamespace

import numpy as np
from pwem.protocols import ProtImportVolumes
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.core import mrc
from cryohess_plugin.protocols import CryoHessProtSoftModes

from .relion_star import import_relion, write_relion_star
from .scipion_base import CryoHessTestCase
from .scipion_data import ANALYSIS, SIMULATION, eigenvalues
from .scipion_data import SIMULATION_PIXEL as PIXEL


def simulationOf(particles):
    """What tests/relion_star.py writes, read back from a set of particles."""
    arrays = convert.particles_to_arrays(particles, need_ctf=True, need_alignment=True)
    defocus = [params.defocus_u for params in arrays.ctfs]
    return SimpleNamespace(images=arrays.images, pixel_size=arrays.pixel_size,
                           rotations=arrays.rotations, shifts=arrays.shifts,
                           ctf_params=arrays.ctfs,
                           group_ids=np.unique(defocus, return_inverse=True)[1])


class TestSoftModesOnImportedParticles(CryoHessTestCase):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Soft modes of particles imported from RELION"))
        cls.simulation = cls.launchSimulation('uniform views', SIMULATION)
        cls.arrays = simulationOf(cls.simulation.outputParticles)
        folder = cls.proj.getTmpPath()
        star = write_relion_star(folder, cls.arrays)
        cls.relion = import_relion(cls, star, PIXEL).outputParticles
        darkStar = write_relion_star(folder, cls.arrays, name="dark", images=-cls.arrays.images)
        cls.dark = import_relion(cls, darkStar, PIXEL).outputParticles
        cls.native = cls._softModes('soft modes - simulated set', cls.simulation.outputParticles,
                                    cls.simulation.outputVolume)
        cls.imported = cls._softModes('soft modes - RELION import', cls.relion,
                                      cls.simulation.outputVolume)
        reference, _ = convert.volume_to_array(cls.simulation.outputVolume)
        cls.tripled = cls._softModes('soft modes - map x 3', cls.relion,
                                     cls._importVolume('tripled.mrc', 3 * reference))
        noise = np.random.default_rng(24).standard_normal(reference.shape).astype(np.float32)
        cls.unrelated = cls._importVolume('unrelated.mrc', noise)

    @classmethod
    def _importVolume(cls, name, array):
        path = cls.proj.getTmpPath(name)
        mrc.write_volume(path, array, PIXEL, overwrite=True)
        protocol = cls.newProtocol(ProtImportVolumes, filesPath=path, samplingRate=PIXEL)
        protocol.setObjLabel('import %s' % name)
        return cls.launchProtocol(protocol).outputVolume

    @classmethod
    def _softModes(cls, label, particles, volume, launch=True):
        protocol = cls.newProtocol(CryoHessProtSoftModes, **ANALYSIS)
        protocol.inputParticles.set(particles)
        protocol.inputVolume.set(volume)
        protocol.setObjLabel(label)
        if launch:
            return cls.launchProtocol(protocol)
        cls.proj.launchProtocol(protocol, wait=True)
        return protocol

    def testImportedSetGivesTheSimulatedSetsSpectrum(self):
        """Same poses, shifts, CTFs and images through RELION's star file: the same map
        scale, noise, eigenvalues, ε/‖F‖ and per-particle pose changes."""
        for protocol in (self.native, self.imported):
            self.assertTrue(protocol._loadAnalysis(volumes=False).converged.all())
        native, imported = eigenvalues(self.native), eigenvalues(self.imported)
        self.assertEqual(len(native), len(imported))
        np.testing.assert_allclose(imported, native, rtol=1e-4)
        self.assertAlmostEqual(self.imported._scale().map_scale / self.native._scale().map_scale,
                               1.0, delta=1e-4)
        self.assertAlmostEqual(self.imported._noise().variance / self.native._noise().variance,
                               1.0, delta=1e-4)
        np.testing.assert_allclose(self.imported._loadAnalysis(volumes=False).relative_change,
                                   self.native._loadAnalysis(volumes=False).relative_change,
                                   rtol=1e-4)
        np.testing.assert_allclose(self.imported._particlePoseChanges(),
                                   self.native._particlePoseChanges(), rtol=1e-3, atol=1e-6)

    def testMapTimesThreeGivesTheSameRelativeChangeAndSensitivity(self):
        """The fitted scale is a third; ε/‖F‖ and the sensitivity map within 1 %."""
        ratio = self.tripled._scale().map_scale / self.imported._scale().map_scale
        self.assertAlmostEqual(ratio, 1 / 3, delta=1e-6)
        once = self.imported._loadAnalysis(volumes=True)
        thrice = self.tripled._loadAnalysis(volumes=True)
        count = min(len(once.eigenvalues), len(thrice.eigenvalues))
        np.testing.assert_allclose(thrice.relative_change[:count], once.relative_change[:count],
                                   rtol=1e-2)
        sensitivity = [convert.volume_to_array(run.outputSensitivity)[0]
                       for run in (self.imported, self.tripled)]
        self.assertLess(np.linalg.norm(sensitivity[1] - sensitivity[0])
                        / np.linalg.norm(sensitivity[0]), 1e-2)

    def assertStopsWithoutOutput(self, protocol, *fragments):
        self.assertTrue(protocol.isFailed())
        message = protocol.getErrorMessage()
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertFalse(protocol.hasAttribute('outputModes'))
        self.assertFalse(os.path.exists(protocol._getFileName('analysis')))

    def testDarkParticlesStopWithThePolarityMessage(self):
        stack = convert.image_file(self.dark.getFirstItem().getFileName())
        before = mrc.read_stack(stack)
        protocol = self._softModes('soft modes - dark particles', self.dark,
                                   self.simulation.outputVolume, launch=False)
        self.assertStopsWithoutOutput(protocol, "look dark against this map",
                                      "invert their contrast")
        np.testing.assert_array_equal(mrc.read_stack(stack), before)

    def testMapTheParticlesDoNotShowStops(self):
        protocol = self._softModes('soft modes - unrelated map', self.relion, self.unrelated,
                                   launch=False)
        self.assertStopsWithoutOutput(protocol, "do not show this map")

    def testDefocusZeroOrNanStopsNamingTheParticle(self):
        """Scipion's database stores a NaN defocus as no value: that particle has no CTF."""
        for name, value, fragment in (("zero", 0.0, "a defocus of 0 means the CTF was never "
                                                    "estimated"),
                                      ("nan", float("nan"),
                                       "has no CTF (its defocus is missing or NaN)")):
            ctfs = list(self.arrays.ctf_params)
            ctfs[2] = SimpleNamespace(**dict(vars(ctfs[2]), defocus_u=value, defocus_v=value))
            star = write_relion_star(self.proj.getTmpPath(), SimpleNamespace(
                **dict(vars(self.arrays), ctf_params=ctfs)), name="defocus_" + name)
            particles = import_relion(self, star, PIXEL).outputParticles
            protocol = self._softModes('soft modes - defocus %s' % name, particles,
                                       self.simulation.outputVolume, launch=False)
            self.assertStopsWithoutOutput(protocol, "3@", "defocus_%s.mrcs" % name, fragment)
