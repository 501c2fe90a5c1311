"""Gaussian posterior over a map's Fourier transform with known poses (Ullrich et al. 2019).

Model (notes ``method_differentiable_fourier_slice.md`` §2, §4, in the
conventions of :mod:`.fourier` and :mod:`.projector`)::

    X_n(k) = c_n(k) exp(-2 pi i k.t_n / D) V(R_n^T (kx, ky, 0)) + N_n(k)

* ``V`` is the centred, non-unitary transform of the map on the *unpadded*
  ``D^3`` grid, read by trilinear interpolation (a :class:`.SliceOperator`
  with ``padding=1``, ``kernel="linear"``): the paper's model, in which every
  grid coefficient is a parameter.  The map is ``ifft(V)`` divided by the
  kernel's deapodisation, as :meth:`.SliceOperator.volume_to_grid` inverts.
* ``N`` is the transform of white real-space noise of variance ``sigma^2``
  per pixel: ``E|N(k)|^2 = D^2 sigma^2``.  Images are used on the half plane
  (:class:`.fourier.HalfPlane`, each independent coefficient once, the real
  DC with weight 1/2) inside a disc whose taps stay in ``(-D/2, D/2)``, so
  the Hermitian mirror of every tap is on the grid.
* Prior: ``V`` Hermitian (a real map), ``E|V_j|^2 = s0^2(shell)``.

Posterior (mean field = diagonal, notes §4.2; ``Var`` is the complex
variance ``E|V_j - mu_j|^2``)::

    (herm(A^H W A) / (D^2 sigma^2) + 1 / s0^2) mu = herm(A^H W X) / (D^2 sigma^2)
    Var_j = 1 / (1 / s0^2 + S_j / (D^2 sigma^2)),   S_j = sum_n sum_k c^2 w_nkj^2

where ``herm(B) = B + conj(mirror(B))`` folds the gradient onto Hermitian
maps and ``S`` counts both ``k`` and ``-k`` (the sampling density).  In the
paper's unitary units per real component this is the notes' ``1 / (1/s0^2
+ 2 D S / sigma^2)``.  The mean is the exact MAP (conjugate gradients); the
variance ignores the correlations interpolation creates, as mean-field VI
does.  Noise and per-shell prior variances are estimated by EM.

Resolution from one fit: the paper's ``alpha(f) = sum |mu|^2 / sum Var``
uses the mean-field ``Var``, which misses the noise the interpolation
correlations put into the mean and the deapodisation of the map, and
crosses the half-map FSC thresholds 3-4 shells early.  The curve that tracks
the FSC of mean maps propagates noise draws through the exact MAP solve
(:func:`propagate_noise`, one CG solve per draw) and takes signal over noise
power of the mean map per shell (:meth:`FourierPosterior.shell_snr`).

The variational fit (:func:`fit_variational`) minimises the minibatch ELBO
of eq 15 with the closed-form expected likelihood of notes §4.2 (no
reparameterisation noise): a natural-gradient step on the precision and a
preconditioned, Polyak-averaged gradient step on the mean.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from . import fourier
from .errors import InvalidDataError, MissingMetadataError, ShapeError
from .fourier import hermitian_fold, mirror, paired
from .kernels import posterior_cpu
from .projector import SliceOperator

#: Interpolation kernels of the posterior model and the disc margin their taps need.
_MARGIN = {"linear": 1, "cubic": 2}
_TINY = 1e-30


# --------------------------------------------------------------------------- grids

def expand_shells(values, box):
    """Per-shell values ``(box // 2 + 1,)`` (or a scalar) as a ``(box,)*3`` grid.

    Shells beyond ``box // 2`` (the corners) take the last shell's value.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return np.full((box,) * 3, float(values))
    n_shells = box // 2 + 1
    if values.shape != (n_shells,):
        raise ShapeError(f"per-shell values must have shape ({n_shells},), got {values.shape}")
    return values[np.minimum(fourier.shell_index((box,) * 3), n_shells - 1)]


def shell_sums(grid):
    """Sum of a real grid over integer shells ``0 .. box // 2``."""
    shells = fourier.shell_index(grid.shape)
    n_shells = grid.shape[0] // 2 + 1
    inside = shells < n_shells
    return np.bincount(shells[inside], grid[inside], n_shells)


# --------------------------------------------------------------------------- data

class SpectraWriter:
    """Writes the half-plane spectra of a particle stack to an ``.npy`` file batch by batch.

    The file holds ``(n, m)`` complex values at the points of
    :meth:`PosteriorProblem.ctf_frequencies` (the model's disc), the form
    :class:`PosteriorProblem` opens as a memory map, so neither writing nor
    fitting ever holds every particle in memory::

        with SpectraWriter(path, n, box) as writer:
            for batch in batches_of_images:
                writer.write(batch)

    :param path: ``.npy`` file to create.
    :param count: number of particles ``n``.
    :param box: image size ``D``.
    :param kernel: interpolation kernel of the model (sets the disc).
    :param dtype: float precision of the stored spectra.
    """

    def __init__(self, path, count, box, kernel="linear", dtype=np.float64):
        if kernel not in _MARGIN:
            raise ValueError(f"kernel must be one of {sorted(_MARGIN)}, got {kernel!r}")
        if count < 1:
            raise InvalidDataError("the particle stack is empty; select some particles")
        self.box, self.count = int(box), int(count)
        self.half_plane = fourier.HalfPlane.disc(self.box, self.box / 2 - _MARGIN[kernel])
        complex_dtype = np.result_type(np.dtype(dtype), np.complex64)
        self.array = np.lib.format.open_memmap(str(path), mode="w+", dtype=complex_dtype,
                                               shape=(self.count, self.half_plane.size))
        self.written = 0

    def write(self, images):
        """Append the spectra of the images ``(b, D, D)``."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.box, self.box):
            raise ShapeError(f"images must be a stack (b, {self.box}, {self.box}), got shape "
                             f"{images.shape}")
        if self.written + images.shape[0] > self.count:
            raise ShapeError(f"more than the {self.count} announced images were written")
        bad = np.count_nonzero(~np.isfinite(images))
        if bad:
            raise InvalidDataError(f"images contain {bad} NaN or infinite values; remove "
                                   "those particles")
        end = self.written + images.shape[0]
        self.array[self.written:end] = self.half_plane.transform(images)
        self.written = end

    def close(self):
        """Flush the file; every announced image must have been written."""
        if self.array is None:
            return
        self.array.flush()
        self.array = None
        if self.written != self.count:
            raise ShapeError(f"{self.written} images written, {self.count} announced")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.array = None


def write_spectra(path, images, kernel="linear", dtype=np.float64, batch_size=512):
    """Half-plane spectra of ``images`` ``(n, D, D)`` (an array or memory map) to ``path``
    (``.npy``), ``batch_size`` images at a time; see :class:`SpectraWriter`."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ShapeError(f"images must be a stack (n, D, D) of square images, got shape "
                         f"{images.shape}")
    with SpectraWriter(path, images.shape[0], images.shape[1], kernel, dtype) as writer:
        for start in range(0, images.shape[0], int(batch_size)):
            writer.write(images[start:start + int(batch_size)])
    return path


