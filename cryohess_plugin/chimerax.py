"""ChimeraX command scripts (``.cxc``) for output maps, and opening them in ChimeraX.

ChimeraX is optional: without it, a viewer tells the user where the script is (it can be
opened later with ChimeraX's ``open`` command or from another machine).  Each map is
opened with its voxel size and its Scipion origin (the shifts of ``getOrigin``, as pwem's
own ChimeraX viewers pass them), so maps of one frame overlap in ChimeraX as they do in
Scipion.
"""
import os
import shutil
import subprocess

from cryohess_plugin import convert

#: The names a ChimeraX installation puts on the PATH.
EXECUTABLES = ('chimerax', 'ChimeraX')
#: Surface threshold of every map, in standard deviations (ChimeraX's ``sdLevel``).
SD_LEVEL = 2.0
#: Frames of a morph between two consecutive maps.
MORPH_FRAMES = 20


def volume_commands(volume, model):
    """The commands opening ``volume`` (a Scipion ``Volume``) as ChimeraX model ``model``."""
    path = os.path.abspath(convert.image_file(volume.getFileName()))
    x, y, z = volume.getOrigin(force=True).getShifts()
    return ['open "%s" format mrc' % path,
            'volume #%d voxelSize %.6g origin %.6g,%.6g,%.6g style surface sdLevel %g'
            % (model, volume.getSamplingRate(), x, y, z, SD_LEVEL)]


def write_script(path, volumes, morph=False):
    """Write a ``.cxc`` script opening ``volumes`` (models #1..#n) and return ``path``.

    :param morph: play a morph through the maps in their order (``volume morph``, which
        hides the maps it morphs); otherwise all maps are shown side by side.
    """
    volumes = list(volumes)
    lines = []
    for model, volume in enumerate(volumes, start=1):
        lines += volume_commands(volume, model)
    if morph and len(volumes) > 1:
        lines.append('volume morph #1-%d frames %d playStep %.4g'
                     % (len(volumes), MORPH_FRAMES, 1.0 / MORPH_FRAMES))
    elif len(volumes) > 1:
        lines.append('tile #1-%d' % len(volumes))
    lines.append('view')
    with open(path, 'w') as script:
        script.write('\n'.join(lines) + '\n')
    return path


def executable():
    """Path of the ChimeraX executable on the PATH, or None."""
    for name in EXECUTABLES:
        found = shutil.which(name)
        if found:
            return found
    return None


def open_script(path):
    """Start ChimeraX on ``path`` without waiting for it; return a message for the user:
    what was opened, or, without ChimeraX, where the script is."""
    program = executable()
    if program is None:
        return ("ChimeraX was not found on the PATH (it is optional). The ChimeraX script "
                "is %s: open it in ChimeraX (File > Open, or the command 'open %s')."
                % (path, path))
    subprocess.Popen([os.path.abspath(program), os.path.abspath(path)],
                     cwd=os.path.dirname(os.path.abspath(path)))
    return "Opened %s in ChimeraX (%s)." % (path, program)
