"""Built-in atomic phantoms, generated without input files.

All phantoms are deterministic given ``rng`` (a seed or a
:class:`numpy.random.Generator`), centred on the origin, and use a protein-like
element mix (C 62 %, N 17 %, O 19 %, S 2 % by count) with one B-factor for all
atoms.  Atoms are laid out as short random-walk chains (1.5 Å steps, like
bonded atoms) inside an envelope, which gives the density local texture at
every resolution.
"""
import numpy as np

from .atoms import AtomModel
from ..errors import InvalidDataError

_ELEMENTS = np.array(["C", "N", "O", "S"])
_ELEMENT_FRACTIONS = np.array([0.62, 0.17, 0.19, 0.02])
_STEP = 1.5
_CHAIN_LENGTH = 40
DEFAULT_BFACTOR = 50.0
#: Largest phantom radius as a fraction of the box edge: a phantom of diameter 0.9 box
#: leaves its atoms' Gaussian tails inside the box.
MAX_RADIUS_BOX_FRACTION = 0.45


def _rotation_about(axis, angle):
    """Active rotation matrix by ``angle`` (radians) about the unit ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _inside_envelope(points, radius):
    # A flattened ellipsoid plus an off-centre knob: the shape has no symmetry,
    # so even a low-resolution map of it has a unique orientation.
    ellipsoid = np.sum((points / (radius * np.array([0.8, 0.6, 0.45]))) ** 2, axis=-1) <= 1.0
    knob = np.linalg.norm(points - radius * np.array([0.45, 0.3, 0.2]), axis=-1) <= 0.4 * radius
    return ellipsoid | knob


def _random_points_in_envelope(count, radius, rng):
    points = np.empty((0, 3))
    while points.shape[0] < count:
        candidates = rng.uniform(-radius, radius, size=(4 * count + 16, 3))
        points = np.concatenate([points, candidates[_inside_envelope(candidates, radius)]])
    return points[:count]


def random_protein_phantom(n_atoms=1000, radius_angstrom=20.0, rng=0, bfactor=DEFAULT_BFACTOR):
    """A compact, asymmetric blob of atoms.

    :param n_atoms: number of atoms.
    :param radius_angstrom: every atom lies within this distance (Å) of the
        origin; the envelope is an ellipsoid with semi-axes 0.8, 0.6 and 0.45
        of it plus an off-centre lobe.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param bfactor: B-factor of every atom in Å².
    :returns: :class:`AtomModel` with centroid at the origin.
    """
    if n_atoms < 1 or radius_angstrom <= 0:
        raise InvalidDataError(f"need n_atoms >= 1 and radius > 0, got {n_atoms}, "
                               f"{radius_angstrom}")
    rng = np.random.default_rng(rng)
    n_chains = -(-n_atoms // _CHAIN_LENGTH)
    starts = _random_points_in_envelope(n_chains, radius_angstrom, rng)
    current = starts
    chains = []
    for _ in range(_CHAIN_LENGTH):
        chains.append(current)
        # Redraw steps that would leave the envelope; a chain that stays stuck
        # after 20 draws keeps its place for this step.
        pending = np.ones(n_chains, dtype=bool)
        moved = current.copy()
        for _ in range(20):
            step = rng.normal(size=(n_chains, 3))
            candidate = current + _STEP * step / np.linalg.norm(step, axis=1, keepdims=True)
            accept = pending & _inside_envelope(candidate, radius_angstrom)
            moved[accept] = candidate[accept]
            pending &= ~accept
            if not pending.any():
                break
        current = moved
    positions = np.stack(chains, axis=1).reshape(-1, 3)[:n_atoms]
    positions -= positions.mean(axis=0)
    extent = np.linalg.norm(positions, axis=1).max()
    if extent > radius_angstrom:
        positions *= radius_angstrom / extent
    elements = rng.choice(_ELEMENTS, size=n_atoms, p=_ELEMENT_FRACTIONS)
    return AtomModel(positions, elements, np.full(n_atoms, float(bfactor)))


def cyclic_phantom(order, atoms_per_subunit=300, radius_angstrom=25.0, rng=0,
                   bfactor=DEFAULT_BFACTOR):
    """``order`` copies of one asymmetric subunit arranged with C_n symmetry about +z.

    Copy ``k`` is the subunit rotated (actively) by ``360 k / order`` degrees
    about the z axis, so the model is invariant under that rotation up to a
    permutation of atoms: atoms ``[k * atoms_per_subunit, (k + 1) *
    atoms_per_subunit)`` form copy ``k``.  Subunits do not overlap: each has
    radius ``r = R sin(pi / n) / (1 + sin(pi / n))`` and sits ``R - r`` from
    the axis, with ``R = radius_angstrom`` (for ``order = 1`` the single subunit
    has radius ``R`` and sits on the axis).

    :param order: symmetry order ``n >= 1``.
    :param atoms_per_subunit: atoms in each copy.
    :param radius_angstrom: outer radius ``R`` in Å.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param bfactor: B-factor of every atom in Å².
    :returns: :class:`AtomModel` of ``order * atoms_per_subunit`` atoms, symmetry axis z.
    """
    order = int(order)
    if order < 1:
        raise InvalidDataError(f"symmetry order must be >= 1, got {order}")
    sine = np.sin(np.pi / order) if order > 1 else 1.0
    sub_radius = radius_angstrom * sine / (1.0 + sine) if order > 1 else radius_angstrom
    subunit = random_protein_phantom(atoms_per_subunit, sub_radius, rng, bfactor)
    offset = np.array([radius_angstrom - sub_radius, 0.0, 0.0]) if order > 1 else np.zeros(3)
    placed = subunit.positions + offset
    copies = [placed @ _rotation_about([0, 0, 1], 2 * np.pi * k / order).T for k in range(order)]
    return AtomModel(np.concatenate(copies), np.tile(subunit.elements, order),
                     np.tile(subunit.bfactors, order))


def two_state_phantom(n_atoms=1000, radius_angstrom=20.0, rng=0, domain_fraction=0.3,
                      hinge_angle_deg=30.0, translation_angstrom=(0.0, 0.0, 0.0),
                      bfactor=DEFAULT_BFACTOR):
    """Two conformations of one phantom: a domain swings rigidly about a hinge.

    The domain is the ``domain_fraction`` of atoms furthest along a random
    direction ``u`` (a slab cut by a plane normal to ``u``).  In state B it is
    rotated by ``hinge_angle_deg`` about an axis perpendicular to ``u`` that
    passes through the point of the cutting plane nearest the domain's
    centroid, then translated by ``translation_angstrom``; the other atoms do
    not move.  Atom ``i`` is the same atom in both states.

    :param n_atoms: number of atoms.
    :param radius_angstrom: radius of state A (see :func:`random_protein_phantom`).
    :param rng: seed or :class:`numpy.random.Generator`.
    :param domain_fraction: fraction of atoms in the moving domain, in (0, 1).
    :param hinge_angle_deg: rigid rotation of the domain in degrees.
    :param translation_angstrom: ``(3,)`` rigid translation of the domain in Å.
    :param bfactor: B-factor of every atom in Å².
    :returns: ``(state_a, state_b)``, two :class:`AtomModel`; the moving
        atoms are those whose positions differ.
    """
    if not 0.0 < domain_fraction < 1.0:
        raise InvalidDataError(f"domain_fraction must be in (0, 1), got {domain_fraction}")
    rng = np.random.default_rng(rng)
    state_a = random_protein_phantom(n_atoms, radius_angstrom, rng, bfactor)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    heights = state_a.positions @ direction
    cut = np.quantile(heights, 1.0 - domain_fraction)
    domain = heights > cut
    centroid = state_a.positions[domain].mean(axis=0)
    pivot = centroid - (centroid @ direction - cut) * direction
    axis = np.cross(direction, rng.normal(size=3))
    rotation = _rotation_about(axis, np.deg2rad(hinge_angle_deg))
    moved = state_a.positions.copy()
    moved[domain] = ((moved[domain] - pivot) @ rotation.T + pivot
                     + np.asarray(translation_angstrom, dtype=np.float64))
    state_b = AtomModel(moved, state_a.elements.copy(), state_a.bfactors.copy(),
                        state_a.occupancies.copy())
    return state_a, state_b


def max_radius(box, pixel_size):
    """Largest phantom radius (Å) that fits a map of ``box`` pixels of ``pixel_size`` Å."""
    return MAX_RADIUS_BOX_FRACTION * box * pixel_size


def phantom_states(n_atoms, radius_angstrom, rng, symmetry_order=1, moving_fraction=None,
                   hinge_angle_deg=30.0):
    """The built-in phantom of a simulated data set and its second state, if any.

    :param n_atoms: number of atoms; a cyclic phantom has ``symmetry_order`` subunits
        of ``n_atoms // symmetry_order`` atoms.
    :param radius_angstrom: outer radius of the phantom in Å.
    :param rng: seed or :class:`numpy.random.Generator`.
    :param symmetry_order: 1 for the asymmetric :func:`random_protein_phantom`, ``n > 1``
        for :func:`cyclic_phantom` of order ``n``.
    :param moving_fraction: None for one state; else the fraction of atoms in the
        domain that :func:`two_state_phantom` swings by ``hinge_angle_deg`` (asymmetric
        phantom only).
    :returns: ``(state_a, state_b)``, :class:`AtomModel` and :class:`AtomModel` or None.
    """
    symmetry_order = int(symmetry_order)
    if moving_fraction is not None:
        if symmetry_order != 1:
            raise InvalidDataError("a moving domain is available for the asymmetric phantom "
                                   f"only, not with C{symmetry_order} symmetry")
        return two_state_phantom(n_atoms, radius_angstrom, rng, domain_fraction=moving_fraction,
                                 hinge_angle_deg=hinge_angle_deg)
    if symmetry_order == 1:
        return random_protein_phantom(n_atoms, radius_angstrom, rng), None
    if n_atoms < symmetry_order:
        raise InvalidDataError(f"{n_atoms} atoms cannot make {symmetry_order} subunits; use at "
                               f"least {symmetry_order} atoms")
    return cyclic_phantom(symmetry_order, n_atoms // symmetry_order, radius_angstrom, rng), None
