"""Our per-item columns in Scipion's set viewer: pwem registers, per kind of set, the columns
its table shows, and hides every other one; the cryohess columns join those lists."""
from pwem.objects import SetOfParticles, SetOfVolumes
from pwem.viewers.showj import ORDER, VISIBLE
from pwem.viewers.viewers_data import RegistryViewerConfig

from cryohess_plugin import constants

#: Columns the protocols write on particles and on maps (an item without one shows none).
PARTICLE_COLUMNS = (constants.DEFOCUS_GROUP, constants.CONFORMATION, constants.CTF_GROUP,
                    constants.ALIGN_TEMPLATE, constants.ALIGN_SCORE,
                    constants.SOFT_MODE_POSE_CHANGE, constants.REFINED_ANGLE_CHANGE,
                    constants.REFINED_SHIFT_CHANGE, constants.LOG_LIKELIHOOD,
                    constants.HYPER_TAU_MEAN, constants.HYPER_TAU_STD)
VOLUME_COLUMNS = (constants.SOFT_MODE_INDEX, constants.SOFT_MODE_SIGN,
                  constants.SOFT_MODE_EIGENVALUE, constants.SOFT_MODE_EPSILON,
                  constants.SOFT_MODE_RELATIVE_CHANGE, constants.HYPER_SERIES,
                  constants.HYPER_TAU)


def showColumns(setClass, columns):
    """Append ``columns`` to the visible and ordered columns pwem registered for
    ``setClass``; a set without a registered list shows every column already."""
    config = RegistryViewerConfig.getConfig(setClass)
    if not config:
        return
    for key in (VISIBLE, ORDER):
        if key in config:
            labels = config[key].split()
            # pwem's viewer edits these strings assuming ' _filename' has a leading space.
            config[key] = ' '.join(labels + [c for c in columns if c not in labels]) + ' '


showColumns(SetOfParticles, PARTICLE_COLUMNS)
showColumns(SetOfVolumes, VOLUME_COLUMNS)
