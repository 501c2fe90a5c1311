"""The Scipion ``Plugin`` class of cryohess.

cryohess is pure Python: the numerical core is installed with the plugin, so
there are no binaries to install and no paths to validate.
"""
import os

import pwem
import pyworkflow as pw
from pyworkflow.config import VarTypes
from pyworkflow.utils import Environ

from .constants import CRYOHESS_USE_GPU, CRYOHESS_USE_GPU_DEFAULT


class Plugin(pwem.Plugin):
    # pyworkflow takes the plugin's name and folder from the class's module
    # (Plugin.getName / getPath), which must be the package itself.
    __module__ = "cryohess_plugin"
    _pathVars = []
    _url = "https://pypi.org/project/scipion-em-cryohess/"

    def getName(self):
        """The name users read: the menu of all protocols, and every protocol's label
        ("cryohess - simulate data set"), as in our menu section and citations."""
        return "cryohess"

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(CRYOHESS_USE_GPU, CRYOHESS_USE_GPU_DEFAULT,
                       description="Let protocols run numba.cuda kernels when a CUDA "
                                   "GPU is visible (True/False).",
                       var_type=VarTypes.BOOLEAN)

    @classmethod
    def gpuAllowed(cls):
        """Whether the CRYOHESS_USE_GPU variable lets protocols use a GPU."""
        return str(cls.getVar(CRYOHESS_USE_GPU)).strip().lower() in ("1", "true", "yes", "on")

    @classmethod
    def getEnviron(cls, threads=1):
        """The environment of a batch job (``python -m cryohess_plugin.run_batch``):
        ``threads`` numba, OpenMP and BLAS threads, CUDA devices numbered in PCI bus order
        as the form's GPU IDs mean them, and the numba threading layer of this process
        (the user's choice, or numba's default)."""
        import numba
        environ = Environ(os.environ)
        threads = str(max(1, int(threads)))
        environ.update({'NUMBA_NUM_THREADS': threads, 'OMP_NUM_THREADS': threads,
                        'OPENBLAS_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads,
                        'CUDA_DEVICE_ORDER': pw.Config.CUDA_DEVICE_ORDER,
                        'NUMBA_THREADING_LAYER': numba.config.THREADING_LAYER})
        return environ

    @classmethod
    def defineBinaries(cls, env):
        """Nothing to install: the numerical core is a Python dependency."""
