"""What the Fourier-slice protocols (posterior, pose refinement) share: the particles as
the core's spectra files, their poses, the posterior fits and the checks of their input
and of the disk and memory a run needs."""
import json
import os
import shutil

import numpy as np
import psutil
from pwem.constants import ALIGN_PROJ

from cryohess_plugin import convert
from cryohess_plugin.core.ctf import params_to_rows

from .protocol_base import CryoHessProtocolMixin

#: A run is warned about when its files or grids need more than this share of what is free.
RESOURCE_SHARE = 0.5


class FourierSliceParticlesMixin(CryoHessProtocolMixin):
    """What the posterior and the pose-refinement protocols share: the particles as the
    core's spectra files (:class:`ParticleFiles`), their poses, the posterior fits and the
    checks of their input and resources."""
    #: Whether the images are kept beside the spectra (pose refinement reads them).
    _keepImages = False

    def _defineInput(self, form, help):
        """The GPU option, the Input section and the aligned particles with CTFs."""
        self._defineGpuParams(form, "the Fourier-slice projections")
        form.addSection(label='Input')
        self._defineParticlesParam(form, help, pointerCondition='hasAlignmentProj',
                                   important=True)

    def _particleTemplates(self):
        return {'input': self._getExtraPath('input_particles.npz'),
                'posterior': self._getExtraPath('posterior_%(part)s.npz')}

    def convertInputStep(self, digest):
        """Poses and CTF parameters of the particles, in id order, and the core's spectra
        and CTF files, written batch by batch: no step holds every image."""
        from cryohess_plugin.core.posterior import write_particle_files
        partSet = self.inputParticles.get()
        particles = convert.particles_to_arrays(partSet, need_ctf=True,
                                                need_alignment=ALIGN_PROJ, read_images=False)
        batches = (convert.particles_to_arrays(partSet, need_alignment=False, limit=count,
                                               skip=first).images
                   for first, count in self._batches())
        box = write_particle_files(self._particleFiles(), batches, particles.ctfs,
                                   particles.pixel_size, progress=self._progressLog("  "))
        # Written last: its presence means the conversion is complete.
        self._saveNpz(self._getFileName('input'), ids=particles.ids,
                      rotations=particles.rotations, shifts=particles.shifts,
                      ctfs=params_to_rows(particles.ctfs), pixelSize=particles.pixel_size)
        self.info("%d particles of %d px at %g Å/px; spectra on disk: %.1f MiB"
                  % (len(particles.ids), box, particles.pixel_size,
                     os.path.getsize(self._particleFiles().spectra) / 2 ** 20))

    def _fitPosterior(self, poses, path, label, rows=None, checkPolarity=False, **options):
        """Fit the posterior of the converted particles ``rows`` (all by default) at ``poses``
        (``(rotations, shifts)``; ``options`` of :func:`fit_posterior`) as a batch job, log
        it and store it with the particle count and seconds in its history.  With
        ``checkPolarity`` a map darker in its middle than in its solvent stops the run
        (:class:`PolarityError`, nothing saved) and one that cannot tell is warned about;
        the contrast is kept in the history."""
        from cryohess_plugin.core.contrast import MapPolarity
        from cryohess_plugin.core.posterior import FourierPosterior
        self.info("Fitting the %s posterior to %d particles"
                  % (label, len(poses[0]) if rows is None else len(rows)))
        fitPoses = dict(rotations=poses[0], shifts=poses[1])
        if rows is not None:
            fitPoses['rows'] = rows
        self._runBatchJob('fit_posterior_part', path, "  ", arrays={'poses': fitPoses},
                          inputs={'particleFiles': self._getExtraPath()},
                          options=dict(options, check_polarity=checkPolarity))
        posterior = FourierPosterior.load(path)
        if 'steps' in posterior.history:
            self.info("  %d minibatch steps of %d particles"
                      % (posterior.history['steps'], posterior.history['batch_size']))
        if checkPolarity:
            polarity = MapPolarity(*posterior.history['polarity'])
            self.info("  Contrast of the mean map against its solvent: %.3g ± %.2g (z = %.1f)"
                      % (polarity.contrast, polarity.standard_error, polarity.z_score))
            if polarity.warning():
                self.warning(polarity.warning())
        facts = dict(particles=posterior.history['particles'], box=posterior.box,
                     noise=self._noiseText(posterior),
                     contrast=self._contrastTexts(posterior))
        with open(_factsPath(path), 'w') as factsFile:
            json.dump(facts, factsFile)
        self.info("The %s posterior in %.1f s: %s"
                  % (label, posterior.history['seconds'], facts['noise']))

    def _posteriorFacts(self, part):
        """What the summary and methods say of a stored posterior (particles, box, noise
        and contrast texts), kept beside it: selecting a run in the GUI reads no
        map-sized arrays."""
        with open(_factsPath(self._getFileName('posterior', part=part))) as factsFile:
            return json.load(factsFile)

    def _particleFiles(self):
        from cryohess_plugin.core.posterior import ParticleFiles
        return ParticleFiles.in_directory(self._getExtraPath(), images=self._keepImages)

    def _inputData(self):
        """Ids, poses, CTF rows and pixel size of the converted particles."""
        return np.load(self._getFileName('input'))

    def _problem(self, poses=None):
        """The core's posterior problem of the converted particles at ``poses``
        (``(rotations, shifts)``; the input poses by default)."""
        if poses is None:
            data = self._inputData()
            poses = data['rotations'], data['shifts']
        return self._particleFiles().problem(*poses, backend=self._backend())

    def _loadPosterior(self, part):
        """The stored :class:`FourierPosterior` of a fit (history: particles, seconds)."""
        from cryohess_plugin.core.posterior import FourierPosterior
        return FourierPosterior.load(self._getFileName('posterior', part=part))

    def _pixelSize(self):
        return self.inputParticles.get().getSamplingRate()

    @staticmethod
    def _noiseText(posterior):
        """The noise of a posterior in words: one variance, or its range over the shells."""
        if posterior.white_noise:
            return "white noise variance %.4g per pixel" % posterior.noise_variance
        shells = posterior.noise_shells()
        return ("noise variance per shell from %.4g (shell 1) to %.4g (shell %d) per pixel"
                % (shells[1], shells[-2], shells.size - 2))

    def _contrastTexts(self, posterior=None):
        """Summary lines on the particles' contrast: |CTF| for a phase-flipped set, and
        the warning when the polarity check of ``posterior``'s map could not tell."""
        from cryohess_plugin.core.contrast import MapPolarity
        texts = []
        if self.inputParticles.get().isPhaseFlipped():
            texts.append("The particles are phase-flipped: their CTF is used as |CTF|.")
        polarity = None if posterior is None else posterior.history.get('polarity')
        if polarity is not None and MapPolarity(*polarity).warning():
            texts.append(MapPolarity(*polarity).warning())
        return texts

    def _validateParticles(self):
        """Errors of the particle input: selection, poses and CTFs, and their files."""
        particles = self.inputParticles.get()
        errors = self._validateParticleSelection(particles)
        if errors:
            return errors
        return (self._validateAlignedParticles(particles, "assign CTFs to the particles")
                + convert.image_file_errors(particles, "particles"))

    def _resourceWarnings(self, fits):
        """Warnings when the particle files or the Fourier grids of ``fits`` fits at once
        would take more than :data:`RESOURCE_SHARE` of the free disk or memory."""
        from cryohess_plugin.core.posterior import fit_memory_bytes, particle_file_bytes
        particles = self.inputParticles.get()
        if particles is None or not particles.getSize():
            return []
        count, box = particles.getSize(), particles.getXDim()
        warnings = []
        disk, freeDisk = (particle_file_bytes(count, box, images=self._keepImages),
                          self._freeDiskBytes())
        if disk > RESOURCE_SHARE * freeDisk:
            warnings.append("The %d particles' spectra and CTF files%s will take %s on disk, "
                            "but only %s are free there: free some space, or use fewer or "
                            "downsampled particles."
                            % (count, " (and images)" if self._keepImages else "",
                               _sizeText(disk), _sizeText(freeDisk)))
        memory, freeMemory = fits * fit_memory_bytes(box, count), self._freeMemoryBytes()
        if memory > RESOURCE_SHARE * freeMemory:
            warnings.append("The Fourier grids of %d px boxes need about %s of memory (%d fit%s "
                            "at once), but only %s are available: downsample the particles "
                            "or use fewer threads." % (box, _sizeText(memory), fits,
                                                       "s" if fits > 1 else "",
                                                       _sizeText(freeMemory)))
        return warnings

    def _freeDiskBytes(self):
        """Free bytes on the disk the run writes to (its project's, before it exists)."""
        path = os.path.abspath(self.getWorkingDir() or '.')
        while not os.path.exists(path):
            path = os.path.dirname(path)
        return shutil.disk_usage(path).free

    @staticmethod
    def _freeMemoryBytes():
        return psutil.virtual_memory().available


def _sizeText(size):
    """A byte count in GiB or MiB."""
    return "%.1f GiB" % (size / 2 ** 30) if size >= 2 ** 30 else "%.0f MiB" % (size / 2 ** 20)


def _factsPath(posteriorPath):
    """The summary facts file beside a stored posterior."""
    return posteriorPath[:-len('.npz')] + '_facts.json'
