"""Numerical core of cryohess: numpy arrays in, numpy arrays out.

Nothing under ``cryohess_plugin.core`` imports pyworkflow or pwem, so the
methods can be used and tested without Scipion.

The package root holds the conventions every method shares, one owner each:

* :mod:`.fourier`    centred FFTs, frequency grids, shells, band limits, shift phases,
  padding, deapodisation, FSC and resolution
* :mod:`.rotations`  Euler angles (Xmipp ZYZ), matrices, so(3), grids, pose validation
* :mod:`.ctf`        contrast transfer function (Scipion's sign)
* :mod:`.noise`      noise levels and the SNR
* :mod:`.mrc`        MRC input/output with validation
* :mod:`.projector`  Fourier-slice projection, its adjoint and pose derivatives
* :mod:`.polar`      polar Fourier grids of images
* :mod:`.spherical`  spherical-harmonic shells of volumes
* :mod:`.pose_refinement` local pose refinement on the likelihood
* :mod:`.progress`   the progress events long computations report
* :mod:`.storage`    result dataclasses as ``.npz`` files, one entry per field
* :mod:`.errors`     the typed exceptions

Each method lives in its own subpackage, whose ``__init__`` exports its public
names: :mod:`.alignment` (radial-SVD), :mod:`.softmodes` (Hessian soft modes),
:mod:`.posterior` (Fourier-slice posterior), plus :mod:`.synthetic` (simulation).
The hot loops live in :mod:`.kernels` (Numba CPU and CUDA twins behind one
dispatch), which imports no other core module but :mod:`.errors`.
"""
