"""Every CUDA kernel on a real NVIDIA device against the CPU kernels: the comparisons of the
``tests/test_*_cuda.py`` modules, which otherwise run on numba's simulator, with the same
tolerances. Skipped on a machine without a CUDA device; run it on a GPU node with

    python -m pytest tests/gpu -q
"""
import glob
import os
import subprocess
import sys

import pytest

from ..cudasim import REPOSITORY, run_child

_DEVICE_CHECK = "import json; from numba import cuda; print(json.dumps(cuda.is_available()))"
CUDA_MODULES = sorted(os.path.relpath(path, REPOSITORY)
                      for path in glob.glob(os.path.join(REPOSITORY, "tests", "test_*_cuda.py")))


@pytest.fixture(scope="module")
def device():
    if not run_child(["-c", _DEVICE_CHECK], simulator=False):
        pytest.skip("no CUDA device on this machine")


@pytest.mark.parametrize("module", CUDA_MODULES)
def test_cuda_kernels_equal_cpu_on_the_device(device, module):
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    env["CRYOHESS_CUDA_ON_DEVICE"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", module, "-q", "-p",
                             "no:cacheprovider"], cwd=REPOSITORY, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