def _box_of_spectra(size, kernel):
    """The image size whose model disc has ``size`` half-plane points."""
    guess = int(round(2 * (np.sqrt(2 * size / np.pi) + _MARGIN[kernel])))
    for box in range(max(guess - 4, 2), guess + 5):
        if fourier.HalfPlane.disc(box, box / 2 - _MARGIN[kernel]).size == size:
            return box
    raise ShapeError(f"{size} coefficients per particle match no image size's half-plane disc "
                     f"({kernel} kernel); write spectra with write_spectra")


def _open_array(value):
    """An array, or an ``.npy`` path opened as a read-only memory map."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        return np.load(value, mmap_mode="r")
    return value if isinstance(value, np.ndarray) else np.asarray(value)


class PosteriorProblem:
    """Particle images with known poses and CTFs, ready for the posterior fits.

    Every pass over the data (operators, sampling density, residual power,
    likelihood) streams ``batch_size`` particles at a time from the stored
    spectra, which may be a memory map: spectra on disk (:func:`write_spectra`)
    are read batch by batch and never held whole, and the minibatch fit reads
    only its minibatches.  :meth:`subset` keeps reading from the same source.

    :param images: ``(n, D, D)`` real particle images; or their ``(n, m)``
        complex half-plane spectra (:func:`write_spectra`, any array or
        ``np.memmap``); or the path of such an ``.npy``, opened as a memory map.
    :param rotations: ``(n, 3, 3)`` (:mod:`.rotations` convention).
    :param shifts: ``(n, 2)`` particle offsets in pixels, or None.
    :param ctf: ``(n, m)`` CTF values at the operator's half-plane points
        (:meth:`ctf_frequencies`), an array, memory map or ``.npy`` path; or
        None for CTF-free data.
    :param kernel: interpolation kernel of the model (``"linear"``: the paper's).
    :param dtype: float precision of the spectra and grids.
    :param backend: backend of the slice operator.
    :param batch_size: images per pass of the slice kernels (and per read).
    """

    def __init__(self, images, rotations, shifts=None, ctf=None, kernel="linear",
                 dtype=np.float64, backend="cpu", batch_size=512):
        if kernel not in _MARGIN:
            raise ValueError(f"kernel must be one of {sorted(_MARGIN)}, got {kernel!r}")
        images = _open_array(images)
        is_spectra = images.ndim == 2 and np.iscomplexobj(images)
        if not is_spectra and (images.ndim != 3 or images.shape[1] != images.shape[2]):
            raise ShapeError(f"images must be a stack (n, D, D) of square images or their "
                             f"(n, m) half-plane spectra, got shape {images.shape}")
        n = images.shape[0]
        box = _box_of_spectra(images.shape[1], kernel) if is_spectra else images.shape[1]
        if n < 1:
            raise InvalidDataError("the particle stack is empty; select some particles")
        if rotations is None:
            raise MissingMetadataError("the particles have no alignment; run an alignment "
                                       "(e.g. the cryohess radial-SVD protocol) first")
        rotations = np.asarray(rotations, dtype=np.float64)
        if rotations.shape != (n, 3, 3):
            raise ShapeError(f"rotations must have shape ({n}, 3, 3) for {n} images, got "
                             f"{rotations.shape}")
        shifts = np.zeros((n, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
        if shifts.shape != (n, 2):
            raise ShapeError(f"shifts must have shape ({n}, 2), got {shifts.shape}")
        checked = [("rotations", rotations), ("shifts", shifts)]
        if not isinstance(images, np.memmap):
            # Spectra on disk were checked when written (SpectraWriter).
            checked.insert(0, ("images", images))
        for name, array in checked:
            bad = np.count_nonzero(~np.isfinite(array))
            if bad:
                raise InvalidDataError(f"{name} contain {bad} NaN or infinite values; remove "
                                       "those particles or fix their metadata")
        self.operator = SliceOperator(box, padding=1, kernel=kernel, dtype=dtype,
                                      backend=backend, radius=box / 2 - _MARGIN[kernel])
        hp = self.operator.half_plane
        if ctf is not None:
            ctf = _open_array(ctf)
            if ctf.shape != (n, hp.size):
                raise ShapeError(f"ctf must hold the CTF of every image at the {hp.size} "
                                 f"half-plane points, shape ({n}, {hp.size}); got {ctf.shape}. "
                                 "Evaluate it at PosteriorProblem.ctf_frequencies(box)")
            if not isinstance(ctf, np.memmap) and not np.isfinite(ctf).all():
                raise InvalidDataError("the CTF values contain NaN or infinite entries; "
                                       "re-estimate the CTF of those micrographs")
        self.box = box
        self.kernel = kernel
        self.rotations = rotations
        self.shifts = shifts
        self.batch_size = int(batch_size)
        self._index = None
        self._ctf_source = ctf
        if is_spectra:
            self._source = images
        else:
            self._source = np.empty((n, hp.size), self.operator.complex_dtype)
            for start in range(0, n, self.batch_size):
                part = slice(start, start + self.batch_size)
                self._source[part] = hp.transform(images[part])
        # The DC coefficient is real: half the weight of a complex one (module docstring).
        self.sample_weight = np.where((hp.kx == 0) & (hp.ky == 0), 0.5, 1.0)
        # The same weights (0.5 and 1, exact) in the operator's precision, so that
        # weighting a batch's complex64 values makes no complex128 temporary.
        self._weight = self.sample_weight.astype(self.operator.dtype)
        self._rows = np.ascontiguousarray(rotations[:, :2, :])
        if self.operator.backend == "cuda":
            from .kernels import posterior_cuda as kernels
        else:
            kernels = posterior_cpu
        self._kernels = kernels

    @staticmethod
    def ctf_frequencies(box, kernel="linear"):
        """``(kx, ky)`` at which :class:`PosteriorProblem` expects CTF values."""
        hp = fourier.HalfPlane.disc(box, box / 2 - _MARGIN[kernel])
        return hp.kx, hp.ky

    @property
    def n_particles(self):
        return self.rotations.shape[0]

    @property
    def half_plane(self):
        return self.operator.half_plane

    @property
    def on_disk(self):
        """Whether the spectra are read from a memory map."""
        return isinstance(self._source, np.memmap)

    @property
    def spectra(self):
        """``(n, m)`` half-plane spectra of the particles.

        Reading this materialises every particle's spectrum when the problem
        is a subset or the source is a memory map; passes use
        :meth:`spectra_batch` instead.  Assigning replaces the source.
        """
        return self._source if self._index is None else self._source[self._index]

    @spectra.setter
    def spectra(self, values):
        values = _open_array(values)
        if values.shape != (self.n_particles, self.half_plane.size):
            raise ShapeError(f"spectra must have shape ({self.n_particles}, "
                             f"{self.half_plane.size}), got {values.shape}")
        if self._index is not None and self._ctf_source is not None:
            self._ctf_source = self._ctf_source[self._index]
        self._source, self._index = values, None

    @property
    def ctf(self):
        """``(n, m)`` CTF values or None (materialised as :attr:`spectra`)."""
        if self._ctf_source is None or self._index is None:
            return self._ctf_source
        return self._ctf_source[self._index]

    def _source_rows(self, part):
        return part if self._index is None else self._index[part]

    def _count(self, part):
        return self._rows[part].shape[0]

    def spectra_batch(self, part):
        """Spectra ``(len(part), m)`` of the particles ``part`` (read from the source)."""
        return np.asarray(self._source[self._source_rows(part)], self.operator.complex_dtype)

    def subset(self, index):
        """A problem holding the particles ``index``, reading the same spectra source."""
        index = np.arange(self.n_particles)[index]
        new = object.__new__(PosteriorProblem)
        new.__dict__.update(self.__dict__)
        new.rotations = self.rotations[index]
        new.shifts = self.shifts[index]
        new._index = self._source_rows(index)
        new._rows = np.ascontiguousarray(self._rows[index])
        return new

    def batches(self, index=None):
        """Slices (or index arrays) of at most ``batch_size`` particles."""
        if index is None:
            return [slice(s, min(s + self.batch_size, self.n_particles))
                    for s in range(0, self.n_particles, self.batch_size)]
        return [index[s:s + self.batch_size] for s in range(0, len(index), self.batch_size)]

    def _ctf(self, part):
        if self._ctf_source is None:
            return None
        return np.asarray(self._ctf_source[self._source_rows(part)], np.float64)

    def _operator_ctf(self, part):
        """CTF of ``part`` in the operator's precision (one conversion, not two)."""
        if self._ctf_source is None:
            return None
        return np.asarray(self._ctf_source[self._source_rows(part)], self.operator.dtype)

    def _ctf_squared(self, part, count):
        hp = self.half_plane
        return np.ones((count, hp.size)) if self._ctf_source is None else self._ctf(part) ** 2

    # ------------------------------------------------------------- operators
    def forward(self, grid, part):
        """Model spectra ``(len(part), m)`` of ``grid`` for particles ``part``."""
        hp = self.half_plane
        return self.operator.slices(grid, self.rotations[part], hp.kx, hp.ky,
                                    self.shifts[part], self._operator_ctf(part))

    def _scatter(self, values, part, total):
        """Add ``A^H (W values)`` (not yet Hermitian-folded) into the complex128 ``total``."""
        hp = self.half_plane
        weighted = np.asarray(values, self.operator.complex_dtype) * self._weight
        total += self.operator.slices_adjoint(weighted, self.rotations[part], hp.kx, hp.ky,
                                              self.shifts[part], self._operator_ctf(part))
        return total

    def adjoint(self, values, part):
        """``herm(A^H (W values))`` for particles ``part`` (a complex grid)."""
        return hermitian_fold(self._scatter(values, part,
                                            np.zeros((self.box,) * 3, np.complex128)))

    def data_term(self, part=None):
        """``herm(A^H W X)`` over the particles ``part`` (all by default)."""
        total = np.zeros((self.box,) * 3, np.complex128)
        for p in self.batches(part):
            self._scatter(self.spectra_batch(p), p, total)
        # The fold is linear: once for the sum, not once per batch.
        return hermitian_fold(total)

    def normal(self, grid, part=None):
        """``herm(A^H W A grid)`` over the particles ``part``."""
        grid = grid.astype(self.operator.complex_dtype)
        total = np.zeros((self.box,) * 3, np.complex128)
        for p in self.batches(part):
            self._scatter(self.forward(grid, p), p, total)
        return hermitian_fold(total)

    def sampling_density(self, part=None):
        """``S_j = sum c^2 W w^2`` over ``k`` and ``-k`` (real grid)."""
        density = np.zeros((self.box,) * 3)
        for p in self.batches(part):
            weights = np.ascontiguousarray(self._ctf_squared(p, self._count(p))
                                           * self.sample_weight)
            hp = self.half_plane
            self._kernels.sampling_density(weights, self._rows[p], hp.kx, hp.ky,
                                           self.operator.kernel_id, density)
        return density + mirror(density)

    def row_sums(self, part=None):
        """``herm(A^H W c^2)`` without shifts: the gridding weights, a preconditioner."""
        density = np.zeros((self.box,) * 3, np.complex128)
        hp = self.half_plane
        for p in self.batches(part):
            values = (self._ctf_squared(p, self._count(p)) * self.sample_weight).astype(
                self.operator.complex_dtype)
            density += self.operator.slices_adjoint(values, self.rotations[p], hp.kx, hp.ky)
        return np.maximum(hermitian_fold(density).real, 0.0)

    def gathered_variance(self, variance, part):
        """``sum_j c^2 w^2 Var_j`` at every sample of particles ``part``: ``(n, m)``."""
        hp = self.half_plane
        rows = self._rows[part]
        out = np.empty((rows.shape[0], hp.size))
        self._kernels.gather_squared(np.ascontiguousarray(variance, np.float64), rows, hp.kx,
                                     hp.ky, self.operator.kernel_id, out)
        if self._ctf_source is not None:
            out *= self._ctf(part) ** 2
        return out

    def residual_power(self, mean, variance=None, part=None):
        """Per-particle ``sum_k W E|X - A V|^2`` under the posterior ``(mean, variance)``."""
        index = np.arange(self.n_particles) if part is None else np.asarray(part)
        out = np.empty(index.size)
        for start in range(0, index.size, self.batch_size):
            p = index[start:start + self.batch_size]
            residual = self.spectra_batch(p) - self.forward(mean.astype(self.operator.complex_dtype), p)
            power = np.abs(residual) ** 2
            if variance is not None:
                power = power + self.gathered_variance(variance, p)
            out[start:start + p.size] = power @ self.sample_weight
        return out


# --------------------------------------------------------------------------- posterior

@dataclass
class FourierPosterior:
    """Diagonal Gaussian posterior over the ``D^3`` Fourier grid of a map.

    :param mean: complex ``(D, D, D)`` posterior mean ``mu`` (centred layout).
    :param variance: real ``(D, D, D)`` complex variance ``E|V - mu|^2``.
    :param prior_variance: real ``(D, D, D)`` prior ``s0^2`` per coefficient.
    :param noise_variance: real-space noise variance ``sigma^2`` per pixel.
    :param kernel: interpolation kernel of the model.
    :param history: fit diagnostics (noise, residuals per iteration).
    :param noise_power: per-shell ``(D // 2 + 1,)`` power of the noise in
        :meth:`mean_map` (map domain, :func:`propagate_noise`), or None.
    """
    mean: np.ndarray
    variance: np.ndarray
    prior_variance: np.ndarray
    noise_variance: float
    kernel: str = "linear"
    history: dict = field(default_factory=dict)
    noise_power: np.ndarray = None

    @property
    def box(self):
        return self.mean.shape[0]

    def _deapodization(self):
        d = fourier.deapodization(self.box, self.box, self.kernel)
        return d[:, None, None] * d[None, :, None] * d[None, None, :]

    def grid_to_map(self, grid):
        """Real map of a Fourier grid (inverse of :meth:`.SliceOperator.volume_to_grid`)."""
        return fourier.centred_ifftn(grid).real / self._deapodization()

    def mean_map(self):
        """Posterior-mean map ``(D, D, D)``, real space."""
        return self.grid_to_map(self.mean)

    def relative_variance(self):
        """``Var / s0^2``: 1 where no data constrain the coefficient, near 0 where dense."""
        return self.variance / self.prior_variance

    def map_shell_power(self, grid):
        """Power per shell ``0 .. D/2`` of the map of ``grid``, in the map's own transform.

        The domain of :func:`.fourier.fourier_shell_correlation` of
        :meth:`mean_map` s: the deapodisation (a real-space weight) is applied.
        """
        return shell_sums(np.abs(fourier.centred_fftn(self.grid_to_map(grid))) ** 2)

    def shell_snr(self, method=None):
        """Spectral SNR per shell ``0 .. D/2`` of the posterior-mean map.

        :param method: ``"noise"``: signal over noise power of the mean map,
            both in the map domain, the noise power propagated through the
            exact MAP solve (``noise_power``, :func:`propagate_noise`); the
            signal power is the map's power minus that noise power (clipped
            at 0).  This is the SNR the half-map FSC of mean maps measures.
            ``"mean_field"``: the paper's ``alpha(f) = sum |mu|^2 / sum Var``
            (notes eq 19) on the Fourier grid.  None: ``"noise"`` when
            ``noise_power`` is set, else ``"mean_field"``.

        The mean-field ``alpha`` misjudges the noise of the mean twice: ``Var``
        ignores the correlations interpolation puts into the posterior (the
        true noise of the mean is about 1.5 times larger on the grid and is
        concentrated at the edges of the box in real space), and the
        deapodisation of the map then weights those edges down, so the map
        carries less noise than the grid.  Measured on 1200 particles at
        SNR 0.05, 32 px: the mean-field curve crosses 0.5 / 0.143 at shells
        8 / 12, the half-map FSC at 12 / 15, the ``"noise"`` curve at 12 / 14.
        """
        if method is None:
            method = "mean_field" if self.noise_power is None else "noise"
        if method == "mean_field":
            return shell_sums(np.abs(self.mean) ** 2) / np.maximum(shell_sums(self.variance),
                                                                   _TINY)
        if method != "noise":
            raise ValueError(f"method must be 'noise' or 'mean_field', got {method!r}")
        if self.noise_power is None:
            raise InvalidDataError("this posterior has no propagated noise power; fit it with "
                                   "fit_closed_form(noise_probes >= 1) or set noise_power = "
                                   "propagate_noise(problem, posterior)")
        noise = np.maximum(np.asarray(self.noise_power, dtype=np.float64), _TINY)
        signal = np.maximum(self.map_shell_power(self.mean) - noise, 0.0)
        return signal / noise

    def resolution_curve(self, half_maps=True, method=None):
        """FSC-like curve from one fit, shells ``0 .. D/2``.

        ``half_maps=True`` gives ``(alpha/2) / (1 + alpha/2)``, comparable with
        the FSC of two half maps (each has half the data, so half the SNR);
        ``False`` gives the paper's ``alpha / (1 + alpha)`` for the full map.
        ``alpha`` is :meth:`shell_snr` of ``method``; the default (``"noise"``
        when the fit propagated noise) tracks the half-map FSC of
        :meth:`mean_map` s.
        """
        alpha = self.shell_snr(method) / (2.0 if half_maps else 1.0)
        return alpha / (1.0 + alpha)

    def sample_grids(self, count, rng=0):
        """``count`` Hermitian Fourier grids drawn from the posterior, ``(count, D, D, D)``."""
        rng = np.random.default_rng(rng)
        std = np.sqrt(self.variance)
        out = np.empty((count,) + self.mean.shape, np.complex128)
        for s in range(count):
            noise = rng.standard_normal(self.mean.shape) + 1j * rng.standard_normal(self.mean.shape)
            # (e + conj(e(-k))) / 2 is Hermitian with E|z|^2 = 1 off the self-conjugate points;
            # the unpaired -D/2 planes (outside the model's disc) keep their mean.
            noise = 0.5 * hermitian_fold(noise * paired(self.box))
            out[s] = self.mean + std * noise
        return out

    def sample_maps(self, count, rng=0):
        """``count`` real maps drawn from the posterior, ``(count, D, D, D)``."""
        return np.stack([self.grid_to_map(g) for g in self.sample_grids(count, rng)])

    def real_space_std(self, count=16, rng=0):
        """Voxel-wise standard deviation of ``count`` posterior samples (real space).

        A diagonal Fourier posterior is stationary in real space apart from
        the deapodisation (notes §4.5): the map mostly shows where the
        correction amplifies, so read it as a global uncertainty level.
        """
        if count < 2:
            raise InvalidDataError(f"need at least 2 samples for a standard deviation, got {count}")
        return np.std(self.sample_maps(count, rng), axis=0, ddof=1)

    def analytic_real_space_std(self):
        """The exact voxel-wise standard deviation :meth:`real_space_std` estimates."""
        total = self.variance[paired(self.box)].sum()
        return np.sqrt(total) / self.box ** 3 / self._deapodization()


# --------------------------------------------------------------------------- fits

def _noise_scale(problem, noise_variance):
    return problem.box ** 2 * float(noise_variance)


class _Reporter:
    """Calls ``progress`` (str -> None) with messages; :meth:`every` at most every
    ``interval`` seconds (for the iterations of a long solve)."""

    def __init__(self, progress, interval=30.0):
        self.progress = progress
        self.interval = interval
        self.last = time.monotonic()

    def __call__(self, message):
        if self.progress is not None:
            self.progress(message)
            self.last = time.monotonic()

    def every(self, message):
        if self.progress is not None and time.monotonic() - self.last >= self.interval:
            self(message() if callable(message) else message)


def _conjugate_gradients(apply, rhs, preconditioner, start, iterations, tolerance,
                         report=None, label="CG"):
    """Preconditioned CG for a real-linear SPD ``apply`` under ``Re <a, b>``."""
    x = start.copy()
    # A cold start needs no pass of the operator: A 0 = 0.
    r = rhs - apply(x) if x.any() else rhs.copy()
    z = preconditioner * r
    p = z.copy()
    rz = np.vdot(r, z).real
    norm = np.sqrt(np.vdot(rhs, rhs).real) or 1.0
    residuals = []
    for _ in range(iterations):
        residuals.append(np.sqrt(np.vdot(r, r).real) / norm)
        if residuals[-1] < tolerance:
            break
        if report is not None:
            report.every(f"  {label} iteration {len(residuals)}: relative residual "
                         f"{residuals[-1]:.3g}")
        q = apply(p)
        step = rz / np.vdot(p, q).real
        x += step * p
        r -= step * q
        z = preconditioner * r
        rz_new = np.vdot(r, z).real
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, residuals


def _check_variance(value, name):
    value = np.asarray(value, dtype=np.float64)
    if not (np.isfinite(value).all() and (value > 0).all()):
        raise InvalidDataError(f"{name} must be positive and finite, got {value}")
    return value


def initial_noise_variance(problem):
    """Upper bound of ``sigma^2``: the mean power of the data coefficients (signal included)."""
    total = 0.0
    for p in problem.batches():
        total += float(np.sum(np.abs(problem.spectra_batch(p)) ** 2 @ problem.sample_weight))
    return total / (problem.n_particles * problem.box ** 2 * problem.sample_weight.sum())


def estimate_noise_variance(problem, posterior):
    """EM update of ``sigma^2`` (notes §4.3): mean ``E|X - A V|^2 / D^2`` per real coefficient."""
    power = problem.residual_power(posterior.mean, posterior.variance)
    return float(power.sum() / (problem.box ** 2 * problem.n_particles
                                * problem.sample_weight.sum()))


def estimate_prior_variance(posterior):
    """EM update of the per-shell prior: shell mean of ``|mu|^2 + Var`` (shells 0..D/2)."""
    shells = fourier.shell_index(posterior.mean.shape)
    n_shells = posterior.box // 2 + 1
    inside = shells < n_shells
    power = np.abs(posterior.mean) ** 2 + posterior.variance
    counts = np.bincount(shells[inside], minlength=n_shells)
    mean_power = np.bincount(shells[inside], power[inside], n_shells) / np.maximum(counts, 1)
    return np.maximum(mean_power, mean_power.max() * 1e-12)


def noise_spectra(problem, part, rng, noise_variance):
    """Half-plane spectra of white real-space noise of variance ``sigma^2``, ``(n, m)``.

    The transform of white noise is independent on the half plane with
    ``E|N|^2 = D^2 sigma^2`` (complex) and a real DC of the same variance,
    exactly the noise model of the data.
    """
    count, m = problem._count(part), problem.half_plane.size
    scale = _noise_scale(problem, noise_variance)
    values = (rng.standard_normal((count, m)) + 1j * rng.standard_normal((count, m))) * np.sqrt(
        scale / 2)
    dc = problem.sample_weight < 1.0
    values[:, dc] = rng.standard_normal((count, int(dc.sum()))) * np.sqrt(scale)
    return values


#: Relative CG residual of the noise probes.  A probe's per-shell power has a
#: Monte-Carlo error of ``1 / sqrt(c / 2)`` already; at 128 px (2000 particles,
#: SNR 0.05) stopping at 3e-3 instead of 1e-4 changes it by at most 1.1 % in any
#: shell, under a tenth of that error, and takes 10 CG iterations instead of 18.
PROBE_TOLERANCE = 3e-3


def propagate_noise(problem, posterior, probes=1, rng=0, cg_iterations=60,
                    tolerance=PROBE_TOLERANCE, rows=None, progress=None):
    """Per-shell power of the noise in the posterior-mean map (map domain).

    The MAP mean is linear in the data, ``mu = M X`` with ``M = (A^H W A /
    (D^2 sigma^2) + 1/s0^2)^-1 A^H W / (D^2 sigma^2)`` (Hermitian-folded), so
    its noise is ``M N``.  Each probe draws ``N`` from the noise model
    (:func:`noise_spectra`), solves for ``M N`` with the same CG as the fit
    and takes the power of its map per shell (:meth:`FourierPosterior.map_shell_power`);
    a shell of ``c`` coefficients gets a relative error of about
    ``1 / sqrt(c / 2)`` per probe.  Unlike the mean-field ``Var`` this keeps the
    correlations interpolation creates and the deapodisation of the map.

    :param problem: :class:`PosteriorProblem` the posterior was fitted to.
    :param posterior: :class:`FourierPosterior` (its noise and prior define ``M``).
    :param probes: number of noise draws averaged.
    :param rng: seed or generator of the draws.
    :param tolerance: relative CG residual of each probe's solve
        (:data:`PROBE_TOLERANCE`: well inside the probe's Monte-Carlo error).
    :param rows: :meth:`PosteriorProblem.row_sums` if already computed.
    :param progress: callable ``(str) -> None`` told each probe's CG iterations
        and residual (and long solves' residuals every 30 s), or None.
    :returns: ``(D // 2 + 1,)`` float64.
    """
    return _propagate_noise(problem, posterior, probes, rng, cg_iterations, tolerance, rows,
                            progress, {})


def _propagate_noise(problem, posterior, probes, rng, cg_iterations, tolerance, rows, progress,
                     passes):
    """:func:`propagate_noise`, counting its passes over the data in ``passes``."""
    if posterior.box != problem.box:
        raise ShapeError(f"posterior box {posterior.box} differs from the particle box "
                         f"{problem.box}; use particles and posterior of one box size")
    if probes < 1:
        raise ValueError(f"need at least one noise probe, got {probes}")
    rng = np.random.default_rng(rng)
    scale = _noise_scale(problem, posterior.noise_variance)
    prior = posterior.prior_variance
    rows = problem.row_sums() if rows is None else rows
    preconditioner = 1.0 / (1.0 / prior + rows / scale)
    apply = _normal_equations(problem, scale, prior, passes)
    report = _Reporter(progress)
    power = np.zeros(problem.box // 2 + 1)
    for probe in range(int(probes)):
        rhs = np.zeros((problem.box,) * 3, np.complex128)
        for p in problem.batches():
            problem._scatter(noise_spectra(problem, p, rng, posterior.noise_variance)
                             .astype(problem.operator.complex_dtype), p, rhs)
        _count(passes, "adjoint")
        rhs = hermitian_fold(rhs)
        noise, residuals = _conjugate_gradients(
            apply, rhs / scale, preconditioner, np.zeros_like(rhs), cg_iterations, tolerance,
            report, "noise probe CG")
        power += posterior.map_shell_power(noise)
        report(f"Noise probe {probe + 1}/{int(probes)}: {len(residuals)} CG iterations, "
               f"relative residual {residuals[-1] if residuals else 0.0:.2g}")
    return power / probes


def _count(passes, kind, count=1):
    passes[kind] = passes.get(kind, 0) + count


def _normal_equations(problem, scale, prior, passes):
    """``g -> herm(A^H W A g) / (D^2 sigma^2) + g / s0^2``, counting its passes."""
    inverse_prior = 1.0 / prior

    def apply(grid):
        _count(passes, "normal")
        out = problem.normal(grid)
        out *= 1.0 / scale
        out += grid * inverse_prior
        return out
    return apply


#: Relative CG residual of the EM rounds before the last: their means only
#: feed the next noise and prior estimates, and the last round (warm-started)
#: solves to the fit's tolerance.
EM_TOLERANCE = 1e-2


def fit_closed_form(problem, noise_variance=None, prior_variance=None, em_iterations=4,
                    cg_iterations=30, tolerance=1e-4, noise_probes=1, rng=0, progress=None):
    """Mean-field posterior in closed form: MAP mean by CG, variance from ``S``.

    :param problem: :class:`PosteriorProblem`.
    :param noise_variance: ``sigma^2`` per pixel, or None to estimate it (EM).
    :param prior_variance: scalar or per-shell ``(D // 2 + 1,)`` ``s0^2``, or
        None to estimate it per shell (EM, empirical Bayes).
    :param em_iterations: EM rounds when something is estimated.
    :param cg_iterations: most CG iterations per round.
    :param tolerance: relative CG residual to stop at.
    :param noise_probes: noise draws propagated through the final solve
        (:func:`propagate_noise`) for the resolution curve; 0 skips them
        (one CG solve each) and leaves the mean-field curve.
    :param rng: seed of the noise probes (solved to the looser of ``tolerance``
        and :data:`PROBE_TOLERANCE`: their Monte-Carlo error dominates).
    :param progress: callable ``(str) -> None`` told after each EM round the
        noise variance, the prior's range over shells, the CG iterations and
        residual (and a long solve's residual every 30 s), or None.
    :returns: :class:`FourierPosterior`; its history holds the noise variance
        and CG residuals of every round and ``passes``, the passes over the
        data by kind: ``normal`` (forward and adjoint of every particle: CG
        iterations), ``adjoint`` (data term, gridding weights, probe
        right-hand sides), ``forward`` (EM residual power), ``density``.
    """
    box = problem.box
    report = _Reporter(progress)
    estimate_noise = noise_variance is None
    estimate_prior = prior_variance is None
    noise = initial_noise_variance(problem) if estimate_noise else float(
        _check_variance(noise_variance, "noise_variance"))
    passes = {}
    data = problem.data_term()
    density = problem.sampling_density()
    rows = problem.row_sums()
    _count(passes, "adjoint", 2)
    _count(passes, "density")
    report(f"Data term, sampling density and gridding weights of {problem.n_particles} "
           f"particles ({problem.n_particles * problem.half_plane.size} coefficients)")
    if estimate_prior:
        # Start from the power of the gridded data: an over-estimate EM pulls down.
        direct = np.abs(data) ** 2 / np.maximum(rows, 1e-3 * rows.max()) ** 2
        sampled = rows > 1e-3 * rows.max()
        prior_shell = np.maximum(shell_sums(np.where(sampled, direct, 0.0))
                                 / np.maximum(shell_sums(sampled.astype(float)), 1), _TINY)
        prior_shell = np.maximum(prior_shell, prior_shell.max() * 1e-12)
    else:
        prior_shell = _check_variance(prior_variance, "prior_variance")
    rounds = em_iterations if (estimate_noise or estimate_prior) else 1
    mean = np.zeros((box,) * 3, np.complex128)
    history = {"noise_variance": [], "cg_residuals": [], "passes": passes}
    for round_ in range(rounds):
        prior = expand_shells(prior_shell, box)
        scale = _noise_scale(problem, noise)
        variance = 1.0 / (1.0 / prior + density / scale)
        preconditioner = 1.0 / (1.0 / prior + rows / scale)
        mean, residuals = _conjugate_gradients(
            _normal_equations(problem, scale, prior, passes), data / scale, preconditioner,
            mean, cg_iterations,
            tolerance if round_ == rounds - 1 else max(tolerance, EM_TOLERANCE), report)
        posterior = FourierPosterior(mean, variance, prior, noise, problem.kernel, history)
        history["noise_variance"].append(noise)
        history["cg_residuals"].append(residuals)
        shells = np.atleast_1d(prior_shell)
        report(f"EM round {round_ + 1}/{rounds}: noise variance {noise:.4g}, prior "
               f"{shells[0]:.3g} (shell 0) to {shells[-1]:.3g} (shell {shells.size - 1}), "
               f"{len(residuals)} CG iterations, relative residual "
               f"{residuals[-1] if residuals else 0.0:.2g}")
        if estimate_noise:
            noise = estimate_noise_variance(problem, posterior)
            _count(passes, "forward")
        if estimate_prior:
            prior_shell = estimate_prior_variance(posterior)
    if noise_probes:
        posterior.noise_power = _propagate_noise(problem, posterior, noise_probes, rng,
                                                 max(cg_iterations, 60),
                                                 max(tolerance, PROBE_TOLERANCE), rows,
                                                 progress, passes)
    return posterior


def fit_variational(problem, noise_variance, prior_variance, batch_size=64, epochs=20,
                    step=0.3, rng=0, start=None, progress=None):
    """Stochastic variational fit of the mean-field posterior in minibatches (eq 15).

    Each step uses the minibatch ``B`` scaled by ``N / |B|`` and the
    closed-form expected likelihood (notes §4.2):

    * precision ``lambda = 1 / Var``: natural-gradient step
      ``lambda <- (1 - r) lambda + r (1/s0^2 + (N/|B|) S_B / (D^2 sigma^2))``
      with ``r = 1 / t`` (an exact running average of the minibatch densities);
    * mean: ``mu <- mu - step * P * grad`` with the gridding-weight
      preconditioner ``P`` (a minibatch estimate averaged the same way), and
      Polyak averaging over the second half of the steps.

    :param noise_variance: ``sigma^2`` per pixel (e.g. from :func:`fit_closed_form`).
    :param prior_variance: scalar, per-shell ``(D//2+1,)`` or ``(D, D, D)`` ``s0^2``.
    :param batch_size: particles per minibatch.
    :param epochs: passes over the data.
    :param step: mean step size (stable below about 1 with this preconditioner).
    :param rng: seed of the minibatch order.
    :param start: starting mean grid, or None for zero.
    :param progress: callable ``(str) -> None`` told after each epoch its ELBO
        estimate and the change from the previous epoch, or None.
    :returns: :class:`FourierPosterior`; history holds the number of steps and
        ``elbo``, one estimate per epoch: the epoch's average of the minibatch
        expected log-likelihoods (scaled by ``N / |B|``, at the mean and
        variance of their step) minus ``KL(q || prior)`` at the epoch's end.
        Only the minibatches are read: one epoch is one pass over the data.
    """
    box = problem.box
    scale = _noise_scale(problem, float(_check_variance(noise_variance, "noise_variance")))
    prior_variance = _check_variance(prior_variance, "prior_variance")
    prior = (prior_variance if prior_variance.shape == (box,) * 3
             else expand_shells(prior_variance, box))
    rng = np.random.default_rng(rng)
    n = problem.n_particles
    batch_size = min(int(batch_size), n)
    mean = np.zeros((box,) * 3, np.complex128) if start is None else start.astype(np.complex128)
    precision = 1.0 / prior
    rows_average = np.zeros((box,) * 3)
    average = np.zeros_like(mean)
    n_averaged = 0
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    weight = problem.sample_weight
    # Normalising constant of the Gaussian likelihood per particle (complex and real DC terms).
    constant = -(np.count_nonzero(weight == 1.0) * np.log(np.pi * scale)
                 + 0.5 * np.count_nonzero(weight < 1.0) * np.log(2 * np.pi * scale))
    report = _Reporter(progress)
    elbos = []
    t = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        expected = 0.0
        for b in range(steps_per_epoch):
            t += 1
            part = np.sort(order[b * batch_size:(b + 1) * batch_size])
            factor = n / part.size
            rate = 1.0 / t
            density = problem.sampling_density(part)
            difference = (problem.forward(mean.astype(problem.operator.complex_dtype), part)
                          - problem.spectra_batch(part))
            # E|X - A V|^2 under q: the residual power plus sum_j Var_j S_B,j / 2
            # (S counts k and -k, Var is Hermitian-symmetric).
            power = (np.sum(np.abs(difference) ** 2 @ weight)
                     + 0.5 * np.sum(density / precision))
            expected += factor * (part.size * constant - power / scale)
            precision = (1 - rate) * precision + rate * (1.0 / prior + factor * density / scale)
            rows_average = (1 - rate) * rows_average + rate * factor * problem.row_sums(part)
            residual = problem.adjoint(difference, part)
            gradient = factor * residual / scale + mean / prior
            mean = mean - step * gradient / (1.0 / prior + rows_average / scale)
            if t > total // 2:
                n_averaged += 1
                average += (mean - average) / n_averaged
        if steps_per_epoch:
            variance = 1.0 / precision
            kl = 0.5 * np.sum(np.log(prior / variance) + (variance + np.abs(mean) ** 2) / prior
                              - 1.0)
            elbos.append(float(expected / steps_per_epoch - kl))
            change = "" if len(elbos) < 2 else f" (change {elbos[-1] - elbos[-2]:+.4g})"
            report(f"Epoch {epoch + 1}/{epochs}: ELBO {elbos[-1]:.8g}{change}, "
                   f"{steps_per_epoch} minibatches of {batch_size}")
    history = {"steps": t, "batch_size": batch_size, "elbo": elbos}
    return FourierPosterior(average if n_averaged else mean, 1.0 / precision, prior,
                            scale / box ** 2, problem.kernel, history)


def log_likelihood(problem, posterior):
    """Held-out log-likelihood of every particle under the posterior predictive.

    The predictive of coefficient ``k`` is Gaussian with mean ``A mu`` and
    variance ``D^2 sigma^2 + c^2 sum w^2 Var`` (diagonal: correlations between
    coefficients are ignored); complex coefficients count
    ``-|r|^2/v - log(pi v)``, the real DC ``-r^2/(2v) - log(2 pi v)/2``.  The
    sum runs over the model's frequency disc, so values compare between
    particles and posteriors, not with other image models.

    :returns: ``(n,)`` float64.
    """
    if posterior.box != problem.box:
        raise ShapeError(f"posterior box {posterior.box} differs from the particle box "
                         f"{problem.box}; use particles and posterior of one box size")
    noise = _noise_scale(problem, posterior.noise_variance)
    dc = problem.sample_weight < 1.0
    out = np.empty(problem.n_particles)
    for p in problem.batches():
        residual = problem.spectra_batch(p) - problem.forward(
            posterior.mean.astype(problem.operator.complex_dtype), p)
        v = noise + problem.gathered_variance(posterior.variance, p)
        complex_terms = -(np.abs(residual) ** 2) / v - np.log(np.pi * v)
        real_terms = -(residual.real ** 2) / (2 * v) - 0.5 * np.log(2 * np.pi * v)
        out[p] = np.where(dc, real_terms, complex_terms).sum(axis=1)
    return out
