"""Atomic models and their analytic Gaussian-atom density.

Each atom is one isotropic 3-D Gaussian:

* **Amplitude** ``A_e * occupancy``, where ``A_e = f_e(0) = sum_i a_i`` is the
  forward electron scattering factor (Å) of the element, the integral of its
  Coulomb potential up to a constant.  The ``a_i, b_i`` are the five-Gaussian
  elastic electron scattering factors of neutral atoms of Peng, Ren, Dudarev &
  Whelan (1996), *Acta Cryst.* A52, 257-276 (fit for 0 <= s <= 6 Å⁻¹), with
  ``f_e(s) = sum_i a_i exp(-b_i s^2)`` and ``s = sin(theta) / lambda``.
  Elements missing from :data:`SCATTERING_FACTORS` are treated as carbon.
* **Width** ``sigma^2 = (B + B_e) / (8 pi^2)`` in Å².  ``B / (8 pi^2)`` is the
  Debye-Waller blur of the atom's B-factor (``exp(-B q^2 / 4)`` with
  ``q = 1 / d`` is the transform of a Gaussian of that variance).  The floor
  ``B_e / (8 pi^2)`` is the element's own width: ``B_e = sum a_i b_i / sum a_i``
  matches the curvature at ``s = 0`` of the tabulated factor, i.e. the
  second moment of the atomic potential (about 17 Å² for C, so sigma >= 0.47 Å
  even at B = 0).

Sampling: :func:`gaussian_atom_volume` and :func:`gaussian_atom_projection`
both take *point values* of the Gaussians at voxel / pixel centres (no
averaging over the voxel or pixel).  Values are in amplitude per voxel (per
pixel): a volume sums to the total amplitude, and so does its projection.  The
discrete sum along z of the sampled volume therefore equals the analytic line
integral up to the aliasing of the sampled Gaussians, which is below
``2 exp(-2 pi^2 sigma^2)`` relative for sigma in voxels (< 1e-8 at sigma >= 1
voxel); likewise a Fourier-slice projection of the volume differs from the
analytic projection only by band-limit and interpolation effects.

Each Gaussian is evaluated only within ``cutoff`` (default 6) sigma of its
centre on every axis, which drops less than 2e-9 of its mass per axis.

Geometry: a model position ``p`` (Å) maps to voxel ``(p - center) /
voxel_size + n // 2`` on each of x, y, z (array order ``(z, y, x)``), and to
image pixel ``(R @ (p - center))[:2] / pixel_size + shift + n // 2`` (array
order ``(y, x)``), the convention of :mod:`.rotations`.
"""
import gzip
import os
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidDataError, ShapeError
from ..kernels.atoms_cpu import splat_images, splat_volume

#: Peng et al. (1996) five-Gaussian electron scattering factors
#: ``element: ((a1..a5) Å, (b1..b5) Å²)``, fit for 0 <= s <= 6 Å⁻¹.
SCATTERING_FACTORS = {
    "H": ((0.0088, 0.0449, 0.1481, 0.2356, 0.0914), (0.1152, 1.0867, 4.9755, 16.5591, 43.2743)),
    "C": ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),
    "N": ((0.0267, 0.1328, 0.5301, 1.1020, 0.4215), (0.0541, 0.5165, 2.8207, 10.6297, 34.3764)),
    "O": ((0.0365, 0.1729, 0.5805, 0.8814, 0.3121), (0.0652, 0.6184, 2.9449, 9.6298, 28.2194)),
    "Na": ((0.1260, 0.6442, 0.8893, 1.8197, 1.2988), (0.1684, 1.7150, 8.8386, 50.8265, 147.2073)),
    "Mg": ((0.1130, 0.5575, 0.9046, 2.1580, 1.4735), (0.1356, 1.3579, 6.9255, 32.3165, 92.1130)),
    "P": ((0.1005, 0.4615, 1.0663, 2.5854, 1.2725), (0.0977, 0.9084, 4.9654, 18.5471, 54.3648)),
    "S": ((0.0915, 0.4312, 1.0847, 2.4671, 1.0852), (0.0838, 0.7788, 4.3462, 15.5846, 44.6365)),
    "Cl": ((0.0799, 0.3891, 1.0037, 2.3332, 1.0507), (0.0694, 0.6443, 3.5351, 12.5058, 35.8633)),
    "K": ((0.2149, 0.8703, 2.4999, 2.3591, 3.0318), (0.1660, 1.6906, 8.7447, 46.7825, 165.6923)),
    "Ca": ((0.2355, 0.9916, 2.3959, 3.7252, 2.5647), (0.1742, 1.8329, 8.8407, 47.4583, 134.9613)),
    "Fe": ((0.1929, 0.8239, 1.8689, 2.3694, 1.9060), (0.1087, 1.0806, 4.7637, 22.8500, 76.7309)),
    "Zn": ((0.1780, 0.8096, 1.6744, 1.9499, 1.4495), (0.0876, 0.8650, 3.8612, 18.8726, 64.7016)),
    "Se": ((0.1574, 0.7614, 1.4834, 3.0016, 1.7978), (0.0686, 0.6808, 3.1163, 14.3458, 44.0455)),
}
DEFAULT_ELEMENT = "C"
DEFAULT_CUTOFF = 6.0
_WATER_NAMES = frozenset({"HOH", "WAT", "DOD", "H2O", "SOL", "TIP", "TIP3"})


