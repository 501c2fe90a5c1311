"""What every cryohess protocol does the same way: devices, file names, results on disk."""
import os

import numpy as np
from pwem.constants import ALIGN_PROJ
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.core.errors import InvalidDataError
from cryohess_plugin.core.fourier import frequency_for_resolution
from cryohess_plugin.plugin import Plugin


class CryoHessProtocolMixin:
    """GPU and CPU-thread handling, file names and checks shared by the cryohess protocols.

    A protocol runs its kernels on CUDA when the form's GPU option is on, the
    plugin variable CRYOHESS_USE_GPU allows it and :meth:`_mayUseGpu` (a
    protocol may narrow it) agrees; otherwise on the CPU with the form's threads.
    """

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
        """numba threads of one step: all the form's threads when steps run one at a
        time; in parallel mode Scipion runs threads - 1 steps at once, so one each
        (two threads are one step worker, which keeps both)."""
        threads = max(1, self.numberOfThreads.get())
        if self.modeParallel() and threads > 2:
            return 1
        return threads

    def _setDevices(self):
        """CPU threads for this step; bind this step's thread to its first GPU, if any."""
        import numba
        numba.set_num_threads(max(1, min(self._stepThreads(), numba.config.NUMBA_NUM_THREADS)))
        if self._usesGpu():
            from cryohess_plugin.core.kernels import cuda_available
            gpus = self._stepsExecutor.getGpuList()
            if gpus and cuda_available():
                from numba import cuda
                cuda.select_device(gpus[0])

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

    @staticmethod
    def _saveNpz(path, **arrays):
        """Write an npz next to ``path`` and rename it, so a stopped run leaves
        either the complete file or none."""
        tmp = path + '.tmp.npz'
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def _validateMaxResolution(self, pixel):
        """The core's message when the form's max resolution is beyond Nyquist."""
        resolution = self.maxResolution.get()
        if not resolution:
            return []
        try:
            frequency_for_resolution(1, pixel, resolution)
        except InvalidDataError as error:
            return ["The max resolution is too fine: %s." % error]
        return []

    @staticmethod
    def _validateAlignedParticles(particles, noCtfFix):
        """Errors of a non-empty particle set that needs 3D poses and CTFs; ``noCtfFix``
        ends the missing-CTF message with the protocol's own way round it."""
        errors = []
        if particles.getAlignment() != ALIGN_PROJ:
            errors.append("The particles have no 3D alignment (they have %r, ALIGN_PROJ is "
                          "needed): use particles from a 3D refinement or from projection "
                          "matching (e.g. 'radial-SVD align particles' against a volume)."
                          % particles.getAlignment())
        if not particles.hasCTF():
            errors.append("The particles have no CTF: estimate the CTF of the micrographs "
                          "(e.g. CTFFIND) and extract the particles with it, or %s."
                          % noCtfFix)
        return errors

    @staticmethod
    def _validateSameGeometry(what, otherBox, otherPixel, box, pixel):
        """Errors when ``what`` (e.g. "reference volume") and the particles, ``box`` px
        at ``pixel`` Å/px, differ in box or pixel size."""
        errors = []
        if otherBox != box:
            errors.append("The particles are %d px wide but the %s %d px; resize one of "
                          "them (e.g. xmipp3 - crop/resize)." % (box, what, otherBox))
        if not convert.same_sampling(otherPixel, pixel):
            errors.append("The particles have %g Å/px but the %s %g Å/px; resample one "
                          "of them." % (pixel, what, otherPixel))
        return errors
