"""cryohess protocols; every class here is registered by Scipion's Domain."""
from .protocol_align_particles import CryoHessProtAlignParticles
from .protocol_align_volumes import CryoHessProtAlignVolumes
from .protocol_fourier_posterior import CryoHessProtFourierPosterior
from .protocol_micrograph_em import CryoHessProtMicrographEM
from .protocol_hyper_molecule import CryoHessProtHyperMolecule
from .protocol_refine_poses import CryoHessProtRefinePoses
from .protocol_simulate import CryoHessProtSimulate
from .protocol_soft_modes import CryoHessProtSoftModes

__all__ = ["CryoHessProtAlignParticles", "CryoHessProtAlignVolumes",
           "CryoHessProtFourierPosterior", "CryoHessProtHyperMolecule", "CryoHessProtMicrographEM",
           "CryoHessProtRefinePoses",
           "CryoHessProtSimulate", "CryoHessProtSoftModes"]
