"""The matplotlib map viewer: offered for every Volume and SetOfVolumes, it draws the
map's own sections and projections, and its sliders move the sections."""
import os

import numpy as np
from pwem.objects import SetOfVolumes, Volume
from pyworkflow.tests import setupTestProject
import pwem
from pyworkflow.viewer import DESKTOP_TKINTER

from cryohess_plugin import convert
from cryohess_plugin.viewers import CryoHessVolumeViewer
from .scipion_base import CryoHessTestCase


class TestVolumeViewer(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation(
            'map', dict(boxSize=24, samplingRate=2.0, numberOfParticles=4,
                        numberOfDefocusGroups=1, phantomAtoms=200, phantomRadius=18.0,
                        snr=10.0, randomSeed=2, numberOfThreads=1))
        cls.volume = cls.simulation.outputVolume
        cls.array, _ = convert.volume_to_array(cls.volume)

    def testOfferedForVolumesAndSets(self):
        for target in (Volume, SetOfVolumes):
            self.assertIn(CryoHessVolumeViewer,
                          pwem.Domain.findViewers(target(), DESKTOP_TKINTER))

    def testSectionsAndProjectionsOfTheMap(self):
        plotter, = CryoHessVolumeViewer(project=self.proj)._visualize(self.volume)
        axes = plotter.getFigure().axes
        centre = self.array.shape[0] // 2
        np.testing.assert_array_equal(axes[0].images[0].get_array(), self.array[centre])
        np.testing.assert_allclose(axes[3].images[0].get_array(), self.array.sum(axis=0),
                                   rtol=1e-6)
        plotter.sliders[0].set_val(3)
        np.testing.assert_array_equal(axes[0].images[0].get_array(), self.array[3])
        path = os.path.join(self.proj.path, 'volume_viewer.png')
        plotter.savefig(path)
        self.assertGreater(os.path.getsize(path), 1000)
        plotter.close()

    def testOneWindowPerMapOfASet(self):
        volumes = SetOfVolumes(filename=self.proj.getTmpPath('volumes.sqlite'))
        volumes.setSamplingRate(self.volume.getSamplingRate())
        for _ in range(2):
            copy = self.volume.clone()
            copy.cleanObjId()
            volumes.append(copy)
        volumes.write()
        plotters = CryoHessVolumeViewer(project=self.proj)._visualize(volumes)
        self.assertEqual(len(plotters), 2)
        for plotter in plotters:
            plotter.close()