def normalize_element(symbol):
    """Element symbol in the table's capitalisation (``"FE"`` -> ``"Fe"``)."""
    symbol = str(symbol).strip()
    return symbol[:1].upper() + symbol[1:].lower()


def element_amplitude(element):
    """Forward electron scattering factor ``f_e(0) = sum a_i`` in Å of an element."""
    a, _ = SCATTERING_FACTORS.get(normalize_element(element), SCATTERING_FACTORS[DEFAULT_ELEMENT])
    return float(sum(a))


def element_bfactor(element):
    """Intrinsic width ``B_e = sum a_i b_i / sum a_i`` in Å² of an element's potential."""
    a, b = SCATTERING_FACTORS.get(normalize_element(element), SCATTERING_FACTORS[DEFAULT_ELEMENT])
    return float(np.dot(a, b) / np.sum(a))


@dataclass
class AtomModel:
    """A set of atoms.

    :param positions: ``(n, 3)`` float64 coordinates ``(x, y, z)`` in Å.
    :param elements: ``(n,)`` element symbols (str).
    :param bfactors: ``(n,)`` isotropic B-factors in Å² (default 0).
    :param occupancies: ``(n,)`` occupancies (default 1).
    """
    positions: np.ndarray
    elements: np.ndarray
    bfactors: np.ndarray = None
    occupancies: np.ndarray = None

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ShapeError(f"atom positions must have shape (n, 3), got {self.positions.shape}")
        n = self.positions.shape[0]
        self.elements = np.array([normalize_element(e) for e in np.atleast_1d(self.elements)],
                                 dtype=str)
        self.bfactors = (np.zeros(n) if self.bfactors is None
                         else np.asarray(self.bfactors, dtype=np.float64))
        self.occupancies = (np.ones(n) if self.occupancies is None
                            else np.asarray(self.occupancies, dtype=np.float64))
        for name in ("elements", "bfactors", "occupancies"):
            if getattr(self, name).shape != (n,):
                raise ShapeError(f"{name} must have shape ({n},) to match the positions, "
                                 f"got {getattr(self, name).shape}")
        if not np.all(np.isfinite(self.positions)) or not np.all(np.isfinite(self.bfactors)):
            raise InvalidDataError("atom positions and B-factors must be finite")
        if np.any(self.bfactors < 0):
            raise InvalidDataError("B-factors must be non-negative")

    @property
    def n_atoms(self):
        return self.positions.shape[0]

    def centroid(self):
        """Unweighted mean position ``(3,)`` in Å."""
        return self.positions.mean(axis=0)

    def radius(self):
        """Largest distance (Å) of an atom's centre from the centroid."""
        return float(np.linalg.norm(self.positions - self.centroid(), axis=1).max())

    def amplitudes(self):
        """Per-atom integrated amplitude ``f_e(0) * occupancy``, shape ``(n,)``."""
        table = {e: element_amplitude(e) for e in np.unique(self.elements)}
        return np.array([table[e] for e in self.elements]) * self.occupancies

    def sigmas(self):
        """Per-atom Gaussian standard deviation ``sqrt((B + B_e) / (8 pi^2))`` in Å, ``(n,)``."""
        table = {e: element_bfactor(e) for e in np.unique(self.elements)}
        intrinsic = np.array([table[e] for e in self.elements])
        return np.sqrt((self.bfactors + intrinsic) / (8.0 * np.pi ** 2))


def _open_text(path):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt")
    return open(path, "r")


def _is_mmcif(path):
    name = str(path).lower().removesuffix(".gz")
    if name.endswith((".cif", ".mmcif")):
        return True
    if name.endswith((".pdb", ".ent")):
        return False
    with _open_text(path) as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                return line.startswith("data_")
    return False


