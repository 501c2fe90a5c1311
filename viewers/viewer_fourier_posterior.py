"""Plots of the Fourier-slice posterior (Fourier variance, uncertainty, resolution,
noise spectrum, likelihood) and of the pose refinement (how far the poses moved)."""
import matplotlib
import numpy as np
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import convert
from cryohess_plugin.core.fourier import FSC_THRESHOLDS
from cryohess_plugin.protocols import CryoHessProtFourierPosterior, CryoHessProtRefinePoses
from cryohess_plugin.protocols.protocol_fourier_posterior import (
    FULL, OUTPUT_HALF_MAP_FSC)

from .plotting import SECTION_AXES, SECTIONS, colorbar, imagePanel


class CryoHessFourierPosteriorViewer(ProtocolViewer):
    """Where Fourier space is under-sampled, how uncertain the map is, and its resolution."""
    _label = 'viewer Fourier-slice posterior'
    _targets = [CryoHessProtFourierPosterior]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayFourierVariance', params.LabelParam,
                      label='Fourier-space variance',
                      help="Central slices through the three axes of the posterior "
                           "variance relative to the prior: 1 (yellow) where no particle "
                           "samples the coefficient, near 0 where the data are dense. A "
                           "missing cone of views shows as a yellow double cone around an "
                           "axis inside the Nyquist sphere (e.g. top views only: yellow "
                           "around kz in the kx-kz and ky-kz planes). Frequencies beyond "
                           "Nyquist, which no image measures, are grey.")
        form.addParam('displayUncertainty', params.LabelParam,
                      label='Real-space uncertainty',
                      help="Central slices of the posterior-mean map and of the voxel-wise "
                           "standard deviation of posterior samples, with the map's "
                           "contour. With the diagonal Fourier posterior the pattern of "
                           "the standard deviation comes from the interpolation kernel's "
                           "correction, not from the structure: read it as a global "
                           "level.")
        form.addParam('displayResolution', params.LabelParam, label='Resolution curves',
                      help="The single-fit curves from the spectral-shell SNR α: "
                           "α/(1+α) (full map) and (α/2)/(1+α/2) (comparable with a "
                           "half-map FSC), with the half-map FSC when half maps were "
                           "fitted, and the 0.143 and 0.5 thresholds.")
        form.addParam('displayNoise', params.LabelParam, label='Noise spectrum',
                      help="The noise variance per pixel of every resolution shell of "
                           "the images, as the fit used it: estimated per shell by EM "
                           "(falling with frequency where the detector's transfer and the "
                           "ice colour the noise) or one white level.")
        form.addParam('displayLikelihood', params.LabelParam,
                      label='Log-likelihood histogram',
                      help="Distribution of the per-particle log-likelihood (held out "
                           "with half maps). A low tail flags particles the model "
                           "explains badly (junk, wrong poses).")

    def _getVisualizeDict(self):
        return {'displayFourierVariance': self._showFourierVariance,
                'displayUncertainty': self._showUncertainty,
                'displayResolution': self._showResolution,
                'displayNoise': self._showNoise,
                'displayLikelihood': self._showLikelihood}

    # --------------------------- SHOW functions ------------------------------
    def _showFourierVariance(self, paramName=None):
        from cryohess_plugin.core.fourier import radius_grid
        relative = self.protocol._loadPosterior(FULL).relative_variance()
        box = relative.shape[0]
        centre = box // 2
        # Beyond Nyquist no view measures anything: masked, so that yellow inside the
        # sphere means missing views (e.g. a missing cone).
        relative = np.where(radius_grid(relative.shape) <= box / 2, relative, np.nan)
        colours = matplotlib.colormaps['viridis'].copy()
        colours.set_bad('lightgray')
        plotter = EmPlotter(x=1, y=3, figsize=(12, 4.5),
                            mainTitle='Posterior variance / prior variance in Fourier space '
                                      '(yellow: not sampled by any view; grey: beyond '
                                      'Nyquist)')
        for name, section in SECTIONS:
            horizontal, vertical = SECTION_AXES[name]
            normal = ({'x', 'y', 'z'} - set(name)).pop()
            axes = imagePanel(plotter, 'k%s = 0 plane' % normal, section(relative, centre),
                          colours,
                          axisNames=('k' + horizontal, 'k' + vertical), vmin=0.0, vmax=1.0)
        colorbar(plotter, axes.images[0], 'posterior variance / prior variance')
        return [plotter]

    def _showUncertainty(self, paramName=None):
        mean, _ = convert.volume_to_array(self.protocol.outputVolume)
        std, _ = convert.volume_to_array(self.protocol.outputUncertainty)
        centre = mean.shape[0] // 2
        level = mean.mean() + 2 * mean.std()
        plotter = EmPlotter(x=2, y=3, figsize=(11, 7.5),
                            mainTitle='Posterior mean and real-space standard deviation '
                                      '(%d samples)' % self.protocol.numberOfSamples)
        limits = dict(vmin=mean.min(), vmax=mean.max())
        for name, section in SECTIONS:
            imagePanel(plotter, 'mean, %s slice' % name, section(mean, centre), 'gray',
                   axisNames=SECTION_AXES[name], **limits)
        for name, section in SECTIONS:
            axes = imagePanel(plotter, 'std, %s slice (cyan: map contour)' % name,
                          section(std, centre), 'magma', axisNames=SECTION_AXES[name],
                          vmin=0.0, vmax=std.max())
            axes.contour(section(mean, centre), levels=[level], colors='cyan',
                         linewidths=0.7)
        colorbar(plotter, axes.images[0], 'standard deviation (map units)',
                  bottom=0.08, top=0.45)
        return [plotter]

    def _fullPosteriorShells(self):
        """The full posterior, the shells of its curves (the model's disc without the DC)
        and their frequencies in 1/Å."""
        posterior = self.protocol._loadPosterior(FULL)
        shells = posterior.curve_shells()
        return posterior, shells, convert.shell_frequencies(shells, posterior.box,
                                                            self.protocol._pixelSize())

    def _showResolution(self, paramName=None):
        posterior, shells, frequencies = self._fullPosteriorShells()
        plotter = EmPlotter(mainTitle='Single-fit resolution curves')
        axes = plotter.createSubPlot('from the spectral-shell SNR α of one fit',
                                     'frequency (1/Å)', 'FSC')
        axes.plot(frequencies, posterior.resolution_curve(half_maps=False)[shells],
                  label='α/(1+α) (full map)')
        axes.plot(frequencies, posterior.resolution_curve(half_maps=True)[shells],
                  label='(α/2)/(1+α/2) (half-map equivalent)')
        if self.protocol.hasAttribute(OUTPUT_HALF_MAP_FSC):
            fscFrequencies, fsc = convert.fsc_to_arrays(
                getattr(self.protocol, OUTPUT_HALF_MAP_FSC))
            axes.plot(fscFrequencies, fsc, 'k.-', label='half-map FSC')
        for threshold in FSC_THRESHOLDS:
            axes.axhline(threshold, color='gray', linestyle='--', linewidth=0.7)
            axes.annotate('%g' % threshold, (1.0, threshold), xycoords=('axes fraction', 'data'),
                          xytext=(-4, 2), textcoords='offset points', ha='right',
                          va='bottom', color='gray', fontsize=8)
        axes.set_ylim(-0.1, 1.05)
        axes.legend()
        return [plotter]

    def _showNoise(self, paramName=None):
        posterior, shells, frequencies = self._fullPosteriorShells()
        plotter = EmPlotter(mainTitle='Noise spectrum of the particles')
        axes = plotter.createSubPlot('%s noise' % ('white' if posterior.white_noise
                                                   else 'per-shell'),
                                     'frequency (1/Å)', 'noise variance per pixel')
        axes.semilogy(frequencies, posterior.noise_shells()[shells], '.-')
        return [plotter]

    def _showLikelihood(self, paramName=None):
        likelihood = self.protocol._loadLikelihood()
        values = likelihood['logLikelihood']
        plotter = EmPlotter(mainTitle='Per-particle log-likelihood')
        axes = plotter.createSubPlot('%d particles (%s)' % (
            len(values), 'held out' if likelihood['heldOut'] else 'full posterior'),
            'log-likelihood (nats)', 'particles')
        axes.hist(values, bins=_bins(len(values)))
        return [plotter]


class CryoHessRefinePosesViewer(ProtocolViewer):
    """How far the local refinement moved the particles' poses."""
    _label = 'viewer Fourier-slice refine poses'
    _targets = [CryoHessProtRefinePoses]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayPoseChanges', params.LabelParam,
                      label='Pose refinement changes',
                      help="How far the refinement moved every particle's rotation "
                           "(degrees) and shift (pixels) from its input pose.")

    def _getVisualizeDict(self):
        return {'displayPoseChanges': self._showPoseChanges}

    def _showPoseChanges(self, paramName=None):
        angle, shift = self.protocol._poseChanges()
        plotter = EmPlotter(x=1, y=2, figsize=(10, 4),
                            mainTitle='Change from the input poses after %d refinement rounds'
                                      % self.protocol._rounds())
        for change, name, unit in ((angle, 'rotation', 'deg'), (shift, 'shift', 'px')):
            axes = plotter.createSubPlot('%s (median %.3g %s)' % (name, np.median(change), unit),
                                         'change (%s)' % unit, 'particles')
            axes.hist(change, bins=_bins(len(change)))
        return [plotter]


def _bins(count):
    """Histogram bins for ``count`` particles."""
    return min(50, max(5, count // 10))
