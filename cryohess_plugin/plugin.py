"""The Scipion ``Plugin`` class of cryohess.

cryohess is pure Python: the numerical core is installed with the plugin, so
there are no binaries to install and no paths to validate.
"""
import pwem
from pyworkflow.config import VarTypes

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
    def defineBinaries(cls, env):
        """Nothing to install: the numerical core is a Python dependency."""
