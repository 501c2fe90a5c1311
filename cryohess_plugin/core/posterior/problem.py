"""Data of the Fourier-slice posterior: particle spectra (in memory or in ``.npy`` files), their
poses and CTF values, and the linear slice model ``A`` with its adjoint.

The model and its conventions are described in :mod:`.fit`.
"""
import itertools
import os
from dataclasses import dataclass, fields

import numpy as np

from .. import ctf as ctf_model
from .. import fourier
from .. import noise as noise_model
from ..errors import InvalidDataError, MissingMetadataError, ShapeError
from ..progress import Reporter
from ..fourier import hermitian_fold, mirror
from ..kernels import posterior_cpu
from ..projector import SliceOperator
from ..rotations import validate_poses

_MARGIN = {"linear": 1, "cubic": 2}
TINY = 1e-30


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
    :param interpolation: interpolation kernel of the model (sets the disc).
    :param dtype: float precision of the stored spectra.
    """

    def __init__(self, path, count, box, interpolation="linear", dtype=np.float64):
        if interpolation not in _MARGIN:
            raise ValueError(f"interpolation must be one of {sorted(_MARGIN)}, got {interpolation!r}")
        if count < 1:
            raise InvalidDataError("the particle stack is empty; select some particles")
        self.box, self.count = int(box), int(count)
        self.half_plane = fourier.HalfPlane.disc(self.box, self.box / 2 - _MARGIN[interpolation])
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


def write_spectra(path, images, interpolation="linear", dtype=np.float64, batch_size=512):
    """Half-plane spectra of ``images`` ``(n, D, D)`` (an array or memory map) to ``path``
    (``.npy``), ``batch_size`` images at a time; see :class:`SpectraWriter`."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ShapeError(f"images must be a stack (n, D, D) of square images, got shape "
                         f"{images.shape}")
    with SpectraWriter(path, images.shape[0], images.shape[1], interpolation, dtype) as writer:
        for start in range(0, images.shape[0], int(batch_size)):
            writer.write(images[start:start + int(batch_size)])
    return path


class CTFTable:
    """The CTF values ``(n, m)`` of particles at the model's half-plane points
    (:meth:`PosteriorProblem.ctf_frequencies`), evaluated from each particle's parameters
    when a batch is read: a particle's CTF costs a few numbers in memory and on disk, not
    ``m`` values.  Indexing gives the table of those rows; ``np.asarray`` the values.

    :param rows: ``(n, fields)`` CTF parameters (:func:`.ctf.params_to_rows`).
    """
    ndim = 2

    def __init__(self, rows, box, pixel_size, interpolation="linear"):
        self.rows = np.asarray(rows, dtype=np.float64)
        self.box, self.pixel_size, self.interpolation = int(box), float(pixel_size), interpolation
        self._kx, self._ky = PosteriorProblem.ctf_frequencies(self.box, interpolation)

    @property
    def shape(self):
        return (self.rows.shape[0], self._kx.size)

    def __len__(self):
        return self.rows.shape[0]

    def __getitem__(self, rows):
        return CTFTable(self.rows[rows].reshape(-1, self.rows.shape[1]), self.box,
                        self.pixel_size, self.interpolation)

    def __array__(self, dtype=None, copy=None):
        return ctf_model.ctf_stack_from_rows(self.rows, self._kx, self._ky, self.box,
                                             self.pixel_size, np.float64 if dtype is None
                                             else dtype)

    def save(self, path):
        """Write the table to the ``.npz`` ``path`` (under a temporary name, then renamed)."""
        temporary = path + ".tmp.npz"
        np.savez(temporary, rows=self.rows, box=self.box, pixel_size=self.pixel_size,
                 interpolation=self.interpolation)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path):
        """The table written by :meth:`save`."""
        with np.load(path) as stored:
            return cls(stored["rows"], int(stored["box"]), float(stored["pixel_size"]),
                       str(stored["interpolation"]))


