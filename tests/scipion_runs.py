"""What the end-to-end Scipion tests share: simulated inputs and rendered viewer plots."""
import os

from cryohess_plugin.demo import savePlots
from cryohess_plugin.protocols import CryoHessProtSimulate


def launchSimulation(testClass, label, settings, **overrides):
    """Run ``CryoHessProtSimulate`` with ``settings`` updated by ``overrides``."""
    protocol = testClass.newProtocol(CryoHessProtSimulate, **dict(settings, **overrides))
    protocol.setObjLabel(label)
    return testClass.launchProtocol(protocol)


def assertViewerPlots(test, viewerClass, protocol, prefix=None):
    """Every plot of the viewer renders to a non-trivial PNG."""
    prefix = str(protocol.getObjId()) if prefix is None else prefix
    for path in savePlots(viewerClass, test.proj, protocol, test.proj.path, prefix):
        test.assertGreater(os.path.getsize(path), 1000, path)
