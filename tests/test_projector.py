"""Fourier-slice projector against independent references.

References: analytic line integrals of Gaussian atoms, Xmipp's
FourierProjector, dot-product (adjoint) identities, central finite
differences, and exact circular shifts.
"""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms
from cryohess_plugin.core import ctf, rotations
from cryohess_plugin.core.errors import InvalidDataError, ShapeError
from cryohess_plugin.core.kernels import projector_cpu
from cryohess_plugin.core.projector import FourierSliceProjector, SliceOperator

from .xmipp_reference import XMIPP_BSPLINE3, xmipp_projections
from .helpers import phantom_model, relative_l2

BOX, PIXEL = 64, 1.5
# B = 400 Å² gives atoms of sigma ≈ 1.5 px: band-limited on this grid, so the
# analytic projection is the exact answer for any discrete projector.
BFACTOR = 400.0



@pytest.fixture(scope="module")
def phantom():
    # Atoms out to 0.3 box: a molecule that fills the box as real particles do.
    model = phantom_model(BOX, PIXEL, bfactor=BFACTOR)
    return model, atoms.gaussian_atom_volume(model, BOX, PIXEL)


def accuracy_poses():
    """Random poses plus the near-axis ones where trilinear+sinc² fails."""
    random = rotations.random_rotations(24, np.random.default_rng(7))
    near_axis = rotations.euler_to_matrix([0, 0, 17, 40, 0, 90, 30],
                                          [0, 1e-3, 0.5, 2.0, 90, 90, 180],
                                          [0, 0, 5, 300, 0, 0, 60])
    return np.concatenate([random, near_axis])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_projection_matches_analytic_gaussian_atoms(phantom, dtype):
    model, volume = phantom
    poses = accuracy_poses()
    ours = FourierSliceProjector(volume, dtype=dtype, backend="cpu").project(poses)
    reference = atoms.gaussian_atom_projection(model, poses, BOX, PIXEL)
    errors = np.array([relative_l2(a, b) for a, b in zip(ours, reference)])
    assert np.median(errors) <= 5e-3
    assert errors.max() <= 1e-2


def test_linear_kernel_overcorrects_on_axis(phantom):
    """Documents why cubic is the default: trilinear+sinc² errs most on axis."""
    model, volume = phantom
    axis = rotations.euler_to_matrix(0, 0, 0)
    linear = FourierSliceProjector(volume, interpolation="linear", dtype=np.float64, backend="cpu")
    error = relative_l2(linear.project(axis)[0],
                        atoms.gaussian_atom_projection(model, axis, BOX, PIXEL)[0])
    assert error > 1e-2


def test_projection_matches_xmipp_fourier_projector(phantom):
    _, volume = phantom
    rng = np.random.default_rng(11)
    angles = np.column_stack([rng.uniform(-180, 180, 8), np.degrees(np.arccos(rng.uniform(-1, 1, 8))),
                              rng.uniform(-180, 180, 8)])
    xmipp = xmipp_projections(volume, angles, interpolation=XMIPP_BSPLINE3)
    ours = FourierSliceProjector(volume, dtype=np.float64, backend="cpu").project(
        rotations.euler_to_matrix(*angles.T))
    for a, b in zip(ours, xmipp):
        assert relative_l2(a, b) <= 1e-2
        # A mirrored convention would also be "close" on a blob; it must not be.
        assert relative_l2(a[::-1], b) > 0.1


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_batches_equal_small_ones(interpolation, dtype):
    """Large batches visit samples cell by cell of the grid, small ones image by image."""
    rng = np.random.default_rng(4)
    box = 16
    operator = SliceOperator(box, interpolation=interpolation, dtype=dtype, backend="cpu")
    grid = operator.volume_to_grid(rng.normal(size=(box,) * 3))
    n, small = projector_cpu._SORT_BATCH + 40, 32
    assert small < projector_cpu._SORT_MIN_IMAGES
    poses = rotations.random_rotations(n, rng)
    # Corner frequencies put some taps outside the grid.
    hp = operator.half_plane
    kx = np.concatenate([hp.kx, [box / 2, -box / 2]])
    ky = np.concatenate([hp.ky, [box / 2, box / 2]])
    shifts = rng.normal(scale=2.0, size=(n, 2))
    ctf_values = rng.normal(size=(n, kx.size))
    batched = operator.slices(grid, poses, kx, ky, shifts, ctf_values)
    one_by_one = np.concatenate([
        operator.slices(grid, poses[i:i + small], kx, ky, shifts[i:i + small],
                        ctf_values[i:i + small]) for i in range(0, n, small)])
    np.testing.assert_array_equal(batched, one_by_one)


