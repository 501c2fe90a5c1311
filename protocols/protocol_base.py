"""What every cryohess protocol does the same way: devices, form blocks, steps that know
what they depend on, file names and results on disk; the checks of their inputs are
inherited from :mod:`.validation`."""
import hashlib
import json
import os
import sys

import numpy as np
from threadpoolctl import threadpool_limits
from pwem.constants import ALIGN_PROJ
from pyworkflow.object import Pointer
from pyworkflow.protocol.constants import MODE_RESUME
import pyworkflow.protocol.params as params
import pyworkflow as pw
from pyworkflow.utils import getListFromRangeString

from cryohess_plugin import convert
from cryohess_plugin.core.fourier import set_fft_workers
from cryohess_plugin.core.kernels import cudasim_active
from cryohess_plugin.plugin import Plugin

from .validation import InputChecks

# Device numbers as the GPU IDs of the form mean them (pyworkflow's convention), set
# before numba first initialises CUDA in this process.
os.environ.setdefault('CUDA_DEVICE_ORDER', pw.Config.CUDA_DEVICE_ORDER)


class CryoHessProtocolMixin(InputChecks):
    """GPU and CPU-thread handling, file names and checks shared by the cryohess protocols.

    A protocol runs its kernels on CUDA when the form's GPU option is on, the
    plugin variable CRYOHESS_USE_GPU allows it and :meth:`_mayUseGpu` (a
    protocol may narrow it) agrees; otherwise on the CPU with the form's threads.
    """

    # --------------------------- form blocks -------------------------------
    @staticmethod
    def _defineParticlesParam(form, help, **options):
        """The ``inputParticles`` pointer with the protocol's own ``help``."""
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      label='Particles', help=help, **options)

    @staticmethod
    def _defineMicroscopeParams(form, condition=None):
        """Voltage, spherical aberration and amplitude contrast of a planned or simulated
        experiment (``condition``: when they are shown)."""
        options = {} if condition is None else {'condition': condition}
        form.addParam('voltage', params.FloatParam, default=300.0,
                      validators=[params.Positive], label='Voltage (kV)',
                      help="Acceleration voltage of the microscope.", **options)
        form.addParam('sphericalAberration', params.FloatParam, default=2.7,
                      validators=[params.GE(0.0)], label='Spherical aberration (mm)',
                      help="Cs of the objective lens.", **options)
        form.addParam('amplitudeContrast', params.FloatParam, default=0.1,
                      validators=[params.Range(0.0, 0.99)], label='Amplitude contrast',
                      help="Fraction of amplitude contrast, in [0, 1).", **options)

    @staticmethod
    def _defineBatchSizeParam(form, help, default=2000):
        """``particlesPerBatch``: the size of the independent steps particles run in."""
        form.addParam('particlesPerBatch', params.IntParam, default=default,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Particles per step', help=help)

    @staticmethod
    def _defineGpuParams(form, what):
        """The hidden GPU parameters; ``what`` says which work runs on the GPU."""
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label="Use GPU?",
                       help="Run %s on the GPU when numba finds one; otherwise, or when "
                            "this is off, on the CPU with the threads below." % what)
        form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                       label="GPU IDs",
                       help="GPUs to use: every step runs on the first GPU of the list it "
                            "is given (parallel steps get their own GPU).")

    def _mayUseGpu(self):
        return True

    def _usesGpu(self):
        """Whether the kernels of this protocol's steps may run on a GPU."""
        return self._mayUseGpu() and self.usesGpu() and Plugin.gpuAllowed()

    def _backend(self):
        """Kernel backend of the core: CUDA when allowed and present, else CPU."""
        return "auto" if self._usesGpu() else "cpu"

    def _stepThreads(self):
        """CPU threads of one step (numba kernels, FFTs, BLAS): the form's threads shared
        by the steps that really run at once (:meth:`_concurrentSteps`), as a program's
        own threads are beside Scipion's step threads (pyworkflow's ``binThreads``)."""
        threads = max(1, self.numberOfThreads.get())
        if not self.modeParallel():
            return threads
        return max(1, threads // self._concurrentSteps())

    def _concurrentSteps(self, most=None):
        """How many of ``most`` independent steps (by default :meth:`_parallelSteps`) run at
        once: in parallel mode Scipion gives steps the form's threads but one."""
        most = self._parallelSteps() if most is None else most
        if not self.modeParallel():
            return 1
        return max(1, min(most, self.numberOfThreads.get() - 1))

    def _parallelSteps(self):
        """The most steps of this run that can run at the same time: its particle batches
        (one when it has none, or no particles yet)."""
        if not hasattr(self, 'particlesPerBatch') or not self.particlesPerBatch.get():
            return 1
        particles = self.inputParticles.get()
        return max(1, len(self._batches())) if particles is not None else 1

    def _gpuDeviceUsable(self):
        """Whether this protocol's steps will really run on a GPU: the form and the
        plugin variable allow it and numba finds a CUDA device."""
        from cryohess_plugin.core.kernels import cuda_available
        return self._usesGpu() and cuda_available()

    def _gpuWarnings(self):
        """The warning that 'Use GPU' is on but the steps will run on the CPU."""
        if not self._usesGpu() or self._gpuDeviceUsable():
            return []
        return ["'Use GPU' is on but numba finds no usable CUDA device, so every step runs "
                "on the CPU with %d thread(s). To use a GPU, install the plugin's gpu extra "
                "(pip install \"scipion-em-cryohess[gpu]\") and check the device with "
                "python -c 'from numba import cuda; cuda.detect()'." % self._stepThreads()]

    def _validateGpuList(self):
        """GPU ids as pyworkflow reads them (e.g. '0 1' or '0-3'), and present here."""
        if not self.usesGpu():
            return []
        try:
            ids = getListFromRangeString(self.gpuList.get())
        except ValueError:
            ids = None
        if not ids or any(gpu < 0 for gpu in ids):
            return ["GPU IDs '%s' are not a list of device numbers such as '0' or '0 1'."
                    % self.gpuList.get()]
        if self._gpuDeviceUsable() and not cudasim_active():
            from numba import cuda
            missing = sorted(set(ids) - set(range(len(cuda.gpus))))
            if missing:
                return ["GPU IDs %s do not exist: this machine has %d CUDA device(s), "
                        "numbered from 0 in PCI bus order." % (missing, len(cuda.gpus))]
        return []

    def validate(self):
        return super().validate() + self._validateGpuList()

    def warnings(self):
        return self._gpuWarnings() + super().warnings()

    def _stepStarted(self, step):
        """Bound the FFT and BLAS threads of this process by a step's threads before any
        step runs: every process of a run, whichever steps it runs (a continued run may
        run only the last), computes with the same threads, hence the same rounding."""
        threads = self._libraryThreads()
        set_fft_workers(threads)
        threadpool_limits(threads, user_api='blas')
        super()._stepStarted(step)

    def _libraryThreads(self):
        import numba
        return max(1, min(self._stepThreads(), numba.config.NUMBA_NUM_THREADS))

    def _setDevices(self):
        """Threads of this step's numba kernels; bind the step's thread to its first GPU,
        if any; say in the run log where the step runs."""
        import numba
        threads = self._libraryThreads()
        numba.set_num_threads(threads)
        gpus = self._stepsExecutor.getGpuList() if self._gpuDeviceUsable() else []
        if gpus and not cudasim_active():
            from numba import cuda
            cuda.select_device(gpus[0])
            self.info("This step runs its kernels on GPU %d (%s)."
                      % (gpus[0], cuda.get_current_device().name.decode(errors='replace')))
        else:
            self.info("This step runs on the CPU with %d thread(s)." % threads)

    def _parallelStepSet(self, name='inputParticles'):
        """The input set ``name`` opened afresh for a step that runs beside others: the
        set behind the form's pointer is shared by the step threads, and its database
        cursor cannot serve two of them at once."""
        shared = getattr(self, name).get()
        own = shared.getClass()(filename=shared.getFileName())
        own.loadAllProperties()
        return own

    # --------------------------- batch steps as jobs --------------------------
    def _runBatchJob(self, task, output, logPrefix, arrays=None, inputs=None, options=None):
        """Run a batch step's computation from files, as a :mod:`cryohess_plugin.run_batch`
        job writing ``output`` (a task may continue from an earlier one, as a chain from
        its checkpoint); only this job's end counts.

        The job runs in this step's thread, or, when the run sends its steps to a queue
        ("use queue for jobs"), through ``runJob`` as a command on a cluster node with
        :meth:`Plugin.getEnviron` and the step's GPUs as ``CUDA_VISIBLE_DEVICES``.

        :param arrays: ``{input name: {key: array}}`` written as the job's input files
            (removed once the job has written its output).
        :param inputs: ``{input name: path}`` of files already on disk.
        :param options: the task's options (plain JSON values).
        :returns: the numbers the job left for the step's log (may be empty).
        """
        from cryohess_plugin import run_batch
        name = os.path.splitext(os.path.basename(output))[0]
        jobDir = self._getExtraPath('jobs')
        os.makedirs(jobDir, exist_ok=True)
        inputs = dict(inputs or {})
        written = []
        for key, values in (arrays or {}).items():
            inputs[key] = os.path.join(jobDir, '%s_%s.npz' % (name, key))
            self._saveNpz(inputs[key], **values)
            written.append(inputs[key])
        gpus = self._stepsExecutor.getGpuList() if self._gpuDeviceUsable() else []
        threads = self._libraryThreads()
        jobPath = os.path.join(jobDir, name + '.json')
        job = run_batch.write_job(jobPath, task, output, inputs=inputs, options=options,
                                  threads=threads, gpu=0 if gpus else None,
                                  backend=self._backend())
        run_batch.clear_job(job)
        if self.useQueueForSteps():
            self.info("%sthe %s job goes to the queue (%d thread(s))"
                      % (logPrefix, task, threads))
            self.runJob(*self._batchJobCommand(jobPath, bool(gpus)),
                        env=Plugin.getEnviron(threads), numberOfThreads=threads)
        else:
            run_batch.run_job(job, progress=self._progressLog(logPrefix))
        notes = run_batch.job_notes(job)
        for path in written:
            os.remove(path)
        return notes

    @staticmethod
    def _batchJobCommand(jobPath, usesGpus):
        """``(program, arguments)`` of ``runJob`` for the job file ``jobPath``; with
        ``usesGpus`` the job sees only its step's GPUs (pyworkflow fills ``%(GPU)s``)."""
        program = ('CUDA_VISIBLE_DEVICES=%(GPU)s ' if usesGpus else '') + sys.executable
        return program, '-m cryohess_plugin.run_batch "%s"' % os.path.abspath(jobPath)

    # --------------------------- steps that know what they depend on --------
    def _insertStep(self, func, *args, reads=(), after=(), needsGPU=False):
        """Insert a function step that Continue re-runs exactly when what it reads changed.

        The step is called with ``args`` and, last, a digest of ``args``, of the form
        parameters named in ``reads`` (their values; for pointers the identity of the
        object and of its file) and of the digests of the steps ``after`` it waits for.
        Pyworkflow skips a finished step whose arguments are unchanged, so an edit of the
        form re-runs the steps that read what was edited and every step downstream.

        :returns: the step's index, for ``after`` of later steps.
        """
        if not hasattr(self, '_stepDigests'):
            self._stepDigests = {}
        record = [func.__name__, list(args), [self._paramIdentity(name) for name in reads],
                  [self._stepDigests[index] for index in after]]
        digest = hashlib.sha1(json.dumps(record, sort_keys=True, default=str)
                              .encode()).hexdigest()[:16]
        index = self._insertFunctionStep(func, *args, digest, prerequisites=list(after),
                                         needsGPU=needsGPU and self._gpuDeviceUsable())
        self._stepDigests[index] = digest
        return index

    def _paramIdentity(self, name):
        """What a step depends on in form parameter ``name``: its value or, for a pointer,
        the object it points to and the size and modification time of its file (for a
        file name, the size and modification time of that file)."""
        attribute = getattr(self, name)
        if isinstance(self.getParam(name), params.PathParam):
            return [name, attribute.get(), _pathIdentity(attribute.get())]
        if not isinstance(attribute, Pointer):
            return [name, attribute.get()]
        target = attribute.get()
        if target is None:
            return [name, None]
        return [name, target.getClassName(), target.getObjId(), attribute.getExtended(),
                _fileIdentity(target)]

    def _validateContinue(self):
        """The Restart message when Continue would keep an output that the current
        settings no longer produce."""
        if self.getRunMode() != MODE_RESUME:
            return []
        expected = self._expectedOutputs()
        stale = [name for name, _ in self.iterOutputAttributes() if name not in expected]
        if not stale:
            return []
        return ["This change needs Restart: with these settings the run no longer produces "
                "%s, which Continue would leave in place. Choose Restart to run it anew."
                % ", ".join(stale)]

    def _expectedOutputs(self):
        """Names of the outputs the current settings produce (every possible one unless a
        protocol says otherwise)."""
        outputs = self._possibleOutputs
        return {member.name for member in outputs} if isinstance(outputs, type) else set(outputs)

    def _progressLog(self, prefix=""):
        """The core's ``progress`` callback: each :class:`Progress` event becomes one
        run-log line, after ``prefix`` (e.g. the batch it belongs to)."""
        return lambda event: self.info(prefix + event.line())

    def _filenameTemplates(self):
        """``{key: path template}`` of the files a protocol writes (none by default)."""
        return {}

    def _getFileName(self, key, **kwargs):
        """Path of file ``key``; the templates are (re)built on demand, so viewers and
        a resumed run see the same names without running _insertAllSteps."""
        self._updateFilenamesDict(self._filenameTemplates())
        return super()._getFileName(key, **kwargs)

    # --------------------------- particles in batches ----------------------
    def _batches(self):
        """``(first, count)`` of the particle batches that run as independent steps (counted
        on a set of its own: steps starting at once ask for their thread share here)."""
        size = convert.enabled_count(self._parallelStepSet())
        step = self.particlesPerBatch.get()
        return [(first, min(step, size - first)) for first in range(0, size, step)]

    def _copyParticles(self, ids, columns, poses=None, alignment=ALIGN_PROJ):
        """A copy of the input particles with new columns and, optionally, new poses.

        :param ids: ``(n,)`` particle ids, the row order of ``columns`` and ``poses``.
        :param columns: ``{column name: (n, ...) values}`` written on every particle.
        :param poses: None or ``(rotations (n, 3, 3), shifts (n, 2))`` in the core's
            convention, stored as ``alignment``.
        """
        inputParticles = self.inputParticles.get()
        particles = self._createSetOfParticles()
        particles.copyInfo(inputParticles)
        if poses is not None:
            particles.setAlignment(alignment)
        row = {int(partId): i for i, partId in enumerate(ids)}

        def updateParticle(particle, _row=None):
            i = row[particle.getObjId()]
            if poses is not None:
                particle.setTransform(convert.transform_from_pose(poses[0][i], poses[1][i],
                                                                  alignment))
            convert.set_columns(particle, columns, i)

        particles.copyItems(inputParticles, updateItemCallback=updateParticle)
        return particles

    @staticmethod
    def _saveNpz(path, **arrays):
        """Write an npz next to ``path`` and rename it, so a stopped run leaves
        either the complete file or none."""
        tmp = path + '.tmp.npz'
        np.savez(tmp, **arrays)
        os.replace(tmp, path)


def _fileIdentity(target):
    """``[path, size, modification time]`` of the file behind a Scipion object (a set's
    sqlite, a volume's map), or None when it has none on disk."""
    path = convert.image_file(target.getFileName()) if hasattr(target, 'getFileName') else None
    return _pathIdentity(path)


def _pathIdentity(path):
    """``[path, size, modification time]`` of a file, or None when there is none."""
    if not path or not os.path.exists(path):
        return None
    status = os.stat(path)
    return [os.path.abspath(path), status.st_size, status.st_mtime_ns]
