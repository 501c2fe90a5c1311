"""The Fourier-slice posterior and pose-refinement protocols and their viewers in a
headless Scipion project.

Simulated particles (32 px) with uniform views, their poses moved 3° and 1 px
away from the truth (imported from a Scipion sqlite), refined and then fitted with
half maps; a polar cap of views (a missing cone) fitted alone by the minibatch
variational fit; a small set fitted, edited and continued; astigmatic, off-centre
particles written as a RELION 3.1 star file and imported through Scipion's RELION
import, with bad input (dark particles, a map they do not show, CTFs without defocus).
"""
import os
import shutil
from unittest import mock

import mrcfile
import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, Volume
from pwem.protocols import ProtImportParticles, ProtImportVolumes
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import (FIT_VARIATIONAL, LOG_LIKELIHOOD, REFINED_ANGLE_CHANGE,
                                       REFINED_SHIFT_CHANGE, VIEWS_POLAR_CAP)
from cryohess_plugin.core import fourier, mrc, rotations
from cryohess_plugin.core.pose_refinement import pose_errors
from cryohess_plugin.core.synthetic import ParticleSimulation
from cryohess_plugin.demo import savePlots
from cryohess_plugin.protocols import CryoHessProtFourierPosterior, CryoHessProtRefinePoses
from cryohess_plugin.protocols.protocol_fourier_posterior import (
    FULL, OUTPUT_HALF_MAP_FSC, OUTPUT_SINGLE_FIT_FSC)
from cryohess_plugin.viewers import CryoHessFourierPosteriorViewer, CryoHessRefinePosesViewer
from .helpers import phase_flip
from .relion_star import import_relion, write_relion_star
from .scipion_base import CryoHessTestCase, ParticleValidationMixin


BOX = 32
PIXEL = 2.5
PARTICLES = 300
START_DEGREES = 3.0
START_PIXELS = 1.0
CAP_DEGREES = 15.0
ROUNDS = 3
UNIFORM_SNR = 3.0  # at SNR 1 three rounds leave a median of 1.8 deg (3.2, 2.2, 1.8)
SIMULATION = dict(boxSize=BOX, samplingRate=PIXEL, numberOfParticles=PARTICLES,
                  numberOfDefocusGroups=3, phantomAtoms=400, phantomRadius=30.0, snr=1.0,
                  shiftSigma=1.0, randomSeed=5, numberOfThreads=1)


