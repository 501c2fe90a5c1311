"""CTF convention: against Xmipp's applyCTF and against closed-form results.

Relation to Xmipp found by experiment (``xmippLib.applyCTF``) and asserted
below: Xmipp's CTF equals ours, Scipion's sign (positive at low frequency, for
white particles); defocus sign, astigmatism angle (counter-clockwise from +x,
x = column, y = row), amplitude contrast ``sqrt(1 - Q0^2) sin + Q0 cos`` and
the wavelength constants are the same.  Xmipp's applyCTF ignores
``MDL_CTF_PHASE_SHIFT`` (without a phase-plate radius), so phase shifts are
only checked analytically.
"""
from dataclasses import astuple

import numpy as np
import pytest

from cryohess_plugin.core import ctf as ctf_module
from cryohess_plugin.core import fourier
from cryohess_plugin.core.ctf import (CTFParams, apply_ctf, ctf_stack, electron_wavelength,
                                      evaluate_ctf)
from cryohess_plugin.core.errors import InvalidDataError, ShapeError

import xmippLib
from .helpers import gaussian_blobs, relative_l2

PIXEL = 1.5
PARAM_SETS = [
    CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1),
    CTFParams(15000.0, 12000.0, 0.0, 300.0, 2.7, 0.1),
    CTFParams(15000.0, 12000.0, 30.0, 300.0, 2.7, 0.1),
    CTFParams(25000.0, 21000.0, 120.0, 200.0, 2.0, 0.07),
    CTFParams(8000.0, 9500.0, 30.0, 300.0, 0.01, 0.0),
]


def xmipp_apply_ctf(image, params, pixel_size):
    md = xmippLib.MetaData()
    row = md.addObject()
    for label, value in [(xmippLib.MDL_CTF_DEFOCUSU, params.defocus_u),
                         (xmippLib.MDL_CTF_DEFOCUSV, params.defocus_v),
                         (xmippLib.MDL_CTF_DEFOCUS_ANGLE, params.defocus_angle),
                         (xmippLib.MDL_CTF_VOLTAGE, params.voltage),
                         (xmippLib.MDL_CTF_CS, params.spherical_aberration),
                         (xmippLib.MDL_CTF_Q0, params.amplitude_contrast),
                         (xmippLib.MDL_CTF_PHASE_SHIFT, params.phase_shift),
                         (xmippLib.MDL_CTF_SAMPLING_RATE, pixel_size)]:
        md.setValue(label, float(value), row)
    img = xmippLib.Image()
    img.setData(np.ascontiguousarray(image, dtype=np.float64))
    # The row id must be passed: the binding reads an uninitialised id
    # otherwise and returns all zeros or NaN.
    xmippLib.applyCTF(img, md, pixel_size, row)
    return img.getData()


def band_limited_noise(box, seed):
    """White noise with no power at |k| >= box/2 - 1/2.

    For even boxes the Nyquist row and column (ky or kx = -box/2) stand for
    both +box/2 and -box/2, where an astigmatic CTF differs; Xmipp and
    numpy's real FFT resolve that ambiguity differently, so the comparison
    uses images without power there.
    """
    spectrum = fourier.centred_fftn(np.random.default_rng(seed).standard_normal((box, box)))
    spectrum[fourier.radius_grid((box, box)) >= box / 2 - 0.5] = 0
    return fourier.centred_ifftn(spectrum).real


def random_blobs(box, seed):
    """Gaussians far enough from the edges and wide enough that the image has
    no power (below 1e-11) on the Nyquist lines either."""
    rng = np.random.default_rng(seed)
    cy, cx, sigmas = (rng.uniform(-box / 10, box / 10, 6), rng.uniform(-box / 10, box / 10, 6),
                      rng.uniform(2.5, 3.5, 6))
    return gaussian_blobs(box, np.stack([cx, cy], -1), sigmas, np.ones(6))



