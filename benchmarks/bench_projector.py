"""Projections per second at 128² from a 128³ map: cryohess against Xmipp.

Both projectors run in this process on the same poses; accuracy of both is
measured against the analytic line integrals of the Gaussian atoms that made
the map.  Xmipp's FourierProjector is single-threaded; ours uses all numba
threads (2 on the reference machine).

    python benchmarks/bench_projector.py [--n 512] [--batch 256]
                                         [--xmipp-interpolation linear|bspline3]

(Xmipp allows one FourierProjector per process, so each interpolation mode
needs its own run.)
"""
import argparse
import os
import sys
import tempfile
import time

import mrcfile
import numba
import numpy as np

from cryohess_plugin.core.synthetic import atoms, phantoms
from cryohess_plugin.core import rotations
from cryohess_plugin.core.projector import FourierSliceProjector

BOX, PIXEL, BFACTOR = 128, 1.5, 400.0
XMIPP_MODES = {"linear": 1, "bspline3": 3}


def relative_errors(images, reference):
    diff = np.linalg.norm((images - reference).reshape(len(images), -1), axis=1)
    return diff / np.linalg.norm(reference.reshape(len(images), -1), axis=1)


def run_xmipp(volume, angles, mode):
    import xmippLib
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "map.mrc")
        with mrcfile.new(path) as mrc:
            mrc.set_data(volume.astype(np.float32))
        start = time.perf_counter()
        xmipp_volume = xmippLib.Image(path)
        xmipp_volume.convert2DataType(xmippLib.DT_DOUBLE)
        projector = xmippLib.FourierProjector(xmipp_volume, 2.0, 0.5, XMIPP_MODES[mode])
        setup = time.perf_counter() - start
    images = np.empty((len(angles), BOX, BOX))
    image = xmippLib.Image()
    start = time.perf_counter()
    for i, (rot, tilt, psi) in enumerate(angles):
        image.setData(np.zeros((BOX, BOX)))
        projector.projectVolume(image, float(rot), float(tilt), float(psi))
        images[i] = image.getData()
    return images, setup, time.perf_counter() - start


def run_ours(volume, poses, interpolation, batch):
    start = time.perf_counter()
    projector = FourierSliceProjector(volume, interpolation=interpolation, dtype=np.float32)
    setup = time.perf_counter() - start
    projector.project(poses[:2])  # compile outside the timing
    images = np.empty((len(poses), BOX, BOX), dtype=np.float32)
    start = time.perf_counter()
    for first in range(0, len(poses), batch):
        images[first:first + batch] = projector.project(poses[first:first + batch])
    return images, setup, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of poses")
    parser.add_argument("--batch", type=int, default=256, help="poses per projector call")
    parser.add_argument("--xmipp-interpolation", choices=sorted(XMIPP_MODES), default="linear")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    model = phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * BOX * PIXEL, rng=0,
                                            bfactor=BFACTOR)
    volume = atoms.gaussian_atom_volume(model, BOX, PIXEL)
    poses = rotations.random_rotations(args.n, rng)
    angles = np.column_stack(rotations.matrix_to_euler(poses))
    checked = min(64, args.n)
    reference = atoms.gaussian_atom_projection(model, poses[:checked], BOX, PIXEL)

    print(f"{args.n} projections of 128² from 128³ in batches of {args.batch}, threads: numba "
          f"{numba.get_num_threads()}, xmipp 1; accuracy on {checked} poses against analytic "
          "Gaussian-atom projections")
    xmipp_images, xmipp_setup, xmipp_time = run_xmipp(volume, angles, args.xmipp_interpolation)
    xmipp_rate = args.n / xmipp_time
    xmipp_err = relative_errors(xmipp_images[:checked], reference)
    print(f"xmipp FourierProjector ({args.xmipp_interpolation}, padding 2): "
          f"{xmipp_rate:8.0f} proj/s, setup {xmipp_setup:.2f} s, "
          f"error median {np.median(xmipp_err):.1e} max {xmipp_err.max():.1e}")
    for interpolation in ("cubic", "linear"):
        images, setup, elapsed = run_ours(volume, poses, interpolation, args.batch)
        err = relative_errors(images[:checked], reference)
        rate = args.n / elapsed
        print(f"cryohess {interpolation:6s} (padding 2, float32): {rate:8.0f} proj/s, "
              f"setup {setup:.2f} s, error median {np.median(err):.1e} max {err.max():.1e}, "
              f"speed ratio {rate / xmipp_rate:5.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
