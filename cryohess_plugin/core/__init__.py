"""Numerical core of cryohess: numpy arrays in, numpy arrays out.

Nothing under ``cryohess_plugin.core`` imports pyworkflow or pwem, so the
methods can be used and tested without Scipion.  Each convention has one
owner module:

* :mod:`.fourier`   centred FFTs, frequency grids, shells, padding, deapodisation
* :mod:`.rotations` Euler angles (Xmipp ZYZ), matrices, quaternions, so(3), grids
* :mod:`.ctf`       contrast transfer function
* :mod:`.shifts`    in-plane shifts as Fourier phase ramps
* :mod:`.mrc`       MRC input/output with validation
"""
