"""Per-image log-likelihoods of the hyper-molecule model (docs/methods/hyper_molecules.md §3).

One dispatch over the CPU and CUDA kernels of :mod:`..kernels.hypermolecule_cpu`: the
shift enters only as a phase applied inside the kernels, so a shift proposal reuses the
cached slices and gives exactly the numbers a full re-projection gives.
"""
import numpy as np

from ..kernels import hypermolecule_cpu, resolve_backend


class BandLikelihood:
    """The likelihood restricted to the frequencies ``|k| < band`` of a data set.

    :param data: :class:`.data.ParticleData`.
    :param band: frequencies kept (cycles per box), at most ``data.band``.
    :param precision: ``(m_band,)`` ``1 / σ²`` at the kept points.
    :param backend: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, data, band, precision, backend="auto"):
        keep = data.inside(band)
        self.keep = keep
        self.spectra = np.ascontiguousarray(data.spectra[:, keep])
        self.ctf = np.ascontiguousarray(data.ctf[:, keep])
        self.kx, self.ky = data.kx[keep], data.ky[keep]
        self.box = float(data.box)
        self.precision = np.ascontiguousarray(precision, dtype=np.float32)
        if resolve_backend(backend) == "cuda":
            from ..kernels import hypermolecule_cuda as kernels
        else:
            kernels = hypermolecule_cpu
        self._kernels = kernels

    @property
    def points(self):
        return self.kx.size

    def _arguments(self, slices, weights, shifts, rows):
        rows = slice(None) if rows is None else rows
        return (self.spectra[rows], slices, np.ascontiguousarray(weights, dtype=np.float64),
                self.ctf[rows], np.ascontiguousarray(shifts, dtype=np.float64), self.kx,
                self.ky, self.box, self.precision)

    def log_likelihoods(self, slices, weights, shifts, rows=None):
        """``(n,)`` ``-Σ_k |Y - model|² / σ²`` per image (``rows`` selects images)."""
        arguments = self._arguments(slices, weights, shifts, rows)
        out = np.empty(arguments[0].shape[0], dtype=np.float64)
        self._kernels.log_likelihoods(*arguments, out)
        return out

    def weighted_residuals(self, slices, weights, shifts, rows=None):
        """``(n, m)`` ``conj(CTF · phase) (Y - model) / σ²`` per image and point."""
        arguments = self._arguments(slices, weights, shifts, rows)
        out = np.empty(arguments[0].shape, dtype=np.complex64)
        self._kernels.weighted_residuals(*arguments, out)
        return out

    def model_spectra(self, slices, weights, shifts):
        """``(n, m)`` the model's spectra ``CTF · phase · Σ_q w_q S_q``."""
        phase = np.exp((-2j * np.pi / self.box)
                       * (np.outer(shifts[:, 0], self.kx) + np.outer(shifts[:, 1], self.ky)))
        return self.ctf * phase * np.einsum("nq,nqm->nm", weights, slices)

    def residuals(self, slices, weights, shifts):
        """``(n, m)`` plain residuals ``Y - model`` (for the per-shell noise power)."""
        return (self.spectra - self.model_spectra(slices, weights, shifts)).astype(np.complex64)
