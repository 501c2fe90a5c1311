"""Conversion between Scipion objects and the arrays of the numerical core.

This is the only module where Scipion metadata (poses, CTF, acquisition,
locations of images, coordinates, extra columns) meets numpy arrays; the core
(``cryohess_plugin.core``) never imports pyworkflow or pwem.

Pose convention
---------------
The core describes the pose of a particle by a rotation matrix ``R`` and a
shift ``t = (tx, ty)`` in pixels: a density point at ``r`` (from the box
centre) lands at image pixel ``(R @ r)[:2] + t`` from the image centre (see
:mod:`cryohess_plugin.core.rotations`).  ``R`` equals
``xmippLib.Euler_angles2matrix(rot, tilt, psi)``.

Scipion stores Xmipp's geometry ``(rot, tilt, psi, shiftX, shiftY)`` as a
4x4 matrix (``matrixFromGeometry`` of the Xmipp plugin).  With
``s = (shiftX, shiftY, 0)`` (Xmipp shifts move the image content by ``+s`` to
align it, so the particle centre sits at ``-s``, i.e. ``t = -s[:2]``) and
``M = euler_matrix(-rot, -tilt, -psi, 'szyz')`` (pwem.convert.transformations),
whose rotation block is exactly ``R``:

* ``ALIGN_PROJ`` stores ``T = inv([[R, -s], [0, 1]]) = [[R^T, R^T s], [0, 1]]``,
  i.e. ``T[:3, :3] = R^T`` and ``T[:3, 3] = -R^T (tx, ty, 0)``.
* ``ALIGN_2D`` stores ``T = [[R, s], [0, 1]]``, i.e. ``T[:3, :3] = R`` and
  ``T[:3, 3] = (-tx, -ty, 0)``.

CTF
---
``CTFModel`` defocus U/V (Å) and angle (degrees) plus the acquisition's
voltage (kV), Cs (mm) and amplitude contrast map one to one onto
:class:`~cryohess_plugin.core.ctf.CTFParams`; models are written through
``CTFModel.standardize()`` (EMX: U >= V, 0 <= angle < 180), which describes the
same CTF.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyworkflow.object as pwobj
from pwem.constants import ALIGN_2D, ALIGN_NONE, ALIGN_PROJ, NO_INDEX
from pwem.objects import (FSC, Acquisition, Coordinate, CTFModel, Micrograph, Particle,
                          SetOfClasses2D, Transform, Volume)

from .core import mrc
from .core.ctf import CTFParams
from .core.errors import (CryoHessError, InvalidDataError, MissingMetadataError,
                          SamplingMismatchError, ShapeError)

#: Relative tolerance when comparing pixel sizes of two inputs.
SAMPLING_RTOL = 1e-3


# --------------------------- Poses ---------------------------------------------

def transform_from_pose(rotation, shift, alignment=ALIGN_PROJ):
    """Scipion ``Transform`` of one pose of the core.

    :param rotation: rotation matrix ``R`` (3, 3) of the core convention.
    :param shift: particle-centre offset ``t = (tx, ty)`` in pixels.
    :param alignment: ``ALIGN_PROJ`` or ``ALIGN_2D`` (the set's alignment type).
    :returns: ``pwem.objects.Transform``.
    """
    return Transform(matrix_from_pose(rotation, shift, alignment))


def matrix_from_pose(rotation, shift, alignment=ALIGN_PROJ):
    """The 4x4 matrix that Scipion stores for a pose (see the module docstring)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3):
        raise ShapeError(f"a pose rotation must be a (3, 3) matrix, got {rotation.shape}")
    t = np.zeros(3)
    t[:2] = np.asarray(shift, dtype=np.float64)[:2]
    matrix = np.eye(4)
    if alignment == ALIGN_PROJ:
        matrix[:3, :3] = rotation.T
        matrix[:3, 3] = -rotation.T @ t
    elif alignment == ALIGN_2D:
        matrix[:3, :3] = rotation
        matrix[:3, 3] = -t
    else:
        raise ValueError(f"alignment must be {ALIGN_PROJ!r} or {ALIGN_2D!r}, got {alignment!r}")
    return matrix