@dataclass(frozen=True)
class ParticleFiles:
    """The ``.npy`` files a particle stack is converted to (:func:`write_particle_files`).

    :param spectra: complex64 ``(n, m)`` half-plane spectra at
        :meth:`PosteriorProblem.ctf_frequencies` (:class:`SpectraWriter`).
    :param ctf: ``.npz`` of the particles' CTF parameters (:class:`CTFTable`), a few
        numbers per particle instead of ``m`` values.
    :param images: float32 ``(n, D, D)`` images, or None when not kept (pose refinement
        needs them: it compares on its own frequency disc).
    """
    spectra: str
    ctf: str
    images: str = None

    @classmethod
    def in_directory(cls, directory, images=False):
        """``spectra.npy``, ``ctf_params.npz`` and, with ``images``, ``images.npy``."""
        return cls(os.path.join(directory, "spectra.npy"),
                   os.path.join(directory, "ctf_params.npz"),
                   os.path.join(directory, "images.npy") if images else None)

    def problem(self, rotations, shifts=None, backend="cpu"):
        """The :class:`PosteriorProblem` of these files, read as memory maps."""
        return PosteriorProblem(self.spectra, rotations, shifts, CTFTable.load(self.ctf),
                                backend=backend)

    def image_batch(self, first, count):
        """Images ``first .. first + count - 1``, read from the memory-mapped images file."""
        if self.images is None:
            raise MissingMetadataError("these particle files hold no images; convert the "
                                       "particles with ParticleFiles.in_directory(images=True)")
        return np.load(self.images, mmap_mode="r")[first:first + count]


def write_particle_files(files, image_batches, ctf_params, pixel_size, interpolation="linear",
                         progress=None):
    """Write the spectra, CTF parameters and (if ``files.images``) images of a particle stack.

    Batches are transformed and written one at a time, so no step holds every image.
    Every file is written under a temporary name and renamed once all are complete: a
    stopped conversion leaves the complete files or none.

    :param files: :class:`ParticleFiles`.
    :param image_batches: iterable of real image stacks ``(b, D, D)``, in particle order.
    :param ctf_params: one :class:`.ctf.CTFParams` per particle (all batches together).
    :param pixel_size: Å per pixel.
    :param interpolation: interpolation kernel of the model (sets the frequency disc).
    :param progress: :class:`.progress.Progress` events, one per batch.
    :returns: the image size ``D``.
    """
    count = len(ctf_params)
    if count < 1:
        raise InvalidDataError("the particle stack is empty; select some particles")
    batches = iter(image_batches)
    first = np.asarray(next(batches))
    box = first.shape[1]
    paths = [path for path in (files.spectra, files.images) if path is not None]
    temporary = {path: path + ".tmp.npy" for path in paths}
    images_out = None if files.images is None else np.lib.format.open_memmap(
        temporary[files.images], mode="w+", dtype=np.float32, shape=(count, box, box))
    report = Reporter(progress)
    done = 0
    with SpectraWriter(temporary[files.spectra], count, box, interpolation,
                       dtype=np.float32) as writer:
        for images in itertools.chain([first], batches):
            rows = slice(done, done + len(images))
            writer.write(images)
            if images_out is not None:
                images_out[rows] = images
            done += len(images)
            report("Converted particles", done, count)
    if images_out is not None:
        images_out.flush()
    del images_out
    CTFTable(ctf_model.params_to_rows(ctf_params), box, pixel_size, interpolation).save(files.ctf)
    for path in paths:
        os.replace(temporary[path], path)
    return box


def particle_file_bytes(count, box, images=False, interpolation="linear"):
    """Disk space of :func:`write_particle_files` for ``count`` particles of ``box`` px."""
    points = fourier.HalfPlane.disc(box, box / 2 - _MARGIN[interpolation]).size
    total = count * (points * np.dtype(np.complex64).itemsize
                     + len(fields(ctf_model.CTFParams)) * np.dtype(np.float64).itemsize)
    if images:
        total += count * box * box * np.dtype(np.float32).itemsize
    return total


#: Complex128 ``D^3`` grids alive at the peak of a fit (:func:`.fit.fit_closed_form`:
#: data term, mean, the CG vectors, the normal operator's sums, the posterior's
#: variance and prior; tracemalloc measured 18.1 at 32 and 64 px with 20 particles,
#: rounded up).
FIT_GRIDS = 19


#: Complex ``(batch, m)`` arrays alive per batch of particles at the peak of a fit (the
#: spectra, the model and the residual; tracemalloc measured 1.9 to 2.6, rounded up).
BATCH_ARRAYS = 4


def fit_memory_bytes(box, particles, batch_size=512, interpolation="linear"):
    """Memory of one posterior fit of ``particles`` particles of ``box`` px: its Fourier
    grids and the arrays of one batch (the spectra themselves stay on disk)."""
    points = fourier.HalfPlane.disc(box, box / 2 - _MARGIN[interpolation]).size
    complex_bytes = np.dtype(np.complex128).itemsize
    return complex_bytes * (FIT_GRIDS * box ** 3
                            + BATCH_ARRAYS * min(batch_size, particles) * points)


