"""The radial-SVD paper's Fig. 8 (images) and Fig. 11 (volumes) on realistic simulated data.

For each rank ``H``: the relative Frobenius error, the Pearson correlation and the
mean backward-error percentile of the compressed landscapes against the exact
ones (:mod:`cryohess_plugin.core.alignment.metrics`,
``docs/methods/radial_svd_alignment.md`` §2.6).

Data (the regime of real particles, not the paper's idealised one):

* images: ``--images`` particles (128 px, 1.5 Å/px) simulated from an atomic
  phantom with astigmatic CTFs (``--astigmatism`` Å, ``--groups`` defocus
  groups), random shifts (``--shift-sigma`` px) and white noise at an in-band SNR
  (``--snr`` inside the band ``K = 48``), compared with the CTF-free projections on
  the paper's 993 viewing directions of a **mismatched** map: the same atoms
  jittered by ``--jitter`` Å with ``--drop`` of them removed.  Landscapes are
  taken at each particle's true shift rounded to whole pixels (what a 1-px shift
  search gives), so a sub-pixel offset remains.  Two forms: the paper's (every
  frequency compressed, ``exact_zero_frequency=False``) and this repository's
  default (the rotation-invariant term exact).
* volumes: ``--volumes`` maps (box 64, 2 Å/px) of the mismatched atoms, randomly
  rotated and shifted (``--volume-shift-sigma`` px), with white noise at an
  in-band SNR (``--volume-snr``), against the reference map; ``H_C = H_D = H``
  as in the paper, on the unreduced ``N``-point grid.

Writes the table (markdown) to stdout and the figure to ``--figure``.

    python benchmarks/bench_landscape_metrics.py [--short] [--figure benchmarks/landscape_metrics.png]
"""
import argparse
import os
import time

import numpy as np

from cryohess_plugin.core import rotations
from cryohess_plugin.core.alignment import RadialSVDAligner, VolumeAligner, rotate_volume
from cryohess_plugin.core.alignment.metrics import image_rank_metrics, volume_rank_metrics
from cryohess_plugin.core.fourier import centred_fftn, centred_ifftn
from cryohess_plugin.core.polar import PolarGrid, polar_transform
from cryohess_plugin.core.projector import FourierSliceProjector
from cryohess_plugin.core.synthetic import atoms, phantoms, simulate

#: The paper's band: K = 48 radians per half box.
MAX_FREQUENCY = 48 / np.pi
IMAGE_BOX, IMAGE_PIXEL = 128, 1.5
VOLUME_BOX, VOLUME_PIXEL = 64, 2.0
RANKS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 40, 49)


def mismatched(model, jitter, drop, rng):
    """``model`` with every atom moved by ``N(0, jitter²)`` Å per axis and a fraction removed."""
    rng = np.random.default_rng(rng)
    keep = rng.random(model.n_atoms) >= drop
    positions = model.positions + jitter * rng.standard_normal(model.positions.shape)
    return atoms.AtomModel(positions[keep], model.elements[keep], model.bfactors[keep])


def image_data(args):
    """Particle polar samples, their CTFs and shifts, and the mismatched templates."""
    model = phantoms.random_protein_phantom(6000, radius_angstrom=0.3 * IMAGE_BOX * IMAGE_PIXEL,
                                            rng=0, bfactor=400.0)
    particles = simulate.simulate_particles(
        model, args.images, IMAGE_BOX, IMAGE_PIXEL, rng=1, n_groups=args.groups,
        astigmatism=args.astigmatism, shift_sigma=args.shift_sigma, snr=args.snr,
        snr_band=MAX_FREQUENCY, keep_clean=False)
    grid = PolarGrid.from_max_frequency(IMAGE_BOX, MAX_FREQUENCY)
    template_map = atoms.gaussian_atom_volume(mismatched(model, args.jitter, args.drop, 2),
                                              IMAGE_BOX, IMAGE_PIXEL, center=model.centroid())
    directions, _ = rotations.viewing_grid_993()
    template_rotations = rotations.rotations_for_directions(directions)[::args.template_stride]
    templates = FourierSliceProjector(template_map, dtype=np.float32).project_polar(
        template_rotations, grid.radii, grid.n_angles)
    return grid, polar_transform(particles.images, grid), particles, templates


def in_band_noise(volume, snr, max_frequency, rng):
    """White noise whose power inside ``|k| <= max_frequency`` is that of ``volume`` over ``snr``."""
    box = volume.shape[0]
    k = np.fft.fftshift(np.fft.fftfreq(box, 1.0 / box))
    inside = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
              <= max_frequency ** 2)
    band_signal = centred_ifftn(centred_fftn(volume) * inside).real
    sigma = np.sqrt(band_signal.var() / (snr * inside.mean()))
    return sigma * rng.standard_normal(volume.shape)


def volume_data(args):
    """Reference map and noisy, rotated, shifted maps of the mismatched atoms."""
    model = phantoms.random_protein_phantom(4000, radius_angstrom=0.3 * VOLUME_BOX * VOLUME_PIXEL,
                                            rng=0, bfactor=8 * np.pi ** 2 * VOLUME_PIXEL ** 2)
    centre = model.centroid()
    reference = atoms.gaussian_atom_volume(model, VOLUME_BOX, VOLUME_PIXEL, center=centre)
    other = atoms.gaussian_atom_volume(mismatched(model, args.jitter, args.drop, 2), VOLUME_BOX,
                                       VOLUME_PIXEL, center=centre)
    rng = np.random.default_rng(3)
    volumes = []
    for rotation in rotations.random_rotations(args.volumes, rng):
        moved = rotate_volume(other, rotation, args.volume_shift_sigma * rng.standard_normal(3))
        volumes.append(moved + in_band_noise(moved, args.volume_snr, MAX_FREQUENCY, rng))
    return reference, np.stack(volumes)


