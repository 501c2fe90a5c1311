"""The radial-SVD alignment protocols in a headless Scipion project.

Ground truth comes from the simulator (projection matching), from in-plane
rotated and shifted projections (2-D references) and from analytically
rotated Gaussian-atom maps (volumes).
"""
import os
import re
import warnings

import mrcfile
import numpy as np
from pwem.constants import ALIGN_2D, ALIGN_PROJ
from pwem.objects import SetOfParticles
from pwem.protocols import ProtImportAverages, ProtImportParticles, ProtImportVolumes
from pyworkflow.object import RELATION_TRANSFORM
from pyworkflow.protocol import getProtocolFromDb
from pyworkflow.protocol.constants import MODE_RESTART, MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import (ALIGN_SCORE, ALIGN_TEMPLATE, CTF_GROUP, RANK_FIXED,
                                       REFERENCE_2D, REFERENCE_VOLUME, REFINED_ANGLE_CHANGE)
from cryohess_plugin.core.synthetic import atoms
from cryohess_plugin.core import ctf, mrc, rotations
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.protocols import (CryoHessProtAlignParticles, CryoHessProtAlignVolumes,
                                       CryoHessProtSimulate)
from cryohess_plugin.viewers import CryoHessAlignParticlesViewer, CryoHessAlignVolumesViewer
from .scipion_base import CryoHessTestCase


BOX = 32
PIXEL = 2.5
GRID_STEP = 7.5  # degrees: the 993-direction grid


