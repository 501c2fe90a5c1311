"""Simulation with known ground truth: Gaussian-atom models, phantoms, particles and micrographs.

The independent reference of the other methods' tests: atoms project analytically
(:func:`gaussian_atom_projection`), so a simulated data set does not depend on the
projector it validates.  :mod:`.planning` holds the limits and estimates of a planned
data set, for checks made before it is simulated.
"""
from . import atoms, phantoms, planning, pretzel, simulate
from .atoms import (AtomModel, check_atomic_model_file, gaussian_atom_projection,
                    gaussian_atom_volume, project_atom_positions, read_atomic_model)
from .phantoms import (cyclic_phantom, max_radius, phantom_states, random_protein_phantom,
                       two_state_phantom)
from .pretzel import Pretzel
from .planning import (Footprint, data_set_footprint, fraction_past_box_edge,
                       max_particles_per_micrograph)
from .simulate import (DISTRIBUTIONS, MICROGRAPH_STREAM, PARTICLE_STREAM, STRUCTURE_STREAM,
                       MicrographSimulation, ParticleSimulation, ground_truth_maps,
                       random_ctf_params, sample_rotations, simulate_micrographs,
                       simulate_particles, stream_seed)

__all__ = ["atoms", "phantoms", "planning", "pretzel", "simulate", "Pretzel", "AtomModel", "check_atomic_model_file",
           "gaussian_atom_projection", "gaussian_atom_volume", "project_atom_positions",
           "read_atomic_model", "cyclic_phantom", "max_radius", "phantom_states",
           "random_protein_phantom", "two_state_phantom", "Footprint", "data_set_footprint",
           "fraction_past_box_edge", "max_particles_per_micrograph", "DISTRIBUTIONS",
           "MICROGRAPH_STREAM", "PARTICLE_STREAM", "STRUCTURE_STREAM", "MicrographSimulation",
           "ParticleSimulation", "ground_truth_maps", "random_ctf_params", "sample_rotations",
           "simulate_micrographs", "simulate_particles", "stream_seed"]
