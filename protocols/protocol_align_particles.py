"""Global alignment of particles with the radial-SVD (Rangan 2022)."""
import os
import time
from enum import Enum

import numpy as np
from pwem.constants import ALIGN_2D, ALIGN_PROJ
from pwem.objects import SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtAlign2D
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL

from cryohess_plugin import convert
from cryohess_plugin.constants import (ALIGN_SCORE, ALIGN_TEMPLATE, CTF_GROUP,
                                       REFINED_ANGLE_CHANGE, REFINED_SHIFT_CHANGE)
from cryohess_plugin.core.alignment import AlignmentResult

from .align_particles_settings import AlignParticlesSettings
from .protocol_base import CryoHessProtocolMixin

#: The polarity check aligns this many particles (the first ones), as given and negated.
POLARITY_PARTICLES = 100


class outputs(Enum):
    outputParticles = SetOfParticles
    outputClasses = SetOfClasses2D


class CryoHessProtAlignParticles(AlignParticlesSettings, CryoHessProtocolMixin, ProtAlign2D):
    """Assign every particle its best reference, in-plane angle and shift.

    References are projections of a volume on a viewing grid (global
    projection matching, output ``ALIGN_PROJ``) or a set of 2-D averages
    (output ``ALIGN_2D`` and one class per average).  Images and references are
    compared on a polar Fourier grid; the radial-SVD compresses its rings into
    the few "principal rings" that best tell in-plane angles apart, with one
    radial kernel per group of similar CTF power, so each image-reference pair
    costs O(Q (H + log Q)) for all Q in-plane angles instead of O(R Q).  Shifts
    within a disc (5 % of the box by default) are searched in two stages: the
    radial-SVD over a coarse lattice of shifts picks each particle's best few
    references, and the factorised translation kernel scores them over the
    whole disc at sub-pixel steps.  Each
    particle, multiplied by its own CTF (astigmatism included), is compared with
    the CTF-free references.  First particles that look dark against the
    references (checked against their negatives) stop the run with the fix.
    Against a volume, each particle's grid pose is then refined locally (an
    option, on by default): continuous rotation and shift by damped
    Gauss-Newton descent on the likelihood, with the particle's CTF.
    """
    _label = 'radial-SVD align particles'
    stepsExecutionMode = STEPS_PARALLEL
    _devStatus = BETA
    _possibleOutputs = outputs
    _references = ['Rangan2022radial', 'Rangan2020factorization', 'Ullrich2019differentiable']

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        gpu = self._usesGpu()
        particles = self.inputParticles.get()
        prepare = self._insertStep(self.prepareReferencesStep, particles.getXDim(),
                                   particles.getSamplingRate(), reads=self._referenceParams(),
                                   needsGPU=gpu)
        polarity = self._insertStep(self.checkPolarityStep,
                                    reads=('inputParticles', 'useCtf', 'maxShift', 'shiftStep'),
                                    after=[prepare], needsGPU=gpu)
        batches = searches = [self._insertStep(self.alignBatchStep, index, first, count,
                                               reads=self._searchParams(),
                                               after=[prepare, polarity], needsGPU=gpu)
                              for index, (first, count) in enumerate(self._batches())]
        if self.diagnosticParticles.get():
            # Of the searches only, and before the refinement steps (Continue compares
            # steps in order), so that switching the refinement keeps it.
            diagnostics = [self._insertStep(
                self.rankDiagnosticsStep, reads=self._searchParams() + ('diagnosticParticles',),
                after=searches, needsGPU=gpu)]
        else:
            diagnostics = []
        # After every batch step, so that switching the refinement keeps the searches; each
        # waits only for its own batch.
        if self._refines():
            batches = [self._insertStep(self.refineBatchStep, index, first, count,
                                        reads=('refineIterations', 'refineResolution'),
                                        after=[batch], needsGPU=gpu)
                       for batch, (index, (first, count)) in zip(batches,
                                                                 enumerate(self._batches()))]
        self._insertStep(self.createOutputStep, after=batches + diagnostics)

    def _filenameTemplates(self):
        return {'references': self._getExtraPath('references.npz'),
                'polarity': self._getExtraPath('polarity.npz'),
                'batch': self._getExtraPath('alignment_batch_%(index)03d.npz'),
                'refined': self._getExtraPath('refinement_batch_%(index)03d.npz'),
                'diagnostics': self._getExtraPath('rank_diagnostics.npz')}

    # --------------------------- STEPS functions -----------------------------
    def prepareReferencesStep(self, box, pixel, digest):
        """Polar transforms of the references on the particles' grid (``box`` px, ``pixel`` Å)."""
        from cryohess_plugin.core import polar
        from cryohess_plugin.core.alignment import projection_templates
        self._setDevices()
        grid = self._grid(box, pixel)
        self.info("Polar grid: %d rings x %d angles up to %.2f Fourier pixels"
                  % (grid.n_rings, grid.n_angles, grid.max_frequency))
        started = time.perf_counter()
        if self._fromVolume():
            volume, _ = convert.volume_to_array(self.inputVolume.get(), pixel)
            templates, rotations = projection_templates(volume, grid, self.angularStep.get(),
                                                        self._backend())
            extra = dict(rotations=rotations)
            self.info("%d projections of the reference on a %g-degree grid"
                      % (len(rotations), self.angularStep))
        else:
            references = convert.references_to_arrays(self.inputReferences.get())
            templates = polar.polar_transform(references.images, grid, backend=self._backend())
            extra = dict(referenceIds=references.ids)
            self.info("%d 2D references" % len(templates))
        self._saveNpz(self._getFileName('references'), templates=templates, **extra)
        self.info("References ready in %.1f s" % (time.perf_counter() - started))

    def checkPolarityStep(self, digest):
        """Align the first particles as given and negated; stop if they look dark."""
        from cryohess_plugin.core.alignment import polarity_against_templates
        from cryohess_plugin.core.storage import save_fields
        particles, imagePolar, search = self._particlesAndSearch(POLARITY_PARTICLES)
        if len(particles.ids) < 2:
            self.info("Polarity check skipped: it needs at least 2 particles")
            return
        test = polarity_against_templates(search, imagePolar, particles.ctfs,
                                          particles.pixel_size)
        self.info("Polarity: the first %d particles against their negatives, z = %.1f"
                  % (len(particles.ids), test.z_score))
        save_fields(self._getFileName('polarity'), test.check("particles"))

    def alignBatchStep(self, index, first, count, digest):
        """Align particles ``first .. first + count - 1`` (in id order) against the references."""
        started = time.perf_counter()
        self._setDevices()
        output = self._getFileName('batch', index=index)
        notes = self._runBatchJob(
            'align_batch', output, "Batch %d: " % (index + 1),
            arrays={'particles': self._particleInput(self._particles(count, first))},
            inputs={'references': self._getFileName('references')},
            options=dict(max_resolution=self.maxResolution.get() or None,
                         max_shift=self._maxShift(), shift_step=self.shiftStep.get(),
                         rank=self._fixedRank(), tolerance=self.rankTolerance.get(),
                         ctf_tolerance=self.ctfTolerance.get()))
        result = AlignmentResult.load(output)
        self.info("Batch %d: %d particles x %d references in %.1f s (H = %s)"
                  % (index + 1, count, notes['templates'], time.perf_counter() - started,
                     ", ".join(str(h) for h in result.ranks)))

    def refineBatchStep(self, index, first, count, digest):
        """Refine the grid poses of particles ``first .. first + count - 1`` locally."""
        from cryohess_plugin.core.pose_refinement import PoseRefinementResult
        self._setDevices()
        started = time.perf_counter()
        particles = self._particles(count, first)
        rotations, shifts = self._gridPoses(self._loadResults([index]))
        volume, _ = convert.volume_to_array(self.inputVolume.get(), particles.pixel_size)
        output = self._getFileName('refined', index=index)
        fit = self._runBatchJob(
            'refine_batch', output, "Batch %d refinement: " % (index + 1),
            arrays={'particles': self._particleInput(particles),
                    'poses': dict(volume=volume, rotations=rotations, shifts=shifts)},
            options=dict(max_resolution=self.refineResolution.get() or None,
                         iterations=self.refineIterations.get()))
        result = PoseRefinementResult.load(output)
        angle, shift = result.changes_from(rotations, shifts)
        self.info("Batch %d refined in %.1f s: loss lowered for %d of %d particles, median "
                  "change %.3g deg and %.3g px (amplitude against the volume %.4g, z = %.1f)"
                  % (index + 1, time.perf_counter() - started,
                     np.count_nonzero(result.loss < result.loss_start), count,
                     np.median(angle), np.median(shift), fit['amplitude'], fit['z_score']))

    @staticmethod
    def _particleInput(particles):
        """A batch's particles as the arrays of a batch job's input file."""
        from cryohess_plugin.core.ctf import params_to_rows
        arrays = dict(images=particles.images, pixelSize=particles.pixel_size,
                      ids=particles.ids)
        if particles.ctfs is not None:
            arrays['ctfs'] = params_to_rows(particles.ctfs)
        return arrays

    def _particles(self, count, first=0):
        """Particles ``first .. first + count - 1`` (in id order) with the CTFs this run uses."""
        return convert.particles_to_arrays(
            self._parallelStepSet(), need_ctf=self._withCtf(), need_alignment=False,
            limit=count, skip=first)

    def _particlesAndSearch(self, count, **options):
        """The first ``count`` particles, their polar samples, and the search against the
        references over the form's shifts, with aligner ``options``."""
        from cryohess_plugin.core import polar
        from cryohess_plugin.core.alignment import ParticleSearch
        self._setDevices()
        particles = self._particles(count)
        grid = self._grid()
        search = ParticleSearch(grid, np.load(self._getFileName('references'))['templates'],
                                self._maxShift(), self.shiftStep.get(),
                                backend=self._backend(), **options)
        return (particles, polar.polar_transform(particles.images, grid, backend=self._backend()),
                search)

    def rankDiagnosticsStep(self, digest):
        """The viewer's landscapes, accuracy and speed versus H, on the first particles."""
        from cryohess_plugin.core.alignment.diagnostics import rank_diagnostics
        result = self._loadResults()
        count = min(self.diagnosticParticles.get(), len(result.ids))
        particles, imagePolar, search = self._particlesAndSearch(
            count, tolerance=self.rankTolerance.get(), ctf_tolerance=self.ctfTolerance.get())
        runRank = self._fixedRank() or int(result.ranks[result.group[0]])
        diagnostics = rank_diagnostics(search.aligner, imagePolar, result.template[:count],
                                       result.shift[:count], runRank,
                                       ctf_params=particles.ctfs,
                                       pixel_size=particles.pixel_size)
        diagnostics.save(self._getFileName('diagnostics'))
        self.info("Rank diagnostics of %d particles: H = %d aligns %.1fx faster than full "
                  "rank; landscape correlation %s over H = %s"
                  % (count, diagnostics.run_rank, diagnostics.speedup(),
                     np.round(diagnostics.correlation, 3), diagnostics.sweep_ranks))

    def createOutputStep(self, digest):
        from cryohess_plugin.core.rotations import in_plane_rotations
        result = self._loadResults()
        ids = result.ids
        columns = {ALIGN_SCORE: result.score.astype(np.float64),
                   ALIGN_TEMPLATE: result.template.astype(np.int64) + 1,
                   CTF_GROUP: result.group.astype(np.int64)}
        references = np.load(self._getFileName('references'))
        if self._fromVolume():
            poses = self._gridPoses(result)
            if self._refines():
                refined = self._loadRefined()
                columns[REFINED_ANGLE_CHANGE], columns[REFINED_SHIFT_CHANGE] = \
                    refined.changes_from(*poses)
                poses = (refined.rotations, refined.shifts)
            particles = self._copyParticles(ids, columns, poses, ALIGN_PROJ)
            self._defineOutputs(**{outputs.outputParticles.name: particles})
            self._defineTransformRelation(self.inputParticles, particles)
            self._defineSourceRelation(self.inputVolume, particles)
            return
        particles = self._copyParticles(ids, columns,
                                        (in_plane_rotations(result.angle), result.shift),
                                        ALIGN_2D)
        classes = convert.classify_particles(self._createSetOfClasses2D(particles), ids,
                                             references['referenceIds'][result.template],
                                             self.inputReferences.get())
        self._defineOutputs(**{outputs.outputParticles.name: particles,
                               outputs.outputClasses.name: classes})
        self._defineTransformRelation(self.inputParticles, particles)
        self._defineSourceRelation(self.inputParticles, classes)
        for output in (particles, classes):
            self._defineSourceRelation(self.inputReferences, output)

    # --------------------------- INFO functions ------------------------------
    def _expectedOutputs(self):
        if self._fromVolume():
            return {outputs.outputParticles.name}
        return {outputs.outputParticles.name, outputs.outputClasses.name}

    def _summary(self):
        if not self.hasAttribute(outputs.outputParticles.name):
            return ["Output not ready yet."]
        result = self._loadResults()
        summary = ["%d particles aligned against %s."
                   % (len(result.ids), self._referenceText()),
                   "Principal rings H: %s of R = %d; %d CTF groups."
                   % (", ".join(map(str, sorted(set(result.ranks.tolist())))),
                      result.eigenvalues.shape[-1], len(result.ranks)),
                   "Mean score %.4g." % np.mean(result.score)]
        if self._refines():
            refined = self._loadRefined()
            angle, shift = refined.changes_from(*self._gridPoses(result))
            summary.append("Poses refined locally from the grid: median change %.3g deg and "
                           "%.3g px; the loss fell for %.1f %% of the particles."
                           % (np.median(angle), np.median(shift),
                              100 * np.mean(refined.loss < refined.loss_start)))
        if not self._withCtf():
            summary.append("Aligned WITHOUT CTF (%s)."
                           % ("switched off" if not self.useCtf else "the particles have none"))
        elif self.inputParticles.get().isPhaseFlipped():
            summary.append("The particles are phase-flipped: aligned with |CTF|.")
        if os.path.exists(self._getFileName('polarity')):
            from cryohess_plugin.core.contrast import PolarityTest
            from cryohess_plugin.core.storage import load_fields
            summary.append("Contrast checked: the first particles match the references better "
                           "than their negatives (z = %.1f)."
                           % load_fields(PolarityTest, self._getFileName('polarity')).z_score)
        return summary

    def _methods(self):
        if not self.hasAttribute(outputs.outputParticles.name):
            return []
        grid = self._grid()
        return ["%d particles were aligned against %s with the radial-SVD "
                "[Rangan2022radial] on a polar grid of %d rings and %d in-plane angles up "
                "to %.1f Å, %s%s."
                % (self.inputParticles.get().getSize(), self._referenceText(),
                   grid.n_rings, grid.n_angles,
                   grid.box * self.inputParticles.get().getSamplingRate() / grid.max_frequency,
                   self._shiftMethods(), " with the particles' CTFs" if self._withCtf() else "")
                + self._refinementMethods()]

    def _shiftMethods(self):
        if not self._maxShift():
            return "at the particles' centres"
        return ("searching shifts up to %g px in steps of %g px by the factorised translation "
                "kernel [Rangan2020factorization]" % (self._maxShift(), self.shiftStep))

    def _refinementMethods(self):
        if not self._refines():
            return ""
        return (" Each pose was then refined locally by damped Gauss-Newton descent on the "
                "likelihood of the Fourier-slice model [Ullrich2019differentiable], %d steps at each of three resolution "
                "limits up to %s, against the volume on the particles' fitted scale."
                % (self.refineIterations, "%g Å" % self.refineResolution.get()
                   if self.refineResolution.get() else "Nyquist"))

    # --------------------------- UTILS functions -----------------------------
    def _referenceText(self):
        if self._fromVolume():
            return "projections of a volume on a %g-degree viewing grid" % self.angularStep
        return "%d 2D references" % self.inputReferences.get().getSize()

    def _loadResults(self, indices=None):
        """The results of the batches ``indices`` (all by default) in particle order, with
        the particles' ``ids``."""
        return AlignmentResult.concatenate(
            AlignmentResult.load(self._getFileName('batch', index=index))
            for index in (range(len(self._batches())) if indices is None else indices))

    def getSearchPoses(self):
        """The rotations ``(n, 3, 3)`` and shifts ``(n, 2)`` (px) the global search gave the
        particles against the volume, in particle-id order: the poses on the search's grid,
        before any local refinement (the output holds the refined ones)."""
        if not self._fromVolume():
            raise ValueError("only an alignment against a volume assigns 3D poses")
        return self._gridPoses(self._loadResults())

    def _gridPoses(self, result):
        """Rotations and shifts of the search's ``result`` (poses on the grid)."""
        from cryohess_plugin.core.alignment import rotations_from_alignment
        references = np.load(self._getFileName('references'))
        return (rotations_from_alignment(references['rotations'], result.template,
                                         result.angle), result.shift)

    def _loadRefined(self):
        """The locally refined poses of every particle (a :class:`PoseRefinementResult`)."""
        from cryohess_plugin.core.pose_refinement import PoseRefinementResult
        return PoseRefinementResult.concatenate(
            [PoseRefinementResult.load(self._getFileName('refined', index=index))
             for index in range(len(self._batches()))])