def offsetPoses(truthRotations, truthShifts, rng=0):
    """Poses ``START_DEGREES`` (random axes) and ``START_PIXELS`` away from the truth."""
    rng = np.random.default_rng(rng)
    count = len(truthRotations)
    axes = rng.standard_normal((count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    directions = rng.standard_normal((count, 2))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return (rotations.perturb(truthRotations, axes * np.deg2rad(START_DEGREES)),
            truthShifts + START_PIXELS * directions)


class TestFourierPosterior(CryoHessTestCase):
    """Pose refinement and half maps on uniform views; a missing cone on polar views."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Pose refinement and posterior of particles with offset poses"))
        cls.simUniform = cls.launchSimulation('uniform views', SIMULATION, snr=UNIFORM_SNR)
        cls.offset = cls._importOffsetParticles()
        cls.refinement = cls.newProtocol(CryoHessProtRefinePoses, refineRounds=ROUNDS,
                                         particlesPerBatch=160, numberOfThreads=1)
        cls.refinement.inputParticles.set(cls.offset.outputParticles)
        cls.refinement.setObjLabel('refine offset poses')
        cls.launchProtocol(cls.refinement)
        cls.refined = cls.newProtocol(CryoHessProtFourierPosterior, doHalfMaps=True,
                                      numberOfSamples=8,
                                      particlesPerBatch=160, numberOfThreads=1)
        cls.refined.inputParticles.set(cls.refinement.outputParticles)
        cls.refined.setObjLabel('posterior - refined poses')
        cls.launchProtocol(cls.refined)
        print(magentaStr("\n==> Fourier-slice posterior of a polar cap of views"))
        cls.simPolar = cls.launchSimulation('polar views', SIMULATION,
                                        viewDistribution=VIEWS_POLAR_CAP,
                                        viewAngle=CAP_DEGREES)
        cls.polar = cls.newProtocol(CryoHessProtFourierPosterior, doHalfMaps=False,
                                    fitMethod=FIT_VARIATIONAL, estimationParticles=150,
                                    numberOfSamples=4, numberOfThreads=1)
        cls.polar.inputParticles.set(cls.simPolar.outputParticles)
        cls.polar.setObjLabel('posterior - polar views')
        cls.launchProtocol(cls.polar)

    @classmethod
    def _importOffsetParticles(cls):
        """The simulated particles with poses moved away from the truth, imported."""
        truth = np.load(cls.simUniform._getFileName('particleTruth'))
        startRotations, startShifts = offsetPoses(truth['rotations'], truth['shifts'])
        path = os.path.join(cls.proj.path, 'offset_particles.sqlite')
        offset = SetOfParticles(filename=path)
        offset.copyInfo(cls.simUniform.outputParticles)

        def movePose(particle, _row=None):
            i = particle.getObjId() - 1
            particle.setTransform(convert.transform_from_pose(startRotations[i],
                                                              startShifts[i], ALIGN_PROJ))

        offset.copyItems(cls.simUniform.outputParticles, updateItemCallback=movePose)
        offset.write()
        offset.close()
        protocol = cls.newProtocol(ProtImportParticles,
                                   importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                                   sqliteFile=path, samplingRate=PIXEL)
        protocol.setObjLabel('offset poses')
        return cls.launchProtocol(protocol)

    def testOutputVolumes(self):
        volume = self.refined.outputVolume
        uncertainty = self.refined.outputUncertainty
        for output in (volume, uncertainty, self.polar.outputVolume):
            self.assertEqual(output.getDim(), (BOX, BOX, BOX))
            self.assertAlmostEqual(output.getSamplingRate(), PIXEL)
            self.assertTrue(os.path.exists(output.getFileName()), output.getFileName())
        self.assertTrue(volume.hasHalfMaps())
        halves = volume.getHalfMaps().split(',')
        self.assertEqual(len(halves), 2)
        for path in halves:
            self.assertTrue(os.path.exists(path), path)
            self.assertEqual(mrc.read_volume(path)[0].shape, (BOX, BOX, BOX))
        self.assertFalse(self.polar.outputVolume.hasHalfMaps())
        std, _ = convert.volume_to_array(uncertainty, PIXEL)
        self.assertTrue(np.all(np.isfinite(std)) and np.all(std > 0))
        # The map resembles the ground truth.
        mean, _ = convert.volume_to_array(volume, PIXEL)
        truth, _ = convert.volume_to_array(self.simUniform.outputVolume, PIXEL)
        self.assertGreater(np.corrcoef(mean.ravel(), truth.ravel())[0, 1], 0.8)

    def testResolutionCurves(self):
        self.assertFalse(self.polar.hasAttribute('outputHalfMapFsc'))
        for fsc in (self.refined.outputSingleFitFsc, self.refined.outputHalfMapFsc,
                    self.polar.outputSingleFitFsc):
            frequencies, values = convert.fsc_to_arrays(fsc)
            self.assertEqual(len(values), BOX // 2 - 1)
            np.testing.assert_allclose(frequencies,
                                       np.arange(1, BOX // 2) / (BOX * PIXEL))
            self.assertTrue(np.all(values >= -1) and np.all(values <= 1), values)
            self.assertGreater(values[:3].mean(), values[-3:].mean() + 0.05, values)
            self.assertLess(np.corrcoef(frequencies, values)[0, 1], -0.5, values)
        # Both curves start near 1.  Like a half-map FSC, the single-fit curve is
        # blind to a missing cone (no signal and no noise there); the Fourier
        # variance shows it (testMissingCone).
        for fsc in (self.refined.outputSingleFitFsc, self.refined.outputHalfMapFsc,
                    self.polar.outputSingleFitFsc):
            self.assertGreater(convert.fsc_to_arrays(fsc)[1][:3].mean(), 0.9)
        # One fit predicts the half-map FSC of the same data
        # (docs/methods/fourier_slice_posterior.md §4.4).
        single = convert.fsc_to_arrays(self.refined.outputSingleFitFsc)[1]
        halves = convert.fsc_to_arrays(self.refined.outputHalfMapFsc)[1]
        print("single-fit curve:", np.round(single, 3), "\nhalf-map FSC:   ", np.round(halves, 3))
        self.assertLess(np.max(np.abs(single - halves)), 0.15)

    def testParticleColumns(self):
        particles = self.refined.outputParticles
        self.assertSetSize(particles, PARTICLES)
        self.assertEqual(particles.getAlignment(), ALIGN_PROJ)
        self.assertTrue(particles.hasCTF())
        for particle in particles.iterItems():
            for column in (LOG_LIKELIHOOD, REFINED_ANGLE_CHANGE, REFINED_SHIFT_CHANGE):
                self.assertTrue(np.isfinite(convert.read_column(particle, column)), column)
        for particle in self.polar.outputParticles.iterItems():
            self.assertTrue(np.isfinite(convert.read_column(particle, LOG_LIKELIHOOD)))
            self.assertFalse(hasattr(particle, REFINED_ANGLE_CHANGE))

    def testRefinedPosesApproachTheTruth(self):
        truth = np.load(self.simUniform._getFileName('particleTruth'))
        refined = convert.particles_to_arrays(self.refined.outputParticles,
                                              need_alignment=ALIGN_PROJ, read_images=False)
        angle, shift = pose_errors(refined.rotations, refined.shifts, truth['rotations'],
                                   truth['shifts'])
        print("refined pose error: median %.2f deg, %.2f px; 90th percentile %.2f deg, "
              "%.2f px" % (np.median(angle), np.median(shift), np.percentile(angle, 90),
                           np.percentile(shift, 90)))
        self.assertLess(np.median(angle), 1.5)
        self.assertLess(np.median(shift), 0.3)
        self.assertGreater(np.mean(angle < START_DEGREES), 0.9)
        # The changes in the columns are the distances from the input poses, which
        # are untouched.
        start = convert.particles_to_arrays(self.offset.outputParticles,
                                            need_alignment=ALIGN_PROJ, read_images=False)
        startAngle, _ = pose_errors(start.rotations, start.shifts, truth['rotations'],
                                    truth['shifts'])
        np.testing.assert_allclose(startAngle, START_DEGREES, rtol=1e-6)
        change, _ = pose_errors(refined.rotations, refined.shifts, start.rotations,
                                start.shifts)
        columns = np.array([convert.read_column(p, REFINED_ANGLE_CHANGE)
                            for p in self.refined.outputParticles.iterItems(orderBy='id')])
        np.testing.assert_allclose(columns, change, atol=1e-6)

    def testEveryRoundBringsThePosesCloser(self):
        """The reference sharpens as the poses improve, so each round gains."""
        truth = np.load(self.simUniform._getFileName('particleTruth'))
        medians = []
        for round_ in range(1, ROUNDS + 1):
            poses = np.load(self.refinement._getFileName('poses', round=round_))
            angle, _ = pose_errors(poses['rotations'], poses['shifts'], truth['rotations'],
                                   truth['shifts'])
            medians.append(np.median(angle))
        print("median pose error per round: %s deg" % ", ".join("%.2f" % m for m in medians))
        self.assertTrue(np.all(np.diff([START_DEGREES] + medians) < 0), medians)
        self.assertTrue(bool(self.refined._loadLikelihood()['heldOut']))

    def testMissingConeStaysAtThePrior(self):
        """Views within 15° of the pole never sample the cone around kz
        (docs/methods/fourier_slice_posterior.md §4.5);
        the variational fit keeps the prior there as the closed form does."""
        relative = self.polar._loadPosterior(FULL).relative_variance()
        radius = fourier.radius_grid(relative.shape)
        kz = fourier.frequencies(BOX)[:, None, None] * np.ones((1, BOX, BOX))
        polarAngle = np.degrees(np.arccos(np.abs(kz) / np.maximum(radius, 1e-9)))
        shell = (radius >= 4) & (radius < BOX / 2 - 2)
        cone, covered = shell & (polarAngle < 60), shell & (polarAngle > 85)
        print("relative variance: cone min %.3f, covered median %.3f"
              % (relative[cone].min(), np.median(relative[covered])))
        self.assertGreaterEqual(relative[cone].min(), 0.9)
        self.assertLess(np.median(relative[covered]), 0.5)

    def testSummaryAndMethods(self):
        # What the GUI shows when a run is selected reads no posterior arrays.
        with mock.patch('cryohess_plugin.core.posterior.FourierPosterior.load',
                        side_effect=AssertionError("a summary loaded a posterior")):
            self._assertSummaryAndMethods()

    def _assertSummaryAndMethods(self):
        summary = '\n'.join(self.refined.summary())
        for fragment in ('%d particles of %d px' % (PARTICLES, BOX), 'noise variance',
                         'Single-fit curve', 'Half-map FSC', 'held out'):
            self.assertIn(fragment, summary)
        self.assertIn('Pose refinement (%d rounds)' % ROUNDS,
                      '\n'.join(self.refinement.summary()))
        self.assertNotIn('Half-map FSC', '\n'.join(self.polar.summary()))
        methods = ' '.join(self.refined.methods())
        self.assertIn('Ullrich', methods)
        self.assertIn('half-map FSC', methods)
        self.assertIn('Ullrich', ' '.join(self.refinement.methods()))
        for protocol in (self.refined, self.refinement):
            self.assertIn('Ullrich2019differentiable', protocol._citations())

    def testFourierVariancePlotShowsTheMissingCone(self):
        """The ky = 0 plane of the polar-cap run: grey (masked) beyond Nyquist, at the
        prior along kz inside the sphere, well below it along kx."""
        viewer = CryoHessFourierPosteriorViewer(project=self.proj, protocol=self.polar)
        viewer.setProtocol(self.polar)
        plotter = viewer._showFourierVariance()[0]
        image = np.ma.masked_invalid(plotter.getFigure().axes[1].images[0].get_array())
        plotter.close()
        centre = BOX // 2
        self.assertTrue(image.mask[0, 0] and image.mask[-1, -1])  # corners: beyond Nyquist
        self.assertFalse(image.mask[centre, 1:].any())  # the kx axis lies inside
        self.assertGreaterEqual(image[centre + BOX // 4, centre], 0.9)  # on the kz axis
        self.assertLess(image[centre, centre + BOX // 4], 0.5)  # on the kx axis

    def testViewerPlots(self):
        for viewer, protocol, count in ((CryoHessFourierPosteriorViewer, self.refined, 5),
                                        (CryoHessRefinePosesViewer, self.refinement, 1),
                                        (CryoHessFourierPosteriorViewer, self.polar, 5)):
            paths = savePlots(viewer, self.proj, protocol, self.proj.path,
                              'posterior_%d' % protocol.getObjId())
            self.assertEqual(len(paths), count)
            for path in paths:
                self.assertGreater(os.path.getsize(path), 1000, path)


class FourierSliceValidationMixin(ParticleValidationMixin):
    """The checks both Fourier-slice protocols make of their particles and resources;
    ``PROTOCOL`` is the protocol class."""
    SIMULATION = SIMULATION
    PIXEL = PIXEL
    PROTOCOL = None

    def _errors(self, particles=None, **kwargs):
        return self._protocol(particles, **kwargs).validate()

    def _protocol(self, particles=None, **kwargs):
        protocol = self.newProtocol(self.PROTOCOL, **kwargs)
        protocol.inputParticles.set(self.small.outputParticles if particles is None
                                    else particles)
        return protocol

    def testTruncatedParticleStack(self):
        """A stack cut short is refused from its header, before anything runs."""
        source = self.small.outputParticles
        truncated = self.proj.getTmpPath('truncated_particles.mrcs')
        shutil.copy(convert.image_file(source.getFirstItem().getFileName()), truncated)
        with open(truncated, 'r+b') as handle:
            handle.truncate(os.path.getsize(truncated) - 100)
        particles = SetOfParticles(filename=self.proj.getTmpPath('truncated_particles.sqlite'))
        particles.copyInfo(source)
        particles.copyItems(source, updateItemCallback=lambda particle, _row=None:
                            particle.setLocation(particle.getIndex(), truncated))
        particles.write()
        self.assertError("truncated", self._errors(particles=particles))

    def testResourceWarnings(self):
        """Files and Fourier grids beyond half the free disk and memory are warned about."""
        self.assertEqual(self._protocol()._warnings(), [])
        with mock.patch.object(self.PROTOCOL, '_freeDiskBytes', return_value=2 ** 10), \
                mock.patch.object(self.PROTOCOL, '_freeMemoryBytes', return_value=2 ** 10):
            warnings = self._protocol()._warnings()
        self.assertEqual(len(warnings), 2, warnings)
        self.assertError("on disk", warnings)
        self.assertError("of memory", warnings)


class TestFourierPosteriorValidation(FourierSliceValidationMixin, CryoHessTestCase):
    """Bad input is refused by _validate with a message naming the fix."""
    PROTOCOL = CryoHessProtFourierPosterior

    def testValidInput(self):
        self.assertEqual(self._errors(), [])

    def testTooFewSamples(self):
        self.assertTrue(self._errors(numberOfSamples=1))


class TestRefinePosesValidation(FourierSliceValidationMixin, CryoHessTestCase):
    """Bad input to the pose refinement is refused by _validate with a message naming the fix."""
    PROTOCOL = CryoHessProtRefinePoses

    def _errors(self, particles=None, reference=None, **kwargs):
        protocol = self._protocol(particles, **kwargs)
        if reference is not None:
            protocol.refinementReference.set(reference)
        return protocol.validate()

    def testValidInput(self):
        self.assertEqual(self._errors(), [])
        self.assertEqual(self._errors(maxResolution=10.0, reference=self.small.outputVolume), [])

    def testReferenceBoxDiffers(self):
        errors = self._errors(reference=self.large.outputVolume)
        self.assertError("px wide", errors)

    def testReferencePixelSizeDiffers(self):
        errors = self._errors(reference=self.coarse.outputVolume)
        self.assertError("resample", errors)

    def testResolutionBeyondNyquist(self):
        self.assertError("Nyquist", self._errors(maxResolution=PIXEL))

    def testNonCubicReference(self):
        path = self.proj.getTmpPath('flat_reference.mrc')
        with mrcfile.new(path, overwrite=True) as handle:
            handle.set_data(np.zeros((BOX - 4, BOX, BOX), np.float32))
            handle.voxel_size = PIXEL
        reference = Volume(location=path)
        reference.setSamplingRate(PIXEL)
        self.assertError("cubic", self._errors(reference=reference))


class TestFourierPosteriorContinue(CryoHessTestCase):
    """An edited form and Continue: exactly the steps that read the edit re-run, and the
    result is a fresh run's; an edit that would leave a stale output needs Restart."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Fourier-slice posterior: edit and continue"))
        small = dict(SIMULATION, boxSize=24, numberOfParticles=40, phantomRadius=20.0)
        cls.simulation = cls.launchSimulation('small set', small)
        cls.edited = cls._launchPosterior('closed form, then variational')
        cls.firstSteps = cls._stepTimes(cls.edited)
        cls.edited.runMode.set(MODE_RESUME)
        cls.launchProtocol(cls.edited)
        cls.unchangedSteps = cls._stepTimes(cls.edited)
        cls.edited.fitMethod.set(FIT_VARIATIONAL)
        cls.edited.runMode.set(MODE_RESUME)
        cls.launchProtocol(cls.edited)
        cls.editedSteps = cls._stepTimes(cls.edited)
        cls.fresh = cls._launchPosterior('variational', fitMethod=FIT_VARIATIONAL)

    @classmethod
    def _launchPosterior(cls, label, **settings):
        protocol = cls.newProtocol(CryoHessProtFourierPosterior, numberOfSamples=4,
                                   numberOfThreads=1, **settings)
        protocol.inputParticles.set(cls.simulation.outputParticles)
        protocol.setObjLabel(label)
        return cls.launchProtocol(protocol)

    @staticmethod
    def _stepTimes(protocol):
        return [(step.funcName.get(), step.endTime.get()) for step in protocol.loadSteps()]

    def testContinueWithoutAnEditRerunsNothing(self):
        self.assertEqual(self.unchangedSteps, self.firstSteps)

    def testSwitchingTheFitRerunsTheFitsAndGivesAFreshRun(self):
        names = [name for name, _ in self.firstSteps]
        self.assertEqual(names, ['convertInputStep'] + ['fitStep'] * 3
                         + ['logLikelihoodStep', 'createOutputStep'])
        kept = [before == after for before, after in zip(self.firstSteps, self.editedSteps)]
        self.assertEqual(kept, [True] + [False] * 5)
        for part in (FULL, 'half1', 'half2'):
            edited, fresh = (protocol._loadPosterior(part) for protocol in (self.edited,
                                                                              self.fresh))
            self.assertIn('elbo', edited.history)
            for name in ('mean', 'variance', 'prior_variance', 'noise_power'):
                np.testing.assert_array_equal(getattr(edited, name), getattr(fresh, name))
            np.testing.assert_array_equal(edited.noise_variance, fresh.noise_variance)
        self.assertEqual(self.edited.summary(), self.fresh.summary())
        self.assertIn('minibatch variational', self.edited.summary()[0])
        for name in ('outputVolume', 'outputUncertainty'):
            arrays = [convert.volume_to_array(getattr(protocol, name))[0]
                      for protocol in (self.edited, self.fresh)]
            np.testing.assert_array_equal(*arrays)
        for name in (OUTPUT_SINGLE_FIT_FSC, OUTPUT_HALF_MAP_FSC):
            curves = [convert.fsc_to_arrays(getattr(protocol, name))[1]
                      for protocol in (self.edited, self.fresh)]
            np.testing.assert_array_equal(*curves)
        likelihoods = [[convert.read_column(particle, LOG_LIKELIHOOD)
                        for particle in protocol.outputParticles.iterItems(orderBy='id')]
                       for protocol in (self.edited, self.fresh)]
        np.testing.assert_array_equal(*likelihoods)

    def testHalfMapsOffNeedsRestart(self):
        self.edited.doHalfMaps.set(False)
        self.edited.runMode.set(MODE_RESUME)
        try:
            errors = self.edited.validate()
        finally:
            self.edited.doHalfMaps.set(True)
        self.assertTrue(any("needs Restart" in error and OUTPUT_HALF_MAP_FSC in error
                            for error in errors), errors)


class TestFourierSliceRelionParticles(CryoHessTestCase):
    """Particles as RELION writes them (white, RELION's CTF, astigmatic, off centre),
    imported through Scipion's RELION import: the posterior and the refinement run on
    them as on the simulator's own set; a reference on any scale gives the same result;
    bad input stops with its message before any output is written."""
    RELION = dict(SIMULATION, numberOfParticles=150, astigmatism=800.0, shiftSigma=2.0)

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Fourier-slice protocols on RELION-imported particles"))
        cls.simulation = cls.launchSimulation('astigmatic, off-centre', cls.RELION)
        folder = cls.proj.getTmpPath()
        simulated = cls._simulatedSet()
        cls.relion = cls._importRelion(write_relion_star(folder, simulated), 'white')
        cls.dark = cls._importRelion(write_relion_star(folder, simulated, name='dark',
                                                       images=-simulated.images), 'dark')
        cls.flipped = cls._importRelion(
            write_relion_star(folder, simulated, name='flipped',
                              images=_phaseFlipped(simulated)), 'phase-flipped',
            phaseFlipped=True)
        truth, _ = convert.volume_to_array(cls.simulation.outputVolume)
        cls.bright = cls._importVolume(folder, 'bright.mrc', 3 * truth)
        cls.noiseMap = cls._importVolume(
            folder, 'noise.mrc', np.random.default_rng(0).standard_normal(truth.shape))
        cls.own = cls._posterior('simulator set', cls.simulation.outputParticles)
        cls.imported = cls._posterior('RELION set', cls.relion.outputParticles)
        cls.importedFlipped = cls._posterior('phase-flipped RELION set',
                                             cls.flipped.outputParticles)
        cls.refined = cls._refine('reference', cls.relion, cls.simulation.outputVolume)
        cls.refinedBright = cls._refine('reference x 3', cls.relion, cls.bright.outputVolume)
        cls.afterRefined = cls._posterior('refined', cls.refined.outputParticles)
        cls.afterBright = cls._posterior('refined x 3', cls.refinedBright.outputParticles)

    @classmethod
    def _simulatedSet(cls):
        """The simulator's particles, poses and CTFs as a ParticleSimulation."""
        arrays = convert.particles_to_arrays(cls.simulation.outputParticles, need_ctf=True,
                                             need_alignment=ALIGN_PROJ)
        truth = np.load(cls.simulation._getFileName('particleTruth'))
        return ParticleSimulation(arrays.images, arrays.rotations, arrays.shifts, arrays.ctfs,
                                  truth['groups'], float(truth['noiseSigma']), PIXEL,
                                  cls.RELION['snr'], truth['conformation'])

    @classmethod
    def _importRelion(cls, star, label, phaseFlipped=False):
        return import_relion(cls, star, PIXEL, phaseFlipped, label='RELION star - %s' % label)

    @classmethod
    def _importVolume(cls, folder, name, array):
        convert.array_to_volume(os.path.join(folder, name), array.astype(np.float32), PIXEL,
                                overwrite=True)
        protocol = cls.newProtocol(ProtImportVolumes, filesPath=folder, filesPattern=name,
                                   samplingRate=PIXEL)
        protocol.setObjLabel(name)
        return cls.launchProtocol(protocol)

    @classmethod
    def _posterior(cls, label, particles, launch=True):
        protocol = cls.newProtocol(CryoHessProtFourierPosterior, doHalfMaps=False,
                                   numberOfSamples=2, numberOfThreads=1)
        protocol.inputParticles.set(particles)
        protocol.setObjLabel('posterior - %s' % label)
        return cls.launchProtocol(protocol) if launch else protocol

    @classmethod
    def _refine(cls, label, particlesImport, reference, launch=True):
        protocol = cls.newProtocol(CryoHessProtRefinePoses, refineRounds=1,
                                   numberOfThreads=1)
        protocol.inputParticles.set(particlesImport.outputParticles)
        if reference is not None:
            protocol.refinementReference.set(reference)
        protocol.setObjLabel('refine - %s' % label)
        return cls.launchProtocol(protocol) if launch else protocol

    def _failure(self, protocol):
        """The error message of a run that must fail, which must have no outputs."""
        with self.assertRaises(Exception):
            self.launchProtocol(protocol)
        self.assertTrue(protocol.isFailed())
        self.assertEqual(list(protocol.iterOutputAttributes()), [])
        return protocol.getErrorMessage()

    def _map(self, protocol):
        return convert.volume_to_array(protocol.outputVolume, PIXEL)[0]

    def testImportedParticlesGiveTheSimulatorSetsPosterior(self):
        """The same map from the imported set as from the simulator's own, within the
        rounding of the star file's six decimals; positive and like the ground truth."""
        imported, own = self._map(self.imported), self._map(self.own)
        difference = np.linalg.norm(imported - own) / np.linalg.norm(own)
        truth, _ = convert.volume_to_array(self.simulation.outputVolume, PIXEL)
        correlation = np.corrcoef(imported.ravel(), truth.ravel())[0, 1]
        print("RELION set against the simulator's: relative difference %.2g; correlation "
              "with the truth %.3f" % (difference, correlation))
        self.assertLess(difference, 1e-4)
        self.assertGreater(correlation, 0.8)
        for protocol in (self.imported, self.afterRefined):
            contrast, error = protocol._loadPosterior(FULL).history['polarity']
            self.assertGreater(contrast / error, 5)

    def testPhaseFlippedParticlesUseTheAbsoluteCtf(self):
        """Phase-flipped particles (each multiplied by the sign of its CTF) imported as
        such are modelled with |CTF|: the likelihood is the unflipped one, so the map is
        the same (to the float32 rounding of the images); the summary says so."""
        flipped, imported = self._map(self.importedFlipped), self._map(self.imported)
        self.assertLess(np.linalg.norm(flipped - imported) / np.linalg.norm(imported), 1e-4)
        self.assertIn("phase-flipped: their CTF is used as |CTF|",
                      '\n'.join(self.importedFlipped.summary()))
        self.assertNotIn("|CTF|", '\n'.join(self.imported.summary()))

    def testReferenceScaleChangesNothing(self):
        """A reference three times brighter is put on the particles' scale: the refined
        poses and the posterior map afterwards are the same (within 1 %)."""
        poses = [convert.particles_to_arrays(protocol.outputParticles,
                                             need_alignment=ALIGN_PROJ, read_images=False)
                 for protocol in (self.refined, self.refinedBright)]
        angle, shift = pose_errors(poses[1].rotations, poses[1].shifts, poses[0].rotations,
                                   poses[0].shifts)
        change, shiftChange = self.refined._poseChanges()
        self.assertLessEqual(angle.max(), 0.01 * np.median(change))
        self.assertLessEqual(shift.max(), 0.01 * np.median(shiftChange))
        maps = [self._map(protocol) for protocol in (self.afterRefined, self.afterBright)]
        self.assertLessEqual(np.linalg.norm(maps[1] - maps[0]) / np.linalg.norm(maps[0]), 0.01)
        amplitudes = [float(np.load(protocol._getFileName('scaledReference'))['amplitude'])
                      for protocol in (self.refined, self.refinedBright)]
        self.assertAlmostEqual(amplitudes[0] / amplitudes[1], 3.0, places=6)
        self.assertIn("put on the particles' scale", '\n'.join(self.refined.summary()))

    def testDarkParticlesStopWithTheFix(self):
        """Particles written dark: the posterior's map, the refinement's first reference
        map and its amplitude fit against a given reference all refuse them, naming the
        fix."""
        for protocol in (self._posterior('dark', self.dark.outputParticles, launch=False),
                         self._refine('dark, no reference', self.dark, None, launch=False)):
            message = self._failure(protocol)
            self.assertIn("particles are dark", message)
            self.assertIn("invert their contrast", message)
        message = self._failure(self._refine('dark', self.dark,
                                             self.simulation.outputVolume, launch=False))
        self.assertIn("look dark against this map", message)
        self.assertIn("invert their contrast", message)

    def testMapTheParticlesDoNotShowStops(self):
        message = self._failure(self._refine('noise map', self.relion,
                                             self.noiseMap.outputVolume, launch=False))
        self.assertIn("do not show this map", message)

    def testCtfWithoutDefocusStops(self):
        """A particle whose CTF has defocus 0, or NaN, stops the conversion naming it
        (3@file, id 3), before any particle file is written."""
        for label, value, fragment in (('zero', 0.0, 'defocus of U = 0'),
                                       ('NaN', float('nan'), 'no CTF')):
            particles = self._withDefocus(label, value)
            protocol = self._posterior('defocus %s' % label, particles, launch=False)
            message = self._failure(protocol)
            self.assertIn(fragment, message)
            self.assertIn("3@", message)
            self.assertFalse(os.path.exists(protocol._getExtraPath('spectra.npy')))

    def _withDefocus(self, label, value):
        """The RELION set with particle 3's defocus set to ``value``, imported."""
        source = self.relion.outputParticles
        path = self.proj.getTmpPath('defocus_%s.sqlite' % label)
        particles = SetOfParticles(filename=path)
        particles.copyInfo(source)

        def setDefocus(particle, _row=None):
            if particle.getObjId() == 3:
                particle.getCTF().setStandardDefocus(value, value, 0.0)

        particles.copyItems(source, updateItemCallback=setDefocus)
        particles.write()
        particles.close()
        protocol = self.newProtocol(ProtImportParticles,
                                    importFrom=ProtImportParticles.IMPORT_FROM_SCIPION,
                                    sqliteFile=path, samplingRate=PIXEL)
        protocol.setObjLabel('defocus %s' % label)
        return self.launchProtocol(protocol).outputParticles


def _phaseFlipped(simulation):
    """The simulation's images, each multiplied in Fourier space by the sign of its CTF."""
    return phase_flip(simulation.images.astype(np.float64), simulation.ctf_params,
                      simulation.pixel_size).astype(np.float32)
