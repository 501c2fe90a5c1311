"""The workflow templates the plugin ships: Scipion finds them, fills in their fields and
loads them into a project, and the loaded workflow runs to the end on small inputs."""
import os

import numpy as np
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic import simulate_particles
from cryohess_plugin.plugin import Plugin

from .helpers import phantom_volume
from .relion_star import write_relion_star
from .scipion_base import CryoHessTestCase

BOX, PIXEL = 32, 3.0


def template(name):
    templates = {t.name: t for t in Plugin().getTemplates()}
    return templates[name]


class TestParticlesToPosteriorTemplate(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        volume = phantom_volume(BOX, PIXEL, n_atoms=300)
        simulation = simulate_particles(volume, 60, BOX, PIXEL, rng=4, shift_sigma=1.0,
                                        n_groups=2, astigmatism=500.0, snr=1.0, backend="cpu")
        cls.star = os.path.abspath(write_relion_star(cls.proj.getTmpPath(), simulation))
        cls.map = os.path.abspath(cls.proj.getTmpPath('reference.mrc'))
        mrc.write_volume(cls.map, volume.astype(np.float32), PIXEL, overwrite=True)

    def testLoadsAndRunsToTheEnd(self):
        workflow = template('cryohess_particles_to_posterior')
        workflow.replaceEnvVariables()
        workflow.parseContent()
        self.assertEqual({p.getAlias() for p in workflow.getParams().values()},
                         {'particlesStar', 'referenceMap', 'samplingRate', 'voltage',
                          'sphericalAberration', 'amplitudeContrast'})
        for alias, value in (('particlesStar', self.star), ('referenceMap', self.map),
                             ('samplingRate', str(PIXEL))):
            self.assertGreaterEqual(workflow.setParamValue(alias, value), 1)
        protocols = self.proj.loadProtocols(workflow.createTemplateFile())
        protocols = sorted(protocols.values(), key=lambda prot: prot.getObjId())
        self.assertEqual([prot.getClassName() for prot in protocols],
                         ['ProtImportParticles', 'ProtImportVolumes',
                          'CryoHessProtAlignParticles', 'CryoHessProtSoftModes',
                          'CryoHessProtFourierPosterior'])
        for protocol in protocols:
            self.launchProtocol(self.proj.getProtocol(protocol.getObjId()))
        importer, _, alignment, softModes, posterior = [
            self.proj.getProtocol(prot.getObjId()) for prot in protocols]
        self.assertSetSize(alignment.outputParticles, 60)
        self.assertAlmostEqual(importer.outputParticles.getSamplingRate(), PIXEL)
        self.assertGreater(softModes.outputModes.getSize(), 0)
        mean, _ = convert.volume_to_array(posterior.outputVolume)
        self.assertEqual(mean.shape, (BOX, BOX, BOX))
