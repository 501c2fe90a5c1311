"""Run a comparison in a child interpreter, with or without numba's CUDA simulator.

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so a
test that compares CUDA kernels with the CPU ones under the simulator runs
the comparison in a child: the child prints a JSON object as its last line.
"""
import json
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(args, simulator=True, timeout=300):
    """Run ``python *args`` from the repository root; return its last line as JSON."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Set to 1 to run every CUDA comparison on the real device instead of the simulator
#: (tests/gpu/test_on_device.py does, on a machine with an NVIDIA GPU).
ON_DEVICE = os.environ.get("CRYOHESS_CUDA_ON_DEVICE") == "1"


def run_module_under_simulator(module):
    """Run test module ``module`` (its ``__main__`` prints the JSON) on the simulator, or
    on the device with ``CRYOHESS_CUDA_ON_DEVICE=1``."""
    return run_child(["-m", module], simulator=not ON_DEVICE, timeout=900 if ON_DEVICE else 300)


def simulated_fixture(module):
    """Module-scoped fixture ``simulated``: the JSON of :func:`run_module_under_simulator`."""
    @pytest.fixture(scope="module", name="simulated")
    def simulated():
        return run_module_under_simulator(module)
    return simulated


def print_result(result):
    """The child's side of :func:`run_child`: ``result`` as the last line it prints."""
    print(json.dumps(result))
