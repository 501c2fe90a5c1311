"""Gaussian posterior over a map's Fourier coefficients with known poses (Ullrich et al. 2019).

:mod:`.problem` holds the data (spectra in memory or in ``.npy`` files, poses, CTFs) and
the slice model, :mod:`.result` the fitted posterior and its maps, :mod:`.fit` the
closed-form, EM (noise per shell or white, per-shell prior) and variational fits, noise
propagation and the likelihood.
"""
from .fit import (FIT_METHODS, NOISE_MODELS, fit_closed_form, fit_posterior, fit_variational,
                  half_sets, held_out_log_likelihood, log_likelihood, propagate_noise)
from .problem import (CTFTable, ParticleFiles, PosteriorProblem, SpectraWriter, fit_memory_bytes,
                      particle_file_bytes, write_particle_files, write_spectra)
from .result import FourierPosterior

__all__ = ["FIT_METHODS", "NOISE_MODELS", "fit_closed_form", "fit_posterior",
           "fit_variational", "half_sets", "held_out_log_likelihood", "log_likelihood", "propagate_noise", "CTFTable", "ParticleFiles",
           "PosteriorProblem", "SpectraWriter", "fit_memory_bytes", "particle_file_bytes",
           "write_particle_files", "write_spectra", "FourierPosterior"]
