"""Gaussian-atom density and projections, model reading, phantoms."""
import numpy as np
import pytest

import gzip

from cryohess_plugin.core.synthetic.atoms import (AtomModel, SCATTERING_FACTORS,
                                                  check_atomic_model_file, element_amplitude,
                                                  element_bfactor, gaussian_atom_projection,
                                                  gaussian_atom_volume, read_atomic_model)
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.synthetic.phantoms import (cyclic_phantom, max_radius, phantom_states,
                                                     random_protein_phantom, two_state_phantom)
from cryohess_plugin.core.rotations import euler_to_matrix, random_rotations

from .xmipp_reference import xmipp_projections
from .helpers import relative_l2



def blob(n_atoms, spread, seed, bfactor_range):
    rng = np.random.default_rng(seed)
    elements = rng.choice(["C", "N", "O", "S", "Fe"], n_atoms)
    return AtomModel(rng.normal(size=(n_atoms, 3)) * spread + [10.0, -4.0, 7.0], elements,
                     rng.uniform(*bfactor_range, n_atoms), rng.uniform(0.5, 1.0, n_atoms))


def test_element_table_amplitude_and_width():
    a, b = SCATTERING_FACTORS["C"]
    assert element_amplitude("C") == pytest.approx(2.5092, abs=1e-4)
    assert element_amplitude("FE") == element_amplitude("Fe") == pytest.approx(7.1611, abs=1e-4)
    assert element_amplitude("Xx") == element_amplitude("C")
    assert element_bfactor("C") == pytest.approx(np.dot(a, b) / np.sum(a))
    assert 15.0 < element_bfactor("C") < 19.0
    model = AtomModel([[0, 0, 0], [1, 0, 0]], ["C", "O"], [0.0, 40.0], [1.0, 0.5])
    expected_sigma = np.sqrt((np.array([0.0, 40.0]) + [element_bfactor("C"), element_bfactor("O")])
                             / (8 * np.pi ** 2))
    np.testing.assert_allclose(model.sigmas(), expected_sigma)
    np.testing.assert_allclose(model.amplitudes(),
                               [element_amplitude("C"), 0.5 * element_amplitude("O")])


def test_atom_model_validates_shapes():
    with pytest.raises(ShapeError):
        AtomModel(np.zeros((3, 2)), ["C"] * 3)
    with pytest.raises(ShapeError):
        AtomModel(np.zeros((3, 3)), ["C"] * 2)
    with pytest.raises(InvalidDataError):
        AtomModel(np.zeros((1, 3)), ["C"], [-1.0])


def test_single_atom_lands_at_expected_voxel_and_pixel():
    model = AtomModel([[2.0, -3.0, 5.0]], ["C"], [200.0])
    volume = gaussian_atom_volume(model, 32, 1.0, center=np.zeros(3))
    assert np.unravel_index(np.argmax(volume), volume.shape) == (16 + 5, 16 - 3, 16 + 2)
    image = gaussian_atom_projection(model, np.eye(3), 32, 1.0, center=np.zeros(3))[0]
    assert np.unravel_index(np.argmax(image), image.shape) == (16 - 3, 16 + 2)
    # Both are amplitude per voxel / pixel: they sum to the atom's amplitude.
    assert volume.sum() == pytest.approx(element_amplitude("C"), rel=1e-7)
    assert image.sum() == pytest.approx(element_amplitude("C"), rel=1e-7)


