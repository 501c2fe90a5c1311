"""GUI smoke test: the real Scipion project window, under Xvfb, opens a small project with a
run of every cryohess protocol, then every protocol's form, every viewer and the set viewer,
takes a screenshot of each, and must not raise anything.

The GUI process is ``python -O -m tests.test_gui_smoke PROJECT SHOT_DIR``: it runs
``pyworkflow.apps.pw_project PROJECT`` (what a user runs) with a driver that, once the window
is up, opens everything in turn through the window's own actions ("new protocol", "edit",
"analyze results", an output's viewer) and writes ``SHOT_DIR/manifest.json``.

Needs the Debian packages ``xvfb``, ``imagemagick`` and ``xdotool``, and the X libraries of
the Qt set viewer (README, "GUI prerequisites"); ``.ci/run`` installs them.  Without the
packages the test fails under CI (``CI=true``) and is skipped elsewhere.  The screenshots
stay in the test project's ``screenshots/``; ``CRYOHESS_GUI_SCREENSHOTS=DIR`` copies them and
the GUI's log to ``DIR``.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {'Xvfb': 'xvfb', 'import': 'imagemagick', 'xdotool': 'xdotool'}
#: Seconds the whole GUI session may take (4 minutes at a load of 20 on 2 cores): a hang.
GUI_TIMEOUT = 600
#: Milliseconds a new window gets to draw itself before its screenshot.
SETTLE_MS = 400
#: Seconds the Qt set viewer (a separate process) gets to show its window.
SET_VIEWER_TIMEOUT = 30
#: Lines of the GUI process's output that mean something went wrong.
FAILURE = re.compile(r'Traceback|\bERROR\b|Error:|Exception|Warning|could not|Could not|Aborted')


def _missingTools():
    return sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})


# ------------------------------------------------------------------ the test process ---------
if __name__ != '__main__':
    from pyworkflow.tests import setupTestProject

    import cryohess_plugin.protocols as cryoProtocols
    import cryohess_plugin.viewers as cryoViewers
    from cryohess_plugin.constants import PLACEMENT_SEPARATED, SNR_ENERGY

    from .scipion_base import CryoHessTestCase

    # 50 particles: the fewest the hyper-molecule sampler takes.
    SIMULATION = dict(boxSize=24, samplingRate=2.0, numberOfParticles=50, numberOfDefocusGroups=2,
                      phantomAtoms=200, phantomRadius=14.0, snr=10.0, doMicrographs=True,
                      numberOfMicrographs=2, micrographSize=352,
                      micrographPlacement=PLACEMENT_SEPARATED, micrographDensity=0.4,
                      micrographSnr=SNR_ENERGY, randomSeed=2, numberOfThreads=1)

    def test_our_columns_are_shown_in_the_set_viewer():
        from pwem.objects import SetOfParticles, SetOfVolumes
        from pwem.viewers.mdviewer.viewer import MDView
        from cryohess_plugin import constants
        from cryohess_plugin.viewers import set_columns
        written = {value for name, value in vars(constants).items()
                   if isinstance(value, str) and value.startswith('_cryohess_')}
        # Coordinates have no registered list: the set viewer shows all their columns.
        assert written == (set(set_columns.PARTICLE_COLUMNS) | set(set_columns.VOLUME_COLUMNS)
                           | {constants.PICK_SCORE})
        for setClass, columns in ((SetOfParticles, set_columns.PARTICLE_COLUMNS),
                                  (SetOfVolumes, set_columns.VOLUME_COLUMNS)):
            visible, order, _ = MDView(setClass()).getVisibleAndOrderLabels()
            assert set(columns) <= set(visible.split()) and set(columns) <= set(order.split())
            assert 'id' in visible.split()  # pwem's own columns stay

    def test_users_read_one_name():
        """Menus, new runs, forms and viewer menus say "cryohess", never the package's
        or a class's name."""
        import pwem
        from pyworkflow.viewer import ProtocolViewer
        assert pwem.Domain.getPluginModule('cryohess_plugin')._pluginInstance.getName() \
            == 'cryohess'
        wrongNames = re.compile(r'CryoHess|cryoHess|cryohess_plugin|Cryohess')
        for name in dir(cryoProtocols):
            if name.startswith('CryoHessProt'):
                protocol = pwem.Domain.getProtocols()[name]()
                assert protocol.getClassLabel().startswith('cryohess - '), name
                for paramName, param in protocol.getDefinition().iterAllParams():
                    for text in (param.label.get(), param.help.get()):
                        assert not wrongNames.search(text or ''), (name, paramName, text)
        for name in cryoViewers.__all__:
            viewer = pwem.Domain.getViewers()[name]
            assert not wrongNames.search(viewer.getName()), name
            if issubclass(viewer, ProtocolViewer):
                assert viewer.getClassLabel().startswith('cryohess - '), name

    class TestGuiSmoke(CryoHessTestCase):
        """Every form and viewer of a run of each protocol, in the real project window."""

        @classmethod
        def setUpClass(cls):
            missing = _missingTools()
            if missing:
                message = ("the GUI smoke test needs the Debian packages %s (apt-get install -y "
                           "%s; .ci/run installs them)" % (', '.join(missing), ' '.join(missing)))
                if os.environ.get('CI') == 'true':
                    raise RuntimeError(message)
                raise unittest.SkipTest(message)
            setupTestProject(cls)
            cls.runs = cls._launchRuns()
            cls.shots = os.path.join(cls.outputPath, 'screenshots')
            cls.log, cls.returnCode = cls._runGui()

        @classmethod
        def _launch(cls, protocolClass, label, **settings):
            protocol = cls.newProtocol(protocolClass, **settings)
            protocol.setObjLabel(label)
            return cls.launchProtocol(protocol)

        @classmethod
        def _launchRuns(cls):
            """A tiny run of every protocol, chained as in the demo."""
            P = cryoProtocols
            simulation = cls._launch(P.CryoHessProtSimulate, 'simulate', **SIMULATION)
            align = cls._launch(P.CryoHessProtAlignParticles, 'align particles', angularStep=30.0,
                                maxShift=2.0, shiftStep=1.0, localRefinement=False,
                                inputParticles=simulation.outputParticles,
                                inputVolume=simulation.outputVolume, numberOfThreads=1)
            softModes = cls._launch(P.CryoHessProtSoftModes, 'soft modes', maxResolution=8.0,
                                    numberOfModes=2, inputVolume=simulation.outputVolume,
                                    inputParticles=align.outputParticles, numberOfThreads=1)
            refine = cls._launch(P.CryoHessProtRefinePoses, 'refine poses', refineRounds=1,
                                 refineIterations=2, inputParticles=align.outputParticles,
                                 numberOfThreads=1)
            posterior = cls._launch(P.CryoHessProtFourierPosterior, 'posterior',
                                    numberOfSamples=2, inputParticles=refine.outputParticles,
                                    numberOfThreads=1)
            alignVolumes = cls._launch(P.CryoHessProtAlignVolumes, 'align volumes',
                                       inputVolumes=posterior.outputVolume,
                                       referenceVolume=simulation.outputVolume,
                                       numberOfThreads=1)
            micrographEM = cls._launch(
                P.CryoHessProtMicrographEM, 'micrograph EM', particleDiameter=44.0,
                rotationResolution=15, degreeSchedule='2', stageIterations='2',
                batchFraction=0.5, heldOutPatches=60, numberOfStarts=1, micrographsPerStep=1,
                inputMicrographs=simulation.outputMicrographs,
                ctfRelations=simulation.outputCTF, numberOfThreads=1)
            hyper = cls._launch(P.CryoHessProtHyperMolecule, 'hyper-molecule', stateOrder=1,
                                chains=1, sweeps=4, burnIn=2, mapCount=2,
                                inputParticles=simulation.outputParticles, numberOfThreads=1)
            return [simulation, align, softModes, refine, posterior, alignVolumes, micrographEM,
                    hyper]

        @classmethod
        def _runGui(cls):
            """Run the GUI process on a fresh X display; returns its output and exit code."""
            # Xvfb picks a free display (other X servers may run here) and writes its number.
            readEnd, writeEnd = os.pipe()
            server = subprocess.Popen(['Xvfb', '-displayfd', str(writeEnd), '-screen', '0',
                                       '1600x1000x24', '-nolisten', 'tcp'],
                                      pass_fds=(writeEnd,), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            os.close(writeEnd)
            with os.fdopen(readEnd) as pipe:
                display = ':' + pipe.readline().strip()
            assert display != ':', "Xvfb did not start"
            env = dict(os.environ, DISPLAY=display, MPLBACKEND='TkAgg',
                       PYTHONPATH=os.pathsep.join(filter(None, [REPO,
                                                                os.environ.get('PYTHONPATH')])))
            try:
                gui = subprocess.run(
                    [sys.executable, '-O', '-m', 'tests.test_gui_smoke', cls.projName, cls.shots],
                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, timeout=GUI_TIMEOUT)
                log, returnCode = gui.stdout, gui.returncode
            except subprocess.TimeoutExpired as timeout:
                subprocess.run(['import', '-display', display, '-window', 'root',
                                os.path.join(cls.shots, 'timeout.png')], check=False)
                log, returnCode = (timeout.stdout or b'').decode(errors='replace'), 'timeout'
            finally:
                server.terminate()
                server.wait()
            with open(os.path.join(cls.outputPath, 'gui.log'), 'w') as handle:
                handle.write(log)
            keep = os.environ.get('CRYOHESS_GUI_SCREENSHOTS')
            if keep and os.path.isdir(cls.shots):
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(cls.shots, keep)
                shutil.copy(os.path.join(cls.outputPath, 'gui.log'), keep)
            return log, returnCode

        def _manifest(self):
            path = os.path.join(self.shots, 'manifest.json')
            self.assertTrue(os.path.exists(path), "the GUI process ended (%s) before it wrote "
                            "its manifest:\n%s" % (self.returnCode, self.log))
            with open(path) as handle:
                return json.load(handle)

        def testGuiProcessRaisesNothing(self):
            self.assertEqual(self.returnCode, 0, self.log)
            failures = [line for line in self.log.splitlines() if FAILURE.search(line)]
            self.assertEqual(failures, [], self.log)

        def testEveryProtocolFormOpens(self):
            manifest = self._manifest()
            names = {name for name in dir(cryoProtocols) if name.startswith('CryoHessProt')}
            self.assertEqual(set(manifest['newForms']), names)
            self.assertEqual({run.getObjId() for run in self.runs},
                             set(map(int, manifest['runForms'])))

        def testEveryViewerOpens(self):
            manifest = self._manifest()
            self.assertEqual(set(manifest['viewers']), set(cryoViewers.__all__))
            for viewer, plots in manifest['viewers'].items():
                self.assertTrue(plots, viewer)

        def testSetViewerShowsOurColumns(self):
            from cryohess_plugin.constants import CONFORMATION, DEFOCUS_GROUP, SOFT_MODE_INDEX
            self.assertEqual(self._manifest()['setViewer'], ['outputParticles', 'outputModes'])
            # What the viewer's process was told to show, as it logs it.
            particles, modes = [line.split('Visible labels:')[1].split()
                                for line in self.log.splitlines() if 'Visible labels:' in line]
            self.assertIn(CONFORMATION, particles)
            self.assertIn(DEFOCUS_GROUP, particles)
            self.assertIn(SOFT_MODE_INDEX, modes)

        def testScreenshotsShowWindows(self):
            from PIL import Image
            shots = self._manifest()['screenshots']
            self.assertGreater(len(shots), 20)
            for name in shots:
                with Image.open(os.path.join(self.shots, name)) as image:
                    colours = image.convert('RGB').getcolors(maxcolors=1 << 16)
                # None: more colours than maxcolors; a blank or one-window screen has a few.
                self.assertTrue(colours is None or len(colours) > 50, name)


# ------------------------------------------------------------------ the GUI process ----------
OPEN, QUIT = 'open', 'quit'


class GuiDriver:
    """Opens everything of the project, one window at a time, from the Tk event loop.

    ``_actions`` is a generator of requests: ``(OPEN, function)`` calls a function that opens
    a window (pyworkflow's forms run a nested Tk main loop until they close, so the driver
    goes on from inside it) and lets the window draw; ``name`` saves a screenshot
    ``name.png``; ``QUIT`` ends the innermost nested main loop, once its form is closed.
    """

    def __init__(self, window, shotDir):
        from pyworkflow.gui.form import FormWindow
        self.window = window
        self.root = window.root
        self.shotDir = shotDir
        self.manifest = dict(newForms=[], runForms=[], viewers={}, setViewer=[],
                             screenshots=[])
        self.failed = False
        self.forms = []
        os.makedirs(shotDir, exist_ok=True)
        self.root.report_callback_exception = self._callbackException
        self._reportDialogs()
        show = FormWindow.show

        def rememberForm(form, *args, **kwargs):
            self.forms.append(form)
            return show(form, *args, **kwargs)
        FormWindow.show = rememberForm

    @staticmethod
    def _reportDialogs():
        """Error, warning and information dialogs print their message instead (a modal
        dialog would wait for a click); only the first two fail the test."""
        from pyworkflow.gui import dialog

        def report(kind):
            return lambda title, msg, parent, **kwargs: print(
                '%s: dialog "%s": %s' % (kind, title, msg), file=sys.stderr)
        dialog.showError = report('Error')
        dialog.showWarning = report('Warning')
        dialog.showInfo = report('Info')

    def start(self):
        self.actions = self._actions()
        self._next()

    # -- scheduling ---------------------------------------------------------------------
    def _next(self):
        try:
            request = next(self.actions)
        except StopIteration:
            self._finish()
            return
        except Exception:
            self._fail('the driver')
            return
        if request == QUIT:
            self.root.after(0, self._next)
            self.root.quit()
        elif isinstance(request, tuple):
            self.root.after(SETTLE_MS, self._next)
            try:
                request[1]()
            except Exception:
                self._fail('opening a window')
        else:
            self._shoot(request)
            self.root.after(0, self._next)

    def _shoot(self, name):
        self.root.update()
        fileName = '%02d_%s.png' % (len(self.manifest['screenshots']), name)
        subprocess.run(['import', '-window', 'root', os.path.join(self.shotDir, fileName)],
                       check=True)
        self.manifest['screenshots'].append(fileName)

    def _callbackException(self, kind, value, trace):
        print('Exception in a Tk callback:', file=sys.stderr)
        traceback.print_exception(kind, value, trace)
        self.failed = True

    def _fail(self, where):
        print('Exception in %s:' % where, file=sys.stderr)
        traceback.print_exc()
        self.failed = True
        self._finish()

    def _finish(self):
        with open(os.path.join(self.shotDir, 'manifest.json'), 'w') as handle:
            json.dump(self.manifest, handle, indent=1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if self.failed else 0)

    # -- what is opened -----------------------------------------------------------------
    def _actions(self):
        import matplotlib.pyplot as plt
        from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer

        import cryohess_plugin.protocols as cryoProtocols
        from cryohess_plugin.viewers import CryoHessChimeraXViewer, CryoHessVolumeViewer

        view = self.window.getViewWidget()
        project = self.window.project
        domain = project.getDomain()
        yield 'project'

        for name in sorted(n for n in dir(cryoProtocols) if n.startswith('CryoHessProt')):
            protocol = project.newProtocol(getattr(cryoProtocols, name))
            yield OPEN, lambda: view._openProtocolForm(protocol)     # "new protocol"
            yield 'new_%s' % name
            self.forms[-1].close()
            yield QUIT
            self.manifest['newForms'].append(name)

        runs = list(project.getRuns())
        for run in runs:
            yield OPEN, lambda: view._openProtocolForm(run)          # "edit"
            yield 'run%d_form' % run.getObjId()
            self.forms[-1].close()
            yield QUIT
            self.manifest['runForms'].append(run.getObjId())

        for run in runs:
            viewerClass = domain.findViewers(run, DESKTOP_TKINTER)[0]
            viewer = viewerClass(project=project, protocol=run, parent=self.window)
            assert isinstance(viewer, ProtocolViewer), viewerClass
            yield OPEN, lambda: viewer.visualize(run, windows=self.window)  # "analyze results"
            yield 'run%d_%s' % (run.getObjId(), viewerClass.__name__)
            plots = []
            for param in viewer._getVisualizeDict():
                yield OPEN, lambda: viewer._visualizeParam(param)   # the form's "eye" button
                yield 'run%d_%s' % (run.getObjId(), param)
                plt.close('all')
                plots.append(param)
            viewer.formWindow.close()
            yield QUIT
            self.manifest['viewers'][viewerClass.__name__] = plots

        volumes = [(run, name, output) for run in runs
                   for name, output in run.iterOutputAttributes()
                   if CryoHessVolumeViewer in domain.findViewers(output, DESKTOP_TKINTER)]
        shown = []
        for run, name, output in volumes[:2]:                # an output's right-click menu
            viewer = CryoHessVolumeViewer(project=project, protocol=run, parent=self.window)
            yield OPEN, lambda: viewer.visualize(output, windows=self.window)
            yield 'run%d_%s' % (run.getObjId(), name)
            plt.close('all')
            shown.append(name)
        self.manifest['viewers'][CryoHessVolumeViewer.__name__] = shown

        run, name, output = volumes[0]                       # "open in ChimeraX"
        viewer = CryoHessChimeraXViewer(project=project, protocol=run, parent=self.window)
        yield OPEN, lambda: viewer.visualize(output, windows=self.window)
        yield 'run%d_%s_chimerax' % (run.getObjId(), name)
        self.manifest['viewers'][CryoHessChimeraXViewer.__name__] = [name]

        simulation, softModes = runs[0], runs[2]
        yield from self._setViewer(project, domain, simulation, 'outputParticles')
        yield from self._setViewer(project, domain, softModes, 'outputModes')

    def _setViewer(self, project, domain, run, outputName):
        """Scipion's Qt set viewer, a separate process, shows the set ``outputName`` of
        ``run`` (all its columns in view)."""
        from pyworkflow.viewer import DESKTOP_TKINTER
        particles = getattr(run, outputName)
        viewerClass = domain.findViewers(particles, DESKTOP_TKINTER)[0]
        viewer = viewerClass(project=project, protocol=run, parent=self.window)
        started = []
        popen = subprocess.Popen

        def remember(*args, **kwargs):
            started.append(popen(*args, **kwargs))
            return started[-1]
        subprocess.Popen = remember
        try:
            yield OPEN, lambda: viewer.visualize(particles, windows=self.window)
        finally:
            subprocess.Popen = popen
        process, = started
        deadline = time.time() + SET_VIEWER_TIMEOUT
        shown = []
        while not shown and process.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            shown = subprocess.run(['xdotool', 'search', '--onlyvisible', '--pid',
                                    str(process.pid)], capture_output=True).stdout.split()
        assert shown, ("the set viewer (%s, %s) showed no window; its exit code: %s"
                       % (viewerClass.__name__, ' '.join(process.args), process.poll()))
        subprocess.run(['xdotool', 'windowmove', shown[0], '0', '0', 'windowsize', shown[0],
                        '1600', '1000'], check=True)
        time.sleep(2.0)  # the table fills after the window maps
        yield 'run%d_%s_set_viewer' % (run.getObjId(), outputName)
        process.terminate()
        process.wait()
        self.manifest['setViewer'].append(outputName)


def main(projectName, shotDir):
    """Open ``projectName`` as ``python -m pyworkflow.apps.pw_project`` does, with the
    driver started once the window's event loop runs."""
    import runpy
    from pyworkflow.gui.project import ProjectWindow
    show = ProjectWindow.show

    def showAndDrive(window, *args, **kwargs):
        driver = GuiDriver(window, shotDir)
        window.root.after(1000, driver.start)
        return show(window, *args, **kwargs)
    ProjectWindow.show = showAndDrive
    sys.argv = ['pw_project', projectName]
    runpy.run_module('pyworkflow.apps.pw_project', run_name='__main__')
    sys.exit("the project window closed before the driver finished")


if __name__ == '__main__':
    main(*sys.argv[1:])
