"""Plots of a hyper-molecule run: chain traces and acceptance, convergence table, the
state histogram, the maps along τ with their spread, and τ against a reference column."""
import numpy as np
from pwem.viewers import EmPlotter
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, ProtocolViewer

from cryohess_plugin import convert
from cryohess_plugin.constants import CONFORMATION
from cryohess_plugin.protocols import CryoHessProtHyperMolecule

from .plotting import imagePanel

#: Maps of a series shown side by side.
SHOWN_MAPS = 5
TRACE_RATES = ("acceptance_tau", "acceptance_shift", "acceptance_contrast",
               "acceptance_rotation", "acceptance_mala")


class CryoHessHyperMoleculeViewer(ProtocolViewer):
    """Convergence and results of a hyper-molecule run."""
    _label = 'viewer hyper-molecule'
    _targets = [CryoHessProtHyperMolecule]
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayTraces', params.LabelParam, label='Chain traces',
                      help="Log-likelihood of every chain per sweep (burn-in shaded) and the "
                           "acceptance rate of every move. Chains that level off at different "
                           "values have not mixed.")
        form.addParam('displayConvergence', params.LabelParam, label='R-hat and ESS',
                      help="Split R-hat (below 1.05 is good) and effective sample size of "
                           "the traced scalars, after burn-in.")
        form.addParam('displayStates', params.LabelParam, label='State histogram',
                      help="Posterior mean τ of the particles (state populations) and "
                           "their posterior spread.")
        form.addParam('displayMaps', params.LabelParam, label='Maps along τ',
                      help="Central xy sections of the posterior mean maps along τ (top) and "
                           "of their across-sample standard deviation (bottom): where the "
                           "map is uncertain. The ChimeraX morph scripts are in the run's "
                           "extra folder (morph_series*.cxc).")
        form.addParam('referenceColumn', params.StringParam, default=CONFORMATION,
                      label='Reference column',
                      help="A per-particle column to compare τ with, e.g. the simulator's "
                           "ground-truth conformation.")
        form.addParam('displayReference', params.LabelParam, label='τ against the reference',
                      help="Posterior mean τ (with its spread as error bars) against the "
                           "reference column, and Spearman's rank correlation.")

    def _getVisualizeDict(self):
        return {'displayTraces': self._showTraces, 'displayConvergence': self._showConvergence,
                'displayStates': self._showStates, 'displayMaps': self._showMaps,
                'displayReference': self._showReference}

    def _result(self, maps=False):
        return self.protocol._result(maps=maps)

    def _showTraces(self, paramName=None):
        result = self._result()
        burnIn = self.protocol.burnIn.get()
        plotter = EmPlotter(x=1, y=2, figsize=(12, 4.5), mainTitle='Chain traces')
        axes = plotter.createSubPlot('Log-likelihood', 'sweep', 'log-likelihood')
        for chain in range(self.protocol.chains.get()):
            values = result.traces.get('chain%d/log_likelihood' % chain, [])
            axes.plot(np.arange(1, len(values) + 1), values, label='chain %d' % (chain + 1))
        axes.axvspan(0, burnIn, color='0.9')
        axes.legend()
        axes = plotter.createSubPlot('Acceptance (chain 1)', 'sweep', 'rate')
        for name in TRACE_RATES:
            values = result.traces.get('chain0/' + name)
            if values:
                start = len(result.traces['chain0/log_likelihood']) - len(values) + 1
                axes.plot(np.arange(start, start + len(values)), values,
                          label=name.split('_')[1])
        axes.axvspan(0, burnIn, color='0.9')
        axes.set_ylim(0, 1.05)
        axes.legend()
        return [plotter]

    def _showConvergence(self, paramName=None):
        result = self._result()
        plotter = EmPlotter(x=1, y=1, figsize=(8, 5), mainTitle='Convergence after burn-in')
        axes = plotter.createSubPlot('Split R-hat and ESS', '', '')
        axes.axis('off')
        rows = [[name, '%.3f' % result.rhat[name], '%.0f' % result.ess[name]]
                for name in sorted(result.rhat)]
        table = axes.table(cellText=rows, colLabels=['scalar', 'split R-hat', 'ESS'],
                           loc='center')
        table.scale(1, 1.2)
        return [plotter]

    def _showStates(self, paramName=None):
        result = self._result()
        plotter = EmPlotter(x=1, y=2, figsize=(12, 4.5), mainTitle='States of the particles')
        axes = plotter.createSubPlot('Posterior mean τ', 'τ', 'particles')
        for j in range(result.tau_mean.shape[1]):
            axes.hist(result.tau_mean[:, j], bins=40, range=(0, 1), alpha=0.6,
                      label='state axis %d' % (j + 1))
        axes.legend()
        axes = plotter.createSubPlot('Posterior spread of τ', 'standard deviation',
                                     'particles')
        axes.hist(result.tau_std.ravel(), bins=40)
        return [plotter]

    def _showMaps(self, paramName=None):
        result = self._result(maps=True)
        shown = np.linspace(0, result.tau_grid.size - 1, SHOWN_MAPS).round().astype(int)
        plotter = EmPlotter(x=2, y=SHOWN_MAPS, figsize=(3 * SHOWN_MAPS, 6.5),
                            mainTitle='Maps along τ (series 1): mean (top) and spread (bottom)')
        centre = result.mean_maps.shape[2] // 2
        for row, maps in enumerate((result.mean_maps[0], result.std_maps[0])):
            limits = dict(vmin=float(maps.min()), vmax=float(maps.max()))
            for j in shown:
                title = 'τ = %.2f' % result.tau_grid[j] if row == 0 else 'spread'
                imagePanel(plotter, title, maps[j, centre], 'gray' if row == 0 else 'magma',
                           **limits)
        return [plotter]

    def _showReference(self, paramName=None):
        from cryohess_plugin.core.hypermolecules import rank_correlation
        result = self._result()
        particles = self.protocol.outputParticles
        name = self.referenceColumn.get()
        reference = np.array([np.atleast_1d(convert.read_column(p, name))[0]
                              for p in particles.iterItems(orderBy='id')])
        if np.ptp(reference) == 0 or np.ptp(result.tau_mean[:, 0]) == 0:
            # e.g. the conformation of a simulation without heterogeneity
            title = 'τ against %s: one of them is constant, no rank correlation' % name
        else:
            title = 'τ against %s: Spearman ρ = %.3f' % (
                name, rank_correlation(result.tau_mean[:, 0], reference))
        plotter = EmPlotter(x=1, y=1, figsize=(6.5, 5.5), mainTitle=title)
        axes = plotter.createSubPlot('', name, 'posterior mean τ (axis 1)')
        axes.errorbar(reference, result.tau_mean[:, 0], yerr=result.tau_std[:, 0], fmt='.',
                      markersize=2, alpha=0.5, elinewidth=0.5)
        return [plotter]
