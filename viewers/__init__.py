"""cryohess viewers; every class here is registered by Scipion's Domain."""
from . import set_columns  # noqa: F401  (our columns visible in the set viewer)
from .viewer_align import CryoHessAlignParticlesViewer, CryoHessAlignVolumesViewer
from .viewer_fourier_posterior import CryoHessFourierPosteriorViewer, CryoHessRefinePosesViewer
from .viewer_micrograph_em import CryoHessMicrographEMViewer
from .viewer_hyper_molecule import CryoHessHyperMoleculeViewer
from .viewer_simulate import CryoHessSimulateViewer
from .viewer_soft_modes import CryoHessSoftModesViewer
from .viewer_volume import CryoHessChimeraXViewer, CryoHessVolumeViewer

__all__ = ["CryoHessAlignParticlesViewer", "CryoHessAlignVolumesViewer", "CryoHessChimeraXViewer",
           "CryoHessFourierPosteriorViewer", "CryoHessHyperMoleculeViewer",
           "CryoHessMicrographEMViewer", "CryoHessRefinePosesViewer", "CryoHessSimulateViewer",
           "CryoHessSoftModesViewer", "CryoHessVolumeViewer"]
