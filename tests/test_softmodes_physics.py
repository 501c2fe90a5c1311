"""What the soft modes say about an experiment, on a small phantom.

The behaviours of docs/methods/hessian_soft_modes.md §6 ("Physics"), and the convergence
of the eigensolver where the spectrum is hardest: a polar cap of views, whose missing cone
is a null space and whose soft end is a cluster of near-degenerate pairs.  Every mode
below converges to a relative residual of 1e-3.
"""
import numpy as np
import pytest

from cryohess_plugin.core.synthetic import atoms, phantoms, simulate
from cryohess_plugin.core.ctf import CTFParams
from cryohess_plugin.core.softmodes import (analyse_soft_modes, experiment_from_distribution,
                                            experiment_from_poses)


@pytest.fixture(scope="module")
def phantom():
    """Box-32 asymmetric Gaussian-atom phantom at 2.5 Å/px; 2πK = 12 at 20.9 Å."""
    model = phantoms.random_protein_phantom(800, 25.0, rng=1)
    return atoms.gaussian_atom_volume(model, 32, 2.5), 2.5, 32 * 2.5 / (12 / np.pi)


@pytest.fixture(scope="module")
def polar_and_uniform(phantom):
    volume, pixel, resolution = phantom
    return {kind: analyse_soft_modes(volume, pixel, experiment_from_distribution(
                kind, 1000, spread_deg=15, pixel_size=pixel), resolution, n_modes=3,
                log_determinant=None,
                backend="cpu")
            for kind in ("uniform", "polar")}


def test_polar_views_are_much_softer_than_uniform_views(polar_and_uniform):
    uniform, polar = polar_and_uniform["uniform"], polar_and_uniform["polar"]
    assert uniform.max_degree == 12
    assert np.isclose(uniform.n_images, 1000) and np.isclose(polar.n_images, 1000)
    assert uniform.converged.all() and polar.converged.all()
    # Measured, converged: 0.0998 / 9.0e-6 ≈ 11 000 (a fixed 60-step Lanczos run stopped at
    # an upper bound of 0.00025, ratio 400; the paper reports ≈ 25 for TRPV1 at 2πK = 48).
    assert uniform.eigenvalues[0] > 5 * polar.eigenvalues[0]
    assert polar.relative_change[0] > 5 * uniform.relative_change[0]


def test_polar_soft_mode_is_invisible_along_the_pole(polar_and_uniform):
    """Polar views measure the k_z = 0 slice: the soft mode's projection along z is small."""
    mode = polar_and_uniform["polar"].mode_volumes[0].astype(np.float64)
    along_z, along_y, along_x = (np.linalg.norm(mode.sum(axis=axis)) for axis in (0, 1, 2))
    # Measured: z / max(x, y) ≈ 0.09.
    assert along_z < 0.25 * max(along_x, along_y)
    # The uniform soft mode has no such blind axis.
    uniform = polar_and_uniform["uniform"].mode_volumes[0].astype(np.float64)
    projections = [np.linalg.norm(uniform.sum(axis=axis)) for axis in (0, 1, 2)]
    assert min(projections) > 0.3 * max(projections)
    # Poses move most where views are missing: the near-equatorial directions.
    polar = polar_and_uniform["polar"]
    assert np.all(np.isfinite(polar.pose_changes)) and polar.pose_changes.max() > 0


def test_larger_defocus_gives_larger_soft_eigenvalues_at_low_resolution():
    """The paper's "larger defocus stiffens the soft modes", at 30 Å (every defocus inside
    the CTF's first lobe, as at 2πK = 32; docs/methods/hessian_soft_modes.md §6).

    What our simulation shows: the softest modes live in the innermost shells, where the
    CTF is about the amplitude contrast whatever the defocus, so larger defocus raises the
    soft eigenvalues only slightly (measured mean of the 5 softest, converged: 0.004905,
    0.004932, 0.004955 at 10 000, 17 000, 23 000 Å).  The soft-subspace dimension
    does not shrink here.
    """
    model = phantoms.random_protein_phantom(2000, 45.0, rng=1)
    pixel = 4.0
    volume = atoms.gaussian_atom_volume(model, 32, pixel)
    means = []
    for defocus in (10000.0, 17000.0, 23000.0):
        experiment = experiment_from_distribution(
            "uniform", 1000, ctf_params=[CTFParams(defocus, defocus, 0, 300, 2.7, 0.1)],
            pixel_size=pixel)
        result = analyse_soft_modes(volume, pixel, experiment, 30.0, n_modes=5, backend="cpu",
                                    log_determinant=None)
        assert result.max_degree == 14
        means.append(result.eigenvalues.mean())
    assert means[0] < means[1] < means[2]


@pytest.fixture(scope="module")
def polar_cap(phantom):
    """3000 particles whose views lie within 30° of the pole, at 2πK = 24 (7139 real
    parameters): the default run and a long one (tolerance 1e-8, another start)."""
    volume, pixel, _ = phantom
    experiment = experiment_from_poses(simulate.sample_rotations("polar_cap", 3000, 1),
                                       pixel_size=pixel)
    resolution = 32 * pixel / (24 / np.pi)
    run = analyse_soft_modes(volume, pixel, experiment, resolution, n_modes=8, backend="cpu",
                             log_determinant=None)
    reference = analyse_soft_modes(volume, pixel, experiment, resolution, n_modes=8,
                                   backend="cpu", tolerance=1e-8, max_products=4000, rng=7,
                                   log_determinant=None)
    return run, reference


def test_polar_cap_modes_converge_and_the_missing_cone_is_a_null_space(polar_cap):
    """At 2πK = 24 every reported mode meets the residual tolerance; the components inside
    the missing cone are reported as a null space around the pole (measured: 1378 of 7139
    parameters, within 46° of z), with no ε; ε agrees with the long run to 5 % (measured
    1e-9); the near-degenerate pairs of the nearly axisymmetric cap are subspaces."""
    run, reference = polar_cap
    assert run.max_degree == 24 and run.n_parameters == 7139
    assert run.converged.all() and run.residuals.max() <= 1e-3
    assert np.all(np.isfinite(run.perturbation)) and np.all(run.perturbation > 0)
    assert 0.1 * run.n_parameters < run.null_dimension < 0.3 * run.n_parameters
    assert run.complement_dimension == run.n_parameters - run.null_dimension - 3
    assert abs(run.null_region_axis[2]) > np.cos(np.deg2rad(10))
    assert 30 < run.null_region_half_angle_deg < 60
    # The innermost shells (degree 2) are sampled; the null space grows with the degree.
    assert run.null_per_shell[0] == 0 and run.null_per_shell[-1] == run.null_per_shell.max() > 0
    count = min(len(run.eigenvalues), len(reference.eigenvalues))
    assert count >= 8 and reference.residuals.max() <= 1e-8
    np.testing.assert_allclose(run.perturbation[:count], reference.perturbation[:count],
                               rtol=0.05)
    assert len(set(run.clusters.tolist())) < len(run.clusters)
    text = "\n".join(run.spectrum_lines())
    assert "Null space: %d of 7139 Fourier components" % run.null_dimension in text
    assert "form one soft subspace" in text and "NOT CONVERGED" not in text
