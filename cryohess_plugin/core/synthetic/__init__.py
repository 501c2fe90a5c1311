"""Simulation with known ground truth: Gaussian-atom models, phantoms, particles and micrographs.

The independent reference of the other methods' tests: atoms project analytically
(:func:`gaussian_atom_projection`), so a simulated data set does not depend on the
projector it validates.
"""
from . import atoms, phantoms, simulate
from .atoms import (AtomModel, gaussian_atom_projection, gaussian_atom_volume,
                    project_atom_positions, read_atomic_model)
from .phantoms import random_protein_phantom, two_state_phantom
from .simulate import (DISTRIBUTIONS, MicrographSimulation, ParticleSimulation,
                       noise_sigma_for_snr, random_ctf_params, sample_rotations, signal_variance,
                       simulate_micrographs, simulate_particles)

__all__ = ["atoms", "phantoms", "simulate", "AtomModel", "gaussian_atom_projection",
           "gaussian_atom_volume", "project_atom_positions", "read_atomic_model",
           "random_protein_phantom", "two_state_phantom", "DISTRIBUTIONS",
           "MicrographSimulation", "ParticleSimulation", "noise_sigma_for_snr",
           "random_ctf_params", "sample_rotations", "signal_variance", "simulate_micrographs",
           "simulate_particles"]
