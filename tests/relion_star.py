"""Particles written as RELION 3.1 writes them, for tests that import them through Scipion.

White particles (positive density), RELION's CTF columns and its pose convention:
``rlnAngleRot/Tilt/Psi`` are Xmipp's ZYZ angles and ``rlnOriginX/YAngst`` the shift
that centres the particle, minus the core's shift ``t`` (``docs/conventions.md``).
"""
import os

import numpy as np
from pwem.protocols import ProtImportParticles

from cryohess_plugin.core import mrc
from cryohess_plugin.core.rotations import matrix_to_euler


def write_relion_star(folder, simulation, name="particles", images=None):
    """Write ``<name>.mrcs`` and ``<name>_data.star`` (RELION 3.1, one optics group).

    :param simulation: a :class:`~cryohess_plugin.core.synthetic.ParticleSimulation`.
    :param images: the images to write (default the simulation's), e.g. negated ones.
    :returns: the path of the star file.
    """
    images = simulation.images if images is None else images
    box = images.shape[-1]
    pixel = simulation.pixel_size
    stack = os.path.join(folder, name + ".mrcs")
    mrc.write_stack(stack, images, pixel, overwrite=True)
    rot, tilt, psi = matrix_to_euler(simulation.rotations)
    origin = -np.asarray(simulation.shifts) * pixel
    first = simulation.ctf_params[0]
    lines = ["", "# version 30001", "", "data_optics", "", "loop_",
             "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnVoltage #3",
             "_rlnSphericalAberration #4", "_rlnAmplitudeContrast #5", "_rlnImagePixelSize #6",
             "_rlnImageSize #7", "_rlnImageDimensionality #8",
             f"opticsGroup1 1 {first.voltage:.6f} {first.spherical_aberration:.6f} "
             f"{first.amplitude_contrast:.6f} {pixel:.6f} {box} 2", "", "",
             "# version 30001", "", "data_particles", "", "loop_"]
    columns = ["rlnImageName", "rlnMicrographName", "rlnDefocusU", "rlnDefocusV",
               "rlnDefocusAngle", "rlnPhaseShift", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
               "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"]
    lines += [f"_{column} #{i + 1}" for i, column in enumerate(columns)]
    for i, params in enumerate(simulation.ctf_params):
        lines.append(f"{i + 1:06d}@{os.path.basename(stack)} "
                     f"micrograph_{simulation.group_ids[i]:03d}.mrc "
                     f"{params.defocus_u:.6f} {params.defocus_v:.6f} {params.defocus_angle:.6f} "
                     f"{params.phase_shift:.6f} {rot[i]:.6f} {tilt[i]:.6f} {psi[i]:.6f} "
                     f"{origin[i, 0]:.6f} {origin[i, 1]:.6f} 1")
    path = os.path.join(folder, name + "_data.star")
    with open(path, "w") as star:
        star.write("\n".join(lines) + "\n")
    return path


def import_relion(test_case, star, pixel_size, phase_flipped=False, label=None):
    """Import the star file of :func:`write_relion_star` with pwem's RELION import in
    ``test_case``'s project, as data from RELION (300 kV, Cs 2.7 mm, amplitude contrast
    0.1, optionally phase-flipped), named ``label`` if given; returns the finished import
    protocol."""
    protocol = test_case.newProtocol(
        ProtImportParticles, importFrom=ProtImportParticles.IMPORT_FROM_RELION, starFile=star,
        samplingRate=pixel_size, voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.1,
        haveDataBeenPhaseFlipped=phase_flipped)
    if label is not None:
        protocol.setObjLabel(label)
    return test_case.launchProtocol(protocol)
