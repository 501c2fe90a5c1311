"""Hyper-molecules: continuous heterogeneity sampled by MCMC, with its uncertainty."""
import time

import numpy as np
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, SetOfVolumes, Volume
from pwem.protocols import ProtAnalysis3D
from pyworkflow.constants import BETA
from pyworkflow.protocol import STEPS_PARALLEL
import pyworkflow.protocol.params as params

from cryohess_plugin import chimerax, convert
from cryohess_plugin.constants import HYPER_SERIES, HYPER_TAU, HYPER_TAU_MEAN, HYPER_TAU_STD

from .protocol_base import CryoHessProtocolMixin

#: Fewest particles per state-basis map (the core refuses fewer).
MIN_PARTICLES_PER_MAP = 50


OUTPUT_VOLUMES, OUTPUT_SPREAD, OUTPUT_PARTICLES = 'outputVolumes', 'outputSpread', 'outputParticles'
#: Two outputs share a class, so they are listed by name (an Enum would alias them).
OUTPUTS = {OUTPUT_VOLUMES: SetOfVolumes, OUTPUT_SPREAD: SetOfVolumes,
           OUTPUT_PARTICLES: SetOfParticles}


class CryoHessProtHyperMolecule(CryoHessProtocolMixin, ProtAnalysis3D):
    """A map that varies smoothly with a state τ in [0, 1]^d (a hyper-molecule), or a
    rigid part plus masked parts with their own states, sampled by Markov chain Monte
    Carlo jointly with every particle's state, shift and contrast (and optionally its
    rotation).  Outputs: the posterior mean maps along τ, their across-sample spread, and
    the particles with the posterior mean and spread of their τ; chain traces, split R-hat
    and effective sample sizes in the viewer.  Chains run as parallel steps and save
    their state every few sweeps, so Continue resumes a stopped run.
    """
    _label = 'hyper-molecule (MCMC)'
    stepsExecutionMode = STEPS_PARALLEL
    _devStatus = BETA
    _possibleOutputs = OUTPUTS
    _references = ['Lederman2020hyper']

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the likelihood kernels and the projector")
        form.addSection(label='Input')
        self._defineParticlesParam(
            form, "Particles with CTFs and 3D poses (from a refinement or from 'radial-SVD "
                  "align particles'), white (protein density positive).",
            pointerCondition='hasAlignmentProj', important=True)
        form.addParam('initialVolume', params.PointerParam, pointerClass='Volume',
                      allowsNull=True, label='Initial volume (optional)',
                      help="A consensus map of the particles. It is put on the particles' "
                           "scale (and its polarity checked) before sampling. Empty: a "
                           "homogeneous map is reconstructed from the particles first.")
        form.addSection(label='Model')
        form.addParam('stateDimension', params.IntParam, default=1,
                      validators=[params.Positive], label='State dimension d',
                      help="Dimensions of the state of every heterogeneous part, 1 to 3.")
        form.addParam('stateOrder', params.IntParam, default=3, validators=[params.Positive],
                      label='State basis order',
                      help="Cosine terms per state axis: order^d maps per part. 2 allows a "
                           "linear change, 3 a curved one. Each map needs at least %d "
                           "particles." % MIN_PARTICLES_PER_MAP)
        form.addParam('componentMasks', params.MultiPointerParam, pointerClass='VolumeMask',
                      allowsNull=True, label='Masks of moving parts (optional)',
                      help="One mask per part with its own state (e.g. two arms); the rest "
                           "of the molecule is one rigid part. Empty: the whole map has one "
                           "state.")
        form.addParam('maxResolution', params.FloatParam, default=0.0,
                      validators=[params.GE(0.0)], label='Max resolution (Å)',
                      help="Finest resolution sampled. 0: a quarter of the box in Fourier "
                           "pixels (4 px resolution). Burn-in marches up to it.")
        form.addSection(label='Sampler')
        form.addParam('chains', params.IntParam, default=2, validators=[params.Positive],
                      label='Chains', help="Independent chains (parallel steps); at least 2 "
                                           "for R-hat.")
        form.addParam('sweeps', params.IntParam, default=200, validators=[params.Positive],
                      label='Sweeps per chain', help="Sweeps in all, burn-in included.")
        form.addParam('burnIn', params.IntParam, default=120, validators=[params.GE(0)],
                      label='Burn-in sweeps',
                      help="Discarded sweeps: band marching, tempering, step adaptation.")
        form.addParam('sampleRotations', params.BooleanParam, default=False,
                      label='Sample rotations?',
                      help="Also move every particle's rotation (local steps and occasional "
                           "fresh uniform proposals). Off: the input poses are kept.")
        form.addParam('mapCount', params.IntParam, default=10, validators=[params.GE(2)],
                      label='Maps along each state axis', help="Output maps from τ = 0 to 1.")
        form.addParam('seed', params.IntParam, default=0, label='Random seed',
                      expertLevel=params.LEVEL_ADVANCED,
                      help="The chains' seed: the same seed gives the same samples.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        convert_ = self._insertStep(self.convertInputStep,
                                    reads=('inputParticles', 'initialVolume', 'maxResolution'))
        reads = ('stateDimension', 'stateOrder', 'componentMasks', 'sweeps', 'burnIn',
                 'sampleRotations', 'mapCount', 'seed')
        chains = [self._insertStep(self.chainStep, chain, reads=reads, after=[convert_],
                                   needsGPU=self._usesGpu())
                  for chain in range(self.chains.get())]
        self._insertStep(self.createOutputStep, after=chains)

    def _filenameTemplates(self):
        return {'data': self._getExtraPath('particles_in_band.npz'),
                'input': self._getExtraPath('input.npz'),
                'chain': self._getExtraPath('chain_%(chain)02d.npz'),
                'result': self._getExtraPath('hyper_molecule.npz'),
                'map': self._getExtraPath('map_s%(series)d_%(index)02d.mrc'),
                'spread': self._getExtraPath('spread_s%(series)d_%(index)02d.mrc'),
                'morph': self._getExtraPath('morph_series%(series)d.cxc')}

    # --------------------------- STEPS functions -----------------------------
    def convertInputStep(self, digest):
        from cryohess_plugin.core import hypermolecules as hm
        from cryohess_plugin.core.contrast import fit_amplitude
        particles = convert.particles_to_arrays(self.inputParticles.get(), need_ctf=True,
                                                need_alignment=ALIGN_PROJ)
        box, pixel = particles.images.shape[1], particles.pixel_size
        band = self._band(box, pixel)
        data = hm.prepare_particles(particles.images, particles.ctfs, pixel, band,
                                    particles.rotations, particles.shifts)
        data.save(self._getFileName('data'))
        initial = np.zeros(0)
        if self.initialVolume.get() is not None:
            volume, _ = convert.volume_to_array(self.initialVolume.get(), pixel)
            fit = fit_amplitude(volume, particles.images, particles.rotations, particles.shifts,
                                particles.ctfs, pixel, max_frequency=band).check()
            initial = volume * fit.amplitude_all
            self.info("Initial volume scaled by %.4g to the particles" % fit.amplitude_all)
        self._saveNpz(self._getFileName('input'), ids=particles.ids, initial=initial)
        self.info("%d particles of %d px at %g Å/px; band %.1f cycles per box (%d frequencies)"
                  % (len(particles.ids), box, pixel, band, data.kx.size))

    def chainStep(self, chain, digest):
        """Run (or continue from its checkpoint) chain ``chain`` as a batch job."""
        self._setDevices()
        started = time.perf_counter()
        components = self._components(self.inputParticles.get().getXDim())
        model = {'mask_%d' % index: component.mask
                 for index, component in enumerate(components) if component.mask is not None}
        initial = np.load(self._getFileName('input'))['initial']
        if initial.size:
            model['initial'] = initial
        state = self._runBatchJob(
            'run_hyper_molecule_chain', self._getFileName('chain', chain=chain), "  ",
            arrays={'model': model}, inputs={'data': self._getFileName('data')},
            options=dict(components=[[component.name, component.state_dimension]
                                     for component in components],
                         state_order=self.stateOrder.get(), settings=self._settingValues(),
                         chain=chain))
        self.info("Chain %d: %d sweeps, %d samples kept, %.0f s"
                  % (chain + 1, state['sweep'], state['kept'], time.perf_counter() - started))

    def createOutputStep(self, digest):
        from cryohess_plugin.core import hypermolecules as hm, mrc
        problem, settings = self._problem(), self._settings()
        states = [hm.ChainState.load(self._getFileName('chain', chain=c))
                  for c in range(self.chains.get())]
        series = hm.map_series(problem.validate(), settings.map_count)
        result = hm.summarize_chains(states, series, problem.data.box,
                                     [c.name for c in problem.components], settings.burn_in)
        result.save(self._getFileName('result'))
        pixel = problem.data.pixel_size
        volumes, spread = self._createSetOfVolumes(), self._createSetOfVolumes('spread')
        for outputSet in (volumes, spread):
            outputSet.setSamplingRate(pixel)
        for s in range(result.mean_maps.shape[0]):
            seriesMaps = []
            for j, tau in enumerate(result.tau_grid):
                for key, maps, outputSet in (('map', result.mean_maps, volumes),
                                             ('spread', result.std_maps, spread)):
                    path = self._getFileName(key, series=s, index=j)
                    mrc.write_volume(path, maps[s, j], pixel, overwrite=True)
                    volume = Volume(location=path)
                    volume.setSamplingRate(pixel)
                    convert.set_columns(volume, {HYPER_SERIES: [s], HYPER_TAU: [float(tau)]}, 0)
                    convert.keep_origin(volume, self.initialVolume.get())
                    outputSet.append(volume)
                    if key == 'map':
                        seriesMaps.append(volume)
            chimerax.write_script(self._getFileName('morph', series=s), seriesMaps, morph=True)
        ids = np.load(self._getFileName('input'))['ids']
        columns = {HYPER_TAU_MEAN: [list(map(float, row)) for row in result.tau_mean],
                   HYPER_TAU_STD: [list(map(float, row)) for row in result.tau_std]}
        particles = self._copyParticles(ids, columns)
        results = {OUTPUT_VOLUMES: volumes, OUTPUT_SPREAD: spread, OUTPUT_PARTICLES: particles}
        self._defineOutputs(**results)
        for output in results.values():
            self._defineSourceRelation(self.inputParticles, output)
        self.info("Worst split R-hat %.3f over the traced scalars" % result.worst_rhat())

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        particles = self.inputParticles.get()
        errors = self._validateParticleSelection(particles)
        if errors:
            return errors
        errors = self._validateAlignedParticles(particles, "choose particles that have them")
        errors += convert.image_file_errors(particles, "particles")
        box, pixel = particles.getXDim(), particles.getSamplingRate()
        if not 1 <= self.stateDimension.get() <= 3:
            errors.append("The state dimension must be 1, 2 or 3 (%d given): the state basis "
                          "grows as order^d; describe more motions with masks of moving "
                          "parts instead." % self.stateDimension.get())
        else:
            maps = self.stateOrder.get() ** self.stateDimension.get()
            if maps * MIN_PARTICLES_PER_MAP > particles.getSize():
                errors.append("%d particles cannot support a state basis of order %d in %d "
                              "dimension(s): that needs %d particles. Lower the order or the "
                              "state dimension." % (particles.getSize(), self.stateOrder.get(),
                                                    self.stateDimension.get(),
                                                    maps * MIN_PARTICLES_PER_MAP))
        for pointer in self.componentMasks:
            mask = pointer.get()
            label = self._inputLabel(pointer)
            errors += convert.volume_file_errors(mask, "mask %s" % label)
            if mask.getXDim() != box:
                errors.append("The mask %s is %d px wide but the particles %d px; resize the "
                              "mask to %d px." % (label, mask.getXDim(), box, box))
        if self.initialVolume.get() is not None:
            errors += self._validateReferenceVolume(self.initialVolume.get(), box, pixel,
                                                    "initial volume")
        if self.burnIn.get() >= self.sweeps.get():
            errors.append("The burn-in (%d sweeps) must be shorter than the run (%d sweeps)."
                          % (self.burnIn.get(), self.sweeps.get()))
        return errors + self._validateMaxResolution(pixel) + self._validateContinue()

    def _warnings(self):
        if self.chains.get() < 2:
            return ["With one chain split R-hat compares the chain's halves only; run at "
                    "least 2 chains to detect chains stuck in different modes."]
        return []

    def _summary(self):
        if not self.hasAttribute(OUTPUT_VOLUMES):
            return ["Output not ready yet."]
        result = self._result(maps=False)
        return ["%d samples from %d chains; worst split R-hat %.3f."
                % (result.samples, self.chains.get(), result.worst_rhat()),
                "Posterior spread of τ: median %.3f." % float(np.median(result.tau_std))]

    def _methods(self):
        if not self.hasAttribute(OUTPUT_VOLUMES):
            return []
        return ["A hyper-molecule [Lederman2020hyper] with a %d-dimensional state (order %d) "
                "was sampled by MCMC with %d chains of %d sweeps."
                % (self.stateDimension.get(), self.stateOrder.get(), self.chains.get(),
                   self.sweeps.get())]

    # --------------------------- UTILS functions -----------------------------
    def _band(self, box, pixel):
        resolution = self.maxResolution.get()
        return min(box / 2, box * pixel / resolution) if resolution else box / 4

    def _settingValues(self):
        """The form's :class:`SamplerSettings` as plain values."""
        return dict(sweeps=self.sweeps.get(), burn_in=self.burnIn.get(),
                    sample_rotations=bool(self.sampleRotations.get()),
                    map_count=self.mapCount.get(), seed=self.seed.get())

    def _settings(self):
        from cryohess_plugin.core.hypermolecules import SamplerSettings
        return SamplerSettings(**self._settingValues())

    def _components(self, box):
        """The model's components in a ``box``-pixel box: one molecule, or the masked
        parts and the rigid rest."""
        from cryohess_plugin.core import hypermolecules as hm
        d = self.stateDimension.get()
        masks = [convert.volume_to_array(pointer.get())[0] for pointer in self.componentMasks]
        if not masks:
            return [hm.Component("molecule", d)]
        rest = np.clip(hm.soft_ball(box, box / 2 - 2) - sum(masks), 0.0, 1.0)
        return [hm.Component("rigid", 0, rest)] + [
            hm.Component(self._inputLabel(pointer), d, mask)
            for pointer, mask in zip(self.componentMasks, masks)]

    def _problem(self):
        from cryohess_plugin.core import hypermolecules as hm
        data = hm.ParticleData.load(self._getFileName('data'))
        initial = np.load(self._getFileName('input'))['initial']
        return hm.HyperMoleculeProblem(data, self._components(data.box), self.stateOrder.get(),
                                       initial if initial.size else None,
                                       backend=self._backend())

    def _parallelSteps(self):
        return max(1, self.chains.get())

    def _result(self, maps=True):
        from cryohess_plugin.core.hypermolecules import HyperMoleculeResult
        return HyperMoleculeResult.load(self._getFileName('result'), maps=maps)
