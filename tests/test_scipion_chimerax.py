"""ChimeraX scripts of output maps and soft-mode morphs: their commands, the viewers that
write them, and the fallback message when ChimeraX is not installed."""
import os
import stat
import time
from unittest import mock

from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin import chimerax, convert
from cryohess_plugin.constants import (EXPERIMENT_DESIGN, HETEROGENEITY_RIGID_REGION,
                                       NOISE_SIGMA, SOFT_MODE_INDEX, SOFT_MODE_SIGN)
from cryohess_plugin.protocols import CryoHessProtSoftModes
from cryohess_plugin.viewers import CryoHessChimeraXViewer, CryoHessSoftModesViewer
from .scipion_base import CryoHessTestCase
from .scipion_data import ANALYSIS, SIMULATION


def scriptLines(path):
    with open(path) as script:
        return [line.strip() for line in script if line.strip()]


class TestChimeraXScripts(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Two conformations and the soft modes of one of them"))
        cls.simulation = cls.launchSimulation('two states', SIMULATION, numberOfParticles=10,
                                              heterogeneity=HETEROGENEITY_RIGID_REGION)
        cls.modes = cls.newProtocol(CryoHessProtSoftModes, experimentSource=EXPERIMENT_DESIGN,
                                    numberOfImages=200, defocusValues='12000 20000',
                                    noiseLevelType=NOISE_SIGMA, noiseSigma=0.5,
                                    **dict(ANALYSIS, numberOfModes=2))
        cls.modes.inputVolume.set(cls.simulation.outputVolume)
        cls.launchProtocol(cls.modes)
        cls.noChimeraX = cls.proj.getTmpPath('empty_path')
        os.makedirs(cls.noChimeraX, exist_ok=True)

    def _viewer(self, viewerClass, protocol):
        viewer = viewerClass(project=self.proj, protocol=protocol)
        if hasattr(viewer, 'setProtocol'):  # a ProtocolViewer builds its form from it
            viewer.setProtocol(protocol)
        return viewer

    def testScriptOpensEachMapWithVoxelSizeAndOrigin(self):
        volumes = [volume.clone() for volume in self.simulation.outputVolumes]
        path = chimerax.write_script(self.proj.getTmpPath('states.cxc'), volumes)
        lines = scriptLines(path)
        self.assertEqual(len(lines), 2 * len(volumes) + 2)
        for model, volume in enumerate(volumes, start=1):
            mapFile = os.path.abspath(convert.image_file(volume.getFileName()))
            self.assertEqual(lines[2 * model - 2], 'open "%s" format mrc' % mapFile)
            x, y, z = volume.getOrigin(force=True).getShifts()
            self.assertEqual(lines[2 * model - 1].split(),
                             ['volume', '#%d' % model, 'voxelSize',
                              '%.6g' % volume.getSamplingRate(), 'origin',
                              '%.6g,%.6g,%.6g' % (x, y, z), 'style', 'surface', 'sdLevel',
                              '%g' % chimerax.SD_LEVEL])
            # Scipion's default origin: the map's centre at (0, 0, 0).
            self.assertAlmostEqual(x, -SIMULATION['boxSize'] / 2 * volume.getSamplingRate())
        self.assertEqual(lines[-2:], ['tile #1-2', 'view'])

    def testViewerWithoutChimeraXSaysWhereTheScriptIs(self):
        viewer = self._viewer(CryoHessChimeraXViewer, self.simulation)
        with mock.patch.dict(os.environ, {'PATH': self.noChimeraX}):
            views = viewer._visualize(self.simulation.outputVolume)
        message = views[0].getMessage()
        path = self.simulation._getExtraPath('chimerax_outputVolume.cxc')
        self.assertIn('not found', message)
        self.assertIn(path, message)
        self.assertEqual(len(scriptLines(path)), 3)

    def testViewerStartsChimeraXOnTheScript(self):
        folder = os.path.abspath(self.proj.getTmpPath('fake_chimerax'))
        os.makedirs(folder, exist_ok=True)
        record = os.path.join(folder, 'arguments.txt')
        program = os.path.join(folder, 'chimerax')
        with open(program, 'w') as fake:
            fake.write('#!/bin/sh\necho "$@" > %s\n' % record)
        os.chmod(program, os.stat(program).st_mode | stat.S_IEXEC)
        viewer = self._viewer(CryoHessChimeraXViewer, self.simulation)
        with mock.patch.dict(os.environ, {'PATH': folder}):
            message = viewer._visualize(self.simulation.outputVolumes)[0].getMessage()
        path = self.simulation._getExtraPath('chimerax_outputVolumes.cxc')
        self.assertIn('Opened %s' % path, message)
        deadline = time.time() + 10
        while not os.path.exists(record) and time.time() < deadline:
            time.sleep(0.05)
        with open(record) as arguments:
            self.assertEqual(arguments.read().split(), [os.path.abspath(path)])

    def testSoftModeMorphThroughTheInputMap(self):
        viewer = self._viewer(CryoHessSoftModesViewer, self.modes)
        viewer.modeNumber.set(1)
        with mock.patch.dict(os.environ, {'PATH': self.noChimeraX}):
            message = viewer._showModeMorph()[0].getMessage()
        path = self.modes._getExtraPath('mode_1_morph.cxc')
        self.assertIn(path, message)
        nearby = {convert.read_column(volume, SOFT_MODE_SIGN): volume.getFileName()
                  for volume in self.modes.outputPerturbed
                  if convert.read_column(volume, SOFT_MODE_INDEX) == 1}
        expected = [nearby[-1], self.simulation.outputVolume.getFileName(), nearby[1]]
        lines = scriptLines(path)
        opened = [line.split('"')[1] for line in lines if line.startswith('open ')]
        self.assertEqual(opened, [os.path.abspath(convert.image_file(name))
                                  for name in expected])
        self.assertEqual(lines[-2:], ['volume morph #1-3 frames %d playStep %.4g'
                                      % (chimerax.MORPH_FRAMES, 1.0 / chimerax.MORPH_FRAMES),
                                      'view'])

    def testUnconvergedModeHasNoMorph(self):
        viewer = self._viewer(CryoHessSoftModesViewer, self.modes)
        viewer.modeNumber.set(99)
        message = viewer._showModeMorph()[0].getMessage()
        self.assertIn('no nearby volumes', message)
