"""Rank diagnostics of a radial-SVD alignment (what the viewer shows, computed by the
protocol): against the aligner's own landscapes and a brute-force argmax count; and the
viewer plotting them without aligning anything."""
from unittest import mock

import numpy as np
import pytest
from pyworkflow.protocol.constants import MODE_RESUME
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import convert
from cryohess_plugin.constants import ALIGN_TEMPLATE

from cryohess_plugin.core import rotations
from cryohess_plugin.core.alignment import RadialSVDAligner
from cryohess_plugin.core.alignment.diagnostics import (RankDiagnostics, argmax_agreement,
                                                        rank_diagnostics)
from cryohess_plugin.core.errors import ShapeError
from cryohess_plugin.core.polar import PolarGrid, polar_transform
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.synthetic import simulate

from cryohess_plugin.protocols import CryoHessProtAlignParticles
from cryohess_plugin.viewers import CryoHessAlignParticlesViewer

from .helpers import phantom_volume
from .scipion_base import CryoHessTestCase

BOX, PIXEL = 32, 3.0


@pytest.fixture(scope="module")
def setup():
    volume = phantom_volume(BOX, PIXEL, n_atoms=300)
    grid = PolarGrid.from_max_frequency(BOX, 8.0)
    template_rotations = rotations.random_rotations(24, np.random.default_rng(1))
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    templates = projector.project_polar(template_rotations, grid.radii, grid.n_angles)
    particles = simulate.simulate_particles(volume, 10, BOX, PIXEL, rng=3, n_groups=1, snr=1.0,
                                            shift_sigma=0.0, keep_clean=False, backend="cpu")
    images = polar_transform(particles.images, grid, backend="cpu")
    aligner = RadialSVDAligner(grid, templates, dtype=np.float64, backend="cpu")
    result = aligner.align(images, ctf_params=particles.ctf_params, pixel_size=PIXEL)
    return aligner, images, particles, result


def test_diagnostics_match_the_aligners_landscapes(setup, tmp_path):
    aligner, images, particles, result = setup
    rings = aligner.grid.n_rings
    references = result.template
    shifts = np.zeros((len(references), 2))
    diagnostics = rank_diagnostics(aligner, images, references, shifts, run_rank=3,
                                   ctf_params=particles.ctf_params, pixel_size=PIXEL)
    assert list(diagnostics.landscape_ranks) == sorted({1, 2, 3, 4, rings})
    rows = np.arange(len(references))
    for rank, stored in zip(diagnostics.landscape_ranks, diagnostics.landscapes):
        direct = aligner.landscapes(images, rank=int(rank), ctf_params=particles.ctf_params,
                                    pixel_size=PIXEL, shifts=shifts)[rows, references]
        np.testing.assert_allclose(stored, direct, rtol=1e-5, atol=1e-5 * np.abs(direct).max())
    assert diagnostics.sweep_ranks[-1] == rings and diagnostics.sweep_ranks[0] == 1
    assert diagnostics.correlation[-1] == pytest.approx(1.0)
    assert diagnostics.agreement[-1] == 1.0
    assert np.all(np.diff(diagnostics.sweep_ranks) > 0)
    assert diagnostics.pairs == len(references) * 24 and np.all(diagnostics.align_seconds > 0)
    path = str(tmp_path / "diagnostics.npz")
    diagnostics.save(path)
    loaded = RankDiagnostics.load(path)
    assert loaded.run_rank == 3 and isinstance(loaded.pairs, int)
    np.testing.assert_array_equal(loaded.landscapes, diagnostics.landscapes)


def test_argmax_agreement_counts_by_hand():
    rng = np.random.default_rng(0)
    full = rng.standard_normal((50, 3, 8))
    same = full.copy()
    assert argmax_agreement(same, full) == 1.0
    moved = full.copy()
    expected = 0
    for i in range(50):
        reference, angle = np.unravel_index(full[i].argmax(), full[i].shape)
        # Move the maximum by i % 4 angle steps (cyclic): within one step still agrees.
        step = i % 4
        moved[i, reference, (angle + step) % 8] = full[i].max() + 1.0
        expected += step <= 1
    assert argmax_agreement(moved, full) == pytest.approx(expected / 50)
    with pytest.raises(ShapeError):
        argmax_agreement(full[:, :2], full)


class TestAlignmentViewerReadsTheDiagnostics(CryoHessTestCase):
    """The protocol's last step writes the diagnostics; the viewer only reads them."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Aligning particles with rank diagnostics"))
        cls.protSim = cls.launchSimulation('particles', dict(
            boxSize=BOX, samplingRate=PIXEL, numberOfParticles=24, numberOfDefocusGroups=2,
            phantomAtoms=300, phantomRadius=30.0, snr=10.0, shiftSigma=1.0, randomSeed=1,
            numberOfThreads=1))
        cls.protAlign = cls.newProtocol(CryoHessProtAlignParticles, angularStep=15.0,
                                        maxShift=2.0, shiftStep=1.0, particlesPerBatch=12,
                                        diagnosticParticles=8, numberOfThreads=1)
        cls.protAlign.inputParticles.set(cls.protSim.outputParticles)
        cls.protAlign.inputVolume.set(cls.protSim.outputVolume)
        cls.launchProtocol(cls.protAlign)

    def testDiagnosticsOfTheFirstParticles(self):
        diagnostics = RankDiagnostics.load(self.protAlign._getFileName('diagnostics'))
        self.assertEqual(len(diagnostics.references), 8)
        assigned = [convert.read_column(particle, ALIGN_TEMPLATE) - 1 for particle in
                    self.protAlign.outputParticles.iterItems(orderBy='id', limit=8)]
        np.testing.assert_array_equal(diagnostics.references, assigned)
        self.assertEqual(diagnostics.agreement[-1], 1.0)
        self.assertIn('rankDiagnosticsStep', [step.funcName.get()
                                              for step in self.protAlign.loadSteps()])

    def testViewerPlotsWithoutAligning(self):
        with mock.patch.object(RadialSVDAligner, 'landscapes', side_effect=AssertionError(
                "the viewer computed landscapes")), \
                mock.patch.object(RadialSVDAligner, 'align', side_effect=AssertionError(
                    "the viewer aligned")):
            self.assertViewerPlots(CryoHessAlignParticlesViewer, self.protAlign)

    def testContinueKeepsTheDiagnosticsUnlessTheirSettingsChange(self):
        prot = self.newProtocol(CryoHessProtAlignParticles, angularStep=15.0, maxShift=2.0,
                                shiftStep=1.0, particlesPerBatch=12, diagnosticParticles=4,
                                localRefinement=False, numberOfThreads=1)
        prot.inputParticles.set(self.protSim.outputParticles)
        prot.inputVolume.set(self.protSim.outputVolume)
        self.launchProtocol(prot)

        def diagnosticsEnd():
            return [step.endTime.get() for step in prot.loadSteps()
                    if step.funcName.get() == 'rankDiagnosticsStep']

        first = diagnosticsEnd()
        prot.localRefinement.set(True)
        prot.runMode.set(MODE_RESUME)
        self.launchProtocol(prot)
        self.assertEqual(diagnosticsEnd(), first)
        prot.diagnosticParticles.set(6)
        self.launchProtocol(prot)
        self.assertNotEqual(diagnosticsEnd(), first)
        self.assertEqual(len(RankDiagnostics.load(prot._getFileName('diagnostics')).references),
                         6)