@pytest.mark.parametrize("voxel_size", [0.8, 1.3])
def test_identity_projection_equals_z_sum_of_sampled_volume(voxel_size):
    # B from 80 Å² up keeps sigma >= 1 voxel (sigma^2 >= (80 + ~12) / 79 Å²) for these sizes.
    model = blob(600, 3.5, 1, (80.0 * voxel_size ** 2, 200.0))
    assert model.sigmas().min() / voxel_size >= 1.0
    box = 64
    # Every Gaussian's evaluation window lies inside the box, so no mass leaves along z.
    reach = np.abs(model.positions - model.centroid()).max() + 6 * model.sigmas().max()
    assert reach < (box // 2 - 1) * voxel_size
    volume = gaussian_atom_volume(model, box, voxel_size)
    image = gaussian_atom_projection(model, np.eye(3), box, voxel_size)[0]
    assert relative_l2(volume.sum(axis=0), image) < 1e-6
    assert volume.sum() == pytest.approx(model.amplitudes().sum(), rel=1e-6)


def test_rotated_projection_equals_projection_of_rotated_atoms():
    model = blob(300, 4.0, 2, (40.0, 120.0))
    rotation = euler_to_matrix(37.0, 71.0, -122.0)
    center = model.centroid()
    rotated = AtomModel((model.positions - center) @ rotation.T + center, model.elements,
                        model.bfactors, model.occupancies)
    a = gaussian_atom_projection(model, rotation, 40, 1.0)
    b = gaussian_atom_projection(rotated, np.eye(3), 40, 1.0, center=center)
    assert relative_l2(a, b) < 1e-12


def test_projection_batch_and_shift_convention():
    model = blob(200, 3.0, 3, (60.0, 100.0))
    rotations = random_rotations(3, np.random.default_rng(0))
    shifts = np.array([[2.5, -1.0], [0.0, 3.0], [-4.0, 0.5]])
    batch = gaussian_atom_projection(model, rotations, 40, 1.2, shift=shifts)
    assert batch.shape == (3, 40, 40)
    for i in range(3):
        single = gaussian_atom_projection(model, rotations[i], 40, 1.2, shift=shifts[i])[0]
        assert relative_l2(batch[i], single) < 1e-12
        # A shift (tx, ty) in pixels is the rotated model translated by (tx, ty) * pixel_size.
        center = model.centroid()
        moved = AtomModel((model.positions - center) @ rotations[i].T
                          + np.append(shifts[i] * 1.2, 0.0), model.elements, model.bfactors,
                          model.occupancies)
        reference = gaussian_atom_projection(moved, np.eye(3), 40, 1.2, center=np.zeros(3))[0]
        assert relative_l2(batch[i], reference) < 1e-12
    unshifted = gaussian_atom_projection(model, rotations[0], 40, 1.2)[0]
    def centroid_x(image):
        return (image.sum(axis=0) * np.arange(40)).sum() / image.sum()
    # Positive tx moves the density to larger x index.
    assert centroid_x(batch[0]) - centroid_x(unshifted) == pytest.approx(2.5, abs=1e-3)


def test_volume_of_ten_thousand_atoms_is_fast():
    import time
    model = blob(10000, 12.0, 4, (20.0, 60.0))
    gaussian_atom_volume(model, 16, 1.0)  # compile outside the timing
    start = time.perf_counter()
    volume = gaussian_atom_volume(model, 128, 1.0)
    assert time.perf_counter() - start < 5.0
    assert volume.sum() == pytest.approx(model.amplitudes().sum(), rel=1e-4)


def test_projection_matches_xmipp_fourier_projector():
    model = random_protein_phantom(800, 13.0, rng=3, bfactor=150.0)
    box, pixel_size = 64, 1.0
    volume = gaussian_atom_volume(model, box, pixel_size)
    angles = np.array([(0.0, 0.0, 0.0), (30.0, 50.0, 70.0), (-100.0, 120.0, 10.0), (45.0, 90.0, 0.0)])
    xmipp = xmipp_projections(volume, angles)
    for image, angle in zip(xmipp, angles):
        ours = gaussian_atom_projection(model, euler_to_matrix(*angle), box, pixel_size)[0]
        assert relative_l2(image, ours) < 2e-2
        # A y-flip would pass a loose test by symmetry; it must fail this one.
        assert relative_l2(image, ours[::-1]) > 0.2


PDB_TEXT = """\
HEADER    TEST
ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00 20.00           N
ATOM      2  CA  ALA A   1      11.639   6.071  -5.147  1.00 21.50           C
ATOM      3  H   ALA A   1      10.500   6.000  -6.900  1.00 20.00           H
HETATM    4 FE   HEM A   2       1.000   2.000   3.000  0.50 30.00          FE
HETATM    5  O   HOH A   3       5.000   5.000   5.000  1.00 40.00           O
END
"""

CIF_TEXT = """\
data_test
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.label_entity_id
_atom_site.label_seq_id
_atom_site.pdbx_PDB_ins_code
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.B_iso_or_equiv
_atom_site.auth_seq_id
_atom_site.auth_comp_id
_atom_site.auth_asym_id
_atom_site.auth_atom_id
_atom_site.pdbx_PDB_model_num
ATOM   1 N  N   . ALA A 1 1 ? 11.104 6.134 -6.504 1.00 20.00 1 ALA A N   1
ATOM   2 C  CA  . ALA A 1 1 ? 11.639 6.071 -5.147 1.00 21.50 1 ALA A CA  1
ATOM   3 H  H   . ALA A 1 1 ? 10.500 6.000 -6.900 1.00 20.00 1 ALA A H   1
HETATM 4 FE FE  . HEM B 2 . ? 1.000 2.000 3.000 0.50 30.00 2 HEM A FE  1
HETATM 5 O  O   . HOH C 3 . ? 5.000 5.000 5.000 1.00 40.00 3 HOH A O   1
"""


@pytest.mark.parametrize("name, text", [("model.pdb", PDB_TEXT), ("model.cif", CIF_TEXT),
                                        ("model.txt", CIF_TEXT)])
def test_read_atomic_model_skips_hydrogens_and_waters(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    model = read_atomic_model(path)
    np.testing.assert_allclose(model.positions, [[11.104, 6.134, -6.504],
                                                 [11.639, 6.071, -5.147],
                                                 [1.0, 2.0, 3.0]], atol=1e-3)
    assert list(model.elements) == ["N", "C", "Fe"]
    np.testing.assert_allclose(model.bfactors, [20.0, 21.5, 30.0])
    np.testing.assert_allclose(model.occupancies, [1.0, 1.0, 0.5])
    everything = read_atomic_model(path, skip_hydrogens=False, skip_waters=False)
    assert list(everything.elements) == ["N", "C", "H", "Fe", "O"]


def test_read_atomic_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_atomic_model(tmp_path / "missing.pdb")
    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    with pytest.raises(InvalidDataError, match="empty"):
        read_atomic_model(empty)
    no_atoms = tmp_path / "remarks.pdb"
    no_atoms.write_text("REMARK nothing here\nEND\n")
    with pytest.raises(InvalidDataError, match="no atoms"):
        read_atomic_model(no_atoms)
    only_water = tmp_path / "water.pdb"
    only_water.write_text(PDB_TEXT.splitlines()[5] + "\nEND\n")
    with pytest.raises(InvalidDataError, match="no atoms left"):
        read_atomic_model(only_water)


@pytest.mark.parametrize("name, text", [("model.pdb", PDB_TEXT), ("model.cif", CIF_TEXT)])
def test_cheap_model_check_accepts_what_the_reader_reads(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    check_atomic_model_file(path)
    zipped = tmp_path / (name + ".gz")
    with gzip.open(zipped, "wt") as handle:
        handle.write(text)
    check_atomic_model_file(zipped)
    assert read_atomic_model(zipped).n_atoms == read_atomic_model(path).n_atoms > 0


def test_cheap_model_check_accepts_mmcif_rows_in_any_column_order(tmp_path):
    header, rows = CIF_TEXT.split("ATOM", 1)
    rows = ("ATOM" + rows).splitlines()
    names = header.splitlines()[2:]
    # _atom_site.id first: the atom rows now start with a number.
    reordered = "\n".join(["data_test", "loop_"] + names[1:] + names[:1] + [
        " ".join(row.split()[1:] + row.split()[:1]) for row in rows]) + "\n"
    path = tmp_path / "reordered.cif"
    path.write_text(reordered)
    assert not any(line.startswith(("ATOM", "HETATM")) for line in reordered.splitlines())
    check_atomic_model_file(path)
    original = tmp_path / "original.cif"
    original.write_text(CIF_TEXT)
    np.testing.assert_array_equal(read_atomic_model(path).positions,
                                  read_atomic_model(original).positions)


def test_cheap_model_check_refuses_what_the_reader_refuses(tmp_path):
    empty, remarks = tmp_path / "empty.pdb", tmp_path / "remarks.pdb"
    binary, broken = tmp_path / "map.pdb", tmp_path / "broken.pdb.gz"
    empty.write_text("")
    remarks.write_text("REMARK nothing here\nEND\n")
    binary.write_bytes(np.arange(4096, dtype=np.float32).tobytes())
    broken.write_bytes(b"not gzip at all")
    cases = [(tmp_path / "missing.pdb", FileNotFoundError, "not found"),
             (empty, InvalidDataError, "empty"),
             (remarks, InvalidDataError, "no ATOM or HETATM record"),
             (binary, InvalidDataError, "not a text file"), (broken, InvalidDataError, "cannot read")]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            check_atomic_model_file(path)
        with pytest.raises(error):
            read_atomic_model(path)


def test_model_radius_is_the_farthest_atom_from_the_centroid():
    positions = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0], [2.0, 2.0, 7.0], [2.0, 2.0, -1.0]])
    model = AtomModel(positions, ["C"] * 4)
    np.testing.assert_allclose(model.centroid(), [2.0, 2.0, 3.0])
    assert model.radius() == pytest.approx(4.0)


