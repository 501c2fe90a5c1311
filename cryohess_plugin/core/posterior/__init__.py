"""Gaussian posterior over a map's Fourier coefficients with known poses (Ullrich et al. 2019).

:mod:`.problem` holds the data (spectra in memory or in ``.npy`` files, poses, CTFs) and
the slice model, :mod:`.result` the fitted posterior and its maps, :mod:`.fit` the
closed-form, EM and variational fits, noise propagation and the likelihood.
"""
from .fit import (fit_closed_form, fit_variational, log_likelihood, propagate_noise)
from .problem import PosteriorProblem, SpectraWriter, write_spectra
from .result import FourierPosterior

__all__ = ["fit_closed_form", "fit_variational", "log_likelihood", "propagate_noise",
           "PosteriorProblem", "SpectraWriter", "write_spectra", "FourierPosterior"]
