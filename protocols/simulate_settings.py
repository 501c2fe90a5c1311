"""The simulation protocol's settings: its form, the checks of the settings before a run
and their translation into the arguments of the synthetic core."""
import os

import pyworkflow.protocol.params as params

from cryohess_plugin import convert
from cryohess_plugin.constants import (CONFORMATION, HETEROGENEITY_LINEAR, HETEROGENEITY_NONE,
                                       HETEROGENEITY_RIGID_REGION, PHANTOM_ASYMMETRIC,
                                       PHANTOM_CYCLIC, SOURCE_ATOMIC_MODEL, SOURCE_PHANTOM,
                                       SOURCE_VOLUME, VIEWS_EQUATORIAL_BAND, VIEWS_POLAR_CAP,
                                       VIEWS_TOP_PREFERENCE, VIEWS_UNIFORM)
from cryohess_plugin.core import synthetic
from cryohess_plugin.core.errors import InvalidDataError

from .simulate_micrograph_settings import MicrographSimulationSettings

#: Viewing distributions of the core simulator, indexed by the form's choice.
VIEW_DISTRIBUTIONS = {VIEWS_UNIFORM: "uniform", VIEWS_POLAR_CAP: "polar_cap",
                      VIEWS_EQUATORIAL_BAND: "equatorial_band",
                      VIEWS_TOP_PREFERENCE: "top_view_preference"}
MIN_BOX = 16
#: Warn when more particles than this reach past the edge of their box.
EDGE_WARNING_FRACTION = 0.01
#: The form parameters each step reads (those hidden by their condition are left out).
STRUCTURE_PARAMS = ('source', 'phantomSymmetry', 'symmetryOrder', 'phantomAtoms',
                    'phantomRadius', 'inputAtomStruct', 'atomicModel', 'inputVolume',
                    'heterogeneity', 'secondAtomStruct', 'secondModel', 'domainFraction',
                    'hingeAngle', 'boxSize', 'samplingRate', 'randomSeed')
IMAGE_PARAMS = ('viewDistribution', 'viewAngle', 'topViewFraction', 'defocusMin', 'defocusMax',
                'astigmatism', 'voltage', 'sphericalAberration', 'amplitudeContrast', 'snr')
PARTICLE_PARAMS = ('numberOfParticles', 'shiftSigma', 'numberOfDefocusGroups')


def _defineModelParams(form, pointerName, fileName, what, condition, help):
    """An atomic model as an imported ``AtomStruct`` or, instead, a file path."""
    form.addParam(pointerName, params.PointerParam, pointerClass='AtomStruct',
                  condition=condition, allowsNull=True, label=what.capitalize(),
                  help=help + " Select it as imported into the project (pwem's import "
                              "atomic structure), or leave this empty and give its file "
                              "below.")
    form.addParam(fileName, params.FileParam, condition=condition,
                  label='... or %s file (PDB/mmCIF)' % what,
                  help="A PDB or mmCIF file of the %s, used when none is selected above."
                       % what)