def _existing_model_file(path):
    """``path`` as a string, once it names a non-empty file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"atomic model file not found: {path}")
    if os.path.getsize(path) == 0:
        raise InvalidDataError(f"atomic model file is empty: {path}")
    return path


def check_atomic_model_file(path, max_line=65536):
    """Check cheaply, without parsing it, that ``path`` looks like an atomic model.

    Reads lines up to the first ``ATOM`` or ``HETATM`` record of a PDB file or the
    ``_atom_site`` loop of an mmCIF file, which is enough to tell a model from a
    missing, empty, binary or unrelated file before :func:`read_atomic_model` parses it.

    :param path: PDB or mmCIF file, optionally gzipped.
    :param max_line: lines longer than this many bytes mean the file is not a model.
    :raises FileNotFoundError: the file does not exist.
    :raises InvalidDataError: the file is empty, unreadable, binary or has no atom record.
    """
    path = _existing_model_file(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            while line := handle.readline(max_line):
                if b"\0" in line or (len(line) == max_line and not line.endswith(b"\n")):
                    raise InvalidDataError(f"{path} is not a text file; a PDB or mmCIF file "
                                           "is expected")
                if line.startswith((b"ATOM", b"HETATM", b"_atom_site.")):
                    return
    except (OSError, EOFError) as exc:  # gzip reports a damaged file as either
        raise InvalidDataError(f"cannot read atomic model {path}: {exc}") from exc
    raise InvalidDataError(f"no ATOM or HETATM record nor _atom_site loop in {path}; is it a "
                           "PDB or mmCIF file?")


def read_atomic_model(path, skip_hydrogens=True, skip_waters=True):
    """Read the first model of a PDB or mmCIF file (optionally gzipped) with Biopython.

    For atoms with alternate locations Biopython keeps the one with the highest
    occupancy.  Elements are taken from the file (Biopython infers them from
    the atom name when the element column is empty).

    :param path: ``.pdb``/``.ent`` or ``.cif``/``.mmcif`` file; other
        extensions are recognised by a leading ``data_`` line (mmCIF).
    :param skip_hydrogens: drop H and D atoms.
    :param skip_waters: drop residues named HOH, WAT, DOD, H2O, SOL, TIP(3)
        and hetero residues flagged as water.
    :returns: :class:`AtomModel`.
    :raises FileNotFoundError: the file does not exist.
    :raises InvalidDataError: the file cannot be parsed or holds no atoms.
    """
    from Bio.PDB import MMCIFParser, PDBParser

    path = _existing_model_file(path)
    parser = MMCIFParser(QUIET=True) if _is_mmcif(path) else PDBParser(QUIET=True)
    try:
        with _open_text(path) as handle:
            structure = parser.get_structure("model", handle)
    except Exception as exc:  # Biopython raises many types for malformed files
        raise InvalidDataError(f"cannot parse atomic model {path}: {exc}") from exc
    models = list(structure)
    if not models:
        raise InvalidDataError(f"no atoms found in {path}; is it a PDB or mmCIF file?")
    positions, elements, bfactors, occupancies = [], [], [], []
    for atom in models[0].get_atoms():
        residue = atom.get_parent()
        element = normalize_element(atom.element or atom.get_name()[:1])
        if skip_hydrogens and element in ("H", "D"):
            continue
        if skip_waters and (residue.get_resname().strip() in _WATER_NAMES or residue.id[0] == "W"):
            continue
        positions.append(atom.get_coord())
        elements.append(element)
        bfactors.append(atom.get_bfactor())
        occupancy = atom.get_occupancy()
        occupancies.append(1.0 if occupancy is None else occupancy)
    if not positions:
        raise InvalidDataError(f"no atoms left in {path} after skipping hydrogens and waters")
    return AtomModel(np.array(positions, dtype=np.float64), np.array(elements),
                     np.array(bfactors, dtype=np.float64), np.array(occupancies, dtype=np.float64))


def _check_grid(box, spacing):
    if int(box) != box or box < 1:
        raise InvalidDataError(f"box must be a positive integer, got {box}")
    if not spacing > 0:
        raise InvalidDataError(f"pixel/voxel size must be positive, got {spacing}")


def _resolve_center(model, center):
    return model.centroid() if center is None else np.asarray(center, dtype=np.float64).reshape(3)


def gaussian_atom_volume(model, box, voxel_size, center=None, cutoff=DEFAULT_CUTOFF):
    """Point samples of the Gaussian-atom density at voxel centres.

    :param model: :class:`AtomModel`.
    :param box: edge length in voxels.
    :param voxel_size: Å per voxel.
    :param center: ``(3,)`` model position in Å that lands on voxel
        ``box // 2``; default the model's centroid.
    :param cutoff: each Gaussian is evaluated within ``cutoff`` sigma per axis.
    :returns: ``(box, box, box)`` float64 array indexed ``(z, y, x)``, amplitude
        per voxel (sums to the total amplitude of the atoms inside the box).
    """
    _check_grid(box, voxel_size)
    box = int(box)
    coords = (model.positions - _resolve_center(model, center)) / voxel_size + box // 2
    sigmas = model.sigmas() / voxel_size
    weights = model.amplitudes() / (2.0 * np.pi * sigmas ** 2) ** 1.5
    out = np.zeros((box, box, box))
    splat_volume(np.ascontiguousarray(coords), weights, sigmas, float(cutoff), out)
    return out


def project_atom_positions(positions, amplitudes, sigmas, rotations, box, pixel_size,
                           shifts=None, cutoff=DEFAULT_CUTOFF):
    """Exact line integrals along the beam of Gaussian atoms, one image per pose.

    The integral of an isotropic 3-D Gaussian along z is the 2-D Gaussian of the
    same sigma and amplitude, so the projection is analytic; it is sampled at
    pixel centres (point values).

    :param positions: ``(n_atoms, 3)`` or, for a different model per image,
        ``(n, n_atoms, 3)`` positions in Å relative to the rotation centre.
    :param amplitudes: ``(n_atoms,)`` integrated amplitudes.
    :param sigmas: ``(n_atoms,)`` standard deviations in Å.
    :param rotations: ``(3, 3)`` or ``(n, 3, 3)`` rotation matrices.
    :param box: image edge in pixels.
    :param pixel_size: Å per pixel.
    :param shifts: ``(2,)`` or ``(n, 2)`` in pixels, ``(tx, ty)``, offset of
        the particle centre from the box centre; default none.
    :param cutoff: each Gaussian is evaluated within ``cutoff`` sigma per axis.
    :returns: ``(n, box, box)`` float64 images indexed ``(y, x)``, amplitude per pixel.
    """
    _check_grid(box, pixel_size)
    box = int(box)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape[-1] != 3 or positions.ndim not in (2, 3):
        raise ShapeError(f"positions must have shape (n_atoms, 3) or (n, n_atoms, 3), "
                         f"got {positions.shape}")
    counts = {rotations.shape[0]} | ({positions.shape[0]} if positions.ndim == 3 else set())
    n = max(counts)
    if counts - {1, n}:
        raise ShapeError(f"{positions.shape[0]} position sets do not match "
                         f"{rotations.shape[0]} rotations")
    shifts = np.zeros(2) if shifts is None else np.asarray(shifts, dtype=np.float64)
    shifts = np.broadcast_to(shifts.reshape(-1, 2), (n, 2))
    rotations = np.broadcast_to(rotations, (n, 3, 3))
    # Only the first two rows of R place the atom in the image.
    image_xy = np.einsum("nij,n...j->n...i", rotations[:, :2, :],
                         np.broadcast_to(positions, (n,) + positions.shape[-2:]))
    coords = image_xy / pixel_size + shifts[:, None, :] + box // 2
    sigmas_px = np.asarray(sigmas, dtype=np.float64) / pixel_size
    weights = np.asarray(amplitudes, dtype=np.float64) / (2.0 * np.pi * sigmas_px ** 2)
    out = np.zeros((n, box, box))
    splat_images(np.ascontiguousarray(coords), weights, sigmas_px, float(cutoff), out)
    return out


def gaussian_atom_projection(model, rotation, box, pixel_size, shift=(0.0, 0.0), center=None,
                             cutoff=DEFAULT_CUTOFF):
    """Analytic projections of a Gaussian-atom model (exact line integrals, point-sampled).

    This is the reference for projector accuracy: with the identity rotation it
    equals the sum along z of :func:`gaussian_atom_volume` on the same grid to
    the aliasing bound given in the module docstring.

    :param model: :class:`AtomModel`.
    :param rotation: ``(3, 3)`` or ``(n, 3, 3)``; atom ``p`` lands at
        ``(R @ (p - center))[:2]``.
    :param box: image edge in pixels.
    :param pixel_size: Å per pixel.
    :param shift: ``(2,)`` or ``(n, 2)`` pixels ``(tx, ty)``; positive ``tx``
        moves the density to larger x index.
    :param center: ``(3,)`` rotation centre in Å; default the model's centroid.
    :param cutoff: each Gaussian is evaluated within ``cutoff`` sigma per axis.
    :returns: ``(n, box, box)`` float64 images indexed ``(y, x)``.
    """
    positions = model.positions - _resolve_center(model, center)
    return project_atom_positions(positions, model.amplitudes(), model.sigmas(), rotation,
                                  box, pixel_size, shifts=shift, cutoff=cutoff)
