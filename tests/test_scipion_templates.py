"""The workflow templates the plugin ships: Scipion finds them, fills in their fields and
loads them into a project, and the loaded workflow runs to the end on small inputs (the
micrograph workflow ends at the picks: extraction needs RELION or Xmipp binaries, which are
not installed here; the micrograph-EM tests show RELION's extraction taking the picks)."""
import os

import numpy as np
from pyworkflow.tests import setupTestProject

from cryohess_plugin import convert
from cryohess_plugin.core import mrc
from cryohess_plugin.core.synthetic import simulate_micrographs, simulate_particles
from cryohess_plugin.plugin import Plugin

from .helpers import phantom_volume
from .relion_star import write_relion_star
from .scipion_base import CryoHessTestCase

BOX, PIXEL = 32, 3.0


def template(name):
    templates = {t.name: t for t in Plugin().getTemplates()}
    return templates[name]


def loadTemplate(test, name, aliases, values):
    """Fill in template ``name`` (whose fields must be ``aliases``) with ``values`` and
    load it into the test's project; returns its protocols in order."""
    workflow = template(name)
    workflow.replaceEnvVariables()
    workflow.parseContent()
    test.assertEqual({p.getAlias() for p in workflow.getParams().values()}, set(aliases))
    for alias, value in values.items():
        test.assertGreaterEqual(workflow.setParamValue(alias, value), 1)
    protocols = test.proj.loadProtocols(workflow.createTemplateFile())
    return sorted(protocols.values(), key=lambda prot: prot.getObjId())


def runSmall(test, protocols, **settings):
    """Run the loaded protocols in order, each with ``settings[its class name]`` set first
    (small runs for the tests); returns them as run."""
    done = []
    for loaded in protocols:
        protocol = test.proj.getProtocol(loaded.getObjId())
        for name, value in settings.get(protocol.getClassName(), {}).items():
            getattr(protocol, name).set(value)
        test.proj.saveProtocol(protocol)
        test.launchProtocol(protocol)
        done.append(test.proj.getProtocol(protocol.getObjId()))
    return done


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
        protocols = loadTemplate(
            self, 'cryohess_particles_to_posterior',
            {'particlesStar', 'referenceMap', 'samplingRate', 'voltage',
             'sphericalAberration', 'amplitudeContrast'},
            {'particlesStar': self.star, 'referenceMap': self.map, 'samplingRate': str(PIXEL)})
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


class TestMicrographsToPicksTemplate(CryoHessTestCase):
    """Separated particles in two micrographs (no CTF), as the micrograph-EM tests use."""
    BOX, PIXEL, DIAMETER = 24, 2.0, 44.0

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        volume = phantom_volume(cls.BOX, cls.PIXEL, n_atoms=300)
        simulation = simulate_micrographs(volume, 2, cls.BOX, cls.PIXEL, shape=(352, 352),
                                          rng=2, area_fraction=0.4, separation=2 * cls.BOX - 1,
                                          ctf=False, snr=20.0, snr_definition="energy",
                                          keep_clean=False, backend="cpu")
        cls.folder = os.path.abspath(cls.proj.getTmpPath('micrographs'))
        os.makedirs(cls.folder, exist_ok=True)
        for index, micrograph in enumerate(simulation.micrographs):
            mrc.write_stack(os.path.join(cls.folder, 'mic_%d.mrc' % index), micrograph[None],
                            cls.PIXEL, overwrite=True)
        cls.placed = sum(len(centres) for centres in simulation.coordinates)

    def testLoadsAndRunsToThePicks(self):
        protocols = loadTemplate(
            self, 'cryohess_micrographs_to_picks',
            {'micrographsFolder', 'micrographsPattern', 'samplingRate', 'voltage',
             'sphericalAberration', 'amplitudeContrast', 'particleDiameter'},
            {'micrographsFolder': self.folder, 'micrographsPattern': 'mic_*.mrc',
             'samplingRate': str(self.PIXEL), 'particleDiameter': str(self.DIAMETER)})
        self.assertEqual([prot.getClassName() for prot in protocols],
                         ['ProtImportMicrographs', 'CryoHessProtMicrographEM'])
        importer, em = runSmall(self, protocols, CryoHessProtMicrographEM=dict(
            rotationResolution=15, degreeSchedule='2 4', stageIterations='3 3',
            batchFraction=0.5, heldOutPatches=60, numberOfStarts=2, micrographsPerStep=1,
            numberOfThreads=1))
        self.assertSetSize(importer.outputMicrographs, 2)
        self.assertAlmostEqual(importer.outputMicrographs.getSamplingRate(), self.PIXEL)
        self.assertFalse(em.useCtf.get())
        self.assertAlmostEqual(em.particleDiameter.get(), self.DIAMETER)
        self.assertEqual(em.outputVolume.getDimensions(), (11, 11, 11))
        self.assertGreater(em.outputCoordinates.getSize(), 0)
        self.assertEqual(em.outputCoordinates.getMicrographs().getSize(), 2)


class TestParticlesToHyperMoleculeTemplate(CryoHessTestCase):
    BOX, PIXEL, PARTICLES = 24, 4.0, 120

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        volume = phantom_volume(cls.BOX, cls.PIXEL, n_atoms=200)
        simulation = simulate_particles(volume, cls.PARTICLES, cls.BOX, cls.PIXEL, rng=5,
                                        shift_sigma=0.5, n_groups=2, snr=1.0, backend="cpu")
        cls.star = os.path.abspath(write_relion_star(cls.proj.getTmpPath(), simulation))

    def testLoadsAndRunsToTheEnd(self):
        protocols = loadTemplate(
            self, 'cryohess_particles_to_hyper_molecule',
            {'particlesStar', 'samplingRate', 'voltage', 'sphericalAberration',
             'amplitudeContrast'},
            {'particlesStar': self.star, 'samplingRate': str(self.PIXEL)})
        self.assertEqual([prot.getClassName() for prot in protocols],
                         ['ProtImportParticles', 'CryoHessProtHyperMolecule'])
        importer, hyper = runSmall(self, protocols, CryoHessProtHyperMolecule=dict(
            stateOrder=2, chains=2, sweeps=6, burnIn=3, mapCount=2, numberOfThreads=1))
        self.assertSetSize(importer.outputParticles, self.PARTICLES)
        self.assertSetSize(hyper.outputParticles, self.PARTICLES)
        self.assertSetSize(hyper.outputVolumes, 2)
        self.assertEqual(hyper.outputVolumes.getFirstItem().getDimensions(), (self.BOX,) * 3)
