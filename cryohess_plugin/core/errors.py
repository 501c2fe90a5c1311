"""Typed exceptions raised by the numerical core.

Each message names the problem and the fix, so protocols can show it as is.
"""


class CryoHessError(Exception):
    """Base class of all errors raised by cryohess."""


class ShapeError(CryoHessError, ValueError):
    """An array has the wrong number of dimensions or an inconsistent size."""


class InvalidDataError(CryoHessError, ValueError):
    """Input values are not usable (NaN/inf, empty, out of range)."""


class MrcFileError(CryoHessError, IOError):
    """An MRC file is missing, truncated or not an MRC file."""


class SamplingMismatchError(CryoHessError, ValueError):
    """Two inputs have different pixel sizes."""


class MissingMetadataError(CryoHessError, ValueError):
    """Required CTF or alignment information is absent."""


class ConvergenceError(CryoHessError, RuntimeError):
    """An iterative solver stopped before reaching the requested accuracy."""
