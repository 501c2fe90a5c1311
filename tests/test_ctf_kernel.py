"""The CTF kernel (``core/kernels/ctf_cpu.py``) against a NumPy reference written from the
formula of ``core/ctf.py``'s docstring and against closed forms; ``test_ctf_cuda.py``
compares its CUDA twin with it."""
import numpy as np
import pytest

from cryohess_plugin.core import ctf, fourier
from cryohess_plugin.core.ctf import CTFParams, ctf_stack, ctf_stack_from_rows, params_to_rows

BOX, PIXEL = 64, 1.3
#: Every term: round and astigmatic, both U-axis quadrants, phase plate, envelope, phase
#: flip, no amplitude contrast, another voltage.
PARAMS = [CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1),
          CTFParams(21000.0, 18500.0, 37.0, 300.0, 2.7, 0.1),
          CTFParams(9000.0, 8000.0, 120.0, 200.0, 2.0, 0.07, phase_shift=60.0, bfactor=40.0),
          CTFParams(15000.0, 14000.0, -20.0, 300.0, 2.7, 0.1, phase_flipped=True),
          CTFParams(8000.0, 9500.0, 30.0, 300.0, 0.01, 0.0, bfactor=120.0)]
TOLERANCE = 1e-12


def reference_ctf(params, kx, ky, box, pixel):
    """The CTF of the ``core/ctf.py`` docstring, term by term in NumPy (wavelength from the
    relativistic formula with RELION's and Xmipp's constants)."""
    sx, sy = kx / (box * pixel), ky / (box * pixel)
    s2, theta = sx ** 2 + sy ** 2, np.arctan2(sy, sx)
    volts = params.voltage * 1e3
    wavelength = 12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    defocus = 0.5 * (params.defocus_u + params.defocus_v + (params.defocus_u - params.defocus_v)
                     * np.cos(2 * (theta - np.deg2rad(params.defocus_angle))))
    chi = (np.pi * wavelength * defocus * s2
           - 0.5 * np.pi * params.spherical_aberration * 1e7 * wavelength ** 3 * s2 ** 2
           + np.deg2rad(params.phase_shift))
    a = params.amplitude_contrast
    values = (np.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi)) * np.exp(
        -params.bfactor * s2 / 4)
    return np.abs(values) if params.phase_flipped else values


def test_kernel_matches_the_numpy_reference_at_every_term():
    plane = fourier.HalfPlane.disc(BOX)
    values = ctf_stack(PARAMS, plane.kx, plane.ky, BOX, PIXEL)
    for row, params in zip(values, PARAMS):
        np.testing.assert_allclose(row, reference_ctf(params, plane.kx, plane.ky, BOX, PIXEL),
                                   rtol=0, atol=TOLERANCE)
    # The phase flip and the envelope are really exercised.
    assert np.any(values[1] < 0) and np.all(values[3] >= 0)


def test_closed_form_values():
    """At k = 0 the CTF is the amplitude contrast (phase plate: A cos φ + sqrt(1 - A²) sin φ);
    along the U and V axes the astigmatic CTF is the round one of that axis's defocus."""
    zero = np.zeros(1)
    for params in PARAMS:
        phase = np.deg2rad(params.phase_shift)
        a = params.amplitude_contrast
        expected = np.sqrt(1 - a * a) * np.sin(phase) + a * np.cos(phase)
        got = ctf_stack([params], zero, zero, BOX, PIXEL)[0, 0]
        assert got == pytest.approx(abs(expected) if params.phase_flipped else expected,
                                    abs=1e-15)
    astigmatic = PARAMS[1]
    k = np.linspace(1.0, BOX / 2, 40)
    for angle, defocus in ((astigmatic.defocus_angle, astigmatic.defocus_u),
                           (astigmatic.defocus_angle + 90.0, astigmatic.defocus_v)):
        direction = np.deg2rad(angle)
        rotated = ctf_stack([astigmatic], k * np.cos(direction), k * np.sin(direction), BOX,
                            PIXEL)[0]
        round_ctf = CTFParams(defocus, defocus, 0.0, 300.0, 2.7, 0.1)
        np.testing.assert_allclose(rotated, ctf_stack([round_ctf], k, 0 * k, BOX, PIXEL)[0],
                                   rtol=0, atol=1e-10)


def test_rows_evaluate_as_the_parameters_and_in_float32():
    plane = fourier.HalfPlane.disc(BOX)
    values = ctf_stack(PARAMS, plane.kx, plane.ky, BOX, PIXEL)
    rows = params_to_rows(PARAMS)
    np.testing.assert_array_equal(ctf_stack_from_rows(rows, plane.kx, plane.ky, BOX, PIXEL),
                                  values)
    single = ctf_stack_from_rows(rows, plane.kx, plane.ky, BOX, PIXEL, dtype=np.float32)
    assert single.dtype == np.float32
    # float64 arithmetic, rounded once when stored.
    np.testing.assert_array_equal(single, values.astype(np.float32))
    assert ctf_stack([], plane.kx, plane.ky, BOX, PIXEL).shape == (0, plane.size)


def test_rings_are_the_stack_at_the_ring_nodes():
    radii, angles = np.array([3.0, 9.5, 20.25]), np.array([0.1, 1.2, 2.9, 4.0])
    rings = ctf.ctf_rings(PARAMS, radii, angles, BOX, PIXEL)
    kx, ky = radii[:, None] * np.cos(angles), radii[:, None] * np.sin(angles)
    nodes = ctf_stack(PARAMS, kx.ravel(), ky.ravel(), BOX, PIXEL)
    np.testing.assert_allclose(rings.reshape(nodes.shape), nodes, rtol=0, atol=TOLERANCE)
