"""Wizards of the cryohess forms, found by Scipion's Domain in this module.

Every resolution limit of a form (a finest resolution in Å) gets pwem's low-pass filter
wizard: the user slides the cut-off over the protocol's own input images (particles, maps
or micrographs) and sees them filtered, and the chosen resolution is written back in Å.
"""
from pwem.constants import FILTER_LOW_PASS, UNIT_ANGSTROM
from pwem.wizards import FilterParticlesWizard
from pyworkflow.gui import dialog

from .protocols import (CryoHessProtAlignParticles, CryoHessProtAlignVolumes,
                        CryoHessProtHyperMolecule, CryoHessProtMicrographEM,
                        CryoHessProtRefinePoses, CryoHessProtSoftModes)

#: Each protocol's input whose images the preview shows, and its resolution parameters.
RESOLUTION_PARAMS = {
    CryoHessProtAlignParticles: ('inputParticles', ['maxResolution', 'refineResolution']),
    CryoHessProtAlignVolumes: ('inputVolumes', ['maxResolution']),
    CryoHessProtSoftModes: ('inputVolume', ['maxResolution']),
    CryoHessProtRefinePoses: ('inputParticles', ['maxResolution']),
    CryoHessProtHyperMolecule: ('inputParticles', ['maxResolution']),
    CryoHessProtMicrographEM: ('inputMicrographs', ['workingResolution']),
}


class CryoHessResolutionWizard(FilterParticlesWizard):
    """Choose a resolution limit (Å) with pwem's low-pass filter preview."""
    _targets = [(protocolClass, names)
                for protocolClass, (_, names) in RESOLUTION_PARAMS.items()]

    def _getProvider(self, protocol):
        inputName, _ = RESOLUTION_PARAMS[type(protocol)]
        return self._getListProvider(getattr(protocol, inputName))

    def show(self, form, *params):
        protocol = form.protocol
        name = self.paramName(form)
        images = getattr(protocol, RESOLUTION_PARAMS[type(protocol)][0]).get()
        if images is None:
            dialog.showWarning("Empty input", "Select the input first", form.root)
            return
        # 0 means the protocol's default; the preview then starts at Nyquist.
        resolution = protocol.getAttributeValue(name) or 2.0 * images.getSamplingRate()
        FilterParticlesWizard.show(self, form, [None, resolution, None], [None, name, None],
                                   FILTER_LOW_PASS, UNIT_ANGSTROM, showDecay=False)

    @staticmethod
    def paramName(form):
        """The parameter whose wizard button was pressed (the form window records it)."""
        return (getattr(form, 'wizParamName', None)
                or RESOLUTION_PARAMS[type(form.protocol)][1][0])
