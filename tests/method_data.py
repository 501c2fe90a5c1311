"""Numerical data the core tests of one method share, one section per method: the
hyper-molecule forward model's particles, the micrograph-EM model and micrographs, and the
soft-mode analysis' CTF groups and on-grid poses."""
import numpy as np

from cryohess_plugin.core import fourier, rotations
from cryohess_plugin.core import hypermolecules as hm
from cryohess_plugin.core.ctf import CTFParams, ctf_stack
from cryohess_plugin.core.micrograph_em import ProjectionOperator, SphericalBesselBasis
from cryohess_plugin.core.micrograph_em.projection import ctf_image
from cryohess_plugin.core.softmodes.experiment import hemisphere_grid
from cryohess_plugin.core.synthetic.simulate import simulate_micrographs

from .helpers import gaussian_blobs

# ---------------------------------------------------------------- hyper-molecules
HYPERMOLECULE_BOX, HYPERMOLECULE_PIXEL = 32, 2.0
HYPERMOLECULE_CTF = CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)


def model_with_volume(volume, band, dimension=0, order=1, interpolation="cubic"):
    model = hm.HyperMolecule([hm.Component("all", dimension)], order, volume.shape[0], band,
                             interpolation, "cpu")
    model.coefficients[0][0] = model.limit(hm.fourier_resample(volume, model.size))
    return model


def simulated_from_model(rng, n=300, box=HYPERMOLECULE_BOX, band=10.0, sigma=0.05,
                         dimension=1, order=2):
    """Particles drawn from the model itself: real-space white noise of known sigma."""
    volume = gaussian_blobs(box, rng.normal(scale=3.0, size=(6, 3)), np.full(6, 2.0), np.ones(6))
    model = model_with_volume(volume, band, dimension, order, "linear")
    model.coefficients[0][1] = 0.3 * model.coefficients[0][0]
    poses = rotations.random_rotations(n, rng)
    shifts = rng.normal(scale=1.0, size=(n, 2))
    tau = rng.random((n, dimension))
    contrast = np.exp(0.1 * rng.normal(size=n))
    plane = fourier.HalfPlane.disc(box, band)
    slices = model.slices(model.grids(), poses, plane.kx, plane.ky)
    weights = model.term_weights({0: tau}, contrast)
    ctf = ctf_stack([HYPERMOLECULE_CTF] * n, plane.kx, plane.ky, box, HYPERMOLECULE_PIXEL)
    spectra = ctf * fourier.shift_phase(np.stack([plane.kx, plane.ky], -1), shifts, box) \
        * np.einsum("nq,nqm->nm", weights, slices)
    images = plane.synthesize(spectra) + sigma * rng.standard_normal((n, box, box))
    data = hm.prepare_particles(images, [HYPERMOLECULE_CTF] * n, HYPERMOLECULE_PIXEL, band,
                                poses, shifts)
    return model, data, tau, contrast, shifts, sigma


# ---------------------------------------------------------------- micrograph EM
def micrograph_model_data(box=7, degree=5, snr=3.5, size=210, seed=1, ctf=False, pixel=2.5,
                          count=1):
    rng = np.random.default_rng(3)
    centres = rng.uniform(-1.6, 1.6, (4, 3)) * box / 7
    volume = gaussian_blobs(box, centres, [box / 7] * 4, [1.0, 0.8, 0.6, 0.9])
    basis = SphericalBesselBasis.create(box, degree)
    truth = basis.from_volume(volume)
    operator = ProjectionOperator(basis, np.eye(3)[None])

    def project(rotations, params):
        table = None if params is None else ctf_image(params, box, pixel)
        return operator.project_at(truth, rotations, table)

    sim = simulate_micrographs(None, count, box, pixel, shape=(size, size), rng=seed,
                               area_fraction=0.4, separation=2 * box - 1, projector=project,
                               ctf=ctf, ctf_per_particle=True, snr=snr, snr_definition="energy")
    return basis, truth, sim


# ---------------------------------------------------------------- soft modes
GROUPS = (CTFParams(12000, 12000, 0, 300, 2.7, 0.1), CTFParams(22000, 22000, 0, 300, 2.7, 0.1))


def relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b)


def on_grid_poses(rng, spacing=25.0):
    """Three poses per grid direction: two in-plane angles and one flipped (−d), two groups."""
    directions, _ = hemisphere_grid(spacing)
    base = rotations.rotations_for_directions(directions)
    flip = np.diag([1.0, -1.0, -1.0])  # rotation by π about x: views along −d
    poses, groups = [], []
    for d, pose in enumerate(base):
        for k, angle in enumerate(rng.uniform(0, 2 * np.pi, 3)):
            moved = rotations.in_plane_rotations(angle) @ pose
            poses.append(flip @ moved if k == 2 else moved)
            groups.append((d + k) % 2)
    return np.array(poses), np.array(groups)