@pytest.mark.parametrize("box", [64, 65])
@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize("make_image", [band_limited_noise, random_blobs])
def test_apply_ctf_equals_xmipp(box, params, make_image):
    image = make_image(box, seed=box)
    reference = xmipp_apply_ctf(image, params, PIXEL)
    ours = apply_ctf(image, params, PIXEL)
    assert relative_l2(ours, reference) < 1e-7
    # The opposite sign would be wrong by about twice the norm.
    assert relative_l2(ours, -reference) > 1.9


@pytest.mark.parametrize("box", [64, 65])
def test_astigmatism_angle_has_xmipp_direction(box):
    image = band_limited_noise(box, seed=3)
    params = PARAM_SETS[2]
    mirrored = CTFParams(params.defocus_u, params.defocus_v, -params.defocus_angle,
                         params.voltage, params.spherical_aberration, params.amplitude_contrast)
    reference = xmipp_apply_ctf(image, params, PIXEL)
    assert relative_l2(apply_ctf(image, params, PIXEL), reference) < 1e-7
    assert relative_l2(apply_ctf(image, mirrored, PIXEL), reference) > 0.3


def test_xmipp_ignores_phase_shift():
    image = band_limited_noise(64, seed=4)
    params = PARAM_SETS[2]
    shifted = CTFParams(params.defocus_u, params.defocus_v, params.defocus_angle, params.voltage,
                        params.spherical_aberration, params.amplitude_contrast, phase_shift=90.0)
    np.testing.assert_allclose(xmipp_apply_ctf(image, shifted, PIXEL),
                               xmipp_apply_ctf(image, params, PIXEL), rtol=0, atol=1e-12)
    assert relative_l2(apply_ctf(image, shifted, PIXEL), apply_ctf(image, params, PIXEL)) > 0.5


def test_wavelength():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, rel=5e-5)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, rel=5e-5)
    np.testing.assert_allclose(electron_wavelength([200.0, 300.0]),
                               [electron_wavelength(200.0), electron_wavelength(300.0)])


@pytest.mark.parametrize("amplitude", [0.0, 0.1])
def test_zeros_at_analytic_positions(amplitude):
    """Unastigmatic zeros: chi(s_n) = n pi - atan(A / sqrt(1 - A^2))."""
    defocus, cs_mm, voltage, box, pixel = 20000.0, 2.7, 300.0, 256, 1.0
    params = CTFParams(defocus, defocus, 0.0, voltage, cs_mm, amplitude)
    lam, cs = electron_wavelength(voltage), cs_mm * 1e7
    offset = np.arctan2(amplitude, np.sqrt(1 - amplitude ** 2))
    n = np.arange(1, 9)
    # pi/2 Cs lam^3 u^2 - pi lam df u + (n pi - offset) = 0 with u = s^2; smaller root.
    c = n - offset / np.pi
    u = (lam * defocus - np.sqrt((lam * defocus) ** 2 - 2 * cs * lam ** 3 * c)) / (cs * lam ** 3)
    k = np.sqrt(u) * box * pixel
    assert k[-1] < box / 2
    for direction in (0.0, 0.7, 2.0):
        values = evaluate_ctf(params, k * np.cos(direction), k * np.sin(direction), box, pixel)
        np.testing.assert_allclose(values, 0.0, atol=1e-9)
        # Each zero is a sign change.
        before = evaluate_ctf(params, (k - 0.05) * np.cos(direction),
                              (k - 0.05) * np.sin(direction), box, pixel)
        after = evaluate_ctf(params, (k + 0.05) * np.cos(direction),
                             (k + 0.05) * np.sin(direction), box, pixel)
        assert np.all(np.sign(before) == -np.sign(after))
        assert np.all(np.abs(before) > 1e-3)


def test_low_frequency_sign_and_amplitude_contrast():
    params = CTFParams(15000.0, 12000.0, 30.0, 300.0, 2.7, 0.1)
    assert evaluate_ctf(params, 0.0, 0.0, 128, 1.0) == pytest.approx(0.1, abs=1e-15)