def test_random_protein_phantom_is_compact_asymmetric_and_deterministic():
    model = random_protein_phantom(2000, 20.0, rng=5)
    assert model.n_atoms == 2000
    np.testing.assert_allclose(model.centroid(), 0.0, atol=1e-9)
    assert np.linalg.norm(model.positions, axis=1).max() <= 20.0 + 1e-9
    # Compact: the radius of gyration is a good fraction of the radius.
    assert 6.0 < np.sqrt(np.mean(np.sum(model.positions ** 2, axis=1))) < 16.0
    # Asymmetric: distinct principal moments and a non-zero third moment.
    moments = np.linalg.eigvalsh(model.positions.T @ model.positions / model.n_atoms)
    assert np.min(np.diff(moments) / moments[1:]) > 0.15
    _, axes = np.linalg.eigh(model.positions.T @ model.positions)
    skew = np.mean((model.positions @ axes) ** 3, axis=0)
    assert np.max(np.abs(skew)) > 5.0
    assert set(model.elements) == {"C", "N", "O", "S"}
    again = random_protein_phantom(2000, 20.0, rng=5)
    np.testing.assert_array_equal(model.positions, again.positions)
    np.testing.assert_array_equal(model.elements, again.elements)
    other = random_protein_phantom(2000, 20.0, rng=6)
    assert not np.allclose(model.positions, other.positions)