def in_plane(angle):
    """Rotation by ``angle`` radians about the viewing axis (counter-clockwise in x, y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def correlation(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


class TestAlignParticlesToVolume(CryoHessTestCase):
    """Projection matching of simulated particles against the ground-truth map."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Simulating particles, then aligning them to the map"))
        cls.protSim = cls.newProtocol(
            CryoHessProtSimulate, boxSize=BOX, samplingRate=PIXEL, numberOfParticles=60,
            numberOfDefocusGroups=3, phantomAtoms=400, phantomRadius=30.0, snr=10.0,
            shiftSigma=1.0, randomSeed=1, numberOfThreads=1)
        cls.launchProtocol(cls.protSim)
        cls.protAlign = cls.newProtocol(
            CryoHessProtAlignParticles, angularStep=GRID_STEP, maxShift=3.0, shiftStep=1.0,
            particlesPerBatch=25, numberOfThreads=1)
        cls.protAlign.inputParticles.set(cls.protSim.outputParticles)
        cls.protAlign.inputVolume.set(cls.protSim.outputVolume)
        cls.launchProtocol(cls.protAlign)

    def testOutputSet(self):
        parts = self.protAlign.outputParticles
        self.assertSetSize(parts, 60)
        self.assertEqual(parts.getAlignment(), ALIGN_PROJ)
        self.assertTrue(parts.hasCTF())
        self.assertAlmostEqual(parts.getSamplingRate(), PIXEL)
        arrays = convert.particles_to_arrays(parts, need_alignment=ALIGN_PROJ,
                                             columns=(ALIGN_SCORE, ALIGN_TEMPLATE, CTF_GROUP))
        self.assertTrue(np.all(arrays.columns[ALIGN_TEMPLATE] >= 1))
        self.assertTrue(np.all(np.isfinite(arrays.columns[ALIGN_SCORE])))
        self.assertEqual(len(self.protAlign._batches()), 3)
        # The input set keeps its ground-truth poses.
        truth = convert.particles_to_arrays(self.protSim.outputParticles,
                                            need_alignment=ALIGN_PROJ, read_images=False)
        simulated = np.load(self.protSim._getExtraPath('particles_truth.npz'))
        np.testing.assert_allclose(truth.rotations, simulated['rotations'], atol=1e-9)

    def testOrientationsMatchTruth(self):
        arrays = convert.particles_to_arrays(self.protAlign.outputParticles,
                                             need_alignment=ALIGN_PROJ, read_images=False)
        truth = np.load(self.protSim._getExtraPath('particles_truth.npz'))
        error = rotations.angular_distance(arrays.rotations, truth['rotations'])
        self.assertGreaterEqual(np.mean(error <= GRID_STEP), 0.9, np.sort(error))
        shiftError = np.linalg.norm(arrays.shifts - truth['shifts'], axis=1)
        self.assertGreaterEqual(np.mean(shiftError <= 1.0), 0.9, np.sort(shiftError))

    def testTransformReproducesParticles(self):
        """Projecting the map with the poses read back through Scipion gives the images."""
        arrays = convert.particles_to_arrays(self.protAlign.outputParticles, need_ctf=True,
                                             need_alignment=ALIGN_PROJ)
        volume, _ = convert.volume_to_array(self.protSim.outputVolume, PIXEL)
        projector = FourierSliceProjector(volume, dtype=np.float64)
        hp = projector.half_plane
        ctfs = ctf.ctf_stack(arrays.ctfs, hp.kx, hp.ky, BOX, PIXEL)
        assigned = projector.project(arrays.rotations, arrays.shifts, ctfs)
        truth = np.load(self.protSim._getExtraPath('particles_truth.npz'))
        exact = projector.project(truth['rotations'], truth['shifts'], ctfs)
        ours = np.array([correlation(a, b) for a, b in zip(assigned, arrays.images)])
        best = np.array([correlation(a, b) for a, b in zip(exact, arrays.images)])
        self.assertGreater(np.median(ours / best), 0.9)

    def testViewerPlots(self):
        self.assertViewerPlots(CryoHessAlignParticlesViewer, self.protAlign)

    def testSearchPosesAreThePosesBeforeRefinement(self):
        """The public search poses are those the refinement started from: the output's
        refined poses differ from them by the changes the output records."""
        searched, shifts = self.protAlign.getSearchPoses()
        self.assertEqual(searched.shape, (60, 3, 3))
        self.assertEqual(shifts.shape, (60, 2))
        arrays = convert.particles_to_arrays(self.protAlign.outputParticles,
                                             need_alignment=ALIGN_PROJ, read_images=False,
                                             columns=(REFINED_ANGLE_CHANGE,))
        np.testing.assert_allclose(rotations.angular_distance(arrays.rotations, searched),
                                   arrays.columns[REFINED_ANGLE_CHANGE], atol=1e-3)
        truth = np.load(self.protSim._getExtraPath('particles_truth.npz'))
        error = rotations.angular_distance(searched, truth['rotations'])
        self.assertGreaterEqual(np.mean(error <= GRID_STEP), 0.9, np.sort(error))

    def testPosedParticlesAreATransformOfTheInput(self):
        relations = self.proj.mapper.getRelationsByCreator(self.protAlign)
        self.assertIn(RELATION_TRANSFORM, [relation['name'] for relation in relations])

    def testSummaryAndMethods(self):
        self.assertIn('60 particles aligned', ' '.join(self.protAlign.summary()))
        self.assertIn('Rangan', ' '.join(self.protAlign.methods()))
        # Local refinement is on by default.
        self.assertIn('Poses refined locally', ' '.join(self.protAlign.summary()))
        self.assertIn('Gauss-Newton', ' '.join(self.protAlign.methods()))


