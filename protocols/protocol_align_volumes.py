"""Alignment of volumes to a reference over SO(3) with the radial- and degree-SVD."""
import os
import threading
import time
from enum import Enum

import numpy as np
from pwem.objects import SetOfVolumes, Volume
from pwem.protocols import ProtAlignVolume
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import ALIGN_SCORE, RANK_FIXED, RANK_TOLERANCE
from cryohess_plugin.core.alignment import VolumeAlignmentResult, shell_grid, table_bytes

from .protocol_base import CryoHessProtocolMixin

#: Fewer shells than this cannot tell rotations apart (a warning).
MIN_USEFUL_SHELLS = 8
#: Wigner tables above this many bytes get a memory warning.
LARGE_TABLES = 1 << 30
#: Guards the construction of the aligner that the parallel steps of a run share.
_ALIGNER_LOCK = threading.Lock()


class outputs(Enum):
    outputVolumes = SetOfVolumes


class CryoHessProtAlignVolumes(CryoHessProtocolMixin, ProtAlignVolume):
    """Rotate (and optionally shift) volumes onto a reference.

    Every volume's Fourier transform is expanded in spherical harmonics on
    radial shells; the inner product with the reference is evaluated for all
    rotations of an (alpha, beta, gamma) grid at once with Wigner-d matrices and
    2-D FFTs, compressed by the radial-SVD over shells and the degree-SVD over
    spherical-harmonic degrees, then the best grid rotation is refined locally.
    The outputs are the resampled volumes, each with the transform that was
    applied and the normalised correlation with the reference.
    """
    _label = 'radial-SVD align volumes'
    stepsExecutionMode = STEPS_PARALLEL
    _devStatus = BETA
    _possibleOutputs = outputs
    _references = ['Rangan2022radial']

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the SO(3) landscape evaluation")
        form.addSection(label='Input')
        form.addParam('inputVolumes', params.PointerParam,
                      pointerClass='SetOfVolumes, Volume', important=True,
                      label='Volumes to align',
                      help="One volume or a set of volumes, all with the reference's box "
                           "and pixel size. They are not modified: aligned copies are "
                           "written.")
        form.addParam('referenceVolume', params.PointerParam, pointerClass='Volume',
                      important=True, label='Reference volume',
                      help="The volumes are rotated onto this map.")
        form.addSection(label='Search')
        form.addParam('maxResolution', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Max resolution (Å)',
                      help="Finest resolution compared. 0 uses the radial-SVD paper's "
                           "band (K = 48, about 15 Fourier pixels) capped at Nyquist. The "
                           "grid of rotations has 2L + 1 angles for alpha and gamma, L "
                           "about pi times the band in Fourier pixels: a finer resolution "
                           "gives a finer grid but costs O(L^4).")
        form.addParam('rankMode', params.EnumParam, default=RANK_TOLERANCE,
                      choices=['eigenvalue tolerance', 'fixed'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Ranks',
                      help="How many principal shells (radial-SVD) and principal degrees "
                           "(degree-SVD) are kept: eigenvalues above a fraction of the "
                           "largest (at least 4), or fixed numbers.")
        form.addParam('rankTolerance', params.FloatParam, default=1e-2,
                      condition='rankMode == %d' % RANK_TOLERANCE,
                      validators=[params.Range(0.0, 1.0)], label='Eigenvalue tolerance',
                      help="Keep modes whose eigenvalue exceeds this fraction of the "
                           "largest.")
        form.addParam('radialRank', params.IntParam, default=8,
                      condition='rankMode == %d' % RANK_FIXED, validators=[params.Positive],
                      label='Principal shells H_C',
                      help="Number of principal radial shells (at most the number of "
                           "shells).")
        form.addParam('degreeRank', params.IntParam, default=8,
                      condition='rankMode == %d' % RANK_FIXED, validators=[params.Positive],
                      label='Principal degrees H_D',
                      help="Number of principal degree combinations (at most L + 1).")
        form.addParam('refine', params.BooleanParam, default=True,
                      label='Refine locally?',
                      help="Refine the best grid rotation by a local optimisation of the "
                           "correlation (off-grid angles).")
        form.addParam('maxShift', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Max shift (px)',
                      help="Also search translations up to this radius (0: volumes are "
                           "assumed centred).")
        form.addParam('shiftStep', params.FloatParam, default=1.0,
                      condition='maxShift > 0', validators=[params.Positive],
                      label='Shift step (px)', help="Spacing of the searched shifts.")
        form.addParam('metricsVolumes', params.IntParam, default=4, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label='Volumes for the rank metrics',
                      help="A step measures the landscape accuracy against the rank H (the "
                           "radial-SVD paper's Fig. 11, shown by the viewer) on this many "
                           "input volumes (the first ones), with automatic ranks. 0 skips it.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        reads = ('inputVolumes', 'referenceVolume', 'maxResolution', 'rankMode', 'rankTolerance',
                 'radialRank', 'degreeRank', 'refine', 'maxShift', 'shiftStep')
        steps = [self._insertStep(self.alignVolumeStep, index, reads=reads, needsGPU=gpu)
                 for index in range(len(self._inputVolumeList()))]
        if self.metricsVolumes.get():
            steps.append(self._insertStep(self.rankMetricsStep, reads=(
                'inputVolumes', 'referenceVolume', 'maxResolution', 'metricsVolumes')))
        self._insertStep(self.createOutputStep, after=steps)

    def _filenameTemplates(self):
        return {
            'result': self._getExtraPath('volume_%(index)03d_alignment.npz'),
            'aligned': self._getExtraPath('volume_%(index)03d_aligned.mrc'),
            'rankMetrics': self._getExtraPath('rank_metrics.npz'),
        }

    # --------------------------- STEPS functions -----------------------------
    def alignVolumeStep(self, index, digest):
        """Align one volume (steps are independent, so several run in parallel)."""
        from cryohess_plugin.core import mrc
        from cryohess_plugin.core.alignment import rotate_volume
        self._setDevices()
        started = time.perf_counter()
        pixel = self.referenceVolume.get().getSamplingRate()
        volume, _ = convert.volume_to_array(self._inputVolumeList()[index], pixel)
        result = self._sharedAligner().align(volume)
        aligned = rotate_volume(volume, result.rotation[0], result.shift[0])
        mrc.write_volume(self._getFileName('aligned', index=index), aligned, pixel,
                         overwrite=True)
        seconds = time.perf_counter() - started
        result.save(self._getFileName('result', index=index))
        self.info("Volume %d: score %.4f, ranks H_C, H_D = %s, %.1f s"
                  % (index + 1, result.score[0], tuple(result.ranks), seconds))

    def rankMetricsStep(self, digest):
        """The viewer's landscape accuracy against H, on the first input volumes."""
        from cryohess_plugin.core.alignment import VolumeAligner
        from cryohess_plugin.core.alignment.diagnostics import volume_rank_sweep
        reference, pixel = convert.volume_to_array(self.referenceVolume.get())
        chosen = self._inputVolumeList()[:self.metricsVolumes.get()]
        volumes = np.stack([convert.volume_to_array(volume, pixel)[0] for volume in chosen])
        aligner = VolumeAligner(reference, resolution=self.maxResolution.get() or None,
                                pixel_size=pixel)
        sweep = volume_rank_sweep(aligner, volumes)
        sweep.save(self._getFileName('rankMetrics'))
        self.info("Rank metrics of %d volumes: correlation %s over H = %s"
                  % (len(volumes), np.round(sweep.correlation, 3), sweep.ranks))

    def createOutputStep(self, digest):
        pixel = self.referenceVolume.get().getSamplingRate()
        volumes = self._createSetOfVolumes()
        volumes.setSamplingRate(pixel)
        for index, (source, result) in enumerate(zip(self._inputVolumeList(), self._results())):
            volume = Volume(location=self._getFileName('aligned', index=index))
            volume.setSamplingRate(pixel)
            volume.setObjId(source.getObjId())
            volume.setObjLabel(source.getObjLabel())
            volume.setTransform(convert.volume_transform(result.rotation[0], result.shift[0]))
            convert.keep_origin(volume, self.referenceVolume.get())
            convert.set_columns(volume, {ALIGN_SCORE: result.score}, 0)
            volumes.append(volume)
        self._defineOutputs(**{outputs.outputVolumes.name: volumes})
        self._defineSourceRelation(self.inputVolumes, volumes)
        self._defineSourceRelation(self.referenceVolume, volumes)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        reference = self.referenceVolume.get()
        if reference is None or self.inputVolumes.get() is None:
            return ["Select the volumes and the reference."]
        volumes = self._inputVolumeList()
        if not volumes:
            return ["The set of volumes is empty."]
        errors = convert.volume_file_errors(
            reference, "reference %s" % self._inputLabel(self.referenceVolume))
        readable = not errors
        box, pixel = reference.getXDim(), reference.getSamplingRate()
        for volume in volumes:
            name = self._volumeName(volume)
            fileErrors = convert.volume_file_errors(volume, "volume %s" % name)
            errors += fileErrors
            if readable and not fileErrors and volume.getXDim() != box:
                errors.append("The volume %s is %d px wide but the reference %d px; resize "
                              "one of them." % (name, volume.getXDim(), box))
            if not convert.same_sampling(volume.getSamplingRate(), pixel):
                errors.append("The volume %s has %g Å/px but the reference %g Å/px; resample "
                              "one of them." % (name, volume.getSamplingRate(), pixel))
        errors += self._validateMaxResolution(pixel)
        return errors + self._validateContinue()

    def _warnings(self):
        reference = self.referenceVolume.get()
        if reference is None or self._validateMaxResolution(reference.getSamplingRate()):
            return []
        box, pixel = reference.getXDim(), reference.getSamplingRate()
        shells = shell_grid(box, resolution=self.maxResolution.get() or None, pixel_size=pixel)
        warnings = []
        if shells.n_shells < MIN_USEFUL_SHELLS:
            warnings.append(self._coarseBandWarning(
                "%d shells" % shells.n_shells, box * pixel / shells.max_frequency,
                box * pixel * np.pi / (MIN_USEFUL_SHELLS - 1)))
        if table_bytes(shells) > LARGE_TABLES:
            warnings.append(
                "At this resolution (degree L = %d) every step holds %.1f GB of Wigner "
                "tables and costs O(L^4) per volume; a coarser max resolution is much "
                "cheaper." % (shells.max_degree, table_bytes(shells) / 1e9))
        if self.maxShift.get() >= box / 2:
            warnings.append(self._shiftRangeWarning("volumes", box, self.maxShift.get(),
                                                    self.shiftStep.get(), 3))
        return warnings

    def _summary(self):
        if not self.hasAttribute(outputs.outputVolumes.name):
            return ["Output not ready yet."]
        return ["Volume %d: correlation %.4f, shift %s px, ranks (H_C, H_D) %s."
                % (index + 1, result.score[0], np.round(result.shift[0], 2), result.ranks)
                for index, result in enumerate(self._results())]

    def _methods(self):
        if not self.hasAttribute(outputs.outputVolumes.name):
            return []
        return ["%d volumes were aligned to a reference over SO(3) with the radial- and "
                "degree-SVD [Rangan2022radial]%s."
                % (len(self._inputVolumeList()),
                   ", refined locally" if self.refine else "")]

    # --------------------------- UTILS functions -----------------------------
    def _inputVolumeList(self):
        volumes = self.inputVolumes.get()
        if isinstance(volumes, Volume):
            return [volumes]
        return [volume.clone() for volume in volumes.iterItems(orderBy='id',
                                                               where=convert.ENABLED)]

    def _volumeName(self, volume):
        """A volume of the input as the GUI shows it: its label, or its id and file in the
        input set."""
        if volume.getObjLabel() or isinstance(self.inputVolumes.get(), Volume):
            return volume.getObjLabel() or self._inputLabel(self.inputVolumes)
        return "%d (%s) of %s" % (volume.getObjId(), os.path.basename(
            convert.image_file(volume.getFileName())), self._inputLabel(self.inputVolumes))

    def _results(self):
        """The :class:`VolumeAlignmentResult` of every input volume, in input order."""
        return [VolumeAlignmentResult.load(self._getFileName('result', index=index))
                for index in range(len(self._inputVolumeList()))]

    def _sharedAligner(self):
        """The one aligner of this run, built by the first step that needs it.

        Its set-up (the reference's transform, kernels and Wigner tables) costs several
        alignments of one volume, and every step would otherwise repeat it; the steps
        only read it, so parallel steps share it.  It is rebuilt when the reference file
        or a setting it depends on changed.
        """
        from cryohess_plugin.core.alignment import VolumeAligner
        referenceFile = convert.image_file(self.referenceVolume.get().getFileName())
        settings = dict(resolution=self.maxResolution.get() or None,
                        radial_rank=self._fixed(self.radialRank),
                        degree_rank=self._fixed(self.degreeRank),
                        tolerance=self.rankTolerance.get(), max_shift=self.maxShift.get(),
                        shift_step=self.shiftStep.get(), refine=self.refine.get(),
                        backend=self._backend())
        # CUDA tables live on one GPU: parallel steps bound to different GPUs get their own.
        executor = getattr(self, '_stepsExecutor', None)
        device = tuple(executor.getGpuList()[:1]) if executor and self._usesGpu() else ()
        key = (referenceFile, os.path.getmtime(referenceFile), tuple(sorted(settings.items())),
               device)
        with _ALIGNER_LOCK:
            if getattr(self, '_aligners', None) is None:
                self._aligners = {}
            if key not in self._aligners:
                # Another reference file or setting: the aligners built before are stale.
                for stale in [old for old in self._aligners if old[:3] != key[:3]]:
                    del self._aligners[stale]
                reference, pixel = convert.volume_to_array(self.referenceVolume.get())
                self._aligners[key] = VolumeAligner(reference, pixel_size=pixel, **settings)
            return self._aligners[key]

    def _fixed(self, rank):
        return rank.get() if self.rankMode.get() == RANK_FIXED else None