@pytest.mark.parametrize("order", [1, 2, 5])
def test_cyclic_phantom_is_symmetric_about_z(order):
    per = 150
    model = cyclic_phantom(order, atoms_per_subunit=per, radius_angstrom=25.0, rng=2)
    assert model.n_atoms == order * per
    assert np.linalg.norm(model.positions[:, :2], axis=1).max() <= 25.0 + 1e-9
    step = euler_to_matrix(0.0, 0.0, -360.0 / order)  # active rotation by +360/n about z
    np.testing.assert_allclose(step @ [1.0, 0.0, 0.0],
                               [np.cos(2 * np.pi / order), np.sin(2 * np.pi / order), 0.0],
                               atol=1e-12)
    rotated = model.positions @ step.T
    # Copy k rotated by one step is copy k + 1.
    np.testing.assert_allclose(np.roll(rotated, per, axis=0), model.positions, atol=1e-9)
    if order > 1:
        # Subunits do not overlap: nearest atoms of different copies are apart.
        first, second = model.positions[:per], model.positions[per:2 * per]
        gaps = np.linalg.norm(first[:, None] - second[None], axis=-1)
        assert gaps.min() > 0.5
        # The volume has the same symmetry.
        volume = gaussian_atom_volume(model, 64, 1.0, center=np.zeros(3))
        turned = gaussian_atom_volume(AtomModel(rotated, model.elements, model.bfactors),
                                      64, 1.0, center=np.zeros(3))
        assert relative_l2(turned, volume) < 1e-12