def test_astigmatism_rotates_with_angle():
    box, pixel = 128, 1.2
    radius = np.linspace(1.0, 60.0, 200)
    base = CTFParams(18000.0, 14000.0, 0.0, 300.0, 2.7, 0.1)
    for angle in (30.0, 120.0, -75.0):
        rotated = CTFParams(18000.0, 14000.0, angle, 300.0, 2.7, 0.1)
        for direction in (0.0, 10.0, 95.0):
            t0, t1 = np.deg2rad(direction), np.deg2rad(direction + angle)
            np.testing.assert_allclose(
                evaluate_ctf(rotated, radius * np.cos(t1), radius * np.sin(t1), box, pixel),
                evaluate_ctf(base, radius * np.cos(t0), radius * np.sin(t0), box, pixel),
                rtol=0, atol=1e-12)
        # Along U the CTF is the unastigmatic one of defocus U, along V of defocus V.
        for theta, defocus in ((angle, 18000.0), (angle + 90.0, 14000.0)):
            t = np.deg2rad(theta)
            round_ctf = CTFParams(defocus, defocus, 0.0, 300.0, 2.7, 0.1)
            np.testing.assert_allclose(
                evaluate_ctf(rotated, radius * np.cos(t), radius * np.sin(t), box, pixel),
                evaluate_ctf(round_ctf, radius, 0.0, box, pixel), rtol=0, atol=1e-12)


def test_phase_shift_90_turns_sin_into_cos():
    box, pixel = 128, 1.0
    k = np.linspace(0.0, 64.0, 300)
    params = dict(defocus_u=12000.0, defocus_v=12000.0, defocus_angle=0.0, voltage=300.0,
                  spherical_aberration=2.7, amplitude_contrast=0.0)
    lam, s = electron_wavelength(300.0), k / (box * pixel)
    chi = np.pi * lam * 12000.0 * s ** 2 - np.pi / 2 * 2.7e7 * lam ** 3 * s ** 4
    np.testing.assert_allclose(evaluate_ctf(CTFParams(**params), k, 0.0, box, pixel),
                               np.sin(chi), atol=1e-12)
    np.testing.assert_allclose(evaluate_ctf(CTFParams(**params, phase_shift=90.0), k, 0.0, box,
                                            pixel), np.cos(chi), atol=1e-12)


def test_bfactor_envelope():
    box, pixel = 128, 1.0
    k = np.linspace(0.0, 64.0, 50)
    sharp = CTFParams(12000.0, 11000.0, 45.0, 300.0, 2.7, 0.1)
    damped = CTFParams(12000.0, 11000.0, 45.0, 300.0, 2.7, 0.1, bfactor=80.0)
    s2 = (k / (box * pixel)) ** 2
    np.testing.assert_allclose(evaluate_ctf(damped, k, k / 3, box, pixel),
                               evaluate_ctf(sharp, k, k / 3, box, pixel)
                               * np.exp(-80.0 * (s2 + s2 / 9) / 4), rtol=1e-12)


def test_ctf_stack_rows_match_evaluate():
    plane = fourier.HalfPlane.disc(48)
    stack = ctf_stack(PARAM_SETS, plane.kx, plane.ky, 48, PIXEL)
    assert stack.shape == (len(PARAM_SETS), plane.size)
    for row, params in zip(stack, PARAM_SETS):
        np.testing.assert_allclose(row, evaluate_ctf(params, plane.kx, plane.ky, 48, PIXEL),
                                   rtol=0, atol=1e-14)
    with pytest.raises(ShapeError, match="1-D of equal length"):
        ctf_stack(PARAM_SETS, plane.kx, plane.ky[:-1], 48, PIXEL)
    single = ctf_stack(PARAM_SETS, plane.kx, plane.ky, 48, PIXEL, dtype=np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, stack, atol=1e-6)


