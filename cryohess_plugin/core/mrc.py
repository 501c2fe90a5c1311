"""MRC input/output with validation.

Arrays are float32 indexed ``(z, y, x)`` for volumes and ``(n, y, x)`` for
stacks, as :mod:`mrcfile` lays them out; sizes are in Å.  Every reader
checks that the file is an MRC file, that its data block is as long as the
header says, and that every value is finite, and raises a
:mod:`.errors` exception naming the file otherwise.  Writers never replace an
existing file unless asked to, and then only once the new file is complete.
"""
import contextlib
import os
import warnings

import mrcfile
import mrcfile.constants
import mrcfile.utils
import numpy as np

from .errors import InvalidDataError, MrcFileError, ShapeError

_HEADER_BYTES = 1024


@contextlib.contextmanager
def _open(path, opener, **options):
    """``opener(path)`` read-only and permissive, as an :class:`MrcFileError` if it fails."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MrcFileError(f"MRC file {path} does not exist; check the path")
    # Permissive mode turns mrcfile's errors into warnings, so the checks
    # below can report the problem precisely instead of a bare ValueError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            mrc = opener(path, mode="r", permissive=True, **options)
        except (ValueError, OSError) as err:
            raise MrcFileError(f"{path} is not a readable MRC file: {err}") from None
    with mrc:
        yield mrc


def _check_header(path, header):
    """The data shape ``(z, y, x)`` of a sound header whose file holds all its data."""
    if header.map != mrcfile.constants.MAP_ID:
        raise MrcFileError(f"{path} is not an MRC file (no 'MAP ' identifier in its header)")
    try:
        itemsize = mrcfile.utils.dtype_from_mode(header.mode).itemsize
    except ValueError:
        raise MrcFileError(f"{path} has unsupported MRC data mode {int(header.mode)}") from None
    shape = (int(header.nz), int(header.ny), int(header.nx))
    expected = _HEADER_BYTES + int(header.nsymbt) + int(np.prod(shape)) * itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise MrcFileError(
            f"{path} is truncated: header says {shape[::-1]} (x, y, z) voxels, i.e. "
            f"{expected} bytes, but the file has {actual} bytes; copy or write it again")
    if (int(header.mapc), int(header.mapr), int(header.maps)) != (1, 2, 3):
        raise MrcFileError(
            f"{path} has axis order (mapc, mapr, maps) = ({int(header.mapc)}, "
            f"{int(header.mapr)}, {int(header.maps)}); only (1, 2, 3) is supported, "
            f"resave it with x fastest (e.g. relion_image_handler or Chimera)")
    return shape


@contextlib.contextmanager
def _open_checked(path, mmap=False):
    """Open ``path`` read-only after checking that its header and size are sound."""
    with _open(path, mrcfile.mmap if mmap else mrcfile.open) as mrc:
        _check_header(os.fspath(path), mrc.header)
        yield mrc


def read_header(path):
    """The data shape ``(z, y, x)`` and voxel size (Å) of an MRC file, from its header only.

    Checks what a reader checks without reading the data: the file is MRC, its data
    mode is supported, its size holds the data the header announces and x runs
    fastest.  A stack of ``n`` images has shape ``(n, y, x)``.
    """
    with _open(path, mrcfile.open, header_only=True) as mrc:
        return _check_header(os.fspath(path), mrc.header), float(mrc.voxel_size.x)


def _finite_float32(data, path):
    """``data`` as float32, or :class:`InvalidDataError` if any value is NaN or inf."""
    # A native-endian, writable copy: mrcfile hands out read-only arrays
    # (memory maps for read_image) that may be big-endian.
    data = np.array(data, dtype=np.float32)
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InvalidDataError(f"{path} contains {bad} NaN or infinite values out of "
                               f"{data.size}; fix or regenerate the map")
    return data


def read_volume(path):
    """Read a cubic 3-D map.

    :param path: MRC file.
    :returns: ``(volume, voxel_size)``: float32 array ``(n, n, n)`` indexed
        ``(z, y, x)`` and the voxel size in Å (x spacing of the header).
    """
    with _open_checked(path) as mrc:
        if mrc.data.ndim != 3 or len(set(mrc.data.shape)) != 1:
            raise ShapeError(f"volume must be cubic, got {mrc.data.shape} in {os.fspath(path)}; "
                             f"pad or crop it to a cube")
        return _finite_float32(mrc.data, path), float(mrc.voxel_size.x)


def read_stack(path, check_finite=True):
    """Read all images of a stack; a single 2-D image gives a stack of one.

    :param path: MRC file (``.mrc`` or ``.mrcs``).
    :param check_finite: refuse NaN or infinite values (False: the caller checks, e.g.
        to name every bad image).
    :returns: float32 array ``(n, y, x)``.
    """
    with _open_checked(path) as mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[np.newaxis]
        return _finite_float32(data, path) if check_finite else np.array(data, np.float32)


def read_image(path, index, check_finite=True):
    """Read one image of a stack without loading the others.

    :param path: MRC file.
    :param index: 0-based image index (Scipion locations are 1-based).
    :param check_finite: as for :func:`read_stack`.
    :returns: float32 array ``(y, x)``.
    """
    with _open_checked(path, mmap=True) as mrc:
        count = mrc.data.shape[0] if mrc.data.ndim == 3 else 1
        if not 0 <= index < count:
            raise IndexError(f"image index {index} is outside 0 .. {count - 1} of {os.fspath(path)}")
        data = mrc.data[index] if mrc.data.ndim == 3 else mrc.data
        if not check_finite:
            return np.array(data, np.float32)
        return _finite_float32(data, f"image {index + 1}@{os.fspath(path)}")


def _write(path, data, sampling, overwrite, as_stack):
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not (np.isfinite(sampling) and sampling > 0):
        raise InvalidDataError(f"pixel size must be positive and finite, got {sampling} Å")
    data = _finite_float32(data, f"data for {path}")
    # Write next to the target and rename, so an existing file is only
    # replaced by a complete one.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if as_stack:
                mrc.set_image_stack()
            mrc.voxel_size = float(sampling)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_volume(path, array, voxel_size, overwrite=False):
    """Write a cubic map as float32 MRC.

    :param path: output file.
    :param array: ``(n, n, n)`` indexed ``(z, y, x)``.
    :param voxel_size: Å.
    :param overwrite: replace an existing file.
    """
    array = np.asarray(array)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise ShapeError(f"volume must be cubic, got {array.shape}")
    _write(path, array, voxel_size, overwrite, as_stack=False)


def write_stack(path, array, pixel_size, overwrite=False):
    """Write images as a float32 MRC stack.

    :param path: output file (``.mrcs`` by convention).
    :param array: ``(n, y, x)``.
    :param pixel_size: Å.
    :param overwrite: replace an existing file.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ShapeError(f"stack must be (n, y, x), got shape {array.shape}")
    _write(path, array, pixel_size, overwrite, as_stack=True)
