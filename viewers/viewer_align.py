"""Plots of the radial-SVD alignment: spectra, landscapes, accuracy and speed (the last
three from the rank diagnostics the protocol computed)."""
import os

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import convert
from cryohess_plugin.constants import ALIGN_SCORE
from cryohess_plugin.core.alignment.diagnostics import RankDiagnostics, VolumeRankSweep
from cryohess_plugin.core.rotations import direction_to_euler, projection_directions
from cryohess_plugin.protocols import CryoHessProtAlignParticles, CryoHessProtAlignVolumes


class CryoHessAlignParticlesViewer(ProtocolViewer):
    """How the radial-SVD compressed the search and what it assigned."""
    _label = 'viewer radial-SVD alignment'
    _targets = [CryoHessProtAlignParticles]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayEigenvalues', params.LabelParam,
                      label='Eigenvalues of the radial kernel',
                      help="Spectrum of the radial kernel C of every CTF group, relative "
                           "to its largest eigenvalue, with the rank tolerance. Fast decay "
                           "means few principal rings suffice.")
        form.addParam('particleNumber', params.IntParam, default=1,
                      validators=[params.Positive], label='Particle',
                      help="Particle (position in the set, from 1, among the run's "
                           "diagnosed particles) whose landscape is shown.")
        form.addParam('displayLandscape', params.LabelParam,
                      label='Landscape over the in-plane angle',
                      help="Score of the chosen particle against its assigned reference "
                           "for every in-plane angle, with H = 1, 2, 4, the run's H and the "
                           "full rank R.")
        form.addParam('displayAccuracy', params.LabelParam, label='Accuracy versus H',
                      help="Correlation of the compressed landscapes with the full-rank "
                           "ones, and the fraction of particles whose best reference and "
                           "in-plane angle (within one step) agree with full rank, over the "
                           "run's diagnosed particles.")
        form.addParam('displaySpeed', params.LabelParam, label='Measured speed-up',
                      help="Time the run took to align its diagnosed particles at its H "
                           "and at full rank.")
        form.addParam('displayAngularDistribution', params.LabelParam,
                      label='Assigned orientations',
                      help="Viewing directions of the aligned particles (projection "
                           "matching) or the class sizes (2D references).")
        form.addParam('displayScores', params.LabelParam, label='Score histogram',
                      help="Distribution of the alignment scores.")

    def _getVisualizeDict(self):
        return {'displayEigenvalues': self._showEigenvalues,
                'displayLandscape': self._showLandscape,
                'displayAccuracy': self._showAccuracy,
                'displaySpeed': self._showSpeed,
                'displayAngularDistribution': self._showAssignments,
                'displayScores': self._showScores}

    # --------------------------- SHOW functions ------------------------------
    def _showEigenvalues(self, paramName=None):
        result = self.protocol._loadResults()
        plotter = EmPlotter(mainTitle='Radial kernel spectra')
        axes = plotter.createSubPlot('%d CTF groups' % len(result.ranks),
                                     'index h', 'lambda_h / lambda_1')
        for spectrum in result.eigenvalues:
            axes.semilogy(np.arange(1, len(spectrum) + 1),
                          np.maximum(spectrum / spectrum[0], 1e-16), alpha=0.6)
        if self.protocol.rankMode.get() == 0:
            axes.axhline(self.protocol.rankTolerance.get(), color='k', linestyle='--',
                         label='tolerance')
            axes.legend()
        return [plotter]

    def _showLandscape(self, paramName=None):
        diagnostics = self._diagnostics()
        if diagnostics is None:
            return [self._noDiagnostics()]
        index = self.particleNumber.get() - 1
        if index >= len(diagnostics.references):
            return [self.errorMessage("Particle %d was not diagnosed: the run diagnosed its "
                                      "first %d particles." % (index + 1,
                                                               len(diagnostics.references)),
                                      'Landscape')]
        full = diagnostics.landscape_ranks[-1]
        plotter = EmPlotter(mainTitle='Landscape of particle %d' % (index + 1))
        axes = plotter.createSubPlot('best reference %d' % (diagnostics.references[index] + 1),
                                     'in-plane angle (deg)', 'score')
        for rank, landscapes in zip(diagnostics.landscape_ranks, diagnostics.landscapes):
            axes.plot(np.rad2deg(diagnostics.angles), landscapes[index], label='H = %d%s' % (
                rank, ' (run)' if rank == diagnostics.run_rank else
                ' (full)' if rank == full else ''))
        axes.legend()
        return [plotter]

    def _showAccuracy(self, paramName=None):
        diagnostics = self._diagnostics()
        if diagnostics is None:
            return [self._noDiagnostics()]
        plotter = EmPlotter(x=1, y=2, mainTitle='Accuracy versus H (%d particles)'
                            % len(diagnostics.references), figsize=(10, 4))
        axes = plotter.createSubPlot('Landscape correlation with full rank', 'H',
                                     'correlation')
        axes.plot(diagnostics.sweep_ranks, diagnostics.correlation, 'o-')
        axes = plotter.createSubPlot('Same best reference and angle as full rank', 'H',
                                     'fraction of particles')
        axes.plot(diagnostics.sweep_ranks, diagnostics.agreement, 'o-')
        axes.set_ylim(0, 1.05)
        return [plotter]

    def _showSpeed(self, paramName=None):
        diagnostics = self._diagnostics()
        if diagnostics is None:
            return [self._noDiagnostics()]
        count = len(diagnostics.references)
        plotter = EmPlotter(mainTitle='Measured speed (%d particles x %d references)'
                            % (count, diagnostics.pairs // count))
        axes = plotter.createSubPlot('speed-up %.1fx' % diagnostics.speedup(), '',
                                     'image-reference pairs per second')
        axes.bar(['H = %d (run)' % diagnostics.run_rank,
                  'full rank (H = %d)' % diagnostics.sweep_ranks[-1]],
                 diagnostics.pairs / diagnostics.align_seconds)
        return [plotter]

    def _showAssignments(self, paramName=None):
        particles = self.protocol.outputParticles
        arrays = convert.particles_to_arrays(particles, need_alignment=True, read_images=False)
        if particles.getAlignment() == ALIGN_PROJ:
            rot, tilt = direction_to_euler(projection_directions(arrays.rotations))
            plotter = EmPlotter(mainTitle='Assigned viewing directions')
            plotter.plotAngularDistribution('%d particles' % len(rot), np.deg2rad(rot), tilt)
            return [plotter]
        classes = self.protocol.outputClasses
        plotter = EmPlotter(mainTitle='Class sizes')
        axes = plotter.createSubPlot('%d classes' % classes.getSize(), 'class', 'particles')
        axes.bar([cls.getObjId() for cls in classes], [cls.getSize() for cls in classes])
        return [plotter]

    def _showScores(self, paramName=None):
        arrays = convert.particles_to_arrays(self.protocol.outputParticles,
                                             need_alignment=False, columns=(ALIGN_SCORE,),
                                             read_images=False)
        plotter = EmPlotter(mainTitle='Alignment scores')
        plotter.createSubPlot('%d particles' % len(arrays.ids), 'score', 'particles')
        plotter.plotHist(arrays.columns[ALIGN_SCORE], nbins=30)
        return [plotter]

    # --------------------------- UTILS functions -----------------------------
    def _diagnostics(self):
        """The run's rank diagnostics, or None when it made none."""
        path = self.protocol._getFileName('diagnostics')
        return RankDiagnostics.load(path) if os.path.exists(path) else None

    def _noDiagnostics(self):
        return self.infoMessage("This run made no rank diagnostics (its 'Particles for the "
                                "rank diagnostics' is 0).", 'Rank diagnostics')


class CryoHessAlignVolumesViewer(ProtocolViewer):
    """Spectra, scores and slices of a volume alignment."""
    _label = 'viewer radial-SVD volume alignment'
    _targets = [CryoHessProtAlignVolumes]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displaySpectra', params.LabelParam,
                      label='Radial and degree kernel spectra',
                      help="Eigenvalues of the radial kernel (principal shells) and the "
                           "degree kernel (principal degrees) of the reference, relative "
                           "to the largest.")
        form.addParam('displayScores', params.LabelParam, label='Correlations',
                      help="Normalised correlation of every aligned volume with the "
                           "reference.")
        form.addParam('displaySlices', params.LabelParam, label='Central slices',
                      help="Central xy, xz and yz slices of the reference and of every "
                           "aligned volume.")
        form.addParam('displayRankMetrics', params.LabelParam,
                      label='Landscape accuracy versus H (paper Fig. 11)',
                      help="Relative Frobenius error, correlation and mean backward-error "
                           "percentile of the compressed landscapes (H principal shells and "
                           "degrees) against the unreduced ones, measured by the run on its "
                           "first input volumes. A low error is not needed: the correlation and the "
                           "percentile near 1 say the compressed search finds the right "
                           "rotation.")

    def _getVisualizeDict(self):
        return {'displaySpectra': self._showSpectra, 'displayScores': self._showScores,
                'displaySlices': self._showSlices, 'displayRankMetrics': self._showRankMetrics}

    def _showSpectra(self, paramName=None):
        result = self.protocol._results()[0]
        plotter = EmPlotter(x=1, y=2, mainTitle='Kernel spectra', figsize=(10, 4))
        for spectrum, title in ((result.radial_eigenvalues, 'radial kernel C (shells)'),
                                (result.degree_eigenvalues, 'degree kernel D (degrees)')):
            axes = plotter.createSubPlot(title, 'index', 'lambda / lambda_1')
            axes.semilogy(np.arange(1, len(spectrum) + 1),
                          np.maximum(spectrum / spectrum[0], 1e-16), 'o-')
        return [plotter]

    def _showScores(self, paramName=None):
        scores = [float(result.score[0]) for result in self.protocol._results()]
        plotter = EmPlotter(mainTitle='Correlation with the reference')
        axes = plotter.createSubPlot('%d volumes' % len(scores), 'volume', 'correlation')
        axes.bar(np.arange(1, len(scores) + 1), scores)
        return [plotter]

    def _showSlices(self, paramName=None):
        reference, _ = convert.volume_to_array(self.protocol.referenceVolume.get())
        volumes = [reference] + [convert.volume_to_array(v)[0]
                                 for v in self.protocol.outputVolumes.iterItems(orderBy='id')]
        names = ['reference'] + ['aligned %d' % i for i in range(1, len(volumes))]
        plotter = EmPlotter(x=len(volumes), y=3, mainTitle='Central slices',
                            figsize=(7, 2.4 * len(volumes)))
        centre = reference.shape[0] // 2
        for name, volume in zip(names, volumes):
            for label, section in (('xy', volume[centre]), ('xz', volume[:, centre]),
                                   ('yz', volume[:, :, centre])):
                axes = plotter.createSubPlot('%s %s' % (name, label), '', '')
                axes.imshow(section, cmap='gray')
                axes.set_xticks([])
                axes.set_yticks([])
        return [plotter]

    def _showRankMetrics(self, paramName=None):
        path = self.protocol._getFileName('rankMetrics')
        if not os.path.exists(path):
            return [self.infoMessage("This run measured no rank metrics (its 'Volumes for "
                                     "the rank metrics' is 0).", 'Rank metrics')]
        sweep = VolumeRankSweep.load(path)
        plotter = EmPlotter(x=1, y=3, mainTitle='Compressed against unreduced landscapes, '
                            '%d volumes' % sweep.volumes, figsize=(12, 4))
        for values, label in ((sweep.relative_error, 'relative Frobenius error'),
                              (sweep.correlation, 'correlation'),
                              (sweep.backward_error, 'mean backward-error percentile')):
            axes = plotter.createSubPlot(label, 'H = H_C = H_D', label)
            axes.plot(sweep.ranks, values, 'o-')
            axes.axvline(max(sweep.automatic_ranks), color='k', linestyle='--',
                         label='automatic ranks %s' % (tuple(sweep.automatic_ranks),))
            axes.legend()
        return [plotter]
