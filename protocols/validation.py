"""The checks of a protocol's inputs before a run and the warnings about what it would
need, in the words the GUI shows (a mixin of :class:`CryoHessProtocolMixin`)."""
import os

import numpy as np
import psutil
from pwem.constants import ALIGN_PROJ
from pyworkflow.utils import prettySize

from cryohess_plugin import convert
from cryohess_plugin.core.errors import InvalidDataError
from cryohess_plugin.core.fourier import frequency_for_resolution


class InputChecks:
    """Messages about the inputs and the resources of a run, shared by the protocols."""

    def _resourceWarnings(self, diskBytes, memoryBytes, fix):
        """The warnings for a run that needs more disk (in the project's folder) or more
        memory than is free; ``fix`` ends each with the protocol's way to need less."""
        warnings = []
        disk = self._freeDisk()
        if diskBytes > disk:
            warnings.append("The run needs %s on disk but only %s are free in the project's "
                            "folder: %s, or free some space."
                            % (prettySize(diskBytes), prettySize(disk), fix))
        memory = self._availableMemory()
        if memoryBytes > memory:
            warnings.append("The run needs about %s of memory but only %s are available: %s."
                            % (prettySize(memoryBytes), prettySize(memory), fix))
        return warnings

    def _freeDisk(self):
        """Bytes free on the disk of the project's folder."""
        project = self.getProject()
        return psutil.disk_usage(project.getPath() if project else os.getcwd()).free

    @staticmethod
    def _availableMemory():
        """Bytes of memory available to a new run."""
        return psutil.virtual_memory().available

    @staticmethod
    def _coarseBandWarning(band, resolution, needed):
        """The warning for a search ``band`` (e.g. "2 rings x 4 in-plane angles") up to
        ``resolution`` Å, too coarse to align; ``needed`` Å or finer would do."""
        return ("The search band has only %s up to %.0f Å: too coarse to tell orientations "
                "apart (the poses would be close to random). Set the max resolution to %.0f Å "
                "or finer (0 for the default band)." % (band, resolution, needed))

    @staticmethod
    def _shiftRangeWarning(what, box, maxShift, step, dimensions):
        """The warning for a shift search of ``what`` (e.g. "particles") that reaches beyond
        half their ``box``: its size, about the ball's volume over the step's."""
        count = (np.pi if dimensions == 2 else 4 / 3 * np.pi) * (maxShift / step) ** dimensions
        return ("The max shift, %g px, moves the %s out of their %d-px box and searches about "
                "%d shifts, each costing a whole search; a few pixels are usual, at most a "
                "quarter of the box." % (maxShift, what, box, count))

    def _inputLabel(self, pointer):
        """The object behind ``pointer`` as the GUI names it: its own label, or the label of
        the run that produced it and the output's name (``import volumes.outputVolume``)."""
        target = pointer.get()
        if target.getObjLabel():
            return target.getObjLabel()
        if pointer.hasExtended():
            return "%s.%s" % (pointer.getObjValue().getRunName(), pointer.getExtended())
        # A pointer set to the output itself (scripts, tests): find the run that owns it.
        project, parent = self.getProject(), target.getObjParentId()
        run = project.getProtocol(parent) if project is not None and parent else None
        for name, output in run.iterOutputAttributes() if run is not None else ():
            if output.getObjId() == target.getObjId():
                return "%s.%s" % (run.getRunName(), name)
        return "%s %s" % (target.getClassName(), target.getObjId())

    def _validateParticleSelection(self, particles, what="particles"):
        """The messages for no particles selected or an empty set."""
        if particles is None:
            return ["Select the %s." % what]
        if particles.getSize() == 0:
            return ["The set of %s is empty." % what]
        return []

    def _validateMaxResolution(self, pixel):
        """The core's message when the form's max resolution is beyond Nyquist."""
        resolution = self.maxResolution.get()
        if not resolution:
            return []
        try:
            frequency_for_resolution(1, pixel, resolution)
        except InvalidDataError as error:
            return ["The max resolution is too fine: %s." % error]
        return []

    @staticmethod
    def _validateAlignedParticles(particles, noCtfFix):
        """Errors of a non-empty particle set that needs 3D poses and CTFs; ``noCtfFix``
        ends the missing-CTF message with the protocol's own way round it."""
        errors = []
        if particles.getAlignment() != ALIGN_PROJ:
            errors.append("The particles have no 3D alignment (they have %r, ALIGN_PROJ is "
                          "needed): use particles from a 3D refinement or from projection "
                          "matching (e.g. 'radial-SVD align particles' against a volume)."
                          % particles.getAlignment())
        if not particles.hasCTF():
            errors.append("The particles have no CTF: estimate the CTF of the micrographs "
                          "(e.g. CTFFIND) and extract the particles with it, or %s."
                          % noCtfFix)
        return errors

    def _validateReferenceVolume(self, volume, box, pixel, what="reference volume"):
        """Errors of the volume that particles of ``box`` px at ``pixel`` Å/px are compared
        with: none selected, an unusable or non-cubic file (from its header), another box
        or pixel size."""
        if volume is None:
            return ["Select the %s." % what]
        return (convert.volume_file_errors(volume, what)
                or self._validateSameGeometry(what, volume.getXDim(), volume.getSamplingRate(),
                                              box, pixel))

    @staticmethod
    def _validateSameGeometry(what, otherBox, otherPixel, box, pixel):
        """Errors when ``what`` (e.g. "reference volume") and the particles, ``box`` px
        at ``pixel`` Å/px, differ in box or pixel size."""
        errors = []
        if otherBox != box:
            errors.append("The particles are %d px wide but the %s %d px; resize one of "
                          "them (e.g. xmipp3 - crop/resize)." % (box, what, otherBox))
        if not convert.same_sampling(otherPixel, pixel):
            errors.append("The particles have %g Å/px but the %s %g Å/px; resample one "
                          "of them." % (pixel, what, otherPixel))
        return errors
