"""Xmipp as an independent reference, called the way that works here.

``xmippLib.FourierProjector`` can be created only once per process: a second
instance aborts the interpreter ("FFTW plans cannot be created"), even after
the first is deleted.  So projections run in a fresh subprocess.
``xmippLib.applyCTF`` needs the metadata row id as a fourth argument and a
C-contiguous image; without them it silently returns zeros or NaN.
"""
import os
import subprocess
import sys
import tempfile

import mrcfile
import numpy as np

XMIPP_LINEAR = 1
XMIPP_BSPLINE3 = 3

_PROJECT_SCRIPT = """
import sys, numpy as np, xmippLib
volume_path, angles_path, out_path, padding, interpolation = sys.argv[1:6]
volume = xmippLib.Image(volume_path)
volume.convert2DataType(xmippLib.DT_DOUBLE)
box = volume.getDimensions()[0]  # read first: the projector takes over the volume's data
projector = xmippLib.FourierProjector(volume, float(padding), 0.5, int(interpolation))
angles = np.load(angles_path)
images = np.empty((len(angles), box, box))
for i, (rot, tilt, psi) in enumerate(angles):
    image = xmippLib.Image()
    image.setData(np.zeros((box, box)))
    projector.projectVolume(image, float(rot), float(tilt), float(psi))
    images[i] = image.getData()
np.save(out_path, images)
"""


def xmipp_projections(volume, angles, padding=2.0, interpolation=XMIPP_LINEAR):
    """Projections of ``volume`` at Euler ``angles`` ``(n, 3)`` (degrees) by Xmipp.

    :returns: float64 ``(n, box, box)``.
    """
    with tempfile.TemporaryDirectory() as folder:
        volume_path = os.path.join(folder, "volume.mrc")
        angles_path = os.path.join(folder, "angles.npy")
        out_path = os.path.join(folder, "images.npy")
        with mrcfile.new(volume_path) as mrc:
            mrc.set_data(np.asarray(volume, dtype=np.float32))
        np.save(angles_path, np.asarray(angles, dtype=np.float64).reshape(-1, 3))
        subprocess.run([sys.executable, "-c", _PROJECT_SCRIPT, volume_path, angles_path,
                        out_path, str(padding), str(interpolation)], check=True)
        return np.load(out_path)
