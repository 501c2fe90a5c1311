"""Spherical-harmonic shells, Wigner small-d and the coefficient rotation
(``docs/methods/radial_svd_alignment.md`` §4.1, checks listed in §7)."""
import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import scipy.special

from cryohess_plugin.core import fourier, spherical
from cryohess_plugin.core.errors import InvalidDataError
from .helpers import gaussian_blobs

#: (alpha, beta, gamma) in radians, including both poles of beta.
ANGLES = [(0.7, 1.1, -0.4), (2.9, 0.0, 1.3), (-1.2, np.pi, 0.5), (0.3, 2.6, 4.0)]


def wigner_d_factorial(l, m1, m2, beta):
    """Wigner's closed form, accurate at small degrees only (cancellation)."""
    total = 0.0
    f = math.factorial
    for s in range(2 * l + 1):
        if l + m2 - s < 0 or m1 - m2 + s < 0 or l - m1 - s < 0:
            continue
        total += ((-1) ** (m1 - m2 + s) * math.sqrt(f(l + m1) * f(l - m1) * f(l + m2) * f(l - m2))
                  / (f(l + m2 - s) * f(s) * f(m1 - m2 + s) * f(l - m1 - s))
                  * math.cos(beta / 2) ** (2 * l + m2 - m1 - 2 * s)
                  * math.sin(beta / 2) ** (m1 - m2 + 2 * s))
    return total


def wigner_d_exact(l, m1, m2, beta):
    """The closed form in exact rational arithmetic (from the float cosine and sine)."""
    f = math.factorial
    c, s = Fraction(math.cos(beta / 2)), Fraction(math.sin(beta / 2))
    total = Fraction(0)
    for k in range(2 * l + 1):
        if l + m2 - k < 0 or m1 - m2 + k < 0 or l - m1 - k < 0:
            continue
        denominator = f(l + m2 - k) * f(k) * f(m1 - m2 + k) * f(l - m1 - k)
        total += (Fraction((-1) ** (m1 - m2 + k), denominator)
                  * c ** (2 * l + m2 - m1 - 2 * k) * s ** (m1 - m2 + 2 * k))
    with localcontext() as context:
        context.prec = 60
        scale = Decimal(f(l + m1) * f(l - m1) * f(l + m2) * f(l - m2)).sqrt()
        return float(Decimal(total.numerator) / Decimal(total.denominator) * scale)


def random_coefficients(shells, rng):
    shape = (shells.n_shells, shells.max_degree + 1, shells.n_orders)
    values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return values * shells.coefficient_mask()


def evaluate(shells, coefficients, points):
    """Direct sum of the expansion at frequencies ``points (R, ..., 3)`` (one shell per row)."""
    radius = np.linalg.norm(points, axis=-1)
    cos_theta = points[..., 2] / radius
    phi = np.arctan2(points[..., 1], points[..., 0])
    legendre = spherical.normalized_legendre(shells.max_degree, cos_theta.ravel())
    legendre = legendre.reshape(cos_theta.shape + legendre.shape[1:])
    out = np.zeros(points.shape[:-1], dtype=np.complex128)
    extra = (None,) * (points.ndim - 2)
    for l in range(shells.max_degree + 1):
        for m in range(-l, l + 1):
            sign = (-1.0) ** m if m < 0 else 1.0
            harmonic = sign * legendre[..., l, abs(m)] * np.exp(1j * m * phi)
            out += coefficients[(slice(None), l, m % shells.n_orders) + extra] * harmonic
    return out


def test_normalized_legendre_matches_scipy():
    cos_theta = np.linspace(-0.999, 0.999, 9)
    table = spherical.normalized_legendre(12, cos_theta)
    theta = np.arccos(cos_theta)
    error = max(np.abs(table[:, l, m] - scipy.special.sph_harm(m, l, 0.0, theta).real).max()
                for l in range(13) for m in range(l + 1))
    assert error < 1e-13


def test_wigner_d_matches_closed_form_and_stays_orthogonal():
    beta = 0.83
    error = max(abs(spherical.wigner_d(l, beta)[m1 + l, m2 + l]
                    - wigner_d_factorial(l, m1, m2, beta))
                for l in range(9) for m1 in range(-l, l + 1) for m2 in range(-l, l + 1))
    assert error < 1e-13
    # At l = 40 double precision has lost ten digits of the closed form; exact arithmetic has not.
    d = spherical.wigner_d(40, beta)
    for m1, m2 in [(0, 0), (3, -2), (20, -13), (40, 1), (-7, 39)]:
        assert abs(d[m1 + 40, m2 + 40] - wigner_d_exact(40, m1, m2, beta)) < 1e-13
    # At l = 60: the group laws.
    d = spherical.wigner_d(60, 1.1)
    assert np.abs(d @ d.T - np.eye(121)).max() < 1e-12
    assert np.abs(spherical.wigner_d(60, 0.4) @ spherical.wigner_d(60, 0.7) - d).max() < 1e-12
    grid = spherical.wigner_d_grid(9, 20)
    assert np.abs(grid - spherical.wigner_d(9, 2 * np.pi * np.arange(11) / 20)).max() < 1e-13
    np.testing.assert_array_equal(spherical.wigner_d_grid(9, 20, nonnegative=True),
                                  grid[:, :, 9:])


def test_shell_grid_defaults_follow_the_paper():
    shells = spherical.ShellGrid.from_max_frequency(64, 48 / np.pi)
    assert (shells.n_shells, shells.max_degree, shells.n_orders) == (49, 48, 98)
    assert shells.weights.sum() == pytest.approx((48 / np.pi) ** 3 / 3, rel=1e-12)
    assert shells.degree_limits.max() == 48
    assert np.all(np.diff(shells.degree_limits) >= 0)
    with pytest.raises(InvalidDataError):
        spherical.ShellGrid.from_max_frequency(32, 17.0)
    with pytest.raises(InvalidDataError):
        spherical.ShellGrid.for_resolution(32, 2.0, 3.0)


