"""The Hessian soft-mode protocol and its viewer in a headless Scipion project.

Simulated particles with uniform views and with a polar cap of views of the
same phantom, and an experiment design without images, at a coarse band
(2πK about 10) so every run takes seconds.
"""
import os
import shutil
from unittest import mock

import mrcfile
import numpy as np
from pwem.objects import SetOfParticles, Volume
from pyworkflow.object import Pointer
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import (
    EXPERIMENT_DESIGN, NOISE_SIGMA, SOFT_MODE_EPSILON, SOFT_MODE_INDEX,
    SOFT_MODE_POSE_CHANGE, SOFT_MODE_SIGN, VIEWS_POLAR_CAP)
from cryohess_plugin.core import mrc
from cryohess_plugin.protocols import CryoHessProtSoftModes, protocol_soft_modes
from cryohess_plugin.viewers import CryoHessSoftModesViewer
from .scipion_base import CryoHessTestCase, ParticleValidationMixin
from .scipion_data import ANALYSIS, SIMULATION, eigenvalues
from .scipion_data import ANALYSIS_MODES as MODES
from .scipion_data import SIMULATION_BOX as BOX
from .scipion_data import SIMULATION_PARTICLES as PARTICLES
from .scipion_data import SIMULATION_PIXEL as PIXEL


def poseChanges(protocol):
    return np.array([convert.read_column(particle, SOFT_MODE_POSE_CHANGE)
                     for particle in protocol.outputParticles.iterItems(orderBy='id')])


def stepEnds(protocol):
    """The end time of every step, in order: a step Continue skips keeps its own."""
    return [step.endTime.get() for step in protocol.loadSteps()]


