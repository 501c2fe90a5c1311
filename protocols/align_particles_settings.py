"""The particle-alignment protocol's settings: its form, the checks of the settings before
a run and the search they define."""
import numpy as np
from pwem.objects import SetOfClasses2D
import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import RANK_FIXED, RANK_TOLERANCE, REFERENCE_2D, REFERENCE_VOLUME
from cryohess_plugin.core.alignment import (DEFAULT_SHIFT_STEP, PAPER_MAX_FREQUENCY,
                                            SHIFT_RANGE_FRACTION, alignment_grid,
                                            resolve_max_shift)
from cryohess_plugin.core.rotations import viewing_grid

#: Fewer rings than this cannot tell views and in-plane angles apart (a warning).
MIN_USEFUL_RINGS = 8
#: References above this many bytes get a memory and disk warning.
LARGE_REFERENCES = 1 << 30
#: Memory of a batch step over the size of its references (measured: the loaded
#: references, the aligner's ring coefficients and work arrays).
STEP_MEMORY_FACTOR = 3.5


class AlignParticlesSettings:
    """Form, checks and search settings of :class:`CryoHessProtAlignParticles` (a mixin of
    it, next to :class:`CryoHessProtocolMixin`, whose form blocks and checks it uses)."""

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the polar transform and the compressed inner products")
        form.addSection(label='Input')
        self._defineParticlesParam(
            form, important=True,
            help="Particles to align. Their CTF is used when present (turn it off below to "
                 "ignore it); their current alignment is ignored and the input set is never "
                 "modified.")
        form.addParam('referenceType', params.EnumParam, default=REFERENCE_VOLUME,
                      choices=['volume (projection matching)', '2D references'],
                      display=params.EnumParam.DISPLAY_HLIST, label='References',
                      help="Volume: the particles are matched against projections of a "
                           "map on a viewing grid and get a 3D orientation (ALIGN_PROJ).\n"
                           "2D references: the particles are matched against class "
                           "averages and get an in-plane rotation, a shift (ALIGN_2D) and "
                           "a class.")
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume',
                      condition='referenceType == %d' % REFERENCE_VOLUME, allowsNull=True,
                      label='Reference volume',
                      help="Map with the particles' box size and pixel size.")
        form.addParam('inputReferences', params.PointerParam,
                      pointerClass='SetOfAverages, SetOfClasses2D',
                      condition='referenceType == %d' % REFERENCE_2D, allowsNull=True,
                      label='2D references',
                      help="Averages (or 2D classes, whose representatives are used) "
                           "with the particles' box size and pixel size.")
        form.addParam('angularStep', params.FloatParam, default=7.5,
                      condition='referenceType == %d' % REFERENCE_VOLUME,
                      validators=[params.Range(0.5, 45.0)], label='Angular step (deg)',
                      help="Spacing of the viewing directions of the projections. The "
                           "default 7.5 gives the radial-SVD paper's grid of 993 "
                           "directions over the whole sphere.")

        form.addSection(label='Search')
        form.addParam('maxResolution', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Max resolution (Å)',
                      help="Finest resolution compared. 0 uses the radial-SVD paper's "
                           "band, %.1f Fourier pixels (K = 48), capped at Nyquist. The "
                           "number of rings R and of in-plane angles Q follow from it "
                           "(R = ceil(pi f) + 1, Q = 2 R)." % PAPER_MAX_FREQUENCY)
        form.addParam('maxShift', params.FloatParam, default=-1.0,
                      validators=[params.GE(-1.0)], label='Max shift (px)',
                      help="Particle-centre offsets up to this radius are searched. -1 "
                           "(default): %g %% of the box, as picks are usually off by a few "
                           "percent of it (6.4 px at 128 px, 12.8 px at 256 px). A radial-SVD "
                           "search over a coarse lattice of shifts (a quarter of the band's "
                           "shortest period apart) picks each particle's best few references; "
                           "the factorised translation kernel (FTK) then scores them over the "
                           "whole disc at the shift step below and every in-plane angle. 0 "
                           "searches the centred particles only."
                           % (100 * SHIFT_RANGE_FRACTION))
        form.addParam('shiftStep', params.FloatParam, default=DEFAULT_SHIFT_STEP,
                      validators=[params.Positive], label='Shift step (px)',
                      help="Spacing of the shifts the FTK scores (sub-pixel by default).")
        form.addParam('useCtf', params.BooleanParam, default=True, label='Use CTF?',
                      help="Multiply every particle by its own CTF (astigmatism and phase "
                           "shift included; |CTF| for phase-flipped sets) and compare it "
                           "with the references, whose norms take the same CTF. Particles "
                           "without CTF are aligned without it (the summary says so).")
        form.addParam('rankMode', params.EnumParam, default=RANK_TOLERANCE,
                      choices=['eigenvalue tolerance', 'fixed'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Principal rings H',
                      help="How many principal rings are kept: all eigenvalues of the "
                           "radial kernel above a fraction of the largest one (at least "
                           "4), or a fixed number. H = R is the exact full-rank "
                           "calculation.")
        form.addParam('rankTolerance', params.FloatParam, default=1e-2,
                      condition='rankMode == %d' % RANK_TOLERANCE,
                      validators=[params.Range(0.0, 1.0)], label='Eigenvalue tolerance',
                      help="Keep rings whose eigenvalue exceeds this fraction of the "
                           "largest (1e-2 as in the author's pipelines).")
        form.addParam('fixedRank', params.IntParam, default=8,
                      condition='rankMode == %d' % RANK_FIXED,
                      validators=[params.Positive], label='H',
                      help="Number of principal rings, at most the number of rings R.")
        form.addParam('ctfTolerance', params.FloatParam, default=5e-2,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='CTF group tolerance',
                      help="Particles whose root-mean-square CTFs per ring differ by less "
                           "than this relative L2 distance share one radial kernel; each "
                           "particle's own CTF is used in every comparison.")
        form.addSection(label='Local refinement')
        refining = 'referenceType == %d and localRefinement' % REFERENCE_VOLUME
        form.addParam('localRefinement', params.BooleanParam, default=True,
                      condition='referenceType == %d' % REFERENCE_VOLUME,
                      label='Refine poses locally?',
                      help="After the global search, refine every particle's rotation and "
                           "shift continuously (damped Gauss-Newton steps on the likelihood "
                           "of its image under the reference volume, with its own CTF, the "
                           "projector's derivatives giving the steps), so the poses are not "
                           "quantised to the viewing grid, the in-plane angles and the shift "
                           "lattice. The volume is first put on the particles' scale by their "
                           "fitted amplitude against it. Each batch is refined in its own "
                           "step as soon as its search is done.")
        form.addParam('refineIterations', params.IntParam, default=8, condition=refining,
                      validators=[params.Positive], label='Iterations per resolution',
                      help="Descent steps at each of the three resolution limits of the "
                           "refinement (1/4, 1/2 and all of its max resolution's frequency).")
        form.addParam('refineResolution', params.FloatParam, default=0.0, condition=refining,
                      validators=[params.GE(0.0)], label='Refinement max resolution (Å)',
                      help="Finest resolution the refinement compares. 0: Nyquist (one "
                           "Fourier pixel below); the frequencies the volume lacks carry no "
                           "weight in the steps, so the default suits most maps.")
        self._defineBatchSizeParam(
            form, help="Particles are aligned in independent steps of this size, which run "
                       "in parallel with several threads (or GPUs) and let a stopped run "
                       "continue where it stopped.")
        form.addParallelSection(threads=2, mpi=0)

    def _referenceParams(self):
        """The form parameters the references depend on (besides the particles' geometry)."""
        if self._fromVolume():
            return ('referenceType', 'inputVolume', 'angularStep', 'maxResolution')
        return ('referenceType', 'inputReferences', 'maxResolution')

    def _searchParams(self):
        """The form parameters a batch's search depends on (besides its references)."""
        rank = 'fixedRank' if self.rankMode.get() == RANK_FIXED else 'rankTolerance'
        return ('inputParticles', 'maxShift', 'shiftStep', 'useCtf', 'rankMode', rank,
                'ctfTolerance')

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        inputParticles = self.inputParticles.get()
        errors = self._validateParticleSelection(inputParticles)
        if errors:
            return errors
        errors = convert.image_file_errors(inputParticles, "particles")
        box, pixel = inputParticles.getXDim(), inputParticles.getSamplingRate()
        if self._fromVolume():
            errors += self._validateReferenceVolume(self.inputVolume.get(), box, pixel)
        else:
            errors += self._validateReferences(box, pixel)
        errors += self._validateMaxResolution(pixel)
        if not errors and self.rankMode.get() == RANK_FIXED:
            rings = self._grid(box, pixel).n_rings
            if self.fixedRank.get() > rings:
                errors.append("H = %d exceeds the number of rings R = %d at this "
                              "resolution; use H <= %d (H = R is the exact calculation)."
                              % (self.fixedRank, rings, rings))
        return errors + self._validateContinue()

    def _validateReferences(self, box, pixel):
        references = self.inputReferences.get()
        errors = self._validateParticleSelection(references, "2D references")
        if errors:
            return errors
        if isinstance(references, SetOfClasses2D):
            errors = convert.representative_file_errors(references, "2D classes")
            referenceBox = references.getDimensions()[0]
        else:
            errors = convert.image_file_errors(references, "2D references")
            referenceBox = references.getXDim()
        return errors or self._validateSameGeometry("2D references", referenceBox,
                                                    references.getSamplingRate(), box, pixel)

    def _warnings(self):
        inputParticles = self.inputParticles.get()
        if inputParticles is None or not inputParticles.getSize():
            return []
        warnings = []
        if self.useCtf and not inputParticles.hasCTF():
            warnings.append("The particles have no CTF: they will be aligned without it.")
        box, pixel = inputParticles.getXDim(), inputParticles.getSamplingRate()
        if self._validateMaxResolution(pixel):
            return warnings
        grid = self._grid(box, pixel)
        if grid.n_rings < MIN_USEFUL_RINGS:
            warnings.append(self._coarseBandWarning(
                "%d rings x %d in-plane angles" % (grid.n_rings, grid.n_angles),
                box * pixel / grid.max_frequency, box * pixel * np.pi / (MIN_USEFUL_RINGS - 1)))
        count = len(viewing_grid(self.angularStep.get())[0]) if self._fromVolume() else 0
        size = count * grid.n_rings * grid.n_angles * np.dtype(np.complex64).itemsize
        if size > LARGE_REFERENCES:
            warnings.append(
                "A %g-degree grid gives %d projections: %.1f GB of references on disk and "
                "about %.0f GB of memory for every step that runs at once. Use a coarser "
                "angular step (7.5 degrees gives the paper's 993 directions)."
                % (self.angularStep, count, size / 1e9, STEP_MEMORY_FACTOR * size / 1e9))
        warnings += self._resourceWarnings(size, STEP_MEMORY_FACTOR * size,
                                           "use a coarser angular step")
        if self._maxShift(box) >= box / 2:
            warnings.append(self._shiftRangeWarning("particles", box, self._maxShift(box),
                                                    self.shiftStep.get(), 2))
        return warnings

    # --------------------------- UTILS functions -----------------------------
    def _fromVolume(self):
        return self.referenceType.get() == REFERENCE_VOLUME

    def _withCtf(self):
        return bool(self.useCtf) and self.inputParticles.get().hasCTF()

    def _fixedRank(self):
        return self.fixedRank.get() if self.rankMode.get() == RANK_FIXED else None

    def _grid(self, box=None, pixel=None):
        """The polar grid of this run (from the form and the particles' geometry)."""
        inputParticles = self.inputParticles.get()
        return alignment_grid(box or inputParticles.getXDim(),
                              pixel or inputParticles.getSamplingRate(),
                              self.maxResolution.get() or None)

    def _maxShift(self, box=None):
        """The searched shift radius in pixels: the form's, or its default for the box."""
        return resolve_max_shift(self.maxShift.get(),
                                 box or self.inputParticles.get().getXDim())

    def _refines(self):
        return self._fromVolume() and bool(self.localRefinement)