def test_two_state_phantom_moves_one_domain_rigidly():
    a, b = two_state_phantom(1000, 20.0, rng=4, domain_fraction=0.3, hinge_angle_deg=30.0)
    np.testing.assert_array_equal(a.elements, b.elements)
    moved = np.any(np.abs(a.positions - b.positions) > 1e-9, axis=1)
    assert abs(moved.mean() - 0.3) < 0.01
    displacement = np.linalg.norm(a.positions - b.positions, axis=1)
    assert displacement[moved].max() > 3.0
    # Rigid: distances inside the domain and inside the rest are unchanged.
    for part in (moved, ~moved):
        pa, pb = a.positions[part], b.positions[part]
        da = np.linalg.norm(pa[:, None] - pa[None], axis=-1)
        db = np.linalg.norm(pb[:, None] - pb[None], axis=-1)
        np.testing.assert_allclose(da, db, atol=1e-9)
    _, b2 = two_state_phantom(1000, 20.0, rng=4, domain_fraction=0.3, hinge_angle_deg=30.0)
    np.testing.assert_array_equal(b.positions, b2.positions)


def test_phantom_states_choose_the_phantom():
    seed = np.random.SeedSequence([7, 0])
    plain, none = phantom_states(600, 18.0, seed)
    assert none is None
    np.testing.assert_array_equal(plain.positions,
                                  random_protein_phantom(600, 18.0, np.random.SeedSequence([7, 0]))
                                  .positions)
    cyclic, _ = phantom_states(600, 18.0, seed, symmetry_order=7)
    assert cyclic.n_atoms == 7 * (600 // 7)
    reference = cyclic_phantom(7, 600 // 7, 18.0, np.random.SeedSequence([7, 0]))
    np.testing.assert_array_equal(cyclic.positions, reference.positions)
    state_a, state_b = phantom_states(600, 18.0, seed, moving_fraction=0.25, hinge_angle_deg=20.0)
    ref_a, ref_b = two_state_phantom(600, 18.0, np.random.SeedSequence([7, 0]),
                                     domain_fraction=0.25, hinge_angle_deg=20.0)
    np.testing.assert_array_equal(state_a.positions, ref_a.positions)
    np.testing.assert_array_equal(state_b.positions, ref_b.positions)
    # The first state of the moving phantom is the plain phantom of the same seed.
    np.testing.assert_array_equal(state_a.positions, plain.positions)
    with pytest.raises(InvalidDataError, match="asymmetric phantom only"):
        phantom_states(600, 18.0, seed, symmetry_order=3, moving_fraction=0.25)
    with pytest.raises(InvalidDataError, match="at least 5 atoms"):
        phantom_states(4, 18.0, seed, symmetry_order=5)


def test_max_radius_keeps_the_phantom_map_inside_the_box():
    box, pixel = 40, 1.5
    radius = max_radius(box, pixel)
    assert radius == pytest.approx(0.45 * box * pixel)
    model = random_protein_phantom(800, radius, rng=3)
    volume = gaussian_atom_volume(model, box, pixel)
    # Nearly all the density lands in the box (the map sums to the atoms' amplitude).
    assert volume.sum() == pytest.approx(model.amplitudes().sum(), rel=2e-3)
