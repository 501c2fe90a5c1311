"""Plots of the Hessian soft modes: spectrum, modes, sensitivity, poses and run comparisons."""
import textwrap

from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator
import numpy as np
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import chimerax, convert
from cryohess_plugin.constants import SOFT_MODE_INDEX, SOFT_MODE_SIGN
from cryohess_plugin.core.softmodes import EXPERIMENT_STATEMENT, PoseChangeStatistics
from cryohess_plugin.protocols import CryoHessProtSoftModes
from cryohess_plugin.protocols.protocol_soft_modes import OUTPUT_PERTURBED

from .plotting import SECTION_AXES, SECTIONS, colorbar, imagePanel



class CryoHessSoftModesViewer(ProtocolViewer):
    """What the softest modes say about a map, and how two runs compare."""
    _label = 'viewer Hessian soft modes'
    _targets = [CryoHessProtSoftModes]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]
    #: Entries that open another program instead of a plot.
    NOT_PLOTS = ('displayModeMorph',)

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displaySpectrum', params.LabelParam, label='Eigenvalue spectrum',
                      help="Eigenvalues of the softest modes (smaller: softer, less "
                           "constrained by the data), with the modes that did not converge "
                           "and the subspaces of nearly equal eigenvalues marked, and the "
                           "eigensolver's diagnostic: the Ritz values at every iteration, "
                           "which settle on the eigenvalues. The accumulated Hessian "
                           "describes the experiment (views, counts, CTFs, noise) around "
                           "the given map.")
        form.addParam('modeNumber', params.IntParam, default=1,
                      validators=[params.Positive], label='Mode',
                      help="Soft mode (1 is the softest) shown by the mode and pose plots.")
        form.addParam('displayMode', params.LabelParam, label='Mode as nearby volumes',
                      help="Central slices along x, y and z of the nearby volumes F - εΔF "
                           "and F + εΔF (20 times less likely than F by default), of the "
                           "mode ΔF, and projections of ΔF along each axis: a projection "
                           "near zero means the mode is invisible in that view. The "
                           "volumes themselves are the outputs outputModes and "
                           "outputPerturbed (open them with Scipion's volume viewers).")
        form.addParam('displayModeMorph', params.LabelParam, label='Mode morph in ChimeraX',
                      help="A ChimeraX morph F - εΔF -> F -> F + εΔF of the chosen mode "
                           "(the maps of outputPerturbed around the input map, with their "
                           "voxel size and origin), from a script written to the run's "
                           "extra folder (mode_N_morph.cxc). Without ChimeraX the viewer "
                           "says where the script is.")
        form.addParam('displaySensitivity', params.LabelParam, label='Sensitivity map',
                      help="Central slices of the per-voxel sensitivity Σ_i ε_i² ΔF_i², "
                           "the squared change of the nearby volumes summed over the "
                           "converged modes (on the particles' scale) "
                           "(ε² grows as 1/λ): high where the data pin the map down least. "
                           "The reference's contour is drawn for orientation.")
        form.addParam('displayShellProfile', params.LabelParam, label='Per-shell profile',
                      help="How each mode distributes over resolution shells "
                           "(frequency in 1/Å).")
        form.addParam('displayPoseChanges', params.LabelParam, label='Pose changes',
                      help="How far the poses of the images of each viewing direction "
                           "turn when the volume follows the chosen mode by ε (implicit "
                           "poses), on the viewing sphere seen from the equator "
                           "(Mollweide map) and from the pole. Large values flag views "
                           "whose alignment the mode would change.")
        if self.protocol._fromParticles():
            form.addParam('displayParticlePoseChanges', params.LabelParam,
                          label='Particle pose changes',
                          help="Histogram of every particle's largest pose change over the "
                               "modes (degrees; the column _cryohess_softModePoseChange of "
                               "outputParticles), with the median and the top 1 %. Particles "
                               "in the tail turn most when the map becomes a nearby volume: "
                               "their alignment is the least trustworthy.")
        form.addParam('comparedRuns', params.MultiPointerParam,
                      pointerClass='CryoHessProtSoftModes', allowsNull=True,
                      label='Runs to compare',
                      help="Other soft-mode runs compared with this one (e.g. uniform "
                           "versus preferred-orientation particles). Empty: every other "
                           "finished soft-mode run of the project.")
        form.addParam('displayComparison', params.LabelParam, label='Compare runs',
                      help="Spectra of this run and the compared runs overlaid, and "
                           "their sensitivity maps side by side on one logarithmic colour "
                           "scale (three decades below the largest value).")

    def _getVisualizeDict(self):
        shows = {'displaySpectrum': self._showSpectrum,
                'displayMode': self._showMode,
                'displayModeMorph': self._showModeMorph,
                'displaySensitivity': self._showSensitivity,
                'displayShellProfile': self._showShellProfile,
                'displayPoseChanges': self._showPoseChanges,
                'displayComparison': self._showComparison}
        if self.protocol._fromParticles():
            shows['displayParticlePoseChanges'] = self._showParticlePoseChanges
        return shows

    def _validate(self):
        count = len(self.protocol._loadAnalysis().eigenvalues)
        if self.modeNumber.get() > count:
            return ["This run has %d modes; choose a mode from 1 to %d." % (count, count)]
        return []

    # --------------------------- SHOW functions ------------------------------
    def _showSpectrum(self, paramName=None):
        analysis = self.protocol._loadAnalysis()
        eigenvalues = analysis.eigenvalues
        converged = np.asarray(analysis.converged, dtype=bool)
        number = np.arange(1, len(eigenvalues) + 1)
        plotter = EmPlotter(x=1, y=2, figsize=(11, 4.8),
                            mainTitle='Soft-mode spectrum, 2πK = %d: %d of %d modes converged; '
                                      'null space of %d unsampled components'
                                      % (analysis.max_degree, converged.sum(),
                                         len(eigenvalues), analysis.null_dimension))
        axes = plotter.createSubPlot('Softest eigenvalues', 'mode',
                                     'eigenvalue λ (smaller: softer)')
        axes.semilogy(number, eigenvalues, '-', color='tab:blue', linewidth=0.8)
        axes.semilogy(number[converged], eigenvalues[converged], 'o', color='tab:blue',
                      label='converged')
        if not converged.all():
            axes.semilogy(number[~converged], eigenvalues[~converged], 'o', mfc='none',
                          color='tab:red', label='not converged (no bound, no ε)')
        labels = np.asarray(analysis.clusters if analysis.clusters is not None else number)
        spans = [number[labels == label] for label in np.unique(labels)]
        for index, members in enumerate(span for span in spans if span.size > 1):
            axes.axvspan(members[0] - 0.3, members[-1] + 0.3, color='tab:orange', alpha=0.2,
                         label=None if index else 'one soft subspace')
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=7, loc='lower right')
        axes = plotter.createSubPlot('Ritz values per solver iteration', 'iteration',
                                     'Ritz value')
        history = np.asarray(analysis.ritz_history)
        for column in range(history.shape[1]):
            axes.semilogy(np.arange(1, history.shape[0] + 1), history[:, column], '-',
                          linewidth=0.7, color='tab:gray')
        for value in eigenvalues:
            axes.axhline(value, color='tab:red', linewidth=0.4)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        plotter.getFigure().text(0.5, 0.01, textwrap.fill(EXPERIMENT_STATEMENT, 150),
                                 ha='center', va='bottom', fontsize=7)
        plotter.getFigure().subplots_adjust(bottom=0.2)
        return [plotter]

    def _showModeMorph(self, paramName=None):
        number = self.modeNumber.get()
        nearby = {}
        for volume in getattr(self.protocol, OUTPUT_PERTURBED):
            if convert.read_column(volume, SOFT_MODE_INDEX) == number:
                nearby[convert.read_column(volume, SOFT_MODE_SIGN)] = volume.clone()
        if len(nearby) != 2:
            return [self.infoMessage("Mode %d has no nearby volumes (it did not converge, or "
                                     "its eigenvalue is not positive): nothing to morph."
                                     % number, 'ChimeraX')]
        path = chimerax.write_script(
            self.protocol._getExtraPath('mode_%d_morph.cxc' % number),
            [nearby[-1], self.protocol.inputVolume.get(), nearby[1]], morph=True)
        return [self.infoMessage(chimerax.open_script(path), 'ChimeraX')]

    def _showMode(self, paramName=None):
        index = self.modeNumber.get() - 1
        analysis = self.protocol._loadAnalysis(volumes=True)
        reference, _ = convert.volume_to_array(self.protocol.inputVolume.get())
        mode = analysis.mode_volumes[index]
        epsilon = float(analysis.perturbation[index])
        centre = reference.shape[0] // 2
        if np.isfinite(epsilon):
            nearby = [analysis.nearby_volume(reference, index, sign) for sign in (-1, 1)]
            title = ('Mode %d: λ = %.3g, ε = %.3g, ‖εΔF‖/‖F‖ = %.1f %%'
                     % (index + 1, analysis.eigenvalues[index], epsilon,
                        100 * analysis.relative_change[index]))
        else:
            nearby = [reference, reference]
            title = ('Mode %d did not converge: no ε, the nearby volumes show F itself'
                     % (index + 1))
        columns = (('F - εΔF', nearby[0], 'gray'), ('F + εΔF', nearby[1], 'gray'),
                   ('ΔF', mode, 'coolwarm'))
        plotter = EmPlotter(x=3, y=4, figsize=(10, 7.5), mainTitle=title)
        limit = np.abs(mode).max() or 1.0
        # One grey scale for both nearby volumes, so their difference shows.
        grey = dict(vmin=min(columns[0][1].min(), columns[1][1].min()),
                    vmax=max(columns[0][1].max(), columns[1][1].max()))
        for axis, (name, section) in enumerate(SECTIONS):
            for title, volume, cmap in columns:
                image = section(volume, centre)
                extent = dict(vmin=-limit, vmax=limit) if cmap == 'coolwarm' else grey
                imagePanel(plotter, '%s, %s slice' % (title, name), image, cmap, **extent)
            projection = mode.sum(axis=axis)
            bound = np.abs(projection).max() or 1.0
            imagePanel(plotter, 'ΔF projected along %s' % 'zyx'[axis], projection, 'coolwarm',
                   vmin=-bound, vmax=bound)
        return [plotter]

    def _showSensitivity(self, paramName=None):
        sensitivity = self.protocol._loadAnalysis(volumes=True).sensitivity
        reference, _ = convert.volume_to_array(self.protocol.inputVolume.get())
        centre = reference.shape[0] // 2
        level = reference.mean() + 2 * reference.std()
        plotter = EmPlotter(x=1, y=3, figsize=(11, 4),
                            mainTitle='Sensitivity map Σ ε²ΔF² (bright: least pinned down; '
                                      'cyan: reference contour)')
        for name, section in SECTIONS:
            axes = imagePanel(plotter, '%s slice' % name, section(sensitivity, centre), 'magma',
                          vmin=0.0, vmax=sensitivity.max(), axisNames=SECTION_AXES[name])
            axes.contour(section(reference, centre), levels=[level], colors='cyan',
                         linewidths=0.7)
        colorbar(plotter, axes.images[0], 'squared map change (map units²)')
        return [plotter]

    def _showShellProfile(self, paramName=None):
        analysis = self.protocol._loadAnalysis()
        plotter = EmPlotter(mainTitle='Soft modes per resolution shell')
        axes = plotter.createSubPlot('Energy of each unit mode per shell',
                                     'frequency (1/Å)', 'squared L2 norm in the shell')
        for index, profile in enumerate(analysis.shell_profile):
            axes.semilogy(analysis.shell_frequencies, np.maximum(profile, 1e-300),
                          label='mode %d' % (index + 1))
        axes.legend(fontsize=7)
        return [plotter]

    def _showPoseChanges(self, paramName=None):
        index = self.modeNumber.get() - 1
        analysis = self.protocol._loadAnalysis()
        directions = self.protocol._experiment().directions
        change = np.rad2deg(analysis.pose_changes[index])
        azimuth = np.arctan2(directions[:, 1], directions[:, 0])
        tilt = np.arccos(np.clip(directions[:, 2], -1.0, 1.0))
        plotter = EmPlotter(x=1, y=2, figsize=(12, 4.5),
                            mainTitle='Rotation |Δτ| of the images of each viewing direction '
                                      'when the map becomes F + εΔF, mode %d (ε = %.3g)\n'
                                      '(directions folded onto the upper hemisphere; dark: '
                                      'alignment most affected)'
                                      % (index + 1, analysis.perturbation[index]))
        axes = plotter.createSubPlot('seen from the equator', 'azimuth (deg)',
                                     'elevation (deg)', projection='mollweide')
        points = axes.scatter(azimuth, np.pi / 2 - tilt, c=change, s=12, cmap='viridis_r',
                              vmin=change.min(), vmax=change.max())
        axes.grid(True)
        axes = plotter.createSubPlot('seen from the pole (radius: tilt from z, deg)', '', '',
                                     projection='polar')
        axes.scatter(azimuth, np.rad2deg(tilt), c=change, s=12, cmap='viridis_r',
                     vmin=change.min(), vmax=change.max())
        axes.set_rlim(0, 90)  # directions are folded onto the upper hemisphere
        plotter.getFigure().colorbar(points, ax=axes, label='|Δτ| (deg)')
        if not analysis.implicit_poses:
            plotter.getFigure().text(0.5, 0.5, 'This run kept the poses fixed: no pose '
                                     'changes (run with implicit poses to see them).',
                                     ha='center', va='center', fontsize=12,
                                     bbox=dict(facecolor='white', alpha=0.9))
        return [plotter]

    def _showParticlePoseChanges(self, paramName=None):
        analysis = self.protocol._loadAnalysis()
        changes = self.protocol._particlePoseChanges(analysis)
        statistics = PoseChangeStatistics.of(changes)
        plotter = EmPlotter(mainTitle="Largest pose change of each particle over the %d modes "
                                      "(map F ± εΔF)" % len(analysis.eigenvalues))
        axes = plotter.createSubPlot('%d particles (tail: least trustworthy alignments)'
                                     % changes.size, 'max |Δτ| over the modes (deg)',
                                     'particles')
        axes.hist(changes, bins=min(60, max(10, changes.size // 20)), color='tab:blue')
        for value, name, style in ((statistics.median, 'median', '--'),
                                   (statistics.top_percent, 'top 1 %', ':')):
            axes.axvline(value, color='tab:red', linestyle=style,
                         label='%s %.3g°' % (name, value))
        axes.legend(fontsize=7)
        if not analysis.implicit_poses:
            plotter.getFigure().text(0.5, 0.5, 'This run kept the poses fixed: no pose '
                                     'changes (run with implicit poses to see them).',
                                     ha='center', va='center', fontsize=12,
                                     bbox=dict(facecolor='white', alpha=0.9))
        return [plotter]

    def _showComparison(self, paramName=None):
        runs = [self.protocol] + self._comparedRuns()
        analyses = [run._loadAnalysis(volumes=True) for run in runs]
        names = ['%s (#%d)' % (run.getObjLabel(), run.getObjId()) for run in runs]
        plotter = EmPlotter(x=3, y=len(runs), figsize=(max(6, 3.2 * len(runs)), 9),
                            mainTitle='Soft modes of %d runs' % len(runs))
        figure = plotter.getFigure()
        axes = figure.add_subplot(3, 1, 1)
        for name, analysis in zip(names, analyses):
            eigenvalues = analysis.eigenvalues
            axes.semilogy(np.arange(1, len(eigenvalues) + 1), eigenvalues, 'o-', label=name)
        axes.set_xlabel('mode')
        axes.set_ylabel('eigenvalue λ (smaller: softer)')
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title('Softest eigenvalues')
        axes.legend(fontsize=7)
        vmax = max(float(analysis.sensitivity.max()) for analysis in analyses) or 1.0
        scale = LogNorm(vmin=1e-3 * vmax, vmax=vmax)
        for row, (sectionName, section) in enumerate(SECTIONS[:2]):
            for column, (name, analysis) in enumerate(zip(names, analyses)):
                sensitivity = analysis.sensitivity
                axes = figure.add_subplot(3, len(runs), (row + 1) * len(runs) + column + 1)
                image = section(sensitivity, sensitivity.shape[0] // 2)
                shown = axes.imshow(np.maximum(image, scale.vmin), cmap='magma', norm=scale,
                                    origin='lower')
                axes.set_title('%s\nsensitivity, %s slice (max %.3g)'
                               % (name, sectionName, sensitivity.max()), fontsize=8)
                axes.set_xticks([])
                axes.set_yticks([])
        colorbar(plotter, shown, 'sensitivity Σ ε²ΔF² (map units², one scale for all runs)',
                  bottom=0.08, top=0.62)
        return [plotter]

    # --------------------------- UTILS functions -----------------------------
    def _comparedRuns(self):
        """The runs chosen in the form, or every other finished soft-mode run."""
        chosen = [pointer.get() for pointer in self.comparedRuns]
        if chosen:
            return chosen
        ownId = self.protocol.getObjId()
        return [run for run in self.getProject().getRuns()
                if isinstance(run, CryoHessProtSoftModes) and run.isFinished()
                and run.getObjId() != ownId]
