"""Limits and estimates of a planned data set, for the checks made before it is simulated.

Everything here is arithmetic on the settings: nothing is simulated or read.
"""
from dataclasses import dataclass
from math import erfc, sqrt

#: Bytes of one float32 pixel in the MRC files and in memory.
PIXEL_BYTES = 4
#: Size of an MRC header (no extended header) in bytes.
MRC_HEADER_BYTES = 1024
#: Peak memory of :func:`.simulate.simulate_particles` per pixel of the stack: the float32
#: images, their float64 copy and the float64 deviations from the mean that the SNR's
#: variance measurement makes (the same for the particle windows of the micrographs).
MEASURED_PIXEL_BYTES = PIXEL_BYTES + 8 + 8
#: Micrograph-sized work arrays of assembling one micrograph: the float64 canvas and
#: the Fourier transforms of its CTF filtering, in bytes per micrograph pixel.
ASSEMBLY_PIXEL_BYTES = 36
#: The particle boxes of a micrograph cover at most this fraction of its area: below it
#: the rejection sampling of :func:`.simulate.place_particles` finds room quickly.
MAX_BOX_AREA_FRACTION = 0.5


@dataclass(frozen=True)
class Footprint:
    """What simulating a data set needs.

    :param disk_bytes: size of the files written: particle stack, maps, micrographs.
    :param memory_bytes: peak memory of the larger of the particle and micrograph steps.
    """
    disk_bytes: int
    memory_bytes: int


def data_set_footprint(n_particles, box, n_maps=1, n_micrographs=0, micrograph_size=0,
                       particles_per_micrograph=0):
    """The disk and memory a data set of ``n_particles`` images of ``box`` pixels needs.

    Memory counts the arrays that grow with the data set (the leading terms), not the
    fixed overhead of batches, the projector and the interpreter.

    :param n_particles: number of particle images.
    :param box: particle box (and map edge) in pixels.
    :param n_maps: ground-truth maps written (2 with a second conformation).
    :param n_micrographs: number of micrographs (0 for none).
    :param micrograph_size: micrograph edge in pixels.
    :param particles_per_micrograph: particles pasted in each micrograph.
    :returns: :class:`Footprint`.
    """
    stack = n_particles * box ** 2
    micrograph = micrograph_size ** 2
    micrographs = n_micrographs * micrograph
    files = 1 + n_maps + n_micrographs
    disk = PIXEL_BYTES * (stack + n_maps * box ** 3 + micrographs) + files * MRC_HEADER_BYTES
    memory = MEASURED_PIXEL_BYTES * stack
    if n_micrographs:
        windows = n_micrographs * particles_per_micrograph * box ** 2
        # Micrographs being assembled, their particle windows being measured, noise added.
        phases = (PIXEL_BYTES * micrographs + ASSEMBLY_PIXEL_BYTES * micrograph,
                  PIXEL_BYTES * micrographs + MEASURED_PIXEL_BYTES * windows,
                  3 * PIXEL_BYTES * micrographs + PIXEL_BYTES * windows)
        memory = max(memory, *phases)
    return Footprint(disk, memory)


def max_particles_per_micrograph(micrograph_size, box):
    """The most particles of ``box`` pixels a square micrograph of ``micrograph_size``
    pixels takes (boxes covering :data:`MAX_BOX_AREA_FRACTION` of it)."""
    return int(MAX_BOX_AREA_FRACTION * micrograph_size ** 2 // box ** 2)


def fraction_past_box_edge(box, radius_px, shift_sigma):
    """Expected fraction of particles that reach past the edge of their box.

    A particle of radius ``radius_px`` centred at ``(tx, ty)``, each component normal
    with standard deviation ``shift_sigma``, stays inside a box of ``box`` pixels when
    ``|tx|`` and ``|ty|`` are at most the margin ``m = box / 2 - radius_px``; so the
    fraction is ``1 - (1 - erfc(m / (sigma sqrt 2)))^2``.

    :param box: box edge in pixels.
    :param radius_px: radius of the particle in pixels (0 for its centre alone).
    :param shift_sigma: standard deviation of each shift component in pixels.
    :returns: a fraction in [0, 1].
    """
    margin = box / 2 - radius_px
    if margin <= 0:
        return 1.0
    if shift_sigma <= 0:
        return 0.0
    inside_one_axis = 1.0 - erfc(margin / (shift_sigma * sqrt(2.0)))
    return 1.0 - inside_one_axis ** 2
