"""The simulation protocol's micrograph settings: their form section, their checks and their
translation into the arguments of the core's micrograph simulator."""
import pyworkflow.protocol.params as params

from cryohess_plugin.constants import (PLACEMENT_MIN_DISTANCE, PLACEMENT_SEPARATED, SNR_ENERGY,
                                       SNR_VARIANCE)
from cryohess_plugin.core import synthetic

#: The form parameters the micrograph step reads (those hidden by their condition are left out).
MICROGRAPH_PARAMS = ('numberOfMicrographs', 'particlesPerMicrograph', 'micrographSize',
                     'micrographPlacement', 'micrographDensity', 'micrographSnr',
                     'ctfPerParticle')


class MicrographSimulationSettings:
    """The micrograph part of :class:`.simulate_settings.SimulationSettings`."""

    def _defineMicrographParams(self, form):
        form.addSection(label='Micrographs')
        form.addParam('doMicrographs', params.BooleanParam, default=False,
                      label='Simulate micrographs?',
                      help="Also simulate micrographs: projections pasted at non-overlapping "
                           "positions (no heterogeneity, no sub-pixel shifts), filtered by one "
                           "CTF per micrograph and with white noise at the same SNR, measured "
                           "on the particle windows. Outputs micrographs, their CTFs, the "
                           "true coordinates and the particles boxed at them (with their "
                           "micrograph, coordinate, CTF and true pose).")
        form.addParam('numberOfMicrographs', params.IntParam, default=3, condition='doMicrographs',
                      validators=[params.Positive], label='Number of micrographs',
                      help="Number of micrographs to simulate.")
        form.addParam('micrographPlacement', params.EnumParam, default=PLACEMENT_MIN_DISTANCE,
                      condition='doMicrographs',
                      choices=['centres a box apart', 'separated (micrograph EM)',
                               'arbitrary spacing'],
                      label='Particle placement',
                      help="Centres a box apart: the given number of particles, all placed. "
                           "Separated: the regime of micrograph EM (Kreymer et al.): each "
                           "particle reserves a (2 box - 1)² square at its box's corner, so no "
                           "box-sized patch of the micrograph shows two particles; random "
                           "sequential placement at the target density, which saturates near "
                           "0.13. Arbitrary spacing: the same with a box² square (no overlap "
                           "only; patches may show several particles).")
        form.addParam('particlesPerMicrograph', params.IntParam, default=20,
                      condition='doMicrographs and micrographPlacement == %d'
                                % PLACEMENT_MIN_DISTANCE,
                      validators=[params.Positive], label='Particles per micrograph',
                      help="Particles in each micrograph, at least one box size apart.")
        form.addParam('micrographDensity', params.FloatParam, default=0.4,
                      condition='doMicrographs and micrographPlacement != %d'
                                % PLACEMENT_MIN_DISTANCE,
                      validators=[params.Range(0.001, 1.0)], label='Target density',
                      help="Target share of the micrograph covered by particle boxes, "
                           "T box² / size²; 4 T candidate positions are tried, so a dense "
                           "target places fewer (the true coordinates are the output).")
        form.addParam('micrographSize', params.IntParam, default=512, condition='doMicrographs',
                      validators=[params.Positive], label='Micrograph size (px)',
                      help="Width and height of the square micrographs in pixels.")
        form.addParam('micrographSnr', params.EnumParam, default=SNR_VARIANCE,
                      condition='doMicrographs', choices=['variance', 'energy (Eq. 4)'],
                      label='Micrograph SNR as',
                      help="Variance: the SNR above is the mean variance of the particle "
                           "windows over the noise variance. Energy: the mean squared pixel "
                           "of the particle boxes over the noise variance, Eq. (4) of "
                           "micrograph EM.")
        form.addParam('ctfPerParticle', params.BooleanParam, default=False,
                      condition='doMicrographs', label='CTF per particle box?',
                      help="Filter each particle's box by its micrograph's CTF instead of the "
                           "whole micrograph: the forward model of micrograph EM's patches. "
                           "Off (real micrographs): the CTF spreads each particle beyond its "
                           "box.")

    def _micrographSettings(self):
        """The core micrograph simulator's placement, density, SNR and CTF settings."""
        placement, box = self.micrographPlacement.get(), self.boxSize.get()
        settings = {'snr_definition': ('energy' if self.micrographSnr.get() == SNR_ENERGY
                                       else 'variance'),
                    'ctf_per_particle': self.ctfPerParticle.get()}
        if placement == PLACEMENT_MIN_DISTANCE:
            settings['particles_per_micrograph'] = self.particlesPerMicrograph.get()
        else:
            settings['area_fraction'] = self.micrographDensity.get()
            settings['separation'] = 2 * box - 1 if placement == PLACEMENT_SEPARATED else box
        return settings

    def _validateMicrographs(self, box):
        size = self.micrographSize.get()
        if box and size < box:
            return ["The micrographs (%d px) are smaller than the box (%d px)." % (size, box)]
        if self.micrographPlacement.get() == PLACEMENT_SEPARATED and box and size < 2 * box - 1:
            return ["Separated particles need micrographs of at least 2 box - 1 = %d px."
                    % (2 * box - 1)]
        if (self.micrographPlacement.get() == PLACEMENT_MIN_DISTANCE and box
                and self.particlesPerMicrograph.get()
                    > synthetic.max_particles_per_micrograph(size, box)):
            return ["%d particles of %d px do not fit without overlap in a %d px micrograph; "
                    "use fewer particles or larger micrographs."
                    % (self.particlesPerMicrograph, box, size)]
        return []
