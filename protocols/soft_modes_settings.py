"""The soft-mode protocol's settings: its form, the checks of the settings before a run
and the texts that describe the experiment they define."""
import numpy as np
import pyworkflow.protocol.params as params
from pyworkflow.utils import getFloatListFromValues

from cryohess_plugin import convert
from cryohess_plugin.constants import (
    DESIGN_DISTRIBUTIONS, DISTRIBUTION_UNIFORM, EXPERIMENT_DESIGN, EXPERIMENT_PARTICLES,
    NOISE_SIGMA, NOISE_SNR)
from cryohess_plugin.core.ctf import CTFParams

#: The core's metric of each choice of the form.
METRICS = ['riesz', 'l2']

#: Form parameters the experiment is built from, per experiment source.
EXPERIMENT_READS = {
    EXPERIMENT_PARTICLES: ('inputParticles', 'defocusTolerance'),
    EXPERIMENT_DESIGN: ('viewDistribution', 'viewSpread', 'numberOfImages', 'defocusValues',
                        'voltage', 'sphericalAberration', 'amplitudeContrast')}
ANALYSIS_READS = ('maxResolution', 'numberOfModes', 'maxProducts', 'tolerance', 'implicitPoses',
                  'logLikelihoodRatio', 'metric', 'logDetProbes')