def test_analysis_inverts_synthesis():
    shells = spherical.ShellGrid.from_max_frequency(32, 4.0)
    coefficients = random_coefficients(shells, np.random.default_rng(0))
    assert np.abs(shells.analyze(shells.synthesize(coefficients)) - coefficients).max() < 1e-12
    # The synthesis is the expansion itself, evaluated at the nodes.
    points = np.stack(shells.frequencies(), -1)
    direct = evaluate(shells, coefficients, points)
    assert np.abs(shells.synthesize(coefficients) - direct).max() < 1e-11


@pytest.mark.parametrize("alpha, beta, gamma", ANGLES)
def test_coefficient_rotation_matches_brute_force(alpha, beta, gamma):
    """The paper's eq. (97) gives the coefficients of k -> V(R k), R = landscape_rotation(...)."""
    shells = spherical.ShellGrid.from_max_frequency(32, 3.0)
    coefficients = random_coefficients(shells, np.random.default_rng(1))
    rotation = spherical.landscape_rotation(alpha, beta, gamma)
    points = np.stack(shells.frequencies(), -1) @ rotation.T
    brute = shells.analyze(evaluate(shells, coefficients, points))
    formula = spherical.rotate_coefficients(coefficients, alpha, beta, gamma)
    assert np.abs(formula - brute).max() < 1e-12


def test_shell_samples_are_the_transform_at_the_nodes():
    """The slice orientation of ShellGrid.slice_geometry against a direct DFT."""
    box = 24
    rng = np.random.default_rng(2)
    volume = gaussian_blobs(box, rng.uniform(-5, 5, (5, 3)), rng.uniform(1.5, 2.5, 5), np.ones(5))
    shells = spherical.ShellGrid.from_max_frequency(box, 4.0)
    samples = spherical.SphericalTransform(shells, backend="cpu").samples(volume)
    kx, ky, kz = shells.frequencies()
    z, y, x = np.meshgrid(*[fourier.frequencies(box)] * 3, indexing="ij")
    picks = [(0, 3, 5), (5, 7, 20), (9, 0, 1), (13, 12, 26), (13, 4, 9)]
    errors = []
    for r, i, j in picks:
        direct = np.sum(volume * np.exp(-2j * np.pi * (kx[r, i, j] * x + ky[r, i, j] * y
                                                        + kz[r, i, j] * z) / box))
        errors.append(abs(samples[r, i, j] - direct))
    # Cubic interpolation on the 2x padded grid: about 3e-3 of the transform's scale.
    assert max(errors) < 5e-3 * np.abs(samples).max()


def test_rotated_volume_has_rotated_coefficients():
    """The coefficients of a volume rotated in real space follow eq. (97) with our matrices."""
    box = 32
    rng = np.random.default_rng(3)
    centres = rng.uniform(-7, 7, (6, 3))
    sigmas, amplitudes = rng.uniform(2.0, 2.8, 6), rng.uniform(0.5, 1.5, 6)
    alpha, beta, gamma = 0.4, 2.1, -2.5
    rotation = spherical.landscape_rotation(alpha, beta, gamma)
    # V(R k) is the transform of v(R x): the density at r moves to Rᵀ r.
    rotated = gaussian_blobs(box, centres @ rotation, sigmas, amplitudes)
    shells = spherical.ShellGrid.from_max_frequency(box, 6.0)
    transform = spherical.SphericalTransform(shells, backend="cpu")
    expected = spherical.rotate_coefficients(
        transform.coefficients(gaussian_blobs(box, centres, sigmas, amplitudes)), alpha, beta, gamma)
    actual = transform.coefficients(rotated)
    assert np.linalg.norm(actual - expected) < 5e-3 * np.linalg.norm(expected)


def test_harmonics_at_directions_match_the_direct_expansion():
    rng = np.random.default_rng(11)
    shells = spherical.ShellGrid.from_max_frequency(24, 3.0)
    coefficients = random_coefficients(shells, rng)
    directions = rng.standard_normal((9, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    harmonics = spherical.harmonics_at(directions, shells.max_degree, shells.n_orders)
    actual = np.einsum("dlm,rlm->rd", harmonics, coefficients)
    points = shells.radii[:, None, None] * directions[None]
    expected = evaluate(shells, coefficients, points)
    assert np.abs(actual - expected).max() < 1e-12 * np.abs(expected).max()


def test_angular_momentum_generates_the_coefficient_rotation():
    """``d/dt rotate_coefficients`` is ``-i L_z`` (α) and ``-i L_y`` (β); [L_x, L_y] = i L_z."""
    rng = np.random.default_rng(12)
    coefficients = random_coefficients(spherical.ShellGrid.from_max_frequency(24, 2.0), rng)
    step = 1e-6
    for axis, angles in ((2, (step, 0.0, 0.0)), (1, (0.0, step, 0.0))):
        finite = (spherical.rotate_coefficients(coefficients, *angles)
                  - spherical.rotate_coefficients(coefficients, *(-a for a in angles))) / (2 * step)
        generated = -1j * spherical.angular_momentum(coefficients, axis)
        assert np.abs(finite - generated).max() < 1e-8 * np.abs(generated).max()
    momentum = [lambda a, axis=axis: spherical.angular_momentum(a, axis) for axis in range(3)]
    commutator = (momentum[0](momentum[1](coefficients))
                  - momentum[1](momentum[0](coefficients)))
    assert np.abs(commutator - 1j * momentum[2](coefficients)).max() < 1e-12 * np.abs(
        commutator).max()