class TestAlignParticlesTo2DReferences(CryoHessTestCase):
    """In-plane rotated, shifted copies of three references, without CTF."""

    ANGLES = np.deg2rad(np.arange(24) * 14.7 % 360)
    CLASSES = np.arange(24) % 3
    SHIFTS = np.array([[(i % 5) - 2, ((i * 2) % 5) - 2] for i in range(24)], dtype=float)

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Aligning rotated particles to 2D references"))
        model = random_protein_phantom(400, 30.0, rng=11, bfactor=200.0)
        volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
        projector = FourierSliceProjector(volume, dtype=np.float64)
        views = rotations.euler_to_matrix(np.array([0.0, 40.0, 120.0]),
                                          np.array([0.0, 70.0, 100.0]), np.zeros(3))
        references = projector.project(views)
        poses = np.stack([in_plane(a) @ views[c] for a, c in zip(cls.ANGLES, cls.CLASSES)])
        particles = projector.project(poses, cls.SHIFTS)
        rng = np.random.default_rng(0)
        particles += 0.05 * particles.std() * rng.standard_normal(particles.shape)
        folder = cls.proj.getTmpPath()
        mrc.write_stack(os.path.join(folder, 'references.mrcs'), references, PIXEL)
        mrc.write_stack(os.path.join(folder, 'particles.mrcs'), particles, PIXEL)
        mrc.write_volume(os.path.join(folder, 'volume.mrc'), volume, PIXEL)
        cls.protRefs = cls.newProtocol(ProtImportAverages, filesPath=folder,
                                       filesPattern='references.mrcs', samplingRate=PIXEL)
        cls.launchProtocol(cls.protRefs)
        cls.protParts = cls.newProtocol(ProtImportParticles, filesPath=folder,
                                        filesPattern='particles.mrcs', samplingRate=PIXEL)
        cls.launchProtocol(cls.protParts)
        # The FTK's shifts lie on rings of the disc: at a 0.5 px step the integer SHIFTS are
        # within 0.25 px of one (at 1 px up to 0.49 px, which turns the best angle a step).
        cls.protAlign = cls.newProtocol(CryoHessProtAlignParticles, referenceType=1,
                                        maxShift=3.0, shiftStep=0.5, numberOfThreads=1)
        cls.protAlign.inputParticles.set(cls.protParts.outputParticles)
        cls.protAlign.inputReferences.set(cls.protRefs.outputAverages)
        cls.launchProtocol(cls.protAlign)
        cls.protVolume = cls.newProtocol(ProtImportVolumes, filesPath=folder,
                                         filesPattern='volume.mrc', samplingRate=PIXEL)
        cls.launchProtocol(cls.protVolume)

    def testClassesAsReferences(self):
        """2D classes (their representatives) are references too: the same classes again."""
        prot = self.newProtocol(CryoHessProtAlignParticles, referenceType=REFERENCE_2D,
                                maxShift=3.0, shiftStep=1.0, numberOfThreads=1)
        prot.inputParticles.set(self.protParts.outputParticles)
        prot.inputReferences.set(self.protAlign.outputClasses)
        self.assertEqual(prot.validate(), [])
        self.launchProtocol(prot)
        arrays = convert.particles_to_arrays(prot.outputParticles, need_alignment=ALIGN_2D,
                                             columns=(ALIGN_TEMPLATE,), read_images=False)
        np.testing.assert_array_equal(arrays.columns[ALIGN_TEMPLATE] - 1, self.CLASSES)

    def testSwitchToVolumeNeedsRestart(self):
        """Continue after switching to a volume would keep the 2D classes: Restart is asked."""
        prot = getProtocolFromDb(self.proj.path, self.protAlign.getDbPath(),
                                 self.protAlign.getObjId())
        prot.referenceType.set(REFERENCE_VOLUME)
        prot.inputVolume.set(self.protVolume.outputVolume)
        prot.runMode.set(MODE_RESUME)
        errors = prot.validate()
        self.assertTrue(any("needs Restart" in e and "outputClasses" in e for e in errors),
                        errors)
        prot.runMode.set(MODE_RESTART)
        self.assertEqual(prot.validate(), [])

    def testAlignment2D(self):
        parts = self.protAlign.outputParticles
        self.assertEqual(parts.getAlignment(), ALIGN_2D)
        arrays = convert.particles_to_arrays(parts, need_alignment=ALIGN_2D,
                                             columns=(ALIGN_TEMPLATE,))
        np.testing.assert_array_equal(arrays.columns[ALIGN_TEMPLATE] - 1, self.CLASSES)
        angles = np.arctan2(arrays.rotations[:, 1, 0], arrays.rotations[:, 0, 0])
        step = 360.0 / self.protAlign._grid().n_angles
        angleError = np.abs((np.rad2deg(angles - self.ANGLES) + 180) % 360 - 180)
        self.assertLessEqual(angleError.max(), step)
        np.testing.assert_allclose(arrays.shifts, self.SHIFTS, atol=0.5)

    def testClasses(self):
        classes = self.protAlign.outputClasses
        self.assertSetSize(classes, 3)
        sizes = sorted(cls.getSize() for cls in classes)
        self.assertEqual(sizes, [8, 8, 8])
        self.assertTrue(any("WITHOUT CTF" in line for line in self.protAlign.summary()))

    def testViewerPlots(self):
        self.assertViewerPlots(CryoHessAlignParticlesViewer, self.protAlign)


