"""The numerical core must import and run without pyworkflow or pwem."""
import subprocess
import sys

SCRIPT = """
import sys
sys.modules['pwem'] = None
sys.modules['pyworkflow'] = None
import numpy as np
import cryohess_plugin.core.synthetic.atoms, cryohess_plugin.core.ctf, cryohess_plugin.core.mrc
from cryohess_plugin.core.synthetic import phantoms, simulate
sim = simulate.simulate_particles(phantoms.random_protein_phantom(50, 8.0), 3, 16, 2.0,
                                  backend="cpu")
assert sim.images.shape == (3, 16, 16)
assert not any(name.split('.')[0] in ('pwem', 'pyworkflow') for name, module in
               sys.modules.items() if module is not None)
"""


def test_core_runs_with_scipion_blocked():
    subprocess.run([sys.executable, "-c", SCRIPT], check=True)