def _box_of_spectra(size, interpolation):
    """The image size whose model disc has ``size`` half-plane points."""
    guess = int(round(2 * (np.sqrt(2 * size / np.pi) + _MARGIN[interpolation])))
    for box in range(max(guess - 4, 2), guess + 5):
        if fourier.HalfPlane.disc(box, box / 2 - _MARGIN[interpolation]).size == size:
            return box
    raise ShapeError(f"{size} coefficients per particle match no image size's half-plane disc "
                     f"({interpolation} interpolation); write spectra with write_spectra")


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
        (:meth:`ctf_frequencies`): an array, memory map, ``.npy`` path or
        :class:`CTFTable`; or None for CTF-free data.
    :param interpolation: interpolation kernel of the model (``"linear"``: the paper's).
    :param dtype: float precision of the spectra and grids.
    :param backend: backend of the slice operator.
    :param batch_size: images per pass of the slice kernels (and per read).
    """

    def __init__(self, images, rotations, shifts=None, ctf=None, interpolation="linear",
                 dtype=np.float64, backend="cpu", batch_size=512):
        if interpolation not in _MARGIN:
            raise ValueError(f"interpolation must be one of {sorted(_MARGIN)}, got {interpolation!r}")
        images = _open_array(images)
        is_spectra = images.ndim == 2 and np.iscomplexobj(images)
        if not is_spectra and (images.ndim != 3 or images.shape[1] != images.shape[2]):
            raise ShapeError(f"images must be a stack (n, D, D) of square images or their "
                             f"(n, m) half-plane spectra, got shape {images.shape}")
        n = images.shape[0]
        box = _box_of_spectra(images.shape[1], interpolation) if is_spectra else images.shape[1]
        if n < 1:
            raise InvalidDataError("the particle stack is empty; select some particles")
        if rotations is None:
            raise MissingMetadataError("the particles have no alignment; run an alignment "
                                       "(e.g. the cryohess radial-SVD protocol) first")
        rotations, shifts = validate_poses(rotations, shifts, count=n)
        # Spectra on disk were checked when written (SpectraWriter).
        if not isinstance(images, np.memmap):
            bad = np.count_nonzero(~np.isfinite(images))
            if bad:
                raise InvalidDataError(f"images contain {bad} NaN or infinite values; remove "
                                       "those particles")
        self.operator = SliceOperator(box, padding=1, interpolation=interpolation, dtype=dtype,
                                      backend=backend, radius=box / 2 - _MARGIN[interpolation])
        hp = self.operator.half_plane
        if ctf is not None:
            ctf = ctf if isinstance(ctf, CTFTable) else _open_array(ctf)
            if ctf.shape != (n, hp.size):
                raise ShapeError(f"ctf must hold the CTF of every image at the {hp.size} "
                                 f"half-plane points, shape ({n}, {hp.size}); got {ctf.shape}. "
                                 "Evaluate it at PosteriorProblem.ctf_frequencies(box)")
            if isinstance(ctf, np.ndarray) and not isinstance(ctf, np.memmap) \
                    and not np.isfinite(ctf).all():
                raise InvalidDataError("the CTF values contain NaN or infinite entries; "
                                       "re-estimate the CTF of those micrographs")
        self.box = box
        self.interpolation = interpolation
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
        # The image shell of every point, the index into per-shell noise (0 .. D/2).
        self.point_shells = np.minimum(np.rint(np.hypot(hp.kx, hp.ky)).astype(np.int64),
                                       box // 2)
        # The same weights (0.5 and 1, exact) in the operator's precision, so that
        # weighting a batch's complex64 values makes no complex128 temporary.
        self._weight = self.sample_weight.astype(self.operator.dtype)
        self._rows = np.ascontiguousarray(rotations[:, :2, :])
        if self.operator.backend == "cuda":
            from ..kernels import posterior_cuda as kernels
        else:
            kernels = posterior_cpu
        self._kernels = kernels

    @staticmethod
    def ctf_frequencies(box, interpolation="linear"):
        """``(kx, ky)`` at which :class:`PosteriorProblem` expects CTF values."""
        hp = fourier.HalfPlane.disc(box, box / 2 - _MARGIN[interpolation])
        return hp.kx, hp.ky

    @property
    def n_particles(self):
        return self.rotations.shape[0]

    @property
    def n_shells(self):
        """Image shells ``0 .. D/2`` of per-shell noise."""
        return self.box // 2 + 1

    def point_noise(self, noise_variance):
        """``E|N(k)|² = D² sigma²(shell of k)`` at every half-plane point, ``(m,)``.

        :param noise_variance: ``sigma²`` per pixel, a number (white noise) or one per
            image shell ``0 .. D/2`` (coloured noise).
        """
        noise_variance = np.asarray(noise_variance, dtype=np.float64)
        if noise_variance.ndim == 0:
            return np.full(self.half_plane.size, self.box ** 2 * float(noise_variance))
        if noise_variance.shape != (self.n_shells,):
            raise ShapeError(f"per-shell noise must have one value per image shell 0 .. "
                             f"{self.box // 2}, shape ({self.n_shells},); got "
                             f"{noise_variance.shape}")
        return self.box ** 2 * noise_variance[self.point_shells]

    def noise_weights(self, noise_variance):
        """``W / E|N(k)|²`` at every half-plane point: the likelihood's weights."""
        return self.sample_weight / self.point_noise(noise_variance)

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

    def _batches_with_ctf(self, part, ctf):
        """:meth:`batches` of ``part``; a single one when the caller gives its ``ctf``."""
        if ctf is None:
            return self.batches(part)
        part = slice(None) if part is None else part
        if len(ctf) != self._count(part):
            raise ShapeError(f"ctf holds {len(ctf)} particles, the batch {self._count(part)}")
        return [part]

    def batches(self, index=None):
        """Slices (or index arrays) of at most ``batch_size`` particles."""
        if index is None:
            return [slice(s, min(s + self.batch_size, self.n_particles))
                    for s in range(0, self.n_particles, self.batch_size)]
        return [index[s:s + self.batch_size] for s in range(0, len(index), self.batch_size)]

    def batch_ctf(self, part):
        """CTF values ``(len(part), m)`` (float64) of the particles ``part``, or None without
        CTF: evaluated once, they serve every operator of a batch as its ``ctf``."""
        if self._ctf_source is None:
            return None
        return np.asarray(self._ctf_source[self._source_rows(part)], np.float64)

    def _operator_ctf(self, part, ctf=None):
        """CTF of ``part`` in the operator's precision (one conversion, not two); ``ctf``:
        the batch's :meth:`batch_ctf`, when the caller already has it."""
        if ctf is not None:
            return np.asarray(ctf, self.operator.dtype)
        if self._ctf_source is None:
            return None
        return np.asarray(self._ctf_source[self._source_rows(part)], self.operator.dtype)

    def _ctf_squared(self, part, count, ctf=None):
        ctf = self.batch_ctf(part) if ctf is None else ctf
        return np.ones((count, self.half_plane.size)) if ctf is None else ctf ** 2

    # ------------------------------------------------------------- operators
    def forward(self, grid, part, ctf=None):
        """Model spectra ``(len(part), m)`` of ``grid`` for particles ``part``; ``ctf``:
        their :meth:`batch_ctf`, when the caller already has it."""
        hp = self.half_plane
        ctf = self._operator_ctf(part, ctf)
        return self.operator.slices(grid, self.rotations[part], hp.kx, hp.ky,
                                    self.shifts[part], ctf)

    def _point_weights(self, weights):
        """Per-point weights in the operator's precision: ``W`` by default."""
        return self._weight if weights is None else np.asarray(weights, self.operator.dtype)

    def _scatter(self, values, part, total, weights=None, ctf=None):
        """Add ``A^H (weights values)`` (not yet Hermitian-folded) into the complex128
        ``total``; ``weights`` ``(m,)`` default to ``W``; ``ctf`` as in :meth:`forward`."""
        hp = self.half_plane
        weighted = np.asarray(values, self.operator.complex_dtype) * self._point_weights(weights)
        ctf = self._operator_ctf(part, ctf)
        total += self.operator.slices_adjoint(weighted, self.rotations[part], hp.kx, hp.ky,
                                              self.shifts[part], ctf)
        return total

    # Every operator takes per-point ``weights`` ``(m,)``, ``W`` by default; the fits pass
    # :meth:`noise_weights`, ``W / E|N(k)|²``, the weights of the likelihood.
    def adjoint(self, values, part, weights=None, ctf=None):
        """``herm(A^H (weights values))`` for particles ``part`` (a complex grid); ``ctf`` as
        in :meth:`forward`."""
        return hermitian_fold(self._scatter(values, part,
                                            np.zeros((self.box,) * 3, np.complex128), weights,
                                            ctf))

    def data_term(self, part=None, weights=None):
        """``herm(A^H W X)`` over the particles ``part`` (all by default)."""
        total = np.zeros((self.box,) * 3, np.complex128)
        for p in self.batches(part):
            self._scatter(self.spectra_batch(p), p, total, weights)
        # The fold is linear: once for the sum, not once per batch.
        return hermitian_fold(total)

    def normal(self, grid, part=None, weights=None):
        """``herm(A^H W A grid)`` over the particles ``part``."""
        grid = grid.astype(self.operator.complex_dtype)
        total = np.zeros((self.box,) * 3, np.complex128)
        for p in self.batches(part):
            # One CTF evaluation per batch serves the slice and its adjoint.
            ctf = self._operator_ctf(p)
            self._scatter(self.forward(grid, p, ctf), p, total, weights, ctf)
        return hermitian_fold(total)

    def sampling_density(self, part=None, weights=None, ctf=None):
        """``S_j = sum c^2 W w^2`` over ``k`` and ``-k`` (real grid); ``ctf``: the
        :meth:`batch_ctf` of ``part`` when it is one batch and the caller has it."""
        weights = self.sample_weight if weights is None else weights
        density = np.zeros((self.box,) * 3)
        for p in self._batches_with_ctf(part, ctf):
            values = np.ascontiguousarray(self._ctf_squared(p, self._count(p), ctf) * weights)
            hp = self.half_plane
            self._kernels.sampling_density(values, self._rows[p], hp.kx, hp.ky,
                                           self.operator.interpolation_id, density)
        return density + mirror(density)

    def row_sums(self, part=None, weights=None, ctf=None):
        """``herm(A^H W c^2)`` without shifts: the gridding weights, a preconditioner;
        ``ctf`` as in :meth:`sampling_density`."""
        weights = self.sample_weight if weights is None else weights
        density = np.zeros((self.box,) * 3, np.complex128)
        hp = self.half_plane
        for p in self._batches_with_ctf(part, ctf):
            values = (self._ctf_squared(p, self._count(p), ctf) * weights).astype(
                self.operator.complex_dtype)
            density += self.operator.slices_adjoint(values, self.rotations[p], hp.kx, hp.ky)
        return np.maximum(hermitian_fold(density).real, 0.0)

    def gathered_variance(self, variance, part):
        """``sum_j c^2 w^2 Var_j`` at every sample of particles ``part``: ``(n, m)``."""
        hp = self.half_plane
        rows = self._rows[part]
        out = np.empty((rows.shape[0], hp.size))
        self._kernels.gather_squared(np.ascontiguousarray(variance, np.float64), rows, hp.kx,
                                     hp.ky, self.operator.interpolation_id, out)
        if self._ctf_source is not None:
            out *= self.batch_ctf(part) ** 2
        return out

    def _residuals(self, mean, part):
        """``X - A mean`` of the particles ``part``, ``(len(part), m)``; ``X`` when ``mean``
        is None."""
        if mean is None:
            return self.spectra_batch(part)
        return self.spectra_batch(part) - self.forward(
            mean.astype(self.operator.complex_dtype), part)

    def residual_power(self, mean, variance=None, part=None):
        """Per-particle ``sum_k W E|X - A V|^2`` under the posterior ``(mean, variance)``."""
        index = np.arange(self.n_particles) if part is None else np.asarray(part)
        out = np.empty(index.size)
        for start in range(0, index.size, self.batch_size):
            p = index[start:start + self.batch_size]
            power = np.abs(self._residuals(mean, p)) ** 2
            if variance is not None:
                power = power + self.gathered_variance(variance, p)
            out[start:start + p.size] = power @ self.sample_weight
        return out

    def shell_residual_power(self, mean, variance=None):
        """Per image shell ``0 .. D/2``, the mean of ``E|X(k) - (A V)(k)|^2`` over the
        particles and the shell's points under the posterior ``(mean, variance)``
        (:func:`.noise.shell_noise_power`; ``mean`` None: of the data ``|X|^2``); shells
        without points are NaN."""
        hp = self.half_plane
        total = np.zeros(self.n_shells)
        for p in self.batches():
            extra = None if variance is None else self.gathered_variance(variance, p)
            # Shell means of per-point means: batches combine weighted by their size.
            total += self._count(p) * noise_model.shell_noise_power(
                self._residuals(mean, p), hp.kx, hp.ky, self.n_shells, extra)
        return total / self.n_particles
