"""Rotation conventions: the one owner of Euler angles and rotation matrices.

Convention (identical to Xmipp/Scipion, checked against
``xmippLib.Euler_angles2matrix`` in the tests):

* Euler angles are ZYZ ``(rot, tilt, psi)`` in degrees.
* ``R = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with the *passive* elementary matrices
  ``Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and
  ``Ry(a) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
* A density point at ``r = (x, y, z)`` (Å or pixels from the box centre)
  lands at image position ``(R @ r)[:2]`` = ``(x, y)``.  The projection
  direction in the volume frame is the third row ``R[2]``.
* so(3) tangent vectors ``omega`` perturb a pose on the left, in the image
  frame: ``R(omega) = expm([omega]_x) @ R``.  ``omega[2]`` is an in-plane
  rotation of the image.

Quaternions, random rotations and the exponential map come from
:class:`scipy.spatial.transform.Rotation` (scalar-last quaternions
``(x, y, z, w)``, as scipy returns them).
"""
import numpy as np
from scipy.spatial.transform import Rotation

from .errors import InvalidDataError, ShapeError

_GIMBAL_EPS = 1e-9


def validate_poses(rotations, shifts=None, count=None):
    """Checked float64 copies of a pose stack: ``(rotations (n, 3, 3), shifts (n, 2))``.

    Shifts are core shifts in pixels (zeros when None).  ``count`` fixes ``n`` (the
    number of images the poses belong to); otherwise any non-empty stack passes.
    Refuses wrong shapes and NaN or infinite values with the fix in the message.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    expected = "(n, 3, 3)" if count is None else f"({count}, 3, 3)"
    if (rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or rotations.shape[0] == 0
            or (count is not None and rotations.shape[0] != count)):
        raise ShapeError(f"rotations must be a non-empty {expected} stack, got "
                         f"{rotations.shape}; the particles need an alignment (ALIGN_PROJ)")
    n = rotations.shape[0]
    shifts = np.zeros((n, 2)) if shifts is None else np.array(shifts, dtype=np.float64)
    if shifts.shape != (n, 2):
        raise ShapeError(f"shifts must have shape ({n}, 2), got {shifts.shape}")
    for name, array in (("rotations", rotations), ("shifts", shifts)):
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InvalidDataError(f"{name} contain {bad} NaN or infinite values; remove those "
                                   "particles or re-run their alignment")
    return rotations, shifts


def _elementary_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, s, zero], -1),
                     np.stack([-s, c, zero], -1),
                     np.stack([zero, zero, one], -1)], -2)


def _elementary_y(angle):
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, zero, -s], -1),
                     np.stack([zero, one, zero], -1),
                     np.stack([s, zero, c], -1)], -2)


def euler_to_matrix(rot, tilt, psi):
    """Rotation matrices from ZYZ Euler angles in degrees.

    :param rot, tilt, psi: scalars or arrays of the same shape ``S``.
    :returns: float64 array of shape ``S + (3, 3)``.
    """
    rot, tilt, psi = np.broadcast_arrays(*[np.deg2rad(np.asarray(a, dtype=np.float64))
                                           for a in (rot, tilt, psi)])
    return _elementary_z(psi) @ _elementary_y(tilt) @ _elementary_z(rot)


def matrix_to_euler(matrices):
    """ZYZ Euler angles ``(rot, tilt, psi)`` in degrees from rotation matrices.

    ``tilt`` is in [0, 180]; ``rot`` and ``psi`` in (-180, 180].  At
    ``tilt`` = 0 or 180 only ``rot ± psi`` is defined; ``rot`` is set to 0.

    :param matrices: array of shape ``(..., 3, 3)``.
    :returns: three arrays of shape ``(...)``.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ShapeError(f"expected rotation matrices of shape (..., 3, 3), got {m.shape}")
    tilt = np.arccos(np.clip(m[..., 2, 2], -1.0, 1.0))
    sin_tilt = np.sqrt(m[..., 2, 0] ** 2 + m[..., 2, 1] ** 2)
    regular = sin_tilt > _GIMBAL_EPS
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi_regular = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # With rot = 0: tilt 0 gives R = Rz(psi); tilt 180 gives Rz(psi) @ diag(-1, 1, -1).
    psi_north = np.arctan2(m[..., 0, 1], m[..., 0, 0])
    psi_south = np.arctan2(m[..., 0, 1], m[..., 1, 1])
    psi = np.where(regular, psi_regular, np.where(m[..., 2, 2] > 0, psi_north, psi_south))
    return np.rad2deg(rot), np.rad2deg(tilt), np.rad2deg(psi)


def projection_directions(matrices):
    """Unit projection directions in the volume frame (third rows), shape ``(..., 3)``."""
    return np.asarray(matrices)[..., 2, :]


def direction_to_euler(directions):
    """``(rot, tilt)`` in degrees of unit viewing directions ``(..., 3)``."""
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.rad2deg(np.arctan2(d[..., 1], d[..., 0])), np.rad2deg(np.arccos(np.clip(d[..., 2], -1, 1)))


