"""cryohess protocols; every class here is registered by Scipion's Domain."""
from .protocol_simulate import CryoHessProtSimulate

__all__ = ["CryoHessProtSimulate"]
