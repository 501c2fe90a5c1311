"""Plots of a micrograph EM run: convergence, shift prior, the map per stage, an FSC against
a chosen reference and the picks drawn over a micrograph."""
import os

import numpy as np
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import convert
from cryohess_plugin.constants import PICK_SCORE
from cryohess_plugin.core import fourier
from cryohess_plugin.core.micrograph_em import (MicrographEMResult, PickingCurves,
                                                SphericalBesselBasis, align_coefficients,
                                                resample_volume)
from cryohess_plugin.core.micrograph_em.em import max_degree_of
from cryohess_plugin.protocols import CryoHessProtMicrographEM

from .plotting import SECTION_AXES, SECTIONS, imagePanel


class CryoHessMicrographEMViewer(ProtocolViewer):
    """Matplotlib views of a micrograph EM run."""
    _label = 'viewer micrograph EM'
    _targets = [CryoHessProtMicrographEM]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayConvergence', params.LabelParam, label='Convergence',
                      help="Mean log-likelihood per patch of the held-out patches (at each "
                           "new map) and of the minibatch, per iteration of every start; "
                           "vertical lines mark the stages (degree in the legend).")
        form.addParam('displayShiftPrior', params.LabelParam, label='Shift prior',
                      help="The prior mass of 'empty' per iteration, and the final prior of "
                           "the non-empty shifts as an image (row shift down, column shift "
                           "across).")
        form.addParam('displayVolume', params.LabelParam, label='Map per stage',
                      help="Central sections of the map at the end of every stage. The "
                           "final map is extra/volume.mrc (ChimeraX: open it, or run "
                           "extra/volume.cxc).")
        form.addParam('referenceVolume', params.PointerParam, pointerClass='Volume',
                      allowsNull=True, label='Reference volume',
                      help="A map to compare with: resampled to the working pixel size and "
                           "patch box, expanded in the same basis, then the estimate is "
                           "rotated (and mirrored) onto it.")
        form.addParam('displayFsc', params.LabelParam, label='FSC',
                      help="FSC per Fourier shell after the best rotation and reflection: "
                           "against the reference volume when one is chosen, otherwise of "
                           "every other start against the best one (do the starts agree?).")
        form.addParam('micrographNumber', params.IntParam, default=1,
                      validators=[params.Positive], label='Micrograph',
                      help="Which micrograph (1 = the first of the set) the picks are drawn "
                           "on.")
        form.addParam('displayPicks', params.LabelParam, label='Picks on the micrograph',
                      help="The micrograph with a circle of the particle's size at every "
                           "pick, coloured by its score 1 - P(empty), and the histogram of "
                           "the scores of all picks.")

        form.addParam('displayPickingCurves', params.LabelParam, label='Picking over SNR',
                      help="Only for a run given reference coordinates: the F1 of 'holds a "
                           "particle' and of 'empty' of the posterior picks and the share of "
                           "at least half-visible reference particles whose shift is found "
                           "within 1 px, at the data's SNR (Eq. 4 of the paper, under the "
                           "estimated map and noise) and at lower SNRs made by adding noise; "
                           "the dashed line is the F1 of calling every patch empty.")

    def _getVisualizeDict(self):
        shows = {'displayConvergence': self._showConvergence,
                 'displayShiftPrior': self._showShiftPrior,
                 'displayVolume': self._showVolume, 'displayFsc': self._showFsc,
                 'displayPicks': self._showPicks}
        if os.path.exists(self.protocol._getFileName('pickingCurves')):
            shows['displayPickingCurves'] = self._showPickingCurves
        return shows

    # --------------------------- SHOW functions ------------------------------
    def _showConvergence(self, paramName=None):
        result = self._result()
        plotter = EmPlotter(x=1, y=2, mainTitle='Micrograph EM convergence', figsize=(11, 4))
        for key, title in (('heldout_loglik', 'Held-out patches'),
                           ('batch_loglik', 'Minibatch')):
            axes = plotter.createSubPlot(title, 'Iteration', 'Log-likelihood per patch')
            for start in range(len(result.start_scores)):
                values = self._history(result, start, key)
                axes.plot(np.arange(1, len(values) + 1), values,
                          label='start %d%s' % (start + 1,
                                                ' (best)' if start == result.best_start else ''))
            degrees = self._history(result, result.best_start, 'degree')
            for i in np.flatnonzero(np.diff(degrees)):
                axes.axvline(i + 1.5, color='gray', linestyle=':')
            axes.legend(fontsize=8, title='l_max %s' % sorted({int(d) for d in degrees}))
        return [plotter]

    def _showShiftPrior(self, paramName=None):
        result = self._result()
        box = result.box
        plotter = EmPlotter(x=1, y=2, mainTitle='Shift prior', figsize=(10, 4))
        axes = plotter.createSubPlot('Prior of empty patches', 'Iteration', 'Mass of empty')
        for start in range(len(result.start_scores)):
            values = self._history(result, start, 'empty_mass')
            axes.plot(np.arange(1, len(values) + 1), values, label='start %d' % (start + 1))
        axes.legend(fontsize=8)
        side = 2 * box - 1
        image = result.shift_prior.reshape(side, side)
        panel = imagePanel(plotter, 'Non-empty shifts (empty %.3f)' % result.empty_mass,
                           image[::-1], 'viridis', ('column shift', 'row shift'))
        panel.figure.colorbar(panel.images[0], ax=panel, label='prior mass')
        return [plotter]

    def _showVolume(self, paramName=None):
        result = self._result()
        stages = sorted(result.stages, key=int) or ['final']
        plotter = EmPlotter(x=len(stages), y=3, mainTitle='Map per stage',
                            figsize=(8, 2.6 * len(stages)))
        for stage in stages:
            if stage == 'final':
                volume, degree = result.volume, result.max_degree
            else:
                coefficients = np.asarray(result.stages[stage])
                degree = max_degree_of(result.box, coefficients.size)
                volume = SphericalBesselBasis.create(result.box, degree).to_volume(coefficients)
            centre = volume.shape[0] // 2
            for name, take in SECTIONS:
                imagePanel(plotter, 'l_max %d, %s' % (degree, name), take(volume, centre),
                           'gray', SECTION_AXES[name])
        return [plotter]

    def _showFsc(self, paramName=None):
        result = self._result()
        basis = result.basis()
        if self.referenceVolume.get() is not None:
            reference, pixel = convert.volume_to_array(self.referenceVolume.get())
            resampled = resample_volume(reference, pixel, result.box, result.pixel_size)
            pairs = {'estimate': (basis.from_volume(resampled), result.coefficients)}
            title = 'FSC against the reference'
        else:
            pairs = {'start %d' % (start + 1): (result.coefficients, coefficients)
                     for start, coefficients in enumerate(result.start_coefficients)
                     if start != result.best_start}
            title = 'FSC of the starts against the best one (start %d)' % (
                result.best_start + 1)
        plotter = EmPlotter(mainTitle=title)
        axes = plotter.createSubPlot(title, 'Frequency (1/Å)', 'FSC')
        for label, (reference, estimate) in pairs.items():
            alignment = align_coefficients(basis, reference, estimate)
            frequency = np.arange(alignment.fsc.size) / (result.box * result.pixel_size)
            axes.plot(frequency, alignment.fsc, marker='o', label='%s (correlation %.3f%s)' % (
                label, alignment.correlation, ', mirrored' if alignment.reflected else ''))
        if pairs:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, 'The run had one start: choose a reference volume to compare '
                      'with.', ha='center', transform=axes.transAxes)
        for threshold in fourier.FSC_THRESHOLDS:
            axes.axhline(threshold, color='gray', linestyle=':')
        axes.set_ylim(-0.1, 1.05)
        return [plotter]

    def _showPicks(self, paramName=None):
        coordinates = getattr(self.protocol, 'outputCoordinates', None)
        mics = self.protocol._micrographs()
        index = min(self.micrographNumber.get(), len(mics)) - 1
        mic = mics[index]
        image = convert.read_image(mic)
        plotter = EmPlotter(x=1, y=2, mainTitle='Picks on %s' % mic.getMicName(),
                            figsize=(11, 5))
        axes = plotter.createSubPlot('Picks', 'x (px)', 'y (px)')
        axes.imshow(image, cmap='gray', origin='upper')
        scores = []
        if coordinates is not None:
            radius = 0.5 * coordinates.getBoxSize()
            points = [(c.getX(), c.getY(), float(getattr(c, PICK_SCORE)))
                      for c in coordinates.iterItems() if c.getMicId() == mic.getObjId()]
            scores = [float(getattr(c, PICK_SCORE)) for c in coordinates.iterItems()]
            if points:
                from matplotlib.collections import PatchCollection
                from matplotlib.patches import Circle
                x, y, score = np.array(points).T
                circles = PatchCollection([Circle((cx, cy), radius) for cx, cy in zip(x, y)],
                                          cmap='plasma', facecolors='none', linewidths=1.2)
                circles.set_array(score)
                circles.set_clim(0.5, 1.0)
                circles.set_facecolor('none')
                axes.add_collection(circles)
                axes.figure.colorbar(circles, ax=axes, label='score 1 - P(empty)')
        histogram = plotter.createSubPlot('Scores of all picks', 'Score', 'Picks')
        if scores:
            histogram.hist(scores, bins=20, range=(0.5, 1.0))
        return [plotter]

    def _showPickingCurves(self, paramName=None):
        curves = PickingCurves.load(self.protocol._getFileName('pickingCurves'))
        plotter = EmPlotter(mainTitle='Posterior picking over SNR (%d patches)'
                            % curves.patches)
        axes = plotter.createSubPlot('Posterior picking against the reference coordinates',
                                     'SNR', 'Score')
        for values, label in ((curves.f1_nonempty, "F1 of 'holds a particle'"),
                              (curves.f1_empty, "F1 of 'empty'"),
                              (curves.shift_accuracy, 'shift within 1 px')):
            axes.plot(curves.snr, values, marker='o', label=label)
        axes.axhline(curves.always_empty_f1, color='gray', linestyle='--',
                     label="F1 of 'empty', every patch called empty")
        axes.axvline(curves.snr[0], color='gray', linestyle=':', label="the data's SNR")
        axes.set_xscale('log')
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize=8)
        return [plotter]

    # --------------------------- UTILS functions -----------------------------
    def _result(self):
        return MicrographEMResult.load(self.protocol._getFileName('result'))

    @staticmethod
    def _history(result, start, key):
        return np.asarray(result.history['start%d_%s' % (start + 1, key)])
