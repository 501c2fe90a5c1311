"""The "pretzel": a rigid ring with two independently hinged arms (docs/methods/hyper_molecules.md §7).

The test object of the hyper-molecule paper (Lederman, Andén & Singer 2020, §3.1.2 and §5),
whose exact geometry the paper does not give, built here from Gaussian atoms: a ring of
``ring_atoms`` atoms of radius ``radius`` in the xy plane, and two identical arms of
``arm_atoms`` atoms related by a 180° rotation about z (C2).  Arm ``j`` is hinged on the
ring at ``(±radius, 0, 0)`` and swings about the hinge's tangent (the y axis) through
``swing_deg`` as its state ``t_j`` goes from 0 to 1 (``t_j ~ U[0, 1]`` independently per
arm in :func:`..simulate.simulate_particles`).  Its projections are analytic, like every
atomic model of :mod:`.atoms`.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError
from .atoms import AtomModel, gaussian_atom_volume

#: The C2 operation relating the arms: 180° about z.
C2_Z = np.diag([-1.0, -1.0, 1.0])


def _about_y(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Pretzel:
    """A ring plus two C2-related hinged arms; states ``t`` are ``(n, 2)`` in [0, 1].

    :param ring: ``(r, 3)`` ring atom positions (Å, about the origin).
    :param arm: ``(a, 3)`` positions of arm 1 at the middle of its swing.
    :param hinge: ``(3,)`` hinge point of arm 1.  :param swing_deg: range of the swing.
    :param bfactor: B-factor of every atom (Å²).
    """
    ring: np.ndarray
    arm: np.ndarray
    hinge: np.ndarray
    swing_deg: float
    bfactor: float

    state_dimension = 2

    @property
    def n_atoms(self):
        return self.ring.shape[0] + 2 * self.arm.shape[0]

    def arm_positions(self, t):
        """``(n, a, 3)`` positions of arm 1 at states ``t`` ``(n,)``."""
        angles = np.deg2rad(self.swing_deg) * (np.asarray(t, dtype=np.float64) - 0.5)
        relative = self.arm - self.hinge
        rotated = np.stack([relative @ _about_y(a).T for a in angles])
        return rotated + self.hinge

    def positions_at(self, states):
        """``(n, atoms, 3)`` positions at states ``(n, 2)``: ring, arm 1, arm 2."""
        states = np.atleast_2d(np.asarray(states, dtype=np.float64))
        n = states.shape[0]
        ring = np.broadcast_to(self.ring, (n,) + self.ring.shape)
        first = self.arm_positions(states[:, 0])
        second = self.arm_positions(states[:, 1]) @ C2_Z.T
        return np.concatenate([ring, first, second], axis=1)

    def model(self, state=(0.5, 0.5)):
        """The :class:`.atoms.AtomModel` at one state (its centroid is the origin's)."""
        positions = self.positions_at(np.asarray(state)[None])[0]
        return AtomModel(positions, ["C"] * positions.shape[0],
                         np.full(positions.shape[0], self.bfactor))

    @property
    def reference(self):
        """The model at the middle state: the atoms' amplitudes, widths and centre."""
        return self.model()

    def volume(self, state, box, pixel_size):
        """The map at one state, centred on the middle state's centroid."""
        return gaussian_atom_volume(self.model(state), box, pixel_size,
                                    center=self.reference.centroid())

    def masks(self, box, pixel_size, margin_angstrom=6.0):
        """Soft masks ``(ring, arm 1, arm 2)`` of the parts over their whole swing."""
        centre = self.reference.centroid()
        swing = np.linspace(0, 1, 9)
        parts = [self.ring[None], self.arm_positions(swing),
                 self.arm_positions(swing) @ C2_Z.T]
        offsets = np.arange(box) - box // 2
        z, y, x = np.meshgrid(offsets, offsets, offsets, indexing="ij")
        grid = np.stack([x, y, z], -1).reshape(-1, 3) * pixel_size
        out = []
        for points in parts:
            points = points.reshape(-1, 3) - centre
            distance = np.full(grid.shape[0], np.inf)
            for p in points:
                distance = np.minimum(distance, np.linalg.norm(grid - p, axis=1))
            ramp = np.clip((distance - margin_angstrom) / (2 * pixel_size), 0, 1)
            out.append((0.5 * (1 + np.cos(np.pi * ramp))).reshape((box,) * 3))
        return tuple(out)


def pretzel(radius_angstrom=20.0, ring_atoms=20, arm_atoms=5, swing_deg=50.0,
            arm_length_angstrom=None, bfactor=800.0):
    """A :class:`Pretzel` of ring radius ``radius_angstrom``.

    The arm is a straight row of ``arm_atoms`` atoms leaving the ring radially (along +x
    from the hinge at ``(radius, 0, 0)``) at the middle of its swing, ``arm_length`` long
    (default: 0.6 of the radius).
    """
    if ring_atoms < 3 or arm_atoms < 1 or not 0 < swing_deg < 180:
        raise InvalidDataError("a pretzel needs >= 3 ring atoms, >= 1 arm atom and a swing "
                               "between 0 and 180 degrees")
    angles = 2 * np.pi * np.arange(ring_atoms) / ring_atoms
    ring = radius_angstrom * np.stack([np.cos(angles), np.sin(angles), np.zeros(ring_atoms)], -1)
    length = 0.6 * radius_angstrom if arm_length_angstrom is None else arm_length_angstrom
    hinge = np.array([radius_angstrom, 0.0, 0.0])
    steps = np.arange(1, arm_atoms + 1) / arm_atoms * length
    arm = hinge + np.stack([steps, np.zeros(arm_atoms), np.zeros(arm_atoms)], -1)
    return Pretzel(ring, arm, hinge, float(swing_deg), float(bfactor))
