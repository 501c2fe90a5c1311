"""The resolution wizard: Scipion's Domain finds it for every resolution limit of every
form, and it writes the resolution chosen in pwem's low-pass preview back in Å."""
from types import SimpleNamespace
from unittest import mock

import pwem
from pwem.constants import FILTER_LOW_PASS, UNIT_ANGSTROM
from pyworkflow.protocol.params import FloatParam
from pyworkflow.tests import setupTestProject
from pyworkflow.viewer import DESKTOP_TKINTER

from cryohess_plugin.protocols import CryoHessProtAlignParticles, CryoHessProtSoftModes
from cryohess_plugin.wizards import RESOLUTION_PARAMS, CryoHessResolutionWizard
from .scipion_base import CryoHessTestCase
from .scipion_data import SMALL


def resolutionParams(protocolClass):
    """Every resolution limit of a form: the float parameters given in Å whose name says
    resolution."""
    protocol = protocolClass()
    return {name for name, param in protocol.getDefinition().iterParams()
            if isinstance(param, FloatParam) and 'Resolution' in name
            and '(Å)' in param.label.get()}


def test_domain_finds_the_wizard():
    assert pwem.Domain.getWizards()['CryoHessResolutionWizard'] is CryoHessResolutionWizard


def test_every_resolution_limit_has_the_wizard():
    protocols = {name: cls for name, cls in pwem.Domain.getProtocols().items()
                 if name.startswith('CryoHessProt')}
    covered = {cls.__name__ for cls in RESOLUTION_PARAMS}
    for name, protocolClass in protocols.items():
        expected = resolutionParams(protocolClass)
        wizards = pwem.Domain.findWizards(protocolClass(), DESKTOP_TKINTER)
        found = {param for param, wizard in wizards.items()
                 if wizard is CryoHessResolutionWizard}
        assert found == expected, name
        assert bool(expected) == (name in covered), name
    assert resolutionParams(CryoHessProtAlignParticles) == {'maxResolution',
                                                            'refineResolution'}


class FakeFilterDialog:
    """pwem's band-pass dialog as a user leaves it: a cut-off chosen on the slider, as a
    digital frequency (pixel / Å at the images' sampling)."""
    chosen = 0.25
    calls = []

    def __init__(self, root, provider, **args):
        self.samplingRate = SMALL['samplingRate']
        FakeFilterDialog.calls.append((provider, args))

    def resultYes(self):
        return True

    def getHighFreq(self):
        return self.chosen

    def getLowFreq(self):  # hidden in low-pass mode: the real dialog gives None
        return None

    getFreqDecay = getLowFreq


class TestResolutionWizard(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.simulation = cls.launchSimulation('wizard input', SMALL)

    def _form(self, protocol, paramName):
        values = {}
        form = SimpleNamespace(protocol=protocol, root=None, wizParamName=paramName,
                               setVar=lambda name, value: values.__setitem__(name, value))
        return form, values

    def _show(self, protocol, paramName):
        form, values = self._form(protocol, paramName)
        FakeFilterDialog.calls = []
        with mock.patch('pwem.wizards.wizard.BandPassFilterDialog', FakeFilterDialog):
            CryoHessResolutionWizard().show(form)
        return values, FakeFilterDialog.calls

    def testParticleProtocolWritesTheChosenResolution(self):
        protocol = self.newProtocol(CryoHessProtAlignParticles, refineResolution=7.0)
        protocol.inputParticles.set(self.simulation.outputParticles)
        for name, start in (('maxResolution', 2.0 * SMALL['samplingRate']),
                            ('refineResolution', 7.0)):
            values, calls = self._show(protocol, name)
            self.assertEqual(values, {name: SMALL['samplingRate'] / FakeFilterDialog.chosen})
            (provider, args), = calls
            self.assertEqual((args['mode'], args['unit'], args['highFreq']),
                             (FILTER_LOW_PASS, UNIT_ANGSTROM, start))
            self.assertFalse(args['showLowFreq'])
            # The preview shows the protocol's own particles.
            self.assertEqual(len(provider.getObjects()), SMALL['numberOfParticles'])

    def testVolumeProtocolPreviewsItsMap(self):
        protocol = self.newProtocol(CryoHessProtSoftModes, maxResolution=12.0)
        protocol.inputVolume.set(self.simulation.outputVolume)
        values, calls = self._show(protocol, 'maxResolution')
        self.assertEqual(values, {'maxResolution': 8.0})
        (provider, args), = calls
        self.assertEqual(args['highFreq'], 12.0)
        self.assertEqual([volume.getFileName() for volume in provider.getObjects()],
                         [self.simulation.outputVolume.getFileName()])

    def testNoInputWarns(self):
        protocol = self.newProtocol(CryoHessProtSoftModes)
        form, values = self._form(protocol, 'maxResolution')
        with mock.patch('cryohess_plugin.wizards.dialog.showWarning') as warning:
            CryoHessResolutionWizard().show(form)
        warning.assert_called_once()
        self.assertEqual(values, {})
