"""Settings and small helpers the Scipion tests share: the small simulation most of them
start from, the soft-mode analysis' simulation and settings, a soft-mode protocol's
eigenvalues and a minimal PDB writer."""
import numpy as np

from cryohess_plugin import convert
from cryohess_plugin.constants import SOFT_MODE_EIGENVALUE

SMALL_BOX = 32
SMALL_PIXEL = 2.0
SMALL_PARTICLES = 20
SMALL = dict(boxSize=SMALL_BOX, samplingRate=SMALL_PIXEL, numberOfParticles=SMALL_PARTICLES,
             numberOfDefocusGroups=4, phantomAtoms=300, phantomRadius=18.0, snr=1.0,
             shiftSigma=1.5, numberOfThreads=1)

SIMULATION_BOX = 32
SIMULATION_PIXEL = 2.5
SIMULATION_PARTICLES = 300
ANALYSIS_RESOLUTION = 25.0  # Å: 2πK about π x 80 Å / 25 Å = 10
ANALYSIS_MODES = 4
ANALYSIS_MAX_PRODUCTS = 400
SIMULATION = dict(boxSize=SIMULATION_BOX, samplingRate=SIMULATION_PIXEL,
                  numberOfParticles=SIMULATION_PARTICLES,
                  numberOfDefocusGroups=3, phantomAtoms=400, phantomRadius=30.0, snr=1.0,
                  shiftSigma=1.0, randomSeed=5, numberOfThreads=1)
ANALYSIS = dict(maxResolution=ANALYSIS_RESOLUTION, numberOfModes=ANALYSIS_MODES,
                maxProducts=ANALYSIS_MAX_PRODUCTS, numberOfThreads=1)


def eigenvalues(protocol):
    return np.array([convert.read_column(mode, SOFT_MODE_EIGENVALUE)
                     for mode in protocol.outputModes.iterItems(orderBy='id')])


def writePdb(path, model):
    """Write an AtomModel as a minimal PDB file (one residue per atom)."""
    with open(path, 'w') as pdb:
        for i, ((x, y, z), element) in enumerate(zip(model.positions, model.elements)):
            name = element.upper()
            pdb.write("ATOM  %5d %-4s ALA A%4d    %8.3f%8.3f%8.3f  1.00 30.00          %2s\n"
                      % (i + 1, name, i % 9999 + 1, x, y, z, name))
        pdb.write("END\n")
