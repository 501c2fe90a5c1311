"""Rotation conventions against Xmipp and against exact identities."""
import numpy as np
import pytest
import xmippLib

from cryohess_plugin.core import rotations


def random_angles(count, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-180, 180, count),
                            np.degrees(np.arccos(rng.uniform(-1, 1, count))),
                            rng.uniform(-180, 180, count)])


def test_matrices_equal_xmipp():
    angles = random_angles(200, 1)
    ours = rotations.euler_to_matrix(*angles.T)
    xmipp = np.array([xmippLib.Euler_angles2matrix(*a) for a in angles])
    assert np.abs(ours - xmipp).max() < 1e-12


def test_projection_direction_equals_xmipp():
    angles = random_angles(50, 2)
    ours = rotations.projection_directions(rotations.euler_to_matrix(*angles.T))
    xmipp = np.array([xmippLib.Euler_direction(*a) for a in angles])
    assert np.abs(ours - xmipp).max() < 1e-12


@pytest.mark.parametrize("tilt", [None, 0.0, 180.0])
def test_matrix_to_euler_round_trip(tilt):
    angles = random_angles(100, 3)
    if tilt is not None:
        angles[:, 1] = tilt
    matrices = rotations.euler_to_matrix(*angles.T)
    back = rotations.euler_to_matrix(*rotations.matrix_to_euler(matrices))
    assert np.abs(back - matrices).max() < 1e-12


def test_quaternion_and_exponential_round_trips():
    matrices = rotations.random_rotations(50, np.random.default_rng(4))
    quaternions = rotations.matrix_to_quaternion(matrices)
    assert np.abs(rotations.quaternion_to_matrix(quaternions) - matrices).max() < 1e-12
    assert np.abs(rotations.so3_exp(rotations.so3_log(matrices)) - matrices).max() < 1e-12


def test_so3_exp_is_matrix_exponential_of_hat():
    from scipy.linalg import expm
    omega = np.array([0.3, -0.2, 0.5])
    assert np.abs(rotations.so3_exp(omega) - expm(rotations.hat(omega))).max() < 1e-12
    assert np.allclose(rotations.hat(omega) @ [1.0, 2.0, 3.0], np.cross(omega, [1.0, 2.0, 3.0]))


def test_angular_distance_of_known_rotation():
    base = rotations.random_rotations(1, np.random.default_rng(5))[0]
    turned = rotations.perturb(base, [0.0, np.radians(7.0), 0.0])
    assert rotations.angular_distance(base, turned) == pytest.approx(7.0, abs=1e-9)


def test_random_rotations_are_haar_distributed():
    matrices = rotations.random_rotations(20000, np.random.default_rng(6))
    # E[R] = 0 and E[trace R] = 0 under the Haar measure; trace/3 has s.d. 1/3.
    assert np.abs(matrices.mean(axis=0)).max() < 0.02
    cos_tilt = matrices[:, 2, 2]
    assert np.histogram(cos_tilt, bins=10, range=(-1, 1))[0].std() / 2000 < 0.05


def test_993_direction_grid():
    directions, weights = rotations.viewing_grid_993()
    assert len(directions) == 993
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0)
    # Gauss-Legendre rings integrate low-degree polynomials on the sphere exactly.
    assert weights.sum() == pytest.approx(4 * np.pi, rel=1e-12)
    assert (weights * directions[:, 2] ** 2).sum() == pytest.approx(4 * np.pi / 3, rel=1e-12)


def test_grid_spacing_follows_angular_step():
    directions, _ = rotations.viewing_grid(10.0)
    cosines = directions @ directions.T
    np.fill_diagonal(cosines, -1.0)
    nearest = np.degrees(np.arccos(np.clip(cosines.max(axis=1), -1, 1)))
    assert 5.0 < np.median(nearest) < 12.0