def pose_from_transform(transform, alignment=ALIGN_PROJ):
    """Pose of the core from a Scipion ``Transform`` (inverse of :func:`transform_from_pose`).

    :param transform: ``pwem.objects.Transform`` or a 4x4 matrix.
    :param alignment: ``ALIGN_PROJ`` or ``ALIGN_2D``.
    :returns: ``(R (3, 3), t (2,))`` with ``t`` in pixels.
    """
    matrix = np.asarray(transform.getMatrix() if hasattr(transform, "getMatrix") else transform,
                        dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ShapeError(f"a Scipion transform must be a 4x4 matrix, got {matrix.shape}")
    if alignment == ALIGN_PROJ:
        forward = np.linalg.inv(matrix)
        return forward[:3, :3], forward[:2, 3].copy()
    if alignment == ALIGN_2D:
        return matrix[:3, :3].copy(), -matrix[:2, 3]
    raise ValueError(f"alignment must be {ALIGN_PROJ!r} or {ALIGN_2D!r}, got {alignment!r}")


# --------------------------- CTF and acquisition -------------------------------

def ctf_model_from_params(params):
    """Standardised Scipion ``CTFModel`` of a :class:`CTFParams` (defocus part only).

    Voltage, Cs and amplitude contrast belong to the ``Acquisition``
    (:func:`acquisition_from_params`).  The phase shift is always set, so every
    item of a set gets the same columns.
    """
    ctf = CTFModel()
    ctf.setStandardDefocus(params.defocus_u, params.defocus_v, params.defocus_angle)
    ctf.setPhaseShift(params.phase_shift)
    return ctf


def acquisition_from_params(params, magnification=None):
    """Scipion ``Acquisition`` holding the microscope part of a :class:`CTFParams`."""
    return Acquisition(voltage=params.voltage, sphericalAberration=params.spherical_aberration,
                       amplitudeContrast=params.amplitude_contrast, magnification=magnification)


def ctf_params_from_image(image, acquisition=None, phase_flipped=False):
    """:class:`CTFParams` of an image (particle or micrograph) with a CTF.

    :param image: Scipion image carrying a ``CTFModel``.
    :param acquisition: ``Acquisition`` to use; default the image's own.
    :param phase_flipped: the image belongs to a phase-flipped set
        (``isPhaseFlipped()``), so its CTF is ``|CTF|``.
    :raises MissingMetadataError: the image has no CTF or no acquisition values.
    :raises InvalidDataError: the CTF is unusable (e.g. defocus 0), naming the image.
    """
    ctf = image.getCTF()
    if ctf is None or ctf.getDefocusU() is None or ctf.getDefocusV() is None:
        # A NaN defocus reads back from the set's SQLite as a missing one.
        where = (f"{location_text(image)} (id {image.getObjId()})" if image.getFileName()
                 else f"{image.getObjId()}")
        raise MissingMetadataError(
            f"image {where} has no CTF (its defocus is missing or NaN); estimate the CTF "
            f"(e.g. CTFFIND) and use particles extracted with it")
    acquisition = acquisition if acquisition is not None else image.getAcquisition()
    values = None if acquisition is None else (acquisition.getVoltage(),
                                               acquisition.getSphericalAberration(),
                                               acquisition.getAmplitudeContrast())
    if values is None or any(v is None for v in values):
        raise MissingMetadataError(
            f"image {image.getObjId()} has no voltage, Cs or amplitude contrast in its "
            f"acquisition; import the data with the microscope parameters")
    phase_shift = ctf.getPhaseShift() or 0.0
    if min(ctf.getDefocusU(), ctf.getDefocusV()) <= 0 and phase_shift == 0:
        raise InvalidDataError(
            f"image {location_text(image)} (id {image.getObjId()}) has a CTF defocus of "
            f"U = {ctf.getDefocusU():g}, V = {ctf.getDefocusV():g} Å; a defocus of 0 means the "
            "CTF was never estimated: estimate the CTF of the micrographs (e.g. CTFFIND) and "
            "extract or assign the particles with it")
    try:
        return CTFParams(defocus_u=ctf.getDefocusU(), defocus_v=ctf.getDefocusV(),
                         defocus_angle=ctf.getDefocusAngle(), voltage=values[0],
                         spherical_aberration=values[1], amplitude_contrast=values[2],
                         phase_shift=phase_shift, phase_flipped=phase_flipped)
    except InvalidDataError as error:
        raise InvalidDataError(f"image {location_text(image)} (id {image.getObjId()}): "
                               f"{error}") from None


# --------------------------- Extra columns -------------------------------------

def _wrap_value(value):
    """A pyworkflow scalar (or ``CsvList``) holding one column value."""
    if isinstance(value, (bool, np.bool_)):
        return pwobj.Boolean(bool(value))
    if isinstance(value, (int, np.integer)):
        return pwobj.Integer(int(value))
    if isinstance(value, (float, np.floating)):
        return pwobj.Float(float(value))
    if isinstance(value, str):
        return pwobj.String(value)
    array = np.asarray(value)
    if array.ndim == 1:
        csv = pwobj.CsvList(pType=float)
        csv.set([float(v) for v in array])
        return csv
    raise TypeError(f"cannot store a value of type {type(value).__name__} and shape "
                    f"{np.shape(value)} as a Scipion column")


def set_columns(item, columns, index):
    """Set extra columns ``{name: per-item values}`` on ``item`` from entry ``index``."""
    for name, values in columns.items():
        setattr(item, name, _wrap_value(values[index]))


def read_column(item, name):
    """Value of an extra column of ``item``; ``CsvList`` columns come back as float arrays."""
    value = getattr(item, name, None)
    if value is None:
        raise MissingMetadataError(f"item {item.getObjId()} has no column {name}; "
                                   f"use the output of the protocol that writes it")
    if isinstance(value, pwobj.CsvList):
        raw = value.get()
        return np.fromstring(raw, sep=",") if isinstance(raw, str) else np.asarray(value,
                                                                                     float)
    return value.get()


# --------------------------- Particles -----------------------------------------

@dataclass
class ParticleArrays:
    """Arrays of a ``SetOfParticles``, in the set's id order.

    :ivar images: float32 ``(n, box, box)``, or None when not read.
    :ivar pixel_size: Å.
    :ivar ids: int64 ``(n,)`` Scipion item ids.
    :ivar alignment: the set's alignment type (``ALIGN_NONE`` if not read).
    :ivar rotations: float64 ``(n, 3, 3)`` or None.
    :ivar shifts: float64 ``(n, 2)`` in pixels, or None.
    :ivar ctfs: list of ``n`` :class:`CTFParams`, or None.
    :ivar columns: extra columns that were asked for, ``{name: array (n, ...)}``.
    """
    images: Optional[np.ndarray]
    pixel_size: float
    ids: np.ndarray
    alignment: str = ALIGN_NONE
    rotations: Optional[np.ndarray] = None
    shifts: Optional[np.ndarray] = None
    ctfs: Optional[List[CTFParams]] = None
    columns: Dict[str, np.ndarray] = field(default_factory=dict)


#: The ``where`` clause of item queries that leaves out the items a user disabled
#: (unchecked in the set viewer): no computation reads them, as pwem's copyItems copies
#: none of them into an output.
ENABLED = "enabled=1"


def enabled_count(theSet):
    """Number of enabled items of ``theSet``: those the computations read."""
    return len(theSet.getUniqueValues(['id'], where=ENABLED))


def image_file(filename):
    """Path of an image file without Scipion's format suffix (``x.mrc:mrcs``)."""
    base, _, suffix = filename.rpartition(":")
    return base if base and suffix in ("mrc", "mrcs") else filename


def _alignment_to_read(imgSet, need_alignment):
    alignment = imgSet.getAlignment()
    if need_alignment is False:
        return ALIGN_NONE
    wanted = (ALIGN_PROJ, ALIGN_2D) if need_alignment in (None, True) else (need_alignment,)
    if alignment in wanted:
        return alignment
    if need_alignment is None:
        return ALIGN_NONE
    raise MissingMetadataError(
        f"the particles have alignment {alignment!r} but {' or '.join(wanted)} is needed; "
        f"use particles from a refinement or 2D alignment protocol")


def particles_to_arrays(partSet, need_ctf=False, need_alignment=None, columns=(),
                        read_images=True, limit=None, skip=0):
    """Read a ``SetOfParticles`` into arrays.

    :param partSet: Scipion ``SetOfParticles`` (or any ``SetOfImages`` of 2-D images).
    :param need_ctf: read the CTF of every particle; :class:`MissingMetadataError`
        if the set has none.
    :param need_alignment: None reads poses when the set has projection or 2-D
        alignment; True requires one of them, ``ALIGN_PROJ`` / ``ALIGN_2D`` require
        that type; False skips poses.
    :param columns: names of extra columns to read.
    :param read_images: False reads the metadata only (``images`` is None).
    :param limit: read only ``limit`` particles (by id); their images are read one
        by one instead of whole stacks.
    :param skip: with ``limit``, start after the first ``skip`` particles (a batch).
    :returns: :class:`ParticleArrays`.
    """
    if need_ctf and not partSet.hasCTF():
        raise MissingMetadataError("the particles have no CTF; estimate the CTF of the "
                                   "micrographs and extract the particles with it")
    alignment = _alignment_to_read(partSet, need_alignment)
    phase_flipped = bool(partSet.isPhaseFlipped())
    images, ids, rotations, shifts, ctfs = [], [], [], [], []
    values = {name: [] for name in columns}
    stacks = {}
    rows = (limit, skip) if limit is not None and skip else limit
    locations = []
    for particle in partSet.iterItems(orderBy="id", limit=rows, where=ENABLED):
        if read_images:
            images.append(_particle_image(particle, stacks, whole_stacks=limit is None))
            locations.append(location_text(particle))
        ids.append(particle.getObjId())
        if alignment != ALIGN_NONE:
            rotation, shift = pose_from_transform(particle.getTransform(), alignment)
            rotations.append(rotation)
            shifts.append(shift)
        if need_ctf:
            ctfs.append(ctf_params_from_image(particle, phase_flipped=phase_flipped))
        for name in columns:
            values[name].append(read_column(particle, name))
    if not ids:
        raise ShapeError("the set of particles is empty")
    shapes = {image.shape for image in images}
    if read_images and (len(shapes) != 1 or images[0].shape[0] != images[0].shape[1]):
        raise ShapeError(f"particles must be square images of one size, got {sorted(shapes)}")
    if read_images:
        _check_finite_particles(images, locations, ids)
    return ParticleArrays(
        images=np.stack(images).astype(np.float32, copy=False) if read_images else None,
        pixel_size=float(partSet.getSamplingRate()),
        ids=np.asarray(ids, dtype=np.int64), alignment=alignment,
        rotations=np.stack(rotations) if rotations else None,
        shifts=np.stack(shifts) if shifts else None,
        ctfs=ctfs if need_ctf else None,
        columns={name: np.asarray(v) for name, v in values.items()})


def references_to_arrays(references, read_images=True):
    """:class:`ParticleArrays` of 2-D references, in id order: the images of a set of
    averages (any set of 2-D images), or the representatives of a ``SetOfClasses2D``."""
    if not isinstance(references, SetOfClasses2D):
        return particles_to_arrays(references, need_alignment=False, read_images=read_images)
    ids, images = [], []
    # One item object, refilled per class (a set of classes takes no where clause).
    for cls in references.iterItems(orderBy='id'):
        if not cls.isEnabled():
            continue
        ids.append(cls.getObjId())
        if read_images:
            images.append(read_image(cls.getRepresentative()))
    return ParticleArrays(images=np.stack(images) if read_images else None,
                          pixel_size=references.getSamplingRate(), ids=np.asarray(ids))


def classify_particles(classes, ids, reference_ids, references):
    """Fill a new ``SetOfClasses2D`` with one class per 2-D reference that has particles.

    :param classes: the empty set, made for the particles that go into it.
    :param ids: ``(n,)`` particle ids; particle ``ids[i]`` joins the class of reference
        ``reference_ids[i]`` (the class id is the reference's id).
    :param references: the averages or classes the ids refer to; each class is
        represented by its reference's image.
    """
    representatives = {}
    for item in references.iterItems(orderBy='id'):
        if not item.isEnabled():
            continue
        image = item.getRepresentative() if isinstance(references, SetOfClasses2D) else item
        representatives[item.getObjId()] = Particle(location=image.getLocation())
        representatives[item.getObjId()].setSamplingRate(references.getSamplingRate())
    classOf = dict(zip(ids, reference_ids))

    def updateParticle(particle, row):
        particle.setClassId(int(classOf[particle.getObjId()]))

    def updateClass(cls):
        cls.setAlignment2D()
        cls.setRepresentative(representatives[cls.getObjId()].clone())

    classes.classifyItems(updateItemCallback=updateParticle, updateClassCallback=updateClass,
                          itemDataIterator=iter(ids), doClone=True)
    return classes


def location_text(image):
    """Where an image is, as Scipion and RELION show it: ``N@file`` with ``N`` from 1."""
    index, filename = image.getLocation()
    return f"{1 if index == NO_INDEX else index}@{image_file(filename)}"


#: Bad particles named one by one in a message; the rest are counted.
MAX_NAMED = 5


def _check_finite_particles(images, locations, ids):
    """:class:`InvalidDataError` naming every particle with NaN or infinite pixels."""
    bad = [i for i, image in enumerate(images) if not np.isfinite(image).all()]
    if not bad:
        return
    named = ", ".join(f"{locations[i]} (id {ids[i]})" for i in bad[:MAX_NAMED])
    more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    raise InvalidDataError(
        f"{len(bad)} of {len(images)} particles contain NaN or infinite pixels: {named}{more}; "
        "remove them (e.g. make a subset without them) or re-extract the particles")


def image_location(image):
    """``(path, 0-based position)`` of a Scipion image's location in its file."""
    index, filename = image.getLocation()
    return image_file(filename), 0 if index == NO_INDEX else index - 1


def read_image(image, check_finite=True):
    """The 2-D array of one Scipion image (particle, average, micrograph), alone."""
    return mrc.read_image(*image_location(image), check_finite=check_finite)


def _particle_image(particle, stacks, whole_stacks):
    """Image of one particle; whole stacks are read once and kept in ``stacks``."""
    if not whole_stacks:
        return read_image(particle, check_finite=False)
    path, position = image_location(particle)
    if path not in stacks:
        stacks[path] = mrc.read_stack(path, check_finite=False)
    stack = stacks[path]
    if not 0 <= position < stack.shape[0]:
        raise ShapeError(f"particle {particle.getObjId()} points to image {position + 1} of "
                         f"{path}, which holds {stack.shape[0]} images")
    return stack[position]


def arrays_to_particles(protocol, stack_path, pixel_size, count=None, rotations=None,
                        shifts=None, ctfs=None, alignment=ALIGN_PROJ, columns=None,
                        acquisition=None, template=None, ids=None, micIds=None,
                        coordinates=None, micNames=None, suffix=""):
    """Create a ``SetOfParticles`` whose images are the slices of an MRC stack.

    Every item gets every column (Scipion fixes the set's columns from the first
    item).

    :param protocol: the ``EMProtocol`` that owns the new set.
    :param stack_path: MRC stack holding image ``i`` of the set at slice ``i``.
    :param pixel_size: Å.
    :param count: number of particles; default the length of the given arrays.
    :param rotations: ``(n, 3, 3)`` core rotations, or None for no alignment.
    :param shifts: ``(n, 2)`` core shifts in pixels (zeros if None and rotations given).
    :param ctfs: ``n`` :class:`CTFParams`, or None for no CTF.
    :param alignment: ``ALIGN_PROJ`` or ``ALIGN_2D``, used when ``rotations`` is given.
    :param columns: ``{name: values (n, ...)}`` extra columns.
    :param acquisition: ``Acquisition`` of the set; default from ``ctfs[0]``.
    :param template: set to copy sampling, acquisition and flags from.
    :param ids: item ids to keep (e.g. the input particles' ids).
    :param micIds: micrograph id of every particle.
    :param coordinates: ``(n, 2)`` centre ``(x, y)`` of every particle on its micrograph
        (``micIds`` required), as Scipion coordinates.
    :param micNames: ``{micId: micrograph name}`` for the coordinates.
    :param suffix: suffix of the set's SQLite file.
    :returns: the new (unsaved) ``SetOfParticles``.
    """
    columns = columns or {}
    lengths = {len(a) for a in (rotations, shifts, ctfs, ids, micIds, coordinates)
               if a is not None}
    lengths |= {len(v) for v in columns.values()}
    if count is None:
        count = min(lengths) if lengths else mrc.read_stack(stack_path).shape[0]
    if lengths - {count}:
        raise ShapeError(f"the per-particle arrays have lengths {sorted(lengths)}, "
                         f"expected {count} each")
    partSet = protocol._createSetOfParticles(suffix)
    if template is not None:
        partSet.copyInfo(template)
    partSet.setSamplingRate(pixel_size)
    if acquisition is None and ctfs:
        acquisition = acquisition_from_params(ctfs[0])
    if acquisition is not None:
        partSet.setAcquisition(acquisition)
    partSet.setHasCTF(ctfs is not None)
    if rotations is not None:
        partSet.setAlignment(alignment)
        if shifts is None:
            shifts = np.zeros((count, 2))
    else:
        partSet.setAlignment(ALIGN_NONE)
    for i in range(count):
        particle = Particle(location=(i + 1, stack_path))
        if ids is not None:
            particle.setObjId(int(ids[i]))
        if micIds is not None:
            particle.setMicId(int(micIds[i]))
        if coordinates is not None:
            particle.setCoordinate(_coordinate(coordinates[i], int(micIds[i]), micNames))
        if rotations is not None:
            particle.setTransform(transform_from_pose(rotations[i], shifts[i], alignment))
        if ctfs is not None:
            particle.setCTF(ctf_model_from_params(ctfs[i]))
        set_columns(particle, columns, i)
        partSet.append(particle)
    return partSet


def _coordinate(centre, micId, micNames=None):
    coord = Coordinate()
    coord.setPosition(int(round(centre[0])), int(round(centre[1])))
    coord.setMicId(micId)
    if micNames:
        coord.setMicName(micNames[micId])
    return coord


# --------------------------- Volumes -------------------------------------------

# --------------------------- Checks from file headers --------------------------

def image_file_errors(imgSet, what="particles"):
    """What is wrong with the files of a set of 2-D images, read from their headers only.

    Missing, non-MRC or truncated files, images that are not square and locations
    beyond the end of a stack, as messages naming the file and the fix.
    """
    return [error for row in imgSet.aggregate(['MAX'], '_index', ['_filename'])
            for error in _stack_file_errors(image_file(row['_filename']),
                                            max(1, int(row['MAX'] or 0)), what)]


def representative_file_errors(classes, what="2D classes"):
    """:func:`image_file_errors` for the representatives of a ``SetOfClasses``."""
    last = {}
    for representative in classes.iterRepresentatives():
        path, position = image_location(representative)
        last[path] = max(last.get(path, 1), position + 1)
    return [error for path, count in last.items()
            for error in _stack_file_errors(path, count, what)]


def _stack_file_errors(path, last, what):
    """The messages of :func:`image_file_errors` for one file whose images up to
    ``last`` (1-based) are used."""
    try:
        (count, height, width), _ = mrc.read_header(path)
    except CryoHessError as error:
        return [f"The {what}' file is unusable: {error}."]
    errors = []
    if height != width:
        errors.append(f"The {what} in {path} are {width} x {height} px; this needs "
                      "square images: extract or crop them in a square box.")
    if last > count:
        errors.append(f"The {what} point to image {last}@{path}, but the file holds "
                      f"{count} images: it is incomplete; copy or re-extract it.")
    return errors


def volume_file_errors(volume, what="volume"):
    """What is wrong with a ``Volume``'s file, from its header: unreadable or truncated
    files and maps that are not cubic, as messages naming ``what`` and the fix."""
    path = image_file(volume.getFileName())
    try:
        shape, _ = mrc.read_header(path)
    except CryoHessError as error:
        return [f"The {what} is unusable: {error}."]
    if len(set(shape)) != 1:
        return [f"The {what} is {shape[2]} x {shape[1]} x {shape[0]} voxels; this needs a cubic "
                "map: pad or crop it to a cube (e.g. xmipp3 - crop/resize volumes)."]
    return []


def volume_to_array(volume, pixel_size=None):
    """Read a Scipion ``Volume`` as a float32 ``(n, n, n)`` array.

    :param volume: ``pwem.objects.Volume``.
    :param pixel_size: expected voxel size (Å); :class:`SamplingMismatchError` if
        the volume's sampling rate differs.
    :returns: ``(array, voxel_size)`` with the voxel size from the Scipion object.
    """
    array, _ = mrc.read_volume(image_file(volume.getFileName()))
    voxel = float(volume.getSamplingRate())
    check_sampling(voxel, pixel_size, "volume", "particles")
    return array, voxel


def array_to_volume(path, array, voxel_size, overwrite=False):
    """Write ``array`` to ``path`` and return a ``Volume`` pointing to it."""
    mrc.write_volume(path, array, voxel_size, overwrite=overwrite)
    volume = Volume(location=path)
    volume.setSamplingRate(voxel_size)
    return volume


def keep_origin(volume, source):
    """Give ``volume`` (a map in ``source``'s frame: same box and voxel size) the origin
    of ``source``, a ``Volume``, when ``source`` has one set; return ``volume``."""
    origin = source.getOrigin() if source is not None else None
    if origin is not None:
        copied = Transform()
        copied.copy(origin)
        volume.setOrigin(copied)
    return volume


def volume_transform(rotation, shift):
    """Scipion ``Transform`` of an aligned volume: ``[[R, t], [0, 1]]``.

    ``R`` and ``t`` (voxels, (x, y, z)) are what
    :func:`cryohess_plugin.core.alignment.volumes.rotate_volume` applied to the
    input volume to produce the aligned one.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(rotation, dtype=np.float64)
    matrix[:3, 3] = np.asarray(shift, dtype=np.float64)
    return Transform(matrix)


def same_sampling(actual, expected):
    """Whether two pixel sizes agree within :data:`SAMPLING_RTOL`."""
    return bool(np.isclose(actual, expected, rtol=SAMPLING_RTOL, atol=0.0))


def check_sampling(actual, expected, what, reference):
    """Raise :class:`SamplingMismatchError` if two pixel sizes differ (None: no check)."""
    if expected is None:
        return
    if not same_sampling(actual, expected):
        raise SamplingMismatchError(
            f"the {what} has a pixel size of {actual:g} Å but the {reference} have "
            f"{expected:g} Å; resize one of them (e.g. with a downsampling protocol)")


# --------------------------- Resolution curves ---------------------------------

def shell_frequencies(shells, box, pixel_size):
    """Spatial frequency (1/Å) of integer Fourier shells of a ``box``-pixel map."""
    return np.asarray(shells, dtype=np.float64) / (box * pixel_size)


def fsc_from_curve(frequencies, values, label=""):
    """Scipion ``FSC`` holding a curve (frequencies in 1/Å, as Scipion's FSC viewer expects)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if frequencies.ndim != 1 or frequencies.shape != values.shape:
        raise ShapeError(f"an FSC needs one value per frequency, got {frequencies.shape} "
                         f"frequencies and {values.shape} values")
    fsc = FSC(objLabel=label)
    fsc.setData([float(f) for f in frequencies], [float(v) for v in values])
    return fsc


def fsc_to_arrays(fsc):
    """``(frequencies 1/Å, values)`` of a Scipion ``FSC`` as float64 arrays."""
    frequencies, values = fsc.getData()
    return (np.asarray([float(f) for f in frequencies]),
            np.asarray([float(v) for v in values]))


# --------------------------- Micrographs and coordinates -----------------------

def arrays_to_micrographs(protocol, paths, pixel_size, acquisition, suffix=""):
    """Create a ``SetOfMicrographs`` over existing MRC files.

    :param paths: micrograph files, one per micrograph (ids 1..n in this order).
    :param pixel_size: Å.
    :param acquisition: ``Acquisition`` of the set.
    :returns: the new ``SetOfMicrographs``.
    """
    micSet = protocol._createSetOfMicrographs(suffix)
    micSet.setSamplingRate(pixel_size)
    micSet.setAcquisition(acquisition)
    for path in paths:
        mic = Micrograph(location=path)
        mic.setMicName(os.path.basename(path))
        micSet.append(mic)
    return micSet


def _items(setOrPointer):
    """Detached copies of the items of a set (or of the set a pointer points to)."""
    theSet = setOrPointer.get() if isinstance(setOrPointer, pwobj.Pointer) else setOrPointer
    return [item.clone() for item in theSet.iterItems(orderBy="id")]


def micrograph_names(micSet):
    """``{micId: micrograph name}`` of a set of micrographs (or a pointer to it), in id
    order."""
    return {mic.getObjId(): mic.getMicName() for mic in _items(micSet)}


def arrays_to_ctfs(protocol, micSet, ctfs, suffix=""):
    """Create a ``SetOfCTF`` with one :class:`CTFParams` per micrograph.

    :param micSet: the ``SetOfMicrographs`` (or a pointer to it), in whose id
        order ``ctfs`` are given.
    :param ctfs: one :class:`CTFParams` per micrograph.
    :returns: the new ``SetOfCTF``.
    """
    mics = _items(micSet)
    if len(mics) != len(ctfs):
        raise ShapeError(f"{len(ctfs)} CTFs for {len(mics)} micrographs")
    ctfSet = protocol._createSetOfCTF(suffix)
    ctfSet.setMicrographs(micSet)
    for mic, params in zip(mics, ctfs):
        ctf = ctf_model_from_params(params)
        ctf.setMicrograph(mic)
        ctfSet.append(ctf)
    return ctfSet


def micrographs_to_arrays(micSet):
    """Read a ``SetOfMicrographs``: ``(list of float32 (y, x) arrays, ids, pixel size)``."""
    arrays, ids = [], []
    for mic in micSet.iterItems(orderBy="id", where=ENABLED):
        arrays.append(read_image(mic))
        ids.append(mic.getObjId())
    return arrays, np.asarray(ids, dtype=np.int64), float(micSet.getSamplingRate())


def arrays_to_coordinates(protocol, micSet, positions, boxSize, suffix="", columns=None):
    """Create a ``SetOfCoordinates`` from particle centres.

    :param micSet: the (saved) ``SetOfMicrographs`` the coordinates refer to, or
        better a pointer to it (e.g. ``Pointer(protocol, extended="outputMicrographs")``).
    :param positions: one ``(k, 2)`` array per micrograph, in ``micSet`` id order,
        of centres ``(x, y)`` = (column, row) in pixels from the micrograph's
        first pixel, as Xmipp/Scipion coordinates.
    :param boxSize: particle box in pixels.
    :param columns: ``{column name: one (k,) array per micrograph}`` of extra values.
    :returns: the new ``SetOfCoordinates``.
    """
    columns = columns or {}
    coordSet = protocol._createSetOfCoordinates(micSet, suffix)
    coordSet.setBoxSize(boxSize)
    mics = _items(micSet)
    if len(mics) != len(positions):
        raise ShapeError(f"{len(positions)} coordinate arrays for {len(mics)} micrographs")
    for index, (mic, centres) in enumerate(zip(mics, positions)):
        values = {name: per_micrograph[index] for name, per_micrograph in columns.items()}
        for row, (x, y) in enumerate(np.asarray(centres, dtype=np.float64).reshape(-1, 2)):
            coord = Coordinate()
            coord.setMicrograph(mic)
            coord.setPosition(int(round(x)), int(round(y)))
            set_columns(coord, values, row)
            coordSet.append(coord)
    return coordSet


def micrograph_ctfs(ctfSet, micSet):
    """The :class:`CTFParams` of every micrograph of ``micSet`` (id order) from a
    ``SetOfCTF`` (matched by micrograph name, as Scipion's CTF relation does), with the
    microscope values of ``micSet``'s acquisition; None for a micrograph without one."""
    byName = {}
    for ctf in ctfSet.iterItems():
        byName[ctf.getMicrograph().getMicName()] = ctf.clone()
    acquisition = micSet.getAcquisition()
    out = []
    for mic in micSet.iterItems(orderBy="id", where=ENABLED):
        ctf = byName.get(mic.getMicName())
        if ctf is None:
            out.append(None)
            continue
        mic.setCTF(ctf)
        out.append(ctf_params_from_image(mic, acquisition))
    return out


def coordinates_to_arrays(coordSet):
    """Particle centres per micrograph: ``{micId: float64 (k, 2) of (x, y)}``."""
    positions = {}
    for coord in coordSet.iterItems(orderBy="id", where=ENABLED):
        positions.setdefault(coord.getMicId(), []).append(coord.getPosition())
    return {micId: np.asarray(xy, dtype=np.float64) for micId, xy in positions.items()}