def matrix_to_quaternion(matrices):
    """Unit quaternions ``(x, y, z, w)`` of rotation matrices ``(..., 3, 3)``."""
    m = np.asarray(matrices, dtype=np.float64)
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_quat().reshape(m.shape[:-2] + (4,))


def quaternion_to_matrix(quaternions):
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(x, y, z, w)``."""
    q = np.asarray(quaternions, dtype=np.float64)
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def so3_exp(omega):
    """Rotation matrices ``expm([omega]_x)`` of rotation vectors ``(..., 3)`` (radians)."""
    w = np.asarray(omega, dtype=np.float64)
    return Rotation.from_rotvec(w.reshape(-1, 3)).as_matrix().reshape(w.shape[:-1] + (3, 3))


def so3_log(matrices):
    """Rotation vectors (radians) of rotation matrices ``(..., 3, 3)``."""
    m = np.asarray(matrices, dtype=np.float64)
    return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(m.shape[:-2] + (3,))


def perturb(matrices, omega):
    """Left perturbation ``expm([omega]_x) @ R`` of poses by image-frame rotation vectors."""
    return so3_exp(omega) @ np.asarray(matrices, dtype=np.float64)


def hat(omega):
    """Skew matrices ``[omega]_x`` with ``[omega]_x @ v = omega × v``, shape ``(..., 3, 3)``."""
    w = np.asarray(omega, dtype=np.float64)
    zero = np.zeros(w.shape[:-1])
    return np.stack([np.stack([zero, -w[..., 2], w[..., 1]], -1),
                     np.stack([w[..., 2], zero, -w[..., 0]], -1),
                     np.stack([-w[..., 1], w[..., 0], zero], -1)], -2)


def angular_distance(a, b):
    """Geodesic angle in degrees between rotation matrices ``a`` and ``b`` (broadcast)."""
    trace = np.einsum("...ij,...ij->...", np.asarray(a), np.asarray(b))
    return np.rad2deg(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def random_rotations(count, rng):
    """``count`` rotations drawn uniformly (Haar measure) from SO(3), shape ``(count, 3, 3)``."""
    return Rotation.random(count, random_state=rng).as_matrix()


def sphere_grid(samples_per_equator_radius):
    """Near-uniform directions on the unit sphere from Gauss-Legendre rings.

    With ``r = samples_per_equator_radius`` (a sphere of radius ``r`` sampled at
    unit spacing): ``n_eq = 3 + round(2 pi r)`` points on the equator,
    ``3 + round(n_eq / 2)`` Gauss-Legendre nodes in ``cos(theta)`` and
    ``3 + round(2 pi r sin(theta_j))`` equally spaced azimuths on ring ``j``,
    starting at 0.  ``r = 48 / (2 pi)`` gives the 993 directions of the
    radial-SVD paper.

    :returns: ``(directions (n, 3), quadrature weights (n,))``; the weights sum
        to 4 pi.
    """
    n_equator = 3 + round(2 * np.pi * samples_per_equator_radius)
    n_polar = 3 + round(n_equator / 2)
    cos_nodes, cos_weights = np.polynomial.legendre.leggauss(n_polar)
    directions, weights = [], []
    for cos_theta, weight in zip(cos_nodes, cos_weights):
        sin_theta = np.sqrt(1.0 - cos_theta ** 2)
        n_azimuth = 3 + round(2 * np.pi * samples_per_equator_radius * sin_theta)
        azimuth = 2 * np.pi * np.arange(n_azimuth) / n_azimuth
        directions.append(np.stack([sin_theta * np.cos(azimuth), sin_theta * np.sin(azimuth),
                                    np.full(n_azimuth, cos_theta)], -1))
        weights.append(np.full(n_azimuth, weight * 2 * np.pi / n_azimuth))
    return np.concatenate(directions), np.concatenate(weights)


def viewing_grid_993():
    """The 993 viewing directions of the radial-SVD paper (K = 48), with weights."""
    return sphere_grid(48 / (2 * np.pi))


def viewing_grid(angular_step_deg):
    """Viewing directions spaced about ``angular_step_deg`` apart, with weights."""
    if angular_step_deg <= 0:
        raise ValueError(f"angular step must be positive, got {angular_step_deg}")
    return sphere_grid(1.0 / np.deg2rad(angular_step_deg))


def in_plane_rotations(angles):
    """Active rotations ``(..., 3, 3)`` by ``angles`` (radians) about the viewing axis.

    ``[[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]``: counter-clockwise in the
    image's ``(x, y)``, so ``in_plane_rotations(g) @ R`` is the pose whose
    projection is that of ``R`` rotated by ``g``.
    """
    angles = np.asarray(angles, dtype=np.float64)
    c, s = np.cos(angles), np.sin(angles)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1),
                     np.stack([zero, zero, one], -1)], -2)


def rotations_for_directions(directions):
    """Rotations ``(n, 3, 3)`` projecting along unit ``directions`` ``(n, 3)`` with ``psi = 0``."""
    rot, tilt = direction_to_euler(directions)
    return euler_to_matrix(rot, tilt, np.zeros_like(tilt))
