"""cryohess viewers; every class here is registered by Scipion's Domain."""
from .viewer_align import CryoHessAlignParticlesViewer, CryoHessAlignVolumesViewer
from .viewer_fourier_posterior import CryoHessFourierPosteriorViewer, CryoHessRefinePosesViewer
from .viewer_simulate import CryoHessSimulateViewer
from .viewer_soft_modes import CryoHessSoftModesViewer
from .viewer_volume import CryoHessVolumeViewer

__all__ = ["CryoHessAlignParticlesViewer", "CryoHessAlignVolumesViewer",
           "CryoHessFourierPosteriorViewer", "CryoHessRefinePosesViewer",
           "CryoHessSimulateViewer", "CryoHessSoftModesViewer", "CryoHessVolumeViewer"]