@pytest.mark.parametrize("box", [24, 25])
def test_backprojection_is_exact_adjoint(box):
    rng = np.random.default_rng(box)
    volume = rng.normal(size=(box,) * 3)
    n = 5
    poses = rotations.random_rotations(n, rng)
    shifts = rng.normal(scale=2.0, size=(n, 2))
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    ctf_values = rng.normal(size=(n, projector.half_plane.size))
    images = rng.normal(size=(n, box, box))
    forward = np.vdot(projector.project(poses, shifts, ctf_values), images)
    adjoint = np.vdot(volume, projector.backproject(images, poses, shifts, ctf_values))
    assert abs(forward - adjoint) <= 1e-10 * abs(forward)


def assert_derivatives_match(projector, poses, shifts, step, tolerance):
    analytic = projector.pose_derivatives(poses, shifts)
    for axis in range(3):
        omega = np.zeros(3)
        omega[axis] = step
        finite = (projector.project(rotations.perturb(poses, omega), shifts)
                  - projector.project(rotations.perturb(poses, -omega), shifts)) / (2 * step)
        for i in range(len(poses)):
            assert np.linalg.norm(finite[i]) > 0
            assert relative_l2(analytic.d_rotation[i, axis], finite[i]) <= tolerance
    for axis in range(2):
        delta = np.zeros(2)
        delta[axis] = step
        finite = (projector.project(poses, shifts + delta)
                  - projector.project(poses, shifts - delta)) / (2 * step)
        assert relative_l2(analytic.d_shift[:, axis], finite) <= tolerance


def test_cubic_pose_derivatives_match_finite_differences(phantom):
    _, volume = phantom
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    # The Keys kernel is C1, so the identity pose (all samples on grid nodes,
    # where floor/ceil corners would give a zero gradient) is included.
    poses = np.concatenate([rotations.random_rotations(2, np.random.default_rng(3)),
                            rotations.euler_to_matrix(0, 0, 0)[None]])
    shifts = np.array([[1.3, -0.7], [0.2, 2.1], [0.0, 0.0]])
    assert_derivatives_match(projector, poses, shifts, step=1e-6, tolerance=1e-5)


def test_linear_pose_derivatives_match_finite_differences(phantom):
    _, volume = phantom
    projector = FourierSliceProjector(volume, interpolation="linear", dtype=np.float64, backend="cpu")
    poses = rotations.random_rotations(2, np.random.default_rng(3))
    # Trilinear is only C0: tiny steps keep most samples inside one cell.
    assert_derivatives_match(projector, poses, np.array([[1.3, -0.7], [0.2, 2.1]]),
                             step=1e-8, tolerance=1e-3)


def test_linear_rotation_gradient_at_identity_is_not_zero(phantom):
    """Floor/ceil corners (the authors' code) give exactly zero here; f, f + 1 do not."""
    _, volume = phantom
    projector = FourierSliceProjector(volume, interpolation="linear", dtype=np.float64, backend="cpu")
    identity = rotations.euler_to_matrix(0, 0, 0)[None]
    analytic = projector.pose_derivatives(identity).d_rotation[0]
    step = 1e-6
    for axis in range(3):
        omega = np.zeros(3)
        omega[axis] = step
        central = (projector.project(rotations.perturb(identity, omega))
                   - projector.project(rotations.perturb(identity, -omega)))[0] / (2 * step)
        # On the kink the one-sided slope differs from the central one, but not in size.
        ratio = np.linalg.norm(analytic[axis]) / np.linalg.norm(central)
        assert 0.5 < ratio < 2.0