class TestAlignVolumes(CryoHessTestCase):
    """Gaussian-atom maps of a rotated phantom are rotated back onto the reference."""

    ROTATIONS = rotations.euler_to_matrix(np.array([30.0, -100.0]), np.array([50.0, 120.0]),
                                          np.array([-20.0, 75.0]))

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Aligning rotated maps to a reference"))
        model = random_protein_phantom(500, 30.0, rng=4, bfactor=200.0)
        folder = cls.proj.getTmpPath()
        mrc.write_volume(os.path.join(folder, 'reference.mrc'),
                         atoms.gaussian_atom_volume(model, BOX, PIXEL), PIXEL)
        rng = np.random.default_rng(1)
        for i, rotation in enumerate(cls.ROTATIONS):
            moved = atoms.AtomModel(model.positions @ rotation.T, model.elements,
                                    model.bfactors)
            volume = atoms.gaussian_atom_volume(moved, BOX, PIXEL, center=np.zeros(3))
            volume += 0.1 * volume.std() * rng.standard_normal(volume.shape)
            mrc.write_volume(os.path.join(folder, 'moved_%d.mrc' % i), volume, PIXEL)
        cls.protRef = cls.newProtocol(ProtImportVolumes, filesPath=folder,
                                      filesPattern='reference.mrc', samplingRate=PIXEL)
        cls.launchProtocol(cls.protRef)
        cls.protVols = cls.newProtocol(ProtImportVolumes, filesPath=folder,
                                       filesPattern='moved_*.mrc', samplingRate=PIXEL)
        cls.launchProtocol(cls.protVols)
        cls.protAlign = cls.newProtocol(CryoHessProtAlignVolumes, numberOfThreads=1)
        cls.protAlign.inputVolumes.set(cls.protVols.outputVolumes)
        cls.protAlign.referenceVolume.set(cls.protRef.outputVolume)
        cls.launchProtocol(cls.protAlign)

    def testAlignedVolumes(self):
        volumes = self.protAlign.outputVolumes
        self.assertSetSize(volumes, 2)
        reference, _ = convert.volume_to_array(self.protRef.outputVolume)
        for volume in volumes:
            aligned, _ = convert.volume_to_array(volume, PIXEL)
            self.assertGreater(correlation(aligned, reference), 0.95)
            self.assertGreater(convert.read_column(volume, ALIGN_SCORE), 0.9)

    def testTransforms(self):
        """Output volumes keep their input's id; aligning undoes the atoms' p -> Q p."""
        sources = {volume.getObjId(): os.path.basename(volume.getFileName())
                   for volume in self.protVols.outputVolumes}
        for volume in self.protAlign.outputVolumes:
            moved = int(re.search(r'moved_(\d+)', sources[volume.getObjId()]).group(1))
            matrix = volume.getTransform().getMatrix()
            self.assertLess(rotations.angular_distance(matrix[:3, :3],
                                                       self.ROTATIONS[moved].T), 1.0)

    def testViewerPlots(self):
        self.assertViewerPlots(CryoHessAlignVolumesViewer, self.protAlign)

    def testStepsShareOneAligner(self):
        """The reference's set-up is paid once per run, not once per volume."""
        prot = self.newProtocol(CryoHessProtAlignVolumes)
        prot.inputVolumes.set(self.protVols.outputVolumes)
        prot.referenceVolume.set(self.protRef.outputVolume)
        aligner = prot._sharedAligner()
        self.assertIs(prot._sharedAligner(), aligner)
        self.assertEqual(aligner.box, BOX)
        prot.refine.set(not aligner.refine)  # a setting it depends on: a new aligner
        other = prot._sharedAligner()
        self.assertIsNot(other, aligner)
        self.assertEqual(other.refine, not aligner.refine)