class SimulationSettings(MicrographSimulationSettings):
    """Form, checks and core arguments of :class:`CryoHessProtSimulate` (a mixin of it,
    next to :class:`CryoHessProtocolMixin`, whose form blocks and checks it uses)."""

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the Fourier-slice projector (volume as ground truth; "
                                    "atomic models are always projected on the CPU)")
        phantom = 'source == %d' % SOURCE_PHANTOM
        form.addSection(label='Structure')
        form.addParam('source', params.EnumParam, default=SOURCE_PHANTOM, important=True,
                      choices=['built-in phantom', 'atomic model file', 'volume'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Ground truth from',
                      help="Built-in phantom: a compact blob of atoms generated from the random "
                           "seed, asymmetric or with C_n symmetry.\n"
                           "Atomic model file: a PDB or mmCIF file, projected analytically as "
                           "Gaussian atoms about its centroid.\n"
                           "Volume: an existing map, projected with the Fourier-slice projector; "
                           "its box and pixel size must match the ones below.")
        form.addParam('phantomSymmetry', params.EnumParam, default=PHANTOM_ASYMMETRIC,
                      choices=['asymmetric', 'cyclic (C_n)'], condition=phantom,
                      display=params.EnumParam.DISPLAY_HLIST, label='Phantom symmetry',
                      help="Asymmetric: every view of the phantom is different.\n"
                           "Cyclic (C_n): n copies of one asymmetric subunit around the z axis, "
                           "unchanged by a rotation of 360/n degrees about z: a test case for "
                           "symmetric particles, whose poses are defined only up to it.")
        form.addParam('symmetryOrder', params.IntParam, default=4, validators=[params.GE(2)],
                      condition='%s and phantomSymmetry == %d' % (phantom, PHANTOM_CYCLIC),
                      label='Symmetry order n',
                      help="Subunits of the cyclic phantom; each has phantom atoms / n atoms.")
        form.addParam('phantomAtoms', params.IntParam, default=1000, condition=phantom,
                      validators=[params.Positive], label='Phantom atoms',
                      help="Number of atoms of the built-in phantom.")
        form.addParam('phantomRadius', params.FloatParam, default=20.0, condition=phantom,
                      validators=[params.Positive], label='Phantom radius (Å)',
                      help="Every atom of the phantom lies within this distance of its centre. "
                           "It must fit in the box: at most 0.45 x box x pixel size.")
        _defineModelParams(form, 'inputAtomStruct', 'atomicModel', 'atomic model',
                           'source == %d' % SOURCE_ATOMIC_MODEL,
                           "Atomic model of the ground truth. Hydrogens and waters are "
                           "skipped; the map is centred on the model's centroid.")
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume',
                      condition='source == %d' % SOURCE_VOLUME, allowsNull=True,
                      label='Volume', help="Ground-truth map; it must be cubic, with the box "
                                           "size and pixel size given below.")
        form.addParam('boxSize', params.IntParam, default=64, validators=[params.GE(MIN_BOX)],
                      label='Box size (px)',
                      help="Size of the particle images and of the ground-truth map in pixels "
                           "(at least %d)." % MIN_BOX)
        form.addParam('samplingRate', params.FloatParam, default=1.5,
                      validators=[params.Positive], label='Pixel size (Å/px)',
                      help="Pixel size of the particles, the micrographs and the map.")
        form.addParam('randomSeed', params.IntParam, default=0, validators=[params.GE(0)],
                      label='Random seed',
                      help="Seed of every random choice (phantom, poses, shifts, CTFs, "
                           "conformations, noise): the same seed gives the same data.")

        form.addSection(label='Particles')
        form.addParam('numberOfParticles', params.IntParam, default=1000,
                      validators=[params.Positive], label='Number of particles',
                      help="Number of particle images to simulate.")
        form.addParam('viewDistribution', params.EnumParam, default=VIEWS_UNIFORM,
                      choices=['uniform', 'polar cap', 'equatorial band', 'top-view preference'],
                      label='Viewing distribution',
                      help="Uniform: poses uniform on SO(3).\n"
                           "Polar cap: viewing directions uniform within the angle below of "
                           "the +z axis.\n"
                           "Equatorial band: tilt uniform (by area) within the angle below of "
                           "90 degrees (side views).\n"
                           "Top-view preference: a fraction of top views (polar cap of the "
                           "angle below) mixed with uniform poses.\n"
                           "The in-plane angle is always uniform.")
        form.addParam('viewAngle', params.FloatParam, default=30.0,
                      condition='viewDistribution != %d' % VIEWS_UNIFORM,
                      validators=[params.Range(0.0, 90.0)], label='Cap / band angle (deg)',
                      help="Half-angle of the polar cap, or half-width of the equatorial band, "
                           "in degrees.")
        form.addParam('topViewFraction', params.FloatParam, default=0.5,
                      condition='viewDistribution == %d' % VIEWS_TOP_PREFERENCE,
                      validators=[params.Range(0.0, 1.0)], label='Top-view fraction',
                      help="Fraction of the particles drawn from the polar cap.")
        form.addParam('shiftSigma', params.FloatParam, default=2.0, validators=[params.GE(0.0)],
                      label='Shift sigma (px)',
                      help="Standard deviation of each component of the particle-centre "
                           "offset, in pixels.")

        form.addSection(label='CTF and noise')
        form.addParam('defocusMin', params.FloatParam, default=10000.0,
                      validators=[params.GE(0.0)], label='Minimum defocus (Å)',
                      help="Lower end of the mean defocus of the defocus groups (underfocus "
                           "positive).")
        form.addParam('defocusMax', params.FloatParam, default=25000.0,
                      validators=[params.GE(0.0)], label='Maximum defocus (Å)',
                      help="Upper end of the mean defocus of the defocus groups; each group's "
                           "defocus is uniform between the two.")
        form.addParam('astigmatism', params.FloatParam, default=0.0, validators=[params.GE(0.0)],
                      expertLevel=params.LEVEL_ADVANCED, label='Astigmatism (Å)',
                      help="Defocus U minus defocus V; the astigmatism angle is random.")
        form.addParam('numberOfDefocusGroups', params.IntParam, default=10,
                      validators=[params.Positive], label='Defocus groups',
                      help="Number of defocus groups (as many micrographs); consecutive "
                           "particles share a group and its CTF.")
        self._defineMicroscopeParams(form)
        form.addParam('snr', params.FloatParam, default=0.1, label='SNR',
                      help="Signal-to-noise ratio: mean over particles of the variance of the "
                           "CTF-modulated image (whole box) divided by the variance of the "
                           "white Gaussian noise. Must be positive.")

        form.addSection(label='Heterogeneity')
        form.addParam('heterogeneity', params.EnumParam, default=HETEROGENEITY_NONE,
                      choices=['none', 'linear between two models', 'rigid region motion'],
                      label='Heterogeneity',
                      help="None: every particle shows the same structure (conformation 0).\n"
                           "Linear between two models: particle i shows the atoms at "
                           "(1 - t_i) A + t_i B, A the atomic model above and B a second model "
                           "listing the same atoms.\n"
                           "Rigid region motion: asymmetric built-in phantom only; state B "
                           "swings a domain of the phantom rigidly about a hinge, and particles "
                           "interpolate between A and B.\n"
                           "t_i is uniform in [0, 1] and stored in the column %s." % CONFORMATION)
        _defineModelParams(form, 'secondAtomStruct', 'secondModel', 'second atomic model',
                           'heterogeneity == %d' % HETEROGENEITY_LINEAR,
                           "Conformation B: the same atoms as the first model, in the same "
                           "order, at other positions.")
        form.addParam('domainFraction', params.FloatParam, default=0.3,
                      condition='heterogeneity == %d' % HETEROGENEITY_RIGID_REGION,
                      validators=[params.Range(0.01, 0.99)], label='Moving fraction',
                      help="Fraction of the phantom's atoms in the moving domain.")
        form.addParam('hingeAngle', params.FloatParam, default=30.0, label='Hinge angle (deg)',
                      condition='heterogeneity == %d' % HETEROGENEITY_RIGID_REGION,
                      help="Rotation of the moving domain in state B, in degrees.")

        self._defineMicrographParams(form)

        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        errors = []
        box, pixel = self.boxSize.get(), self.samplingRate.get()
        if box is None or box < MIN_BOX:
            errors.append("The box size must be at least %d pixels." % MIN_BOX)
        if self.snr.get() is None or self.snr.get() <= 0:
            errors.append("The SNR must be positive (it is a ratio of variances).")
        source, heterogeneity = self.source.get(), self.heterogeneity.get()
        if source == SOURCE_PHANTOM:
            errors += self._validatePhantom(box, pixel)
        if source == SOURCE_ATOMIC_MODEL:
            errors += self._validateModel('inputAtomStruct', 'atomicModel', 'atomic model')
        if source == SOURCE_VOLUME:
            errors += self._validateVolume(box, pixel)
        if heterogeneity == HETEROGENEITY_LINEAR:
            if source != SOURCE_ATOMIC_MODEL:
                errors.append("Linear heterogeneity needs an atomic model file as the "
                              "ground truth (conformation A).")
            errors += self._validateModel('secondAtomStruct', 'secondModel',
                                          'second atomic model')
        if heterogeneity == HETEROGENEITY_RIGID_REGION and source != SOURCE_PHANTOM:
            errors.append("Rigid region motion is available for the built-in phantom; for "
                          "an atomic model give a second model and choose 'linear between "
                          "two models'.")
        if self.defocusMin.get() > self.defocusMax.get():
            errors.append("The minimum defocus (%g Å) exceeds the maximum (%g Å)."
                          % (self.defocusMin, self.defocusMax))
        if 0.5 * self.astigmatism.get() > self.defocusMin.get():
            errors.append("Half the astigmatism (%g Å) exceeds the minimum defocus: defocus "
                          "V would be negative." % (0.5 * self.astigmatism.get()))
        if self.numberOfDefocusGroups.get() > self.numberOfParticles.get():
            errors.append("There are more defocus groups (%d) than particles (%d)."
                          % (self.numberOfDefocusGroups, self.numberOfParticles))
        if self.doMicrographs:
            errors += self._validateMicrographs(box)
        return errors + self._validateContinue()

    def _warnings(self):
        footprint = self._footprint()
        warnings = self._resourceWarnings(footprint.disk_bytes, footprint.memory_bytes,
                                          "lower the number of particles or micrographs")
        box, shiftSigma = self.boxSize.get(), self.shiftSigma.get()
        radius = self._particleRadius()
        past = synthetic.fraction_past_box_edge(box, radius, shiftSigma)
        if past > EDGE_WARNING_FRACTION:
            warnings.append("About %.0f %% of the particles will reach past the edge of the "
                            "%d px box (particle radius %.1f px, shift sigma %g px), where "
                            "they are cut or wrap around: enlarge the box or lower the shift "
                            "sigma." % (100 * past, box, radius, shiftSigma))
        return warnings

    # --------------------------- UTILS functions -----------------------------
    def _shownParams(self, names):
        """The parameters among ``names`` that the form shows with the current settings."""
        return tuple(name for name in names if self.evalParamCondition(name))

    def _isHeterogeneous(self):
        return self.heterogeneity.get() != HETEROGENEITY_NONE

    def _symmetryOrder(self):
        return self.symmetryOrder.get() if self.phantomSymmetry.get() == PHANTOM_CYCLIC else 1

    def _imageSettings(self):
        """The core simulators' settings shared by particles and micrographs."""
        choice = self.viewDistribution.get()
        options = {VIEWS_POLAR_CAP: {'cap_deg': self.viewAngle.get()},
                   VIEWS_EQUATORIAL_BAND: {'band_deg': self.viewAngle.get()},
                   VIEWS_TOP_PREFERENCE: {'fraction': self.topViewFraction.get(),
                                          'cap_deg': self.viewAngle.get()}}
        return {'distribution': VIEW_DISTRIBUTIONS[choice],
                'distribution_options': options.get(choice, {}),
                'defocus_range': (self.defocusMin.get(), self.defocusMax.get()),
                'astigmatism': self.astigmatism.get(), 'snr': self.snr.get(),
                'voltage': self.voltage.get(), 'cs': self.sphericalAberration.get(),
                'amplitude_contrast': self.amplitudeContrast.get(), 'backend': self._backend()}

    def _footprint(self):
        micrographs = self.doMicrographs.get()
        return synthetic.data_set_footprint(
            self.numberOfParticles.get(), self.boxSize.get(),
            n_maps=2 if self._isHeterogeneous() else 1,
            n_micrographs=self.numberOfMicrographs.get() if micrographs else 0,
            micrograph_size=self.micrographSize.get(),
            particles_per_micrograph=self.particlesPerMicrograph.get())

    def _particleRadius(self):
        """Radius (px) of the particle in its box: the phantom's, the atomic model's, or 0
        for a volume (its extent is not known without reading it)."""
        pixel = self.samplingRate.get()
        source = self.source.get()
        if source == SOURCE_PHANTOM:
            return self.phantomRadius.get() / pixel
        if source == SOURCE_ATOMIC_MODEL:
            try:
                return synthetic.read_atomic_model(self._modelPath()).radius() / pixel
            except (OSError, InvalidDataError):
                return 0.0  # _validate reports the file
        return 0.0

    def _validatePhantom(self, box, pixel):
        errors = []
        if box and pixel and self.phantomRadius.get() > synthetic.max_radius(box, pixel):
            errors.append("The phantom radius (%g Å) does not fit in the box: use at most "
                          "%.1f Å or a larger box."
                          % (self.phantomRadius, synthetic.max_radius(box, pixel)))
        order = self._symmetryOrder()
        if order > 1 and self.phantomAtoms.get() < order:
            errors.append("A C%d phantom needs at least %d atoms (one per subunit)."
                          % (order, order))
        if order > 1 and self.heterogeneity.get() == HETEROGENEITY_RIGID_REGION:
            errors.append("Rigid region motion is available for the asymmetric phantom "
                          "only.")
        return errors

    def _modelPath(self, pointerName='inputAtomStruct', fileName='atomicModel'):
        """The file of an atomic model: the imported ``AtomStruct`` if one is selected,
        else the file path given instead (None if neither)."""
        structure = getattr(self, pointerName).get()
        if structure is not None:
            return structure.getFileName()
        return getattr(self, fileName).get() or None

    def _validateModel(self, pointerName, fileName, what):
        if getattr(self, pointerName).get() is not None and getattr(self, fileName).get():
            return ["Give the %s either as an imported atomic structure or as a file, not "
                    "both (%s: %s)." % (what, self.getParam(fileName).label.get(),
                                         getattr(self, fileName).get())]
        return self._validateModelFile(self._modelPath(pointerName, fileName), what)

    def _validateModelFile(self, path, what):
        if not path:
            return ["Give the %s: select an imported atomic structure or give its file "
                    "(PDB or mmCIF)." % what]
        try:
            synthetic.check_atomic_model_file(path)
        except FileNotFoundError:
            return ["The %s file %s does not exist." % (what, path)]
        except InvalidDataError as error:
            return ["The %s file is unusable: %s." % (what, error)]
        return []

    def _validateVolume(self, box, pixel):
        volume = self.inputVolume.get()
        if volume is None:
            return ["Select the ground-truth volume."]
        errors = convert.volume_file_errors(volume, "ground-truth volume")
        if errors:
            return errors
        volumePixel = volume.getSamplingRate()
        if pixel and not convert.same_sampling(volumePixel, pixel):
            errors.append("The volume's sampling rate (%g Å/px) does not match the pixel "
                          "size (%g Å/px); set the pixel size to %g or resample the volume."
                          % (volumePixel, pixel, volumePixel))
        dims = volume.getDim()
        if dims is not None and box and dims[0] != box:
            errors.append("The volume is %d px wide but the box size is %d px; set the box "
                          "size to %d." % (dims[0], box, dims[0]))
        if self.heterogeneity.get() != HETEROGENEITY_NONE:
            errors.append("Heterogeneity is not available with a volume as ground truth.")
        return errors

    def _sourceText(self):
        source = self.source.get()
        if source == SOURCE_ATOMIC_MODEL:
            return "the atomic model %s" % os.path.basename(self._modelPath() or '')
        if source == SOURCE_VOLUME:
            return "a volume"
        order = self._symmetryOrder()
        if order > 1:
            return ("a built-in C%d phantom of %d subunits of %d atoms"
                    % (order, order, self.phantomAtoms.get() // order))
        return "a built-in phantom of %d atoms" % self.phantomAtoms

    def _viewText(self):
        return self.getEnumText('viewDistribution')
