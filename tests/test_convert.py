"""Scipion <-> array conversion: poses, CTF, particles, volumes, micrographs.

The pose tests compare against pwem's own ``euler_matrix`` /
``euler_from_matrix`` (the Xmipp ``matrixFromGeometry`` recipe), not against
the converter itself.
"""
import numpy as np
import pytest
from pwem.constants import ALIGN_2D, ALIGN_NONE, ALIGN_PROJ
from pwem.convert.transformations import euler_from_matrix, euler_matrix
from pwem.objects import Acquisition, SetOfMicrographs, SetOfParticles, Volume
from pwem.protocols import EMProtocol

from cryohess_plugin import convert
from cryohess_plugin.constants import CONFORMATION, DEFOCUS_GROUP
from cryohess_plugin.core import mrc
from cryohess_plugin.core.ctf import CTFParams, evaluate_ctf
from cryohess_plugin.core.errors import (InvalidDataError, MissingMetadataError,
                                         SamplingMismatchError)
from cryohess_plugin.core.rotations import euler_to_matrix

RNG = np.random.default_rng(7)
ANGLES = np.column_stack([RNG.uniform(-180, 180, 12), RNG.uniform(1, 179, 12),
                          RNG.uniform(-180, 180, 12)])
XMIPP_SHIFTS = RNG.uniform(-6, 6, (12, 2))


def xmipp_geometry_matrix(angles, shifts, inverse):
    """Xmipp's ``matrixFromGeometry``, written with pwem's euler_matrix."""
    matrix = euler_matrix(*(-np.deg2rad(angles)), "szyz")
    shift3 = np.array([shifts[0], shifts[1], 0.0])
    if inverse:
        matrix[:3, 3] = -shift3
        return np.linalg.inv(matrix)
    matrix[:3, 3] = shift3
    return matrix


def xmipp_geometry_from_matrix(matrix, inverse):
    """Xmipp's ``geometryFromMatrix``: rotation matrix of the angles and shifts."""
    if inverse:
        matrix = np.linalg.inv(matrix)
        shifts = -matrix[:3, 3]
    else:
        shifts = matrix[:3, 3]
    angles = -np.rad2deg(euler_from_matrix(matrix, axes="szyz"))
    return euler_matrix(*(-np.deg2rad(angles)), "szyz")[:3, :3], shifts


@pytest.fixture
def protocol(tmp_path):
    return EMProtocol(workingDir=str(tmp_path))


# --------------------------- Poses ---------------------------------------------

@pytest.mark.parametrize("angles", ANGLES)
def test_core_rotation_is_pwem_euler_block(angles):
    """R of the core equals the rotation block of euler_matrix(-rot, -tilt, -psi, 'szyz')."""
    reference = euler_matrix(*(-np.deg2rad(angles)), "szyz")[:3, :3]
    np.testing.assert_allclose(euler_to_matrix(*angles), reference, atol=1e-12)


