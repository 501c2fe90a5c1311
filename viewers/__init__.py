"""cryohess viewers; every class here is registered by Scipion's Domain."""
from .viewer_simulate import CryoHessSimulateViewer

__all__ = ["CryoHessSimulateViewer"]