class SoftModesSettings:
    """Form, checks and experiment texts of :class:`CryoHessProtSoftModes` (a mixin of it,
    next to :class:`CryoHessProtocolMixin`, whose form blocks and checks it uses)."""

    # --------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        self._defineGpuParams(form, "the volume transforms, the projections and the "
                                    "Hessian products")
        particles = 'experimentSource == %d' % EXPERIMENT_PARTICLES
        design = 'experimentSource == %d' % EXPERIMENT_DESIGN
        form.addSection(label='Input')
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume',
                      important=True, label='Reference volume',
                      help="Map whose soft modes are computed, e.g. the result of a "
                           "refinement. It is not modified; the outputs get its sampling "
                           "rate.")
        form.addParam('experimentSource', params.EnumParam, default=EXPERIMENT_PARTICLES,
                      choices=['particles', 'experiment design'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Experiment from',
                      help="Particles: the poses (ALIGN_PROJ) and CTFs of a set of "
                           "particles define the experiment.\n"
                           "Experiment design: a viewing distribution, a number of images "
                           "and defocus values, without images (noise-free templates "
                           "weighted by viewing density, as the authors do), to see which "
                           "views or defocus values a data set would need.")
        self._defineParticlesParam(
            form, "Particles with 3D alignment (ALIGN_PROJ) and CTF, with the reference's "
                  "box and pixel size. Their shifts are used only to estimate the noise.",
            condition=particles, allowsNull=True, pointerCondition='hasAlignmentProj')
        form.addParam('defocusTolerance', params.FloatParam, default=1000.0,
                      condition=particles, expertLevel=params.LEVEL_ADVANCED,
                      validators=[params.Positive], label='Defocus grouping tolerance (Å)',
                      help="Particles whose defocus values differ by less than this "
                           "share one CTF group of the experiment.")
        form.addParam('viewDistribution', params.EnumParam, default=DISTRIBUTION_UNIFORM,
                      condition=design, choices=DESIGN_DISTRIBUTIONS,
                      label='Viewing distribution',
                      help="Uniform: every viewing direction equally likely.\n"
                           "Polar: directions concentrated around the poles (top views), "
                           "with the spread below.\n"
                           "Equatorial: directions concentrated around the equator (side "
                           "views), with the spread below.")
        form.addParam('viewSpread', params.FloatParam, default=20.0,
                      condition='%s and viewDistribution != %d' % (design, DISTRIBUTION_UNIFORM),
                      validators=[params.Range(0.5, 90.0)], label='Spread (deg)',
                      help="Angular width (standard deviation, degrees) of the polar or "
                           "equatorial concentration of the views.")
        form.addParam('numberOfImages', params.IntParam, default=1000, condition=design,
                      validators=[params.Positive], label='Number of images',
                      help="Number of images of the planned data set. The eigenvalues "
                           "grow with it, so the nearby volumes shrink as 1/sqrt(images).")
        form.addParam('defocusValues', params.NumericListParam, default='10000 15000 20000',
                      condition=design, label='Defocus values (Å)',
                      help="Mean defocus of each defocus group, in Å (underfocus "
                           "positive), separated by spaces; the images are split evenly "
                           "among them. Leave empty for images without CTF.")
        self._defineMicroscopeParams(form, condition=design)

        form.addSection(label='Noise')
        form.addParam('estimateNoise', params.BooleanParam, default=True, condition=particles,
                      label='Estimate the noise from the particles?',
                      help="Estimate the noise power per resolution shell (coloured noise) "
                           "from the residuals of the particles against CTF-modulated "
                           "projections of the reference at their poses, on the particles' "
                           "scale. Turn off to give a white noise level.")
        form.addParam('noiseParticles', params.IntParam, default=2000,
                      condition=particles,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Particles for the scale and noise',
                      help="The particles' amplitude against the map (which puts the map "
                           "on their scale and stops dark particles) and the noise are "
                           "fitted on this many particles (the first ones of the set), "
                           "which bounds the memory the images take.")
        form.addParam('marginaliseNoise', params.BooleanParam, default=False,
                      condition='%s and estimateNoise' % particles,
                      label='Marginalise the noise per particle?',
                      help="Integrate every particle's unknown noise level out (the paper's "
                           "noise marginalisation): each particle then counts with its own "
                           "precision 1/σ_j², estimated from its residual, so noisier "
                           "particles (thick ice, poor micrographs) pin the map down less. "
                           "Reads every particle. No: one noise variance for all.")
        noiseGiven = '%s or not estimateNoise' % design
        form.addParam('noiseLevelType', params.EnumParam, default=NOISE_SNR,
                      condition=noiseGiven, choices=['SNR', 'noise standard deviation'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Noise level as',
                      help="SNR: the noise variance is the mean variance of the "
                           "CTF-modulated projections of the reference (whole box, on the "
                           "particles' scale) divided by the SNR, as in 'simulate data "
                           "set'.\n"
                           "Noise standard deviation: per pixel, in the units of the "
                           "particles (experiment design: of the reference's projections).")
        form.addParam('snr', params.FloatParam, default=0.1,
                      condition='(%s) and noiseLevelType == %d' % (noiseGiven, NOISE_SNR),
                      validators=[params.Positive], label='SNR',
                      help="Signal-to-noise ratio per image (0.1 is typical of cryo-EM "
                           "particles). A lower SNR gives smaller eigenvalues and larger "
                           "nearby volumes.")
        form.addParam('noiseSigma', params.FloatParam, default=1.0,
                      condition='(%s) and noiseLevelType == %d' % (noiseGiven, NOISE_SIGMA),
                      validators=[params.Positive], label='Noise standard deviation',
                      help="Standard deviation of the white noise per pixel, in the units "
                           "of the particles (experiment design: of the reference's "
                           "projections).")

        form.addSection(label='Analysis')
        form.addParam('maxResolution', params.FloatParam, default=20.0,
                      validators=[params.Positive], label='Max resolution (Å)',
                      help="Finest resolution of the analysis. It sets the band limit "
                           "2πK, also the highest spherical-harmonic degree, about "
                           "π × box size (Å) / resolution: the cost grows like (2πK)^4. "
                           "The authors work at 2πK = 8 to 48; the summary shows it.")
        form.addParam('numberOfModes', params.IntParam, default=8,
                      validators=[params.Positive], label='Number of modes',
                      help="How many of the softest modes are computed (more when the last "
                           "one belongs to a subspace of nearly equal eigenvalues).")
        form.addParam('maxProducts', params.IntParam, default=800,
                      validators=[params.Positive], label='Hessian products (budget)',
                      help="The most Hessian-vector products the eigensolver may spend. It "
                           "stops earlier once every mode has converged; modes still short "
                           "of the tolerance are marked 'not converged' and get no nearby "
                           "volumes. About 100 per mode is ample for uniform views; "
                           "preferred views may need more.")
        form.addParam('tolerance', params.FloatParam, default=1e-3,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Residual tolerance',
                      help="A mode has converged when its residual ‖Hx - λWx‖ is at most "
                           "this fraction of its eigenvalue λ.")
        form.addParam('implicitPoses', params.BooleanParam, default=True,
                      label='Implicit poses?',
                      help="Yes: every image's pose follows the volume (the reduced "
                           "Hessian H_FF - H_Fτ H_ττ⁺ H_τF), as the data would re-align to "
                           "a changed map. No: poses stay fixed (H_FF), which makes "
                           "modes look stiffer than they are.")
        form.addParam('logLikelihoodRatio', params.FloatParam, default=float(np.log(20)),
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.Positive],
                      label='Log-likelihood ratio',
                      help="The nearby volumes F ± ε·mode are this much less likely "
                           "(in natural log) than F: log 20 = %.3f, the paper's "
                           "hypothesis-test threshold." % np.log(20))
        form.addParam('metric', params.EnumParam, default=0, choices=['Riesz', 'L2'],
                      expertLevel=params.LEVEL_ADVANCED,
                      display=params.EnumParam.DISPLAY_HLIST, label='Metric',
                      help="Norm in which the modes have unit length. Riesz (the "
                           "authors'): shells weighted by f df, the real-space L2 norm "
                           "with a 1/|k| weight. L2: shells weighted by f² df, the "
                           "real-space L2 norm of the band-limited map.")
        form.addParam('logDetProbes', params.IntParam, default=4,
                      expertLevel=params.LEVEL_ADVANCED, validators=[params.GE(0)],
                      label='Log-determinant probes',
                      help="Random probes of the stochastic Lanczos quadrature that "
                           "estimates log det H (30 Hessian products each); 0 skips it.")
        form.addParallelSection(threads=2, mpi=0)

    # --------------------------- INFO functions ------------------------------
    def _validate(self):
        from cryohess_plugin.core.softmodes import default_guard
        volume = self.inputVolume.get()
        if volume is None:
            return ["Select the reference volume."]
        errors = convert.volume_file_errors(volume, "reference volume")
        errors += self._validateParticles(volume) if self._fromParticles() else self._validateDesign()
        errors += self._validateMaxResolution(volume.getSamplingRate())
        needed = self.numberOfModes.get() + default_guard(self.numberOfModes.get())
        if self.maxProducts.get() < needed:
            errors.append("%d modes need a budget of at least %d Hessian products (the "
                          "eigensolver starts from %d vectors); use about 100 per mode or "
                          "fewer modes." % (self.numberOfModes, needed, needed))
        return errors + self._validateContinue()

    def _validateParticles(self, volume):
        particles = self.inputParticles.get()
        if particles is None:
            return ["Select the particles, or choose 'experiment design' to analyse a "
                    "viewing distribution without images."]
        errors = self._validateParticleSelection(particles)
        if errors:
            return errors
        return (self._validateAlignedParticles(
                    particles, "choose 'experiment design' with no defocus values to study "
                    "views without CTF")
                + convert.image_file_errors(particles)
                + self._validateSameGeometry("reference volume", volume.getXDim(),
                                             volume.getSamplingRate(), particles.getXDim(),
                                             particles.getSamplingRate()))

    def _validateDesign(self):
        try:
            defocus = self._defocusList()
        except ValueError:
            return ["The defocus values must be numbers in Å separated by spaces, e.g. "
                    "'10000 20000'."]
        if any(value < 0 for value in defocus):
            return ["The defocus values must be positive (underfocus, Å)."]
        return []

    # --------------------------- UTILS functions -----------------------------
    def _fromParticles(self):
        return self.experimentSource.get() == EXPERIMENT_PARTICLES

    def _defocusList(self):
        return getFloatListFromValues(self.defocusValues.get() or '')

    def _designCtfs(self):
        """One CTF per defocus group of the design, or None without defocus values."""
        return [CTFParams(value, value, 0.0, self.voltage.get(), self.sphericalAberration.get(),
                          self.amplitudeContrast.get())
                for value in self._defocusList()] or None

    def _noiseReads(self):
        fit = ('noiseParticles',) if self._fromParticles() else ()
        if self._fromParticles() and self.estimateNoise:
            return fit + ('estimateNoise', 'marginaliseNoise')
        level = 'noiseSigma' if self.noiseLevelType.get() == NOISE_SIGMA else 'snr'
        return fit + ('estimateNoise', 'noiseLevelType', level)

    def _experimentText(self):
        if self._fromParticles():
            return "poses and CTFs of the particles"
        text = "%s views" % DESIGN_DISTRIBUTIONS[self.viewDistribution.get()]
        if self.viewDistribution.get() != DISTRIBUTION_UNIFORM:
            text += " (spread %g deg)" % self.viewSpread
        defocus = self._defocusList()
        return text + (", defocus %s Å" % " ".join("%g" % d for d in defocus) if defocus
                       else ", no CTF")

    def _imagesText(self, analysis):
        """How many images of which experiment, e.g. "300 images (poses and CTFs ...)"."""
        return "%d %simages (%s)" % (round(analysis.n_images),
                                     "" if self._fromParticles() else "planned ",
                                     self._experimentText())
