"""A map viewer that needs nothing but matplotlib, so that every output map of a pip-only
installation can be looked at (Scipion's own volume viewers need Xmipp or ChimeraX), and a
ChimeraX script of the maps, opened in ChimeraX where it is installed."""
import os

from matplotlib.widgets import Slider
from pwem.objects import SetOfVolumes, Volume
from pwem.viewers import EmPlotter
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

from cryohess_plugin import chimerax, convert

from .plotting import SECTION_AXES, SECTIONS, colorbar, imagePanel

#: Maps of a set shown at most, one window each.
MAX_VOLUMES = 8


class CryoHessVolumeViewer(Viewer):
    """Orthogonal sections of a map with a slider through each axis, and its projections
    along the same axes, on one colour scale."""
    _label = 'cryohess map sections'
    _name = _label  # what an output's right-click menu offers
    _targets = [Volume, SetOfVolumes]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        if isinstance(obj, Volume):
            return [volumePlotter(obj)]
        return [volumePlotter(volume.clone())
                for volume in obj.iterItems(orderBy='id', limit=MAX_VOLUMES)]


def volumePlotter(volume):
    """Sections through the centre (top; a slider below each moves it) and projections
    (bottom) of ``volume``."""
    array, pixel = convert.volume_to_array(volume)
    box = array.shape[0]
    title = '%s  (%d px, %.3g Å/px)' % (volume.getObjLabel() or volume.getFileName(), box, pixel)
    plotter = EmPlotter(x=2, y=3, mainTitle=title, figsize=(10, 7.5))
    limits = dict(vmin=float(array.min()), vmax=float(array.max()))
    sliders = []
    for name, section in SECTIONS:
        axes = imagePanel(plotter, 'section %s' % name, section(array, box // 2), 'gray',
                          SECTION_AXES[name], **limits)
        sliders.append((axes, section))
    projections = []
    for axis, (name, _) in enumerate(SECTIONS):
        projections.append(imagePanel(plotter, 'projection along %s' % 'zyx'[axis],
                                      array.sum(axis=axis), 'gray', SECTION_AXES[name]))
    colorbar(plotter, sliders[0][0].images[0], 'density (sections)', bottom=0.55, top=0.9)
    figure = plotter.getFigure()
    # The widgets must live as long as the window: the plotter keeps them.
    plotter.sliders = [_sectionSlider(figure, axes, section, array) for axes, section in sliders]
    return plotter


def _sectionSlider(figure, axes, section, array):
    """A slider under ``axes`` that moves its section through the map."""
    box = axes.get_position()
    sliderAxes = figure.add_axes([box.x0, box.y0 - 0.04, box.width, 0.02])
    slider = Slider(sliderAxes, 'slice', 0, array.shape[0] - 1, valinit=array.shape[0] // 2,
                    valstep=1)

    def move(value):
        axes.images[0].set_data(section(array, int(value)))
        figure.canvas.draw_idle()

    slider.on_changed(move)
    return slider


class CryoHessChimeraXViewer(Viewer):
    """Open a map, or the maps of a set, in ChimeraX with their voxel size and origin,
    through a ``.cxc`` script written next to the run's results. Without ChimeraX the
    viewer says where the script is."""
    _label = 'cryohess maps in ChimeraX'
    _name = _label  # what an output's right-click menu offers
    _targets = [Volume, SetOfVolumes]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        volumes = ([obj] if isinstance(obj, Volume) else
                   [volume.clone() for volume in obj.iterItems(orderBy='id')])
        path = chimerax.write_script(self._scriptPath(obj), volumes)
        return [self.infoMessage(chimerax.open_script(path), 'ChimeraX')]

    def _scriptPath(self, obj):
        name = 'chimerax_%s.cxc' % (obj.getLastName() or obj.strId())
        folder = (self.protocol._getExtraPath() if self.protocol is not None
                  else self.getProject().getTmpPath())
        return os.path.join(folder, name)