def test_top_view_in_plane_rotation_is_psi():
    """At tilt 0 a change of psi is the image-frame rotation about z (minus sign: passive)."""
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(16,) * 3)
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    pose = rotations.euler_to_matrix(20.0, 0.0, 30.0)
    d_psi = (projector.project(rotations.euler_to_matrix(20.0, 0.0, 30.0 + 1e-4))
             - projector.project(rotations.euler_to_matrix(20.0, 0.0, 30.0 - 1e-4))) / np.radians(2e-4)
    d_omega_z = projector.pose_derivatives(pose).d_rotation[0, 2]
    assert relative_l2(-d_omega_z, d_psi[0]) < 1e-5


def test_shift_moves_density_towards_positive_x(phantom):
    """An integer shift is an exact circular shift of the band-limited projection."""
    _, volume = phantom
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    pose = rotations.random_rotations(1, np.random.default_rng(2))
    centred = projector.project(pose)[0]
    shifted = projector.project(pose, shifts=[[3.0, -2.0]])[0]
    expected = np.roll(centred, (-2, 3), axis=(0, 1))
    assert np.abs(shifted - expected).max() <= 1e-10 * np.abs(centred).max()


def test_analytic_shift_convention_matches_projector(phantom):
    model, volume = phantom
    pose = rotations.euler_to_matrix(10.0, 60.0, -30.0)
    shift = np.array([[2.5, -1.25]])
    ours = FourierSliceProjector(volume, dtype=np.float64, backend="cpu").project(pose, shift)[0]
    reference = atoms.gaussian_atom_projection(model, pose, BOX, PIXEL, shift=shift)[0]
    assert relative_l2(ours, reference) <= 1e-2


def test_ctf_multiplier_equals_applying_ctf_to_projection(phantom):
    _, volume = phantom
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    params = ctf.CTFParams(defocus_u=15000.0, defocus_v=13000.0, defocus_angle=35.0,
                           voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.1)
    pose = rotations.euler_to_matrix(40.0, 70.0, 10.0)
    hp = projector.half_plane
    values = ctf.ctf_stack([params], hp.kx, hp.ky, BOX, PIXEL)
    with_ctf = projector.project(pose, ctf=values)[0]
    expected = ctf.apply_ctf(projector.project(pose)[0], params, PIXEL)
    assert relative_l2(with_ctf, expected) <= 1e-10


def test_polar_slices_agree_with_cartesian_samples(phantom):
    _, volume = phantom
    projector = FourierSliceProjector(volume, dtype=np.float64, backend="cpu")
    pose = rotations.random_rotations(2, np.random.default_rng(9))
    radii = np.arange(1, 20, dtype=float)
    polar = projector.project_polar(pose, radii, 8)
    cartesian = projector.project_fourier(pose)
    hp = projector.half_plane
    on_kx_axis = [np.flatnonzero((hp.kx == r) & (hp.ky == 0))[0] for r in radii]
    assert np.allclose(polar[:, :, 0], cartesian[:, on_kx_axis], rtol=1e-12, atol=0)
    # Opposite angles hold conjugate values because the volume is real.
    assert np.allclose(polar[:, :, 4], np.conj(polar[:, :, 0]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(16, 16, 15), (16, 16), (2, 16, 16, 16)])
def test_non_cubic_volume_is_refused(shape):
    with pytest.raises(ShapeError, match="cubic"):
        FourierSliceProjector(np.zeros(shape))


def test_nan_volume_is_refused():
    volume = np.zeros((8, 8, 8))
    volume[1, 2, 3] = np.nan
    with pytest.raises(InvalidDataError, match="1 NaN"):
        FourierSliceProjector(volume)


def test_nan_rotation_is_refused():
    projector = FourierSliceProjector(np.zeros((8, 8, 8)), backend="cpu")
    rotation = np.eye(3)
    rotation[0, 1] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        projector.project(rotation)


def test_images_of_another_box_are_refused():
    projector = FourierSliceProjector(np.zeros((8, 8, 8)), backend="cpu")
    with pytest.raises(ShapeError, match=r"\(n, 8, 8\)"):
        projector.backproject(np.zeros((2, 9, 9)), rotations.random_rotations(2, 0))


def test_volume_of_another_box_is_refused():
    projector = FourierSliceProjector(np.zeros((8, 8, 8)), backend="cpu")
    with pytest.raises(ShapeError, match="differs from the projector box"):
        projector.operator.volume_to_grid(np.zeros((9, 9, 9)))


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="interpolation"):
        FourierSliceProjector(np.zeros((8, 8, 8)), interpolation="sinc")