def test_apply_ctf_stack_and_dtype():
    images = np.stack([random_blobs(33, seed) for seed in range(3)])
    params = PARAM_SETS[3]
    batch = apply_ctf(images, params, PIXEL)
    assert batch.shape == images.shape and batch.dtype == np.float64
    for image, filtered in zip(images, batch):
        np.testing.assert_allclose(apply_ctf(image, params, PIXEL), filtered, atol=1e-13)
    single = apply_ctf(images.astype(np.float32), params, PIXEL)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, batch, atol=1e-5)


def test_apply_ctf_multiplies_centred_spectrum():
    box = 65
    image = band_limited_noise(box, seed=7)
    params = PARAM_SETS[2]
    ky, kx = np.meshgrid(fourier.frequencies(box), fourier.frequencies(box), indexing="ij")
    expected = fourier.centred_ifftn(fourier.centred_fftn(image)
                                     * evaluate_ctf(params, kx, ky, box, PIXEL)).real
    np.testing.assert_allclose(apply_ctf(image, params, PIXEL), expected, atol=1e-12)


GOOD = dict(defocus_u=15000.0, defocus_v=14000.0, defocus_angle=30.0, voltage=300.0,
            spherical_aberration=2.7, amplitude_contrast=0.1)


@pytest.mark.parametrize("field, value", [
    ("voltage", 0.0), ("voltage", -300.0), ("defocus_u", float("nan")),
    ("phase_shift", float("inf")), ("amplitude_contrast", 1.0), ("amplitude_contrast", 10.0),
    ("amplitude_contrast", -0.1), ("spherical_aberration", "2.7mm"), ("bfactor", None), ("bfactor", -50.0)])
def test_invalid_params_raise(field, value):
    with pytest.raises(InvalidDataError, match=field):
        CTFParams(**{**GOOD, field: value})


def test_params_are_stored_as_float():
    params = CTFParams(**{**GOOD, "voltage": 300, "defocus_u": np.float32(15000)})
    assert type(params.voltage) is float and params.defocus_u == 15000.0


def test_apply_ctf_rejects_non_square_images():
    with pytest.raises(ShapeError, match=r"square images .* \(8, 6\)"):
        apply_ctf(np.zeros((8, 6)), PARAM_SETS[0], PIXEL)


def test_parameter_rows_round_trip():
    params = [CTFParams(12000.0, 11000.0, 30.0, 300.0, 2.7, 0.1),
              CTFParams(20000.0, 20000.0, 0.0, 200.0, 2.0, 0.07, phase_shift=90.0, bfactor=50.0)]
    rows = ctf_module.params_to_rows(params)
    assert rows.dtype == np.float64 and rows.shape == (2, 9)
    np.testing.assert_array_equal(rows[1], [20000.0, 20000.0, 0.0, 200.0, 2.0, 0.07, 90.0, 50.0, 0.0])
    assert ctf_module.params_from_rows(rows) == params
    assert ctf_module.params_to_rows([]).shape == (0, 9)
    assert ctf_module.params_from_rows(ctf_module.params_to_rows([])) == []


def test_ctf_is_positive_at_low_frequency_for_white_particles():
    """Scipion's sign: a white (positive-density) particle keeps its contrast at low frequency."""
    params = PARAM_SETS[1]
    k = np.linspace(0.5, 2.0, 4)
    assert np.all(evaluate_ctf(params, k, 0 * k, 256, PIXEL) > 0)


def test_phase_flipped_ctf_is_the_absolute_value():
    params = PARAM_SETS[2]
    flipped = CTFParams(*astuple(params)[:-1], phase_flipped=True)
    ky, kx = np.meshgrid(np.arange(-32, 32), np.arange(-32, 32), indexing="ij")
    values = evaluate_ctf(params, kx, ky, 64, PIXEL)
    np.testing.assert_array_equal(evaluate_ctf(flipped, kx, ky, 64, PIXEL), np.abs(values))
    assert np.any(values < 0)
    stack = ctf_stack([params, flipped], kx.ravel(), ky.ravel(), 64, PIXEL)
    np.testing.assert_array_equal(stack[1], np.abs(stack[0]))
    assert ctf_module.params_from_rows(ctf_module.params_to_rows([flipped]))[0] == flipped