class TestSoftModes(CryoHessTestCase):
    """Uniform views, a polar cap of views and an experiment design."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Soft modes of uniform and polar-cap particles"))
        cls.simUniform = cls.launchSimulation('uniform views', SIMULATION)
        cls.simPolar = cls.launchSimulation('polar views', SIMULATION,
                                        viewDistribution=VIEWS_POLAR_CAP,
                                        viewAngle=20.0)
        cls.uniform = cls._softModes('soft modes - uniform', cls.simUniform)
        cls.polar = cls._softModes('soft modes - polar', cls.simPolar)
        cls.marginal = cls._softModes('soft modes - uniform, noise marginalised',
                                      cls.simUniform, marginaliseNoise=True)
        print(magentaStr("\n==> Soft modes of an experiment design"))
        cls.design = cls.newProtocol(CryoHessProtSoftModes, experimentSource=EXPERIMENT_DESIGN,
                                     numberOfImages=PARTICLES, defocusValues='12000 20000',
                                     noiseLevelType=NOISE_SIGMA, noiseSigma=0.5, **ANALYSIS)
        cls.design.inputVolume.set(cls.simUniform.outputVolume)
        cls.design.setObjLabel('soft modes - design')
        cls.launchProtocol(cls.design)

    @classmethod
    def _softModes(cls, label, simulation, **kwargs):
        protocol = cls.newProtocol(CryoHessProtSoftModes, **dict(ANALYSIS, **kwargs))
        protocol.inputVolume.set(simulation.outputVolume)
        protocol.inputParticles.set(simulation.outputParticles)
        protocol.setObjLabel(label)
        return cls.launchProtocol(protocol)

    def testOutputSets(self):
        for protocol in (self.uniform, self.polar, self.design):
            self.assertSetSize(protocol.outputModes, MODES)
            self.assertSetSize(protocol.outputPerturbed, 2 * MODES)
            for output in (protocol.outputModes, protocol.outputPerturbed,
                           protocol.outputSensitivity):
                self.assertAlmostEqual(output.getSamplingRate(), PIXEL)
            volumes = list(protocol.outputModes) + list(protocol.outputPerturbed)
            for volume in volumes + [protocol.outputSensitivity]:
                self.assertTrue(os.path.exists(volume.getFileName()), volume.getFileName())
                self.assertEqual(volume.getDim(), (BOX, BOX, BOX))
            labels = [volume.getObjLabel() for volume in protocol.outputPerturbed]
            self.assertIn('mode 1 +ε', labels)
            self.assertIn('mode %d -ε' % MODES, labels)
            self.assertTrue(os.path.exists(protocol._getFileName('table')))

    def testParticlePoseChanges(self):
        """Particle runs output a copy of the particles with each one's largest pose change;
        the input set is left as it was; the design has no particles."""
        for protocol, simulation in ((self.uniform, self.simUniform),
                                     (self.polar, self.simPolar),
                                     (self.marginal, self.simUniform)):
            output, source = protocol.outputParticles, simulation.outputParticles
            self.assertSetSize(output, PARTICLES)
            self.assertAlmostEqual(output.getSamplingRate(), PIXEL)
            self.assertTrue(output.hasCTF() and output.hasAlignmentProj())
            values = np.array([convert.read_column(particle, SOFT_MODE_POSE_CHANGE)
                               for particle in output.iterItems(orderBy='id')])
            self.assertEqual(values.shape, (PARTICLES,))
            self.assertTrue(np.all(np.isfinite(values)) and np.all(values >= 0), values)
            self.assertGreater(values.max(), 0.0)
            np.testing.assert_allclose(values, protocol._particlePoseChanges(), rtol=1e-6)
            self.assertEqual([p.getObjId() for p in output.iterItems(orderBy='id')],
                             [p.getObjId() for p in source.iterItems(orderBy='id')])
            # The input set is unchanged: same size, no new column, same poses.
            self.assertSetSize(source, PARTICLES)
            for before, after in zip(source.iterItems(orderBy='id'),
                                     output.iterItems(orderBy='id')):
                self.assertFalse(hasattr(before, SOFT_MODE_POSE_CHANGE))
                np.testing.assert_allclose(before.getTransform().getMatrix(),
                                           after.getTransform().getMatrix())
            summary = '\n'.join(protocol.summary())
            self.assertIn('Particle pose changes', summary)
            self.assertIn('turn by more than 1°', summary)
        self.assertFalse(self.design.hasAttribute('outputParticles'))
        self.assertNotIn('Particle pose changes', '\n'.join(self.design.summary()))

    def testEigenvalues(self):
        for protocol in (self.uniform, self.polar, self.design):
            values = eigenvalues(protocol)
            self.assertTrue(np.all(np.isfinite(values)) and np.all(values > 0), values)
            self.assertTrue(np.all(np.diff(values) >= 0), values)
            table = np.loadtxt(protocol._getFileName('table'), usecols=(0, 1, 2, 3))
            np.testing.assert_array_equal(table[:, 0], np.arange(1, MODES + 1))
            np.testing.assert_allclose(table[:, 1], values, rtol=1e-5)

    def testNoiseMarginalisation(self):
        """Equal noise in every particle: the precision weights are about one, so the
        marginalised run matches the one with a single estimated noise variance."""
        experiment = np.load(self.marginal._getFileName('marginalExperiment'))
        self.assertAlmostEqual(experiment['counts'].sum(), PARTICLES, places=6)
        self.assertTrue(any('marginalised' in line for line in self.marginal.summary()))
        single = float(np.load(self.uniform._getFileName('noise'))['variance'])
        marginal = float(np.load(self.marginal._getFileName('noise'))['variance'])
        self.assertAlmostEqual(marginal / single, 1.0, delta=0.05)
        # The first modes; a run may report one more when its last subspace goes on.
        np.testing.assert_allclose(eigenvalues(self.marginal)[:MODES],
                                   eigenvalues(self.uniform)[:MODES], rtol=0.1)

    def testPolarViewsAreSofter(self):
        """Missing side views leave a mode at least 5 times softer than uniform views
        (docs/methods/hessian_soft_modes.md §6)."""
        uniform, polar = eigenvalues(self.uniform), eigenvalues(self.polar)
        print("softest eigenvalue: uniform %.4g, polar %.4g (ratio %.1f)"
              % (uniform[0], polar[0], uniform[0] / polar[0]))
        self.assertGreaterEqual(uniform[0] / polar[0], 5.0)

    def testNearbyVolumes(self):
        """F ± ε·mode around the reference, ε and the labels as the columns say."""
        reference, _ = convert.volume_to_array(self.simUniform.outputVolume)
        modes = {convert.read_column(mode, SOFT_MODE_INDEX): mode.clone()
                 for mode in self.uniform.outputModes}
        for nearby in self.uniform.outputPerturbed:
            number = convert.read_column(nearby, SOFT_MODE_INDEX)
            sign = convert.read_column(nearby, SOFT_MODE_SIGN)
            epsilon = convert.read_column(nearby, SOFT_MODE_EPSILON)
            self.assertEqual(epsilon, convert.read_column(modes[number], SOFT_MODE_EPSILON))
            mode, _ = convert.volume_to_array(modes[number], PIXEL)
            volume, _ = convert.volume_to_array(nearby, PIXEL)
            np.testing.assert_allclose(volume, reference + sign * epsilon * mode,
                                       atol=1e-5 * np.abs(reference).max())
        # The input map is untouched.
        original = mrc.read_volume(self.simUniform._getFileName('volume'))[0]
        np.testing.assert_array_equal(reference, original)

    def testNoiseEstimate(self):
        """The estimate from the particles recovers the simulated noise."""
        truth = float(np.load(self.simUniform._getFileName('particleTruth'))['noiseSigma'])
        estimate = self.uniform._noise().variance
        self.assertAlmostEqual(estimate / truth ** 2, 1.0, delta=0.2)
        self.assertEqual(self.design._noise().variance, 0.25)

    def testDesignExperiment(self):
        experiment = self.design._experiment()
        self.assertAlmostEqual(experiment.n_images, PARTICLES)
        self.assertEqual(experiment.counts.shape[1], 2)
        self.assertEqual(sorted(p.defocus_u for p in experiment.ctf_params), [12000, 20000])

    def testSummaryAndMethods(self):
        summary = '\n'.join(self.uniform.summary())
        self.assertIn('2πK = ', summary)
        self.assertIn('%d images' % PARTICLES, summary)
        self.assertIn('Mode %d: λ = ' % MODES, summary)
        self.assertIn('eigenvalues.txt', summary)
        methods = ' '.join(self.uniform.methods())
        self.assertIn('Rangan', methods)
        self.assertIn('20 times less likely', methods)
        self.assertIn('planned images', '\n'.join(self.design.summary()))
        self.assertIn('Rangan2023hessian', self.uniform._citations())

    def testViewerPlots(self):
        for protocol in (self.uniform, self.design):
            self.assertViewerPlots(CryoHessSoftModesViewer, protocol,
                              'softmodes_%d' % protocol.getObjId())

    def testComparisonOfTwoRuns(self):
        viewer = CryoHessSoftModesViewer(project=self.proj, protocol=self.uniform)
        viewer.setProtocol(self.uniform)
        viewer.comparedRuns.append(Pointer(self.polar))
        self.assertEqual([run.getObjId() for run in viewer._comparedRuns()],
                         [self.polar.getObjId()])
        plotter = viewer._showComparison()[0]
        path = os.path.join(self.proj.path, 'softmodes_uniform_vs_polar.png')
        plotter.savefig(path)
        plotter.close()
        self.assertGreater(os.path.getsize(path), 1000)

    def testContinueRerunsWhatAnEditAffects(self):
        """Continue without an edit re-runs nothing; 3 → 4 modes re-runs only the analysis
        and the outputs, which then equal a fresh run with 4 modes; switching the
        experiment to a design would leave outputParticles stale: Restart."""
        protocol = self.newProtocol(CryoHessProtSoftModes,
                                    **dict(ANALYSIS, numberOfModes=MODES - 1))
        protocol.inputVolume.set(self.simUniform.outputVolume)
        protocol.inputParticles.set(self.simUniform.outputParticles)
        protocol.setObjLabel('soft modes - continued')
        self.launchProtocol(protocol)
        first = stepEnds(protocol)
        self.assertEqual(len(first), 4)
        protocol.runMode.set(MODE_RESUME)
        self.launchProtocol(protocol)
        self.assertEqual(stepEnds(protocol), first)
        protocol.numberOfModes.set(MODES)
        self.launchProtocol(protocol)
        again = stepEnds(protocol)
        self.assertEqual([a == b for a, b in zip(again, first)], [True, True, False, False])
        np.testing.assert_allclose(eigenvalues(protocol), eigenvalues(self.uniform),
                                   rtol=1e-12)
        np.testing.assert_allclose(poseChanges(protocol), poseChanges(self.uniform),
                                   rtol=1e-12)
        self.assertEqual(protocol._validate(), [])
        protocol.experimentSource.set(EXPERIMENT_DESIGN)
        errors = protocol._validate()
        self.assertTrue(any("needs Restart" in e and "outputParticles" in e for e in errors),
                        errors)

    def testViewerRefusesMissingMode(self):
        viewer = CryoHessSoftModesViewer(project=self.proj, protocol=self.uniform)
        viewer.setProtocol(self.uniform)
        viewer.modeNumber.set(MODES + 1)
        self.assertTrue(any("choose a mode from 1 to %d" % MODES in e
                            for e in viewer.validate()))


class TestSoftModesValidation(ParticleValidationMixin, CryoHessTestCase):
    """Bad input is refused by _validate with a message naming the fix."""
    SIMULATION = SIMULATION
    PIXEL = PIXEL

    def _errors(self, particles=None, volume=None, **kwargs):
        protocol = self.newProtocol(CryoHessProtSoftModes, **dict(ANALYSIS, **kwargs))
        protocol.inputParticles.set(self.small.outputParticles if particles is None
                                    else particles)
        protocol.inputVolume.set(self.small.outputVolume if volume is None else volume)
        return protocol.validate()

    def testValidInput(self):
        self.assertEqual(self._errors(), [])
        self.assertEqual(self._errors(experimentSource=EXPERIMENT_DESIGN), [])

    def testParticlesWithoutCtf(self):
        errors = self._errors(particles=self.unaligned.outputParticles)
        self.assertError("no CTF: estimate the CTF", errors)

    def testVolumeBoxDiffers(self):
        self.assertError("px wide", self._errors(volume=self.large.outputVolume))

    def testPixelSizesDiffer(self):
        self.assertError("resample", self._errors(volume=self.coarse.outputVolume))

    def testResolutionBeyondNyquist(self):
        self.assertError("Nyquist", self._errors(maxResolution=PIXEL))

    def testModesNeedMoreProducts(self):
        self.assertError("budget of at least 12 Hessian products",
                         self._errors(numberOfModes=8, maxProducts=8))

    def testBadDefocusList(self):
        errors = self._errors(experimentSource=EXPERIMENT_DESIGN, defocusValues='12000 far')
        self.assertError("defocus values must be numbers", errors)

    def testNonCubicVolume(self):
        path = self.proj.getTmpPath('flat_volume.mrc')
        with mrcfile.new(path, overwrite=True) as stored:
            stored.set_data(np.zeros((BOX - 4, BOX, BOX), dtype=np.float32))
            stored.voxel_size = PIXEL
        volume = Volume(location=path)
        volume.setSamplingRate(PIXEL)
        errors = self._errors(volume=volume)
        self.assertError("The reference volume is %d x %d x %d voxels; this needs a cubic "
                         "map" % (BOX, BOX, BOX - 4), errors)
        self.assertError("cubic map", self._errors(volume=volume,
                                                   experimentSource=EXPERIMENT_DESIGN))

    def testTruncatedStack(self):
        """The last particles point past the end of a cut stack: refused from its header."""
        source = self.small.outputParticles
        path = self.proj.getTmpPath('cut_stack.mrcs')
        shutil.copy(convert.image_file(source.getFirstItem().getFileName()), path)
        with open(path, 'r+b') as stack:
            stack.truncate(os.path.getsize(path) - BOX * BOX * 4)
        truncated = SetOfParticles(filename=self.proj.getTmpPath('truncated.sqlite'))
        truncated.copyInfo(source)
        truncated.copyItems(source, updateItemCallback=lambda particle, row=None:
                            particle.setLocation(particle.getIndex(), path))
        truncated.write()
        errors = self._errors(particles=truncated)
        self.assertError("cut_stack.mrcs", errors)
        self.assertError("truncated", errors)

    def testWarnings(self):
        """A band too coarse to say anything, and a run beyond the machine's memory."""
        self.assertEqual(self._warnings(), [])
        coarse = self._warnings(maxResolution=100.0)
        self.assertEqual(len(coarse), 1)
        self.assertIn("2πK = 3, too coarse", coarse[0])
        with mock.patch.object(protocol_soft_modes, 'getMemoryAvailable', return_value=64):
            heavy = self._warnings(maxResolution=8.0)
        self.assertEqual(len(heavy), 1)
        self.assertIn("needs about", heavy[0])
        self.assertIn("choose a coarser max resolution", heavy[0])

    def _warnings(self, **kwargs):
        protocol = self.newProtocol(CryoHessProtSoftModes, **dict(ANALYSIS, **kwargs))
        protocol.inputParticles.set(self.small.outputParticles)
        protocol.inputVolume.set(self.small.outputVolume)
        return protocol._warnings()  # the settings' own, without the machine's 'Use GPU' one