class TestAlignValidation(CryoHessTestCase):
    """Bad input is refused by _validate, from file headers, with a message naming the fix;
    expensive or useless settings get a warning."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        common = dict(samplingRate=PIXEL, numberOfDefocusGroups=2, phantomAtoms=200,
                      phantomRadius=20.0, numberOfParticles=6, numberOfThreads=1)
        cls.small = cls.newProtocol(CryoHessProtSimulate, boxSize=BOX, **common)
        cls.launchProtocol(cls.small)
        cls.large = cls.newProtocol(CryoHessProtSimulate, boxSize=BOX + 8, **common)
        cls.launchProtocol(cls.large)
        folder = os.path.abspath(cls.proj.getTmpPath())
        stack = mrc.read_stack(cls.small._getExtraPath('particles.mrcs'))
        mrc.write_stack(os.path.join(folder, 'wide.mrcs'), np.zeros((3, BOX, BOX + 8)), PIXEL)
        mrc.write_stack(os.path.join(folder, 'cut.mrcs'), stack, PIXEL)
        stack[2, 5, 7] = np.nan  # particle 3
        for name, data in (('with_nan.mrcs', stack), ('slab.mrc', np.zeros((BOX - 4, BOX, BOX)))):
            with mrcfile.new(os.path.join(folder, name)) as written, warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the NaN, on purpose
                written.set_data(data.astype(np.float32))
                written.voxel_size = PIXEL
        cls.imported = {name: cls._importParticles(folder, name + '.mrcs', PIXEL)
                        for name in ('with_nan', 'wide', 'cut')}
        cls.coarse = cls._importParticles(folder, 'with_nan.mrcs', 3.0)
        # Imports link the file: cut it after the import, as a copy stopped half way would.
        os.truncate(os.path.join(folder, 'cut.mrcs'), 1024 + BOX * BOX * 4 * 3)
        cls.slab = cls.newProtocol(ProtImportVolumes, filesPath=folder, filesPattern='slab.mrc',
                                   samplingRate=PIXEL)
        cls.launchProtocol(cls.slab)

    @classmethod
    def _importParticles(cls, folder, pattern, pixel):
        protocol = cls.newProtocol(ProtImportParticles, filesPath=folder, filesPattern=pattern,
                                   samplingRate=pixel)
        return cls.launchProtocol(protocol).outputParticles

    def _errors(self, particles=None, volume=None, **kwargs):
        prot = self.newProtocol(CryoHessProtAlignParticles, numberOfThreads=1, **kwargs)
        prot.inputParticles.set(particles or self.small.outputParticles)
        prot.inputVolume.set(volume or self.small.outputVolume)
        return prot, prot.validate()

    def testValidInput(self):
        self.assertEqual(self._errors()[1], [])

    def testOtherBox(self):
        prot = self.newProtocol(CryoHessProtAlignParticles)
        prot.inputParticles.set(self.small.outputParticles)
        prot.inputVolume.set(self.large.outputVolume)
        errors = prot.validate()
        self.assertTrue(any("px wide" in e for e in errors), errors)

    def testEmptySet(self):
        empty = SetOfParticles(filename=self.proj.getTmpPath('empty_particles.sqlite'))
        empty.setSamplingRate(PIXEL)
        empty.write()
        prot = self.newProtocol(CryoHessProtAlignParticles)
        prot.inputParticles.set(empty)
        prot.inputVolume.set(self.small.outputVolume)
        self.assertIn("The set of particles is empty.", prot.validate())

    def testRankAboveRings(self):
        _, errors = self._errors(rankMode=RANK_FIXED, fixedRank=500)
        self.assertTrue(any("exceeds the number of rings" in e for e in errors), errors)

    def testResolutionBeyondNyquist(self):
        _, errors = self._errors(maxResolution=PIXEL)
        self.assertTrue(any("Nyquist" in e for e in errors), errors)

    def testVolumeBoxMismatch(self):
        prot = self.newProtocol(CryoHessProtAlignVolumes)
        prot.inputVolumes.set(self.large.outputVolume)
        prot.referenceVolume.set(self.small.outputVolume)
        errors = prot.validate()
        self.assertTrue(any("px wide" in e for e in errors), errors)
        # Named as the GUI names it: the run's label and the output, not an object id.
        self.assertTrue(any("%s.outputVolume" % self.large.getRunName() in e for e in errors),
                        errors)

    def assertMessage(self, fragment, messages):
        self.assertTrue(any(fragment in message for message in messages), messages)

    def testBadFilesFromHeaders(self):
        """Non-square particles, a truncated stack and a non-cubic map are refused from their
        headers; a pixel size that differs from the reference's too."""
        self.assertMessage("needs square images",
                           self._errors(particles=self.imported['wide'])[1])
        self.assertMessage("truncated", self._errors(particles=self.imported['cut'])[1])
        self.assertMessage("Å/px", self._errors(particles=self.coarse)[1])
        _, errors = self._errors(volume=self.slab.outputVolume)
        self.assertMessage("needs a cubic map", errors)
        self.assertMessage("reference volume", errors)
        for inputs in ((self.slab.outputVolume, self.small.outputVolume),
                       (self.small.outputVolume, self.slab.outputVolume)):
            prot = self.newProtocol(CryoHessProtAlignVolumes)
            prot.inputVolumes.set(inputs[0])
            prot.referenceVolume.set(inputs[1])
            errors = prot.validate()
            self.assertMessage("needs a cubic map", errors)
            self.assertMessage("%s.outputVolume" % self.slab.getRunName(), errors)

    def testNanParticleNamedByLocation(self):
        """Particle 3 of the stack has a NaN pixel: the failure names 3@file and its id."""
        prot, errors = self._errors(particles=self.imported['with_nan'])
        self.assertEqual(errors, [])
        self.proj.launchProtocol(prot, wait=True)
        self.assertTrue(prot.isFailed())
        message = prot.getErrorMessage()
        self.assertIn("1 of 6 particles contain NaN", message)
        self.assertRegex(message, r"pixels: 3@\S*with_nan\.mrcs \(id 3\);")

    def testDefaultShiftRangeFollowsTheBox(self):
        """maxShift -1 (the default) searches 5 % of the box at 0.5 px, by the FTK, and the
        run reports the radius it searched."""
        prot, errors = self._errors(angularStep=15.0, localRefinement=False)
        self.assertEqual(errors, [])
        self.assertEqual((prot.maxShift.get(), prot.shiftStep.get()), (-1.0, 0.5))
        self.assertAlmostEqual(prot._maxShift(), 0.05 * BOX)
        self.assertAlmostEqual(self._errors(maxShift=2.0)[0]._maxShift(), 2.0)
        self.launchProtocol(prot)
        arrays = convert.particles_to_arrays(prot.outputParticles, need_alignment=ALIGN_PROJ,
                                             read_images=False)
        self.assertLessEqual(np.linalg.norm(arrays.shifts, axis=1).max(), 0.05 * BOX + 1e-9)
        self.assertIn("shifts up to 1.6 px in steps of 0.5 px by the factorised translation",
                      ' '.join(prot.methods()))

    def testWarnings(self):
        """Huge reference sets, bands too coarse to align and shifts beyond the box."""
        # The settings' own warnings: a CPU-only machine adds the 'Use GPU' one.
        self.assertEqual(self._errors()[0]._warnings(), [])
        prot, errors = self._errors(angularStep=0.5)
        self.assertEqual(errors, [])
        self.assertMessage("168615 projections: 6.5 GB of references", prot.warnings())
        prot, errors = self._errors(maxResolution=1000.0)
        self.assertEqual(errors, [])
        self.assertMessage("only 2 rings x 4 in-plane angles", prot.warnings())
        prot, errors = self._errors(maxShift=500.0)
        self.assertEqual(errors, [])
        self.assertMessage("moves the particles out of their 32-px box", prot.warnings())
        for settings, fragment in ((dict(maxResolution=1000.0), "only 2 shells"),
                                   (dict(maxShift=500.0), "moves the volumes out")):
            prot = self.newProtocol(CryoHessProtAlignVolumes, **settings)
            prot.inputVolumes.set(self.small.outputVolume)
            prot.referenceVolume.set(self.small.outputVolume)
            self.assertEqual(prot.validate(), [])
            self.assertMessage(fragment, prot.warnings())
