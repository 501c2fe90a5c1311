"""Atomic models as imported ``AtomStruct`` inputs of the simulation (the file path kept
as the alternative): the same data as from the files, and the checks of the choice."""
import os

import numpy as np
from pwem.protocols import ProtImportPdb
from pyworkflow.tests import setupTestProject
from pyworkflow.utils import magentaStr

from cryohess_plugin.constants import HETEROGENEITY_LINEAR, SOURCE_ATOMIC_MODEL
from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic.phantoms import random_protein_phantom
from cryohess_plugin.protocols import CryoHessProtSimulate
from .scipion_base import CryoHessTestCase
from .scipion_data import SMALL, writePdb

SETTINGS = dict(SMALL, numberOfParticles=8, numberOfDefocusGroups=2,
                source=SOURCE_ATOMIC_MODEL, heterogeneity=HETEROGENEITY_LINEAR)


class TestAtomStructInputs(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        print(magentaStr("\n==> Importing two atomic models"))
        folder = os.path.abspath(cls.proj.getTmpPath())
        cls.files = [os.path.join(folder, 'state%s.pdb' % name) for name in 'AB']
        state = random_protein_phantom(150, 14.0, rng=7)
        writePdb(cls.files[0], state)
        state.positions[:40] += np.array([2.5, 0.0, 0.0])
        writePdb(cls.files[1], state)
        cls.imports = []
        for path in cls.files:
            protocol = cls.newProtocol(ProtImportPdb, inputPdbData=1, pdbFile=path,
                                       skipChimera=True)
            cls.launchProtocol(protocol)
            cls.imports.append(protocol)

    def _simulation(self, fromImports, **kwargs):
        protocol = self.newProtocol(CryoHessProtSimulate, **dict(SETTINGS, **kwargs))
        if fromImports:
            protocol.inputAtomStruct.set(self.imports[0].outputPdb)
            protocol.secondAtomStruct.set(self.imports[1].outputPdb)
        else:
            protocol.atomicModel.set(self.files[0])
            protocol.secondModel.set(self.files[1])
        return protocol

    def testImportedModelsGiveTheFilesData(self):
        stacks = []
        for fromImports in (True, False):
            protocol = self._simulation(fromImports)
            self.assertEqual(protocol.validate(), [])
            self.launchProtocol(protocol)
            stacks.append(mrc.read_stack(protocol._getFileName('particles')))
            self.assertIn(os.path.basename(self.files[0]), ' '.join(protocol._summary()))
        np.testing.assert_array_equal(stacks[0], stacks[1])
        self.assertGreater(np.abs(stacks[0]).max(), 0.0)

    def testOneModelEitherWay(self):
        protocol = self._simulation(True)
        protocol.atomicModel.set(self.files[0])
        errors = ' '.join(protocol.validate())
        self.assertIn('either as an imported atomic structure or as a file, not both', errors)
        self.assertNotIn('second atomic model', errors)
        empty = self.newProtocol(CryoHessProtSimulate, **SETTINGS)
        errors = ' '.join(empty.validate())
        self.assertIn('Give the atomic model: select an imported atomic structure', errors)
        self.assertIn('Give the second atomic model', errors)

    def testImportedStructureIsChecked(self):
        protocol = self._simulation(True)
        protocol.secondAtomStruct.set(None)
        protocol.secondModel.set(self.proj.getTmpPath('no_such_model.pdb'))
        self.assertIn('second atomic model file', ' '.join(protocol.validate()))
        self.assertIn('does not exist', ' '.join(protocol.validate()))