@pytest.mark.parametrize("index", range(len(ANGLES)))
def test_align_proj_matches_xmipp_geometry(index):
    angles, s = ANGLES[index], XMIPP_SHIFTS[index]
    rotation = euler_to_matrix(*angles)
    stored = convert.matrix_from_pose(rotation, -s, ALIGN_PROJ)
    np.testing.assert_allclose(stored, xmipp_geometry_matrix(angles, s, inverse=True),
                               atol=1e-12)
    # Explicit form: T = [[R^T, -R^T t], [0, 1]] with t = -s.
    np.testing.assert_allclose(stored[:3, :3], rotation.T, atol=1e-12)
    np.testing.assert_allclose(stored[:3, 3], rotation.T @ np.append(s, 0.0), atol=1e-12)
    back_rotation, back_shifts = xmipp_geometry_from_matrix(stored, inverse=True)
    np.testing.assert_allclose(back_rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(back_shifts, np.append(s, 0.0), atol=1e-9)


@pytest.mark.parametrize("index", range(len(ANGLES)))
def test_align_proj_round_trip(index):
    rotation = euler_to_matrix(*ANGLES[index])
    shift = -XMIPP_SHIFTS[index]
    transform = convert.transform_from_pose(rotation, shift, ALIGN_PROJ)
    back_rotation, back_shift = convert.pose_from_transform(transform, ALIGN_PROJ)
    np.testing.assert_allclose(back_rotation, rotation, atol=1e-12)
    np.testing.assert_allclose(back_shift, shift, atol=1e-12)
    reference = xmipp_geometry_matrix(ANGLES[index], XMIPP_SHIFTS[index], inverse=True)
    rotation_ref, shift_ref = convert.pose_from_transform(reference, ALIGN_PROJ)
    np.testing.assert_allclose(rotation_ref, rotation, atol=1e-12)
    np.testing.assert_allclose(shift_ref, shift, atol=1e-12)


@pytest.mark.parametrize("index", range(len(ANGLES)))
def test_align_2d_matches_xmipp_geometry(index):
    psi, s = ANGLES[index, 2], XMIPP_SHIFTS[index]
    rotation = euler_to_matrix(0.0, 0.0, psi)
    stored = convert.matrix_from_pose(rotation, -s, ALIGN_2D)
    np.testing.assert_allclose(stored, xmipp_geometry_matrix([0.0, 0.0, psi], s, inverse=False),
                               atol=1e-12)
    back_rotation, back_shift = convert.pose_from_transform(stored, ALIGN_2D)
    np.testing.assert_allclose(back_rotation, rotation, atol=1e-12)
    np.testing.assert_allclose(back_shift, -s, atol=1e-12)
    rotation_ref, shifts_ref = xmipp_geometry_from_matrix(stored, inverse=False)
    np.testing.assert_allclose(rotation_ref, rotation, atol=1e-9)
    np.testing.assert_allclose(shifts_ref[:2], s, atol=1e-12)


def test_pose_rejects_other_alignment_types():
    with pytest.raises(ValueError):
        convert.matrix_from_pose(np.eye(3), (0, 0), ALIGN_NONE)
    with pytest.raises(ValueError):
        convert.pose_from_transform(np.eye(4), ALIGN_NONE)


# --------------------------- CTF -----------------------------------------------

CTF_CASES = [
    CTFParams(15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1),
    CTFParams(12000.0, 13000.0, 170.0, 200.0, 2.0, 0.07, phase_shift=45.0),
    CTFParams(9000.0, 9000.0, -20.0, 300.0, 0.01, 0.0),
]


@pytest.mark.parametrize("params", CTF_CASES)
def test_ctf_round_trip_describes_same_ctf(params):
    ctf = convert.ctf_model_from_params(params)
    assert ctf.getDefocusU() >= ctf.getDefocusV()
    assert 0.0 <= ctf.getDefocusAngle() < 180.0
    acquisition = convert.acquisition_from_params(params)
    from pwem.objects import Particle
    particle = Particle()
    particle.setCTF(ctf)
    back = convert.ctf_params_from_image(particle, acquisition)
    assert back.voltage == params.voltage
    assert back.spherical_aberration == params.spherical_aberration
    assert back.amplitude_contrast == params.amplitude_contrast
    assert back.phase_shift == params.phase_shift
    ky, kx = np.meshgrid(np.arange(-32, 32), np.arange(0, 33), indexing="ij")
    np.testing.assert_allclose(evaluate_ctf(back, kx, ky, 64, 1.2),
                               evaluate_ctf(params, kx, ky, 64, 1.2), atol=1e-9)


def test_ctf_missing_is_reported():
    from pwem.objects import Particle
    with pytest.raises(MissingMetadataError):
        convert.ctf_params_from_image(Particle(), Acquisition(voltage=300.0))


@pytest.mark.parametrize("defocus", [0.0, -100.0])
def test_unestimated_defocus_is_refused_naming_the_particle(defocus):
    from pwem.objects import Particle
    params = CTFParams(defocus, defocus, 0.0, 300.0, 2.7, 0.1)
    particle = Particle(location=(3, 'stack.mrcs'))
    particle.setObjId(7)
    particle.setCTF(convert.ctf_model_from_params(params))
    with pytest.raises(InvalidDataError, match=r"3@stack.mrcs \(id 7\).*estimate the CTF"):
        convert.ctf_params_from_image(particle, convert.acquisition_from_params(params))
    # In-focus imaging with a phase plate is a valid CTF.
    particle.setCTF(convert.ctf_model_from_params(CTFParams(0.0, 0.0, 0.0, 300.0, 2.7, 0.1,
                                                            phase_shift=90.0)))
    assert convert.ctf_params_from_image(particle, convert.acquisition_from_params(params))


# --------------------------- Particles -----------------------------------------

def _write_particles(protocol, tmp_path, count=6, box=16, alignment=ALIGN_PROJ, with_ctf=True):
    images = RNG.standard_normal((count, box, box)).astype(np.float32)
    stack = str(tmp_path / "particles.mrcs")
    mrc.write_stack(stack, images, 1.5)
    rotations = euler_to_matrix(*ANGLES[:count].T)
    if alignment == ALIGN_2D:
        rotations = euler_to_matrix(0.0, 0.0, ANGLES[:count, 2])
    shifts = -XMIPP_SHIFTS[:count]
    ctfs = [CTFParams(10000.0 + 500 * i, 9500.0 + 400 * i, 10.0 * i, 300.0, 2.7, 0.1)
            for i in range(count)] if with_ctf else None
    columns = {CONFORMATION: RNG.uniform(0, 1, count),
               DEFOCUS_GROUP: np.arange(count) % 3,
               "_cryohess_vector": RNG.standard_normal((count, 3))}
    partSet = convert.arrays_to_particles(protocol, stack, 1.5, rotations=rotations,
                                          shifts=shifts, ctfs=ctfs, alignment=alignment,
                                          columns=columns)
    partSet.write()
    filename = partSet.getFileName()
    partSet.close()
    reopened = SetOfParticles(filename=filename)
    reopened.loadAllProperties()
    return reopened, images, rotations, shifts, ctfs, columns


def test_particles_round_trip(protocol, tmp_path):
    partSet, images, rotations, shifts, ctfs, columns = _write_particles(protocol, tmp_path)
    assert partSet.getSize() == len(images)
    assert partSet.hasCTF() and partSet.hasAlignmentProj()
    assert partSet.getSamplingRate() == 1.5
    arrays = convert.particles_to_arrays(partSet, need_ctf=True, need_alignment=True,
                                         columns=list(columns))
    np.testing.assert_array_equal(arrays.images, images)
    assert arrays.pixel_size == 1.5 and arrays.alignment == ALIGN_PROJ
    np.testing.assert_array_equal(arrays.ids, np.arange(1, len(images) + 1))
    np.testing.assert_allclose(arrays.rotations, rotations, atol=1e-9)
    np.testing.assert_allclose(arrays.shifts, shifts, atol=1e-9)
    ky, kx = np.meshgrid(np.arange(-8, 8), np.arange(0, 9), indexing="ij")
    for back, original in zip(arrays.ctfs, ctfs):
        np.testing.assert_allclose(evaluate_ctf(back, kx, ky, 16, 1.5),
                                   evaluate_ctf(original, kx, ky, 16, 1.5), atol=1e-9)
    np.testing.assert_allclose(arrays.columns[CONFORMATION], columns[CONFORMATION])
    np.testing.assert_array_equal(arrays.columns[DEFOCUS_GROUP], columns[DEFOCUS_GROUP])
    np.testing.assert_allclose(arrays.columns["_cryohess_vector"], columns["_cryohess_vector"])


def test_particles_round_trip_2d(protocol, tmp_path):
    partSet, _, rotations, shifts, _, _ = _write_particles(protocol, tmp_path,
                                                           alignment=ALIGN_2D, with_ctf=False)
    assert partSet.getAlignment() == ALIGN_2D and not partSet.hasCTF()
    arrays = convert.particles_to_arrays(partSet, need_alignment=ALIGN_2D)
    np.testing.assert_allclose(arrays.rotations, rotations, atol=1e-9)
    np.testing.assert_allclose(arrays.shifts, shifts, atol=1e-9)
    assert arrays.ctfs is None


def test_particles_missing_metadata(protocol, tmp_path):
    partSet, *_ = _write_particles(protocol, tmp_path, alignment=ALIGN_2D, with_ctf=False)
    with pytest.raises(MissingMetadataError, match="CTF"):
        convert.particles_to_arrays(partSet, need_ctf=True)
    with pytest.raises(MissingMetadataError, match="Projection"):
        convert.particles_to_arrays(partSet, need_alignment=ALIGN_PROJ)
    assert convert.particles_to_arrays(partSet, need_alignment=False).rotations is None


def test_arrays_to_particles_rejects_mismatched_lengths(protocol, tmp_path):
    stack = str(tmp_path / "p.mrcs")
    mrc.write_stack(stack, np.zeros((3, 8, 8), np.float32), 1.0)
    with pytest.raises(Exception, match="lengths"):
        convert.arrays_to_particles(protocol, stack, 1.0, rotations=np.tile(np.eye(3), (3, 1, 1)),
                                    columns={CONFORMATION: np.zeros(2)})


# --------------------------- Volumes, micrographs, coordinates -------------------

def test_volume_round_trip_and_sampling_check(tmp_path):
    array = RNG.standard_normal((12, 12, 12)).astype(np.float32)
    volume = convert.array_to_volume(str(tmp_path / "v.mrc"), array, 2.0)
    assert isinstance(volume, Volume)
    back, voxel = convert.volume_to_array(volume, pixel_size=2.0)
    np.testing.assert_array_equal(back, array)
    assert voxel == 2.0
    with pytest.raises(SamplingMismatchError, match="pixel size"):
        convert.volume_to_array(volume, pixel_size=1.0)


def test_micrographs_and_coordinates_round_trip(protocol, tmp_path):
    paths, arrays = [], []
    for i in range(2):
        path = str(tmp_path / f"mic_{i}.mrc")
        arrays.append(RNG.standard_normal((40, 48)).astype(np.float32))
        mrc.write_stack(path, arrays[-1][None], 2.0)
        paths.append(path)
    micSet = convert.arrays_to_micrographs(protocol, paths, 2.0,
                                           Acquisition(voltage=300.0, sphericalAberration=2.7,
                                                       amplitudeContrast=0.1))
    micSet.write()
    positions = [np.array([[10, 12], [30, 20]]), np.array([[24, 24]])]
    coordSet = convert.arrays_to_coordinates(protocol, micSet, positions, 16)
    coordSet.write()
    assert coordSet.getSize() == 3 and coordSet.getBoxSize() == 16
    micFile = micSet.getFileName()
    micSet.close()
    reopened = SetOfMicrographs(filename=micFile)
    reopened.loadAllProperties()
    back, ids, pixel = convert.micrographs_to_arrays(reopened)
    assert pixel == 2.0 and list(ids) == [1, 2]
    for original, read in zip(arrays, back):
        np.testing.assert_array_equal(read, original)
    centres = convert.coordinates_to_arrays(coordSet)
    np.testing.assert_array_equal(centres[1], positions[0])
    np.testing.assert_array_equal(centres[2], positions[1])


def test_particles_metadata_only_and_limit(protocol, tmp_path):
    partSet, images, rotations, *_ = _write_particles(protocol, tmp_path)
    metadata = convert.particles_to_arrays(partSet, read_images=False)
    assert metadata.images is None
    np.testing.assert_allclose(metadata.rotations, rotations, atol=1e-9)
    first = convert.particles_to_arrays(partSet, need_alignment=False, limit=2)
    np.testing.assert_array_equal(first.images, images[:2])
    np.testing.assert_array_equal(first.ids, [1, 2])
