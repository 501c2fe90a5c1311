"""Particles written in RELION 3.1's convention come back through Scipion's RELION import.

The star file is written by the test (tests/relion_star.py) from a simulation with
astigmatic CTFs and off-centre particles, then imported with pwem's
ProtImportParticles through scipion-em-relion: the poses, shifts and CTFs the
converter reads must be the simulation's, so the conventions of
docs/conventions.md agree with RELION's and Scipion's.
"""
import numpy as np
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.core.rotations import angular_distance
from cryohess_plugin.core.synthetic import simulate_particles

from .helpers import phantom_volume
from .relion_star import import_relion, write_relion_star
from .scipion_base import CryoHessTestCase

BOX, PIXEL = 32, 3.0


def importRelion(testCase, star, phaseFlipped=False):
    return import_relion(testCase, star, PIXEL, phaseFlipped)


class TestRelionImport(CryoHessTestCase):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        volume = phantom_volume(BOX, PIXEL, n_atoms=300)
        cls.simulation = simulate_particles(volume, 20, BOX, PIXEL, rng=1, shift_sigma=3.0,
                                            n_groups=2, astigmatism=800.0, snr=1.0,
                                            backend="cpu")
        cls.star = write_relion_star(cls.proj.getTmpPath(), cls.simulation)

    def testPosesShiftsAndCtfsAreTheSimulations(self):
        particles = importRelion(self, self.star).outputParticles
        arrays = convert.particles_to_arrays(particles, need_ctf=True, need_alignment=True)
        sim = self.simulation
        self.assertLess(angular_distance(arrays.rotations, sim.rotations).max(), 1e-4)
        np.testing.assert_allclose(arrays.shifts, sim.shifts, atol=1e-5)
        np.testing.assert_array_equal(arrays.images, sim.images)
        for read, true in zip(arrays.ctfs, sim.ctf_params):
            self.assertAlmostEqual(read.defocus_u, true.defocus_u, places=4)
            self.assertAlmostEqual(read.defocus_v, true.defocus_v, places=4)
            self.assertAlmostEqual(read.defocus_angle % 180, true.defocus_angle % 180, places=4)
            self.assertFalse(read.phase_flipped)

    def testPhaseFlippedImportUsesTheAbsoluteCtf(self):
        particles = importRelion(self, self.star, phaseFlipped=True).outputParticles
        self.assertTrue(particles.isPhaseFlipped())
        arrays = convert.particles_to_arrays(particles, need_ctf=True, need_alignment=True)
        self.assertTrue(all(params.phase_flipped for params in arrays.ctfs))