def print_table(title, ranks, columns):
    print(f"\n{title}\n")
    names = list(columns)
    print("| H | " + " | ".join(f"{name}: rel. error | corr. | f" for name in names) + " |")
    print("|---|" + "---|---|---|" * len(names))
    for i, rank in enumerate(ranks):
        cells = []
        for name in names:
            m = columns[name][i]
            cells.append(f"{m.relative_error:.3g} | {m.correlation:.4f} | {m.backward_error:.4f}")
        print(f"| {rank} | " + " | ".join(cells) + " |")


def plot(path, image_ranks, image_columns, volume_ranks, volume_metrics):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(2, 3, figsize=(12, 7), constrained_layout=True)
    rows = [("images (Fig. 8)", image_ranks, image_columns),
            ("volumes (Fig. 11)", volume_ranks, {"H_C = H_D = H": volume_metrics})]
    for row, (title, ranks, columns) in enumerate(rows):
        for name, metrics in columns.items():
            axes[row, 0].semilogy(ranks, [max(m.relative_error, 1e-16) for m in metrics], "o-",
                                  label=name)
            axes[row, 1].plot(ranks, [m.correlation for m in metrics], "o-", label=name)
            axes[row, 2].plot(ranks, [m.backward_error for m in metrics], "o-", label=name)
        for column, label in enumerate(("relative Frobenius error", "correlation",
                                        "backward-error percentile f (mean)")):
            axes[row, column].set_title(f"{title}:\n{label}", fontsize=10)
            axes[row, column].set_xlabel("H")
            axes[row, column].grid(alpha=0.3)
        axes[row, 2].set_ylim(0.5, 1.005)
        axes[row, 0].legend(fontsize=8)
    figure.savefig(path, dpi=110)
    print(f"\nfigure: {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="particles")
    parser.add_argument("--template-stride", type=int, default=1,
                        help="use every n-th of the 993 viewing directions")
    parser.add_argument("--groups", type=int, default=8, help="defocus groups (micrographs)")
    parser.add_argument("--astigmatism", type=float, default=1000.0,
                        help="defocus_u - defocus_v, Å")
    parser.add_argument("--shift-sigma", type=float, default=3.0, help="particle shifts, px")
    parser.add_argument("--snr", type=float, default=0.1, help="in-band SNR of the particles")
    parser.add_argument("--jitter", type=float, default=1.5,
                        help="atom displacement of the mismatched map, Å (s.d. per axis)")
    parser.add_argument("--drop", type=float, default=0.1,
                        help="fraction of atoms missing from the mismatched map")
    parser.add_argument("--volumes", type=int, default=8, help="volumes")
    parser.add_argument("--volume-snr", type=float, default=1.0, help="in-band SNR of the maps")
    parser.add_argument("--volume-shift-sigma", type=float, default=1.0, help="map shifts, px")
    parser.add_argument("--figure", default=os.path.join(os.path.dirname(__file__),
                                                         "landscape_metrics.png"))
    parser.add_argument("--short", action="store_true",
                        help="smoke test: 8 particles, every 20th template, 2 volumes, 6 ranks")
    args = parser.parse_args()
    ranks = RANKS
    if args.short:
        args.images, args.template_stride, args.volumes = 8, 20, 2
        ranks = (1, 2, 4, 8, 16, 49)
    started = time.perf_counter()

    grid, image_polar, particles, templates = image_data(args)
    rounded = np.round(particles.shifts)
    image_ranks = [rank for rank in ranks if rank <= grid.n_rings]
    image_columns = {}
    for name, exact_zero in (("paper form", False), ("exact q = 0 (default)", True)):
        aligner = RadialSVDAligner(grid, templates, exact_zero_frequency=exact_zero,
                                   dtype=np.float32, backend="cpu")
        image_columns[name] = image_rank_metrics(aligner, image_polar, image_ranks,
                                                 particles.ctf_params, IMAGE_PIXEL, rounded)
    print(f"images: {args.images} particles x {templates.shape[0]} templates, {IMAGE_BOX} px, "
          f"R = {grid.n_rings}, Q = {grid.n_angles}; in-band SNR {args.snr:g}, astigmatism "
          f"{args.astigmatism:g} Å in {args.groups} groups, shifts {args.shift_sigma:g} px "
          f"(landscapes at the rounded true shift), templates of a map jittered by "
          f"{args.jitter:g} Å with {args.drop:.0%} of the atoms removed")
    print_table("Images (Fig. 8)", image_ranks, image_columns)

    reference, volumes = volume_data(args)
    aligner = VolumeAligner(reference, max_frequency=MAX_FREQUENCY, backend="cpu")
    shells = aligner.shells
    volume_ranks = [rank for rank in ranks if rank <= max(shells.n_shells, shells.max_degree + 1)]
    volume_metrics = volume_rank_metrics(aligner, volumes, volume_ranks)
    print(f"\nvolumes: {args.volumes} maps, box {VOLUME_BOX}, R = {shells.n_shells}, L = "
          f"{shells.max_degree}, grid {shells.n_orders} x {aligner.beta.size} x "
          f"{shells.n_orders}; in-band SNR {args.volume_snr:g}, shifts "
          f"{args.volume_shift_sigma:g} px, mismatched map as above; automatic ranks "
          f"{aligner.ranks}")
    print_table("Volumes (Fig. 11), H_C = H_D = H", volume_ranks,
                {"H_C = H_D = H": volume_metrics})
    plot(args.figure, image_ranks, image_columns, volume_ranks, volume_metrics)
    print(f"total {time.perf_counter() - started:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
