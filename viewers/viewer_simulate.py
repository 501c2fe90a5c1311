"""Plots of a simulated data set: particles, true views, defocus and conformations."""
import numpy as np
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import convert
from cryohess_plugin.constants import CONFORMATION, DEFOCUS_GROUP
from cryohess_plugin.core.rotations import direction_to_euler, projection_directions
from cryohess_plugin.protocols import CryoHessProtSimulate

from .plotting import imagePanel


class CryoHessSimulateViewer(ProtocolViewer):
    """Matplotlib views of the ground truth of a simulated data set."""
    _label = 'viewer simulate'
    _targets = [CryoHessProtSimulate]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('numberOfImages', params.IntParam, default=12,
                      validators=[params.Positive], label='Particles in the gallery',
                      help="Number of particles (the first ones) shown in the gallery.")
        form.addParam('displayGallery', params.LabelParam, label='Particle gallery',
                      help="The first particles with their defocus group and conformation.")
        form.addParam('displayAngularDistribution', params.LabelParam,
                      label='Angular distribution',
                      help="True viewing directions of all particles: polar plot of the "
                           "rot angle (azimuth) against the tilt angle in degrees.")
        form.addParam('displayDefocus', params.LabelParam, label='Defocus histogram',
                      help="Histogram of the mean defocus (U + V) / 2 of the particles.")
        form.addParam('displayConformation', params.LabelParam,
                      label='Conformation histogram',
                      help="Histogram of the per-particle conformation coordinate "
                           "(all 0 without heterogeneity).")

    def _getVisualizeDict(self):
        return {'displayGallery': self._showGallery,
                'displayAngularDistribution': self._showAngularDistribution,
                'displayDefocus': self._showDefocus,
                'displayConformation': self._showConformation}

    # --------------------------- SHOW functions ------------------------------
    def _showGallery(self, paramName=None):
        arrays = convert.particles_to_arrays(self._particles(), need_alignment=False,
                                             columns=(CONFORMATION, DEFOCUS_GROUP),
                                             limit=self.numberOfImages.get())
        count = len(arrays.images)
        columns = min(count, 4)
        rows = -(-count // columns)
        plotter = EmPlotter(x=rows, y=columns, mainTitle='Simulated particles',
                            figsize=(2.2 * columns, 2.4 * rows))
        for image, partId, conformation, group in zip(
                arrays.images, arrays.ids, arrays.columns[CONFORMATION],
                arrays.columns[DEFOCUS_GROUP]):
            imagePanel(plotter, '#%d  group %d  t=%.2f' % (partId, group, conformation), image,
                       'gray')
        return [plotter]

    def _showAngularDistribution(self, paramName=None):
        arrays = convert.particles_to_arrays(self._particles(), need_alignment=True,
                                             read_images=False)
        rot, tilt = direction_to_euler(projection_directions(arrays.rotations))
        plotter = EmPlotter(mainTitle='True viewing directions')
        plotter.plotAngularDistribution('%d particles' % len(rot), np.deg2rad(rot), tilt)
        return [plotter]

    def _showDefocus(self, paramName=None):
        arrays = convert.particles_to_arrays(self._particles(), need_ctf=True,
                                             need_alignment=False, read_images=False)
        defocus = [0.5 * (ctf.defocus_u + ctf.defocus_v) for ctf in arrays.ctfs]
        plotter = EmPlotter(mainTitle='Defocus of the particles')
        plotter.createSubPlot('Mean defocus', 'Defocus (Å)', 'Particles')
        plotter.plotHist(defocus, nbins=min(50, max(5, len(set(defocus)))))
        return [plotter]

    def _showConformation(self, paramName=None):
        arrays = convert.particles_to_arrays(self._particles(), need_alignment=False,
                                             columns=(CONFORMATION,), read_images=False)
        plotter = EmPlotter(mainTitle='Conformations of the particles')
        plotter.createSubPlot('Conformation coordinate t', 't', 'Particles')
        plotter.plotHist(arrays.columns[CONFORMATION], nbins=20)
        return [plotter]

    # --------------------------- UTILS functions -----------------------------
    def _particles(self):
        return self.protocol.outputParticles
