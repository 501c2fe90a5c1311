"""Names shared by the cryohess Scipion layer: environment variables and the
extra per-item columns that protocols write on Scipion sets."""

# ---------------------------- Environment variables --------------------------
CRYOHESS_USE_GPU = "CRYOHESS_USE_GPU"
CRYOHESS_USE_GPU_DEFAULT = "True"

# ---------------------------- Extra item columns -----------------------------
# Every item of a set must carry every column (the first appended item fixes
# the SQLite columns of the whole set).
CONFORMATION = "_cryohess_conformation"
DEFOCUS_GROUP = "_cryohess_defocusGroup"

# ---------------------------- Simulation choices -----------------------------
SOURCE_PHANTOM = 0
SOURCE_ATOMIC_MODEL = 1
SOURCE_VOLUME = 2

PHANTOM_ASYMMETRIC = 0
PHANTOM_CYCLIC = 1

VIEWS_UNIFORM = 0
VIEWS_POLAR_CAP = 1
VIEWS_EQUATORIAL_BAND = 2
VIEWS_TOP_PREFERENCE = 3

HETEROGENEITY_NONE = 0
HETEROGENEITY_LINEAR = 1
HETEROGENEITY_RIGID_REGION = 2

# Columns written by the alignment protocols.
ALIGN_SCORE = "_cryohess_alignScore"
ALIGN_TEMPLATE = "_cryohess_template"
CTF_GROUP = "_cryohess_ctfGroup"

# ---------------------------- Alignment choices ------------------------------
REFERENCE_VOLUME = 0
REFERENCE_2D = 1

RANK_TOLERANCE = 0
RANK_FIXED = 1

# ---------------------------- Soft-mode choices and columns ------------------
# Where the experiment comes from.
EXPERIMENT_PARTICLES = 0
EXPERIMENT_DESIGN = 1

#: Viewing distributions of the design mode, indexed by the form's choice.
DESIGN_DISTRIBUTIONS = ['uniform', 'polar', 'equatorial']
DISTRIBUTION_UNIFORM = 0

# How a noise level is given when it is not estimated.
NOISE_SNR = 0
NOISE_SIGMA = 1

# Columns of the output mode volumes.
SOFT_MODE_INDEX = "_cryohess_softMode"
SOFT_MODE_EIGENVALUE = "_cryohess_softModeEigenvalue"
SOFT_MODE_EPSILON = "_cryohess_softModeEpsilon"
SOFT_MODE_RELATIVE_CHANGE = "_cryohess_softModeRelativeChange"
SOFT_MODE_SIGN = "_cryohess_softModeSign"
# Column of the output particles: the largest rotation (degrees) of the particle's pose
# over the soft modes when the map becomes F ± ε_i ΔF_i.
SOFT_MODE_POSE_CHANGE = "_cryohess_softModePoseChange"

# ---------------------------- Fourier-posterior choices and columns ----------
FIT_CLOSED_FORM = 0
FIT_VARIATIONAL = 1

PRIOR_PER_SHELL = 0
PRIOR_FIXED = 1

# How an estimated noise varies: one variance per image shell (coloured) or one (white).
NOISE_PER_SHELL = 0
NOISE_WHITE = 1

# Columns of the output particles.
LOG_LIKELIHOOD = "_cryohess_logLikelihood"
REFINED_ANGLE_CHANGE = "_cryohess_refinedAngleChange"
REFINED_SHIFT_CHANGE = "_cryohess_refinedShiftChange"

# Micrograph placement of the simulation (protocols/simulate_micrograph_settings.py)
PLACEMENT_MIN_DISTANCE = 0
PLACEMENT_SEPARATED = 1
PLACEMENT_ARBITRARY = 2
SNR_VARIANCE = 0
SNR_ENERGY = 1

# Micrograph EM pick score column (protocols/protocol_micrograph_em.py)
PICK_SCORE = "_cryohess_pickScore"

# ---------------------------- Hyper-molecule columns --------------------------
# Per particle: posterior mean and spread of the state τ (one value per state axis).
HYPER_TAU_MEAN = "_cryohess_tauMean"
HYPER_TAU_STD = "_cryohess_tauStd"
# Per output map: its series (moving part and axis) and its state τ.
HYPER_SERIES = "_cryohess_hyperSeries"
HYPER_TAU = "_cryohess_tau"
