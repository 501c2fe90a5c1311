"""Batch steps as queue jobs: with "use queue for jobs", the alignment's batch searches and
refinements, the posterior's fits and the hyper-molecule chains run as
``python -m cryohess_plugin.run_batch`` jobs
through a queue of a test ``hosts.conf`` (its submit command starts the job script in the
background on this machine and its check command watches the process), and give the
same files, bit for bit, as a run whose steps compute in their own threads."""
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from pyworkflow.constants import QUEUE_FOR_JOBS
from pyworkflow.tests import setupTestProject
from pyworkflow.utils.process import buildRunCommand

from cryohess_plugin import Plugin, run_batch
from cryohess_plugin.protocols import CryoHessProtFourierPosterior, CryoHessProtHyperMolecule
from cryohess_plugin.protocols.protocol_base import CryoHessProtocolMixin
from .scipion_base import CryoHessTestCase

#: A queue on this machine: a job is its script run in the background, its id the process
#: id, and it has finished when that process is gone (or a zombie).
HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
NAME = background
MANDATORY = 0
SUBMIT_COMMAND = bash -c 'nohup bash %_(JOB_SCRIPT)s > %_(JOB_LOGS)s.out 2> %_(JOB_LOGS)s.err < /dev/null & echo $!'
CANCEL_COMMAND = kill %_(JOB_ID)s
CHECK_COMMAND = ps -o stat= -p %_(JOB_ID)s | grep -v Z
SUBMIT_TEMPLATE = #!/bin/bash
    # %_(JOB_NAME)s in queue %_(JOB_QUEUE)s, %_(JOB_THREADS)d threads
    %_(JOB_COMMAND)s
QUEUES = {"background": [["JOB_MEMORY", "1024", "Memory (MB)", "Memory of a job"]]}
QUEUES_DEFAULT = {"JOB_GPUS": "0"}
"""
SIMULATION = dict(boxSize=32, samplingRate=2.5, numberOfParticles=100, numberOfDefocusGroups=2,
                  phantomAtoms=300, phantomRadius=30.0, snr=10.0, randomSeed=11,
                  numberOfThreads=1)


class TestBatchJobsThroughQueue(CryoHessTestCase):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        hosts = os.path.join(cls.proj.path, 'test_hosts.conf')
        with open(hosts, 'w') as hostsFile:
            hostsFile.write(HOSTS_CONF)
        cls.proj._loadHosts(hosts)  # copied to the project's config, where runs read it
        cls.simulation = cls.launchSimulation('particles', SIMULATION)
        cls.alignments = {queued: cls._launch(cls._alignment(), queued)
                          for queued in (False, True)}
        cls.posteriors = {queued: cls._launch(cls._posterior(), queued)
                          for queued in (False, True)}
        cls.chains = {queued: cls._launch(cls._hyperMolecule(), queued)
                      for queued in (False, True)}

    @classmethod
    def _alignment(cls):
        return cls.newCoarseAlignment(cls.simulation, particlesPerBatch=50, refineIterations=2,
                                      numberOfThreads=3, useGpu=False)

    @classmethod
    def _posterior(cls):
        protocol = cls.newProtocol(CryoHessProtFourierPosterior, doHalfMaps=True,
                                   numberOfSamples=4, numberOfThreads=3, useGpu=False)
        protocol.inputParticles.set(cls.simulation.outputParticles)
        return protocol

    @classmethod
    def _hyperMolecule(cls):
        protocol = cls.newProtocol(CryoHessProtHyperMolecule, stateDimension=1, stateOrder=2,
                                   chains=2, sweeps=4, burnIn=2, mapCount=2, numberOfThreads=3,
                                   useGpu=False)
        protocol.inputParticles.set(cls.simulation.outputParticles)
        return protocol

    @classmethod
    def _launch(cls, protocol, queued):
        if queued:
            protocol._useQueue.set(True)
            protocol.setQueueParams(['background', {QUEUE_FOR_JOBS: 'Y', 'JOB_MEMORY': '1024'}])
        protocol.setObjLabel('queued' if queued else 'local')
        return cls.launchProtocol(protocol)

    def assertSameFiles(self, local, queued, pattern, count):
        """The ``pattern`` files of both runs' extra folders hold equal arrays (bit for bit;
        a fit's history but for its seconds)."""
        localPaths = sorted(glob.glob(local._getExtraPath(pattern)))
        self.assertEqual(len(localPaths), count, localPaths)
        for localPath in localPaths:
            queuedPath = queued._getExtraPath(os.path.basename(localPath))
            with np.load(localPath) as expected, np.load(queuedPath) as actual:
                self.assertEqual(sorted(expected.files), sorted(actual.files), localPath)
                for name in expected.files:
                    if name == 'history':
                        self.assertEqual(_withoutSeconds(expected[name]),
                                         _withoutSeconds(actual[name]))
                    else:
                        np.testing.assert_array_equal(actual[name], expected[name],
                                                      err_msg="%s: %s" % (localPath, name))

    def assertJobsQueued(self, protocol, task, count):
        """``count`` ``task`` jobs were submitted to the queue, ran there and logged it."""
        scripts = glob.glob(protocol._getLogsPath('*.job'))
        queued = [path for path in scripts
                  if "run_batch" in open(path).read() and task in _jobOf(path)]
        self.assertEqual(len(queued), count, scripts)
        for script in queued:
            with open(script[:-len('.job')] + '.out') as jobLog:
                self.assertIn("%s: " % task, jobLog.read())

    def testAlignmentBatchesRunAsQueueJobs(self):
        local, queued = self.alignments[False], self.alignments[True]
        self.assertJobsQueued(queued, 'align_batch', 2)
        self.assertJobsQueued(queued, 'refine_batch', 2)
        self.assertEqual(glob.glob(local._getLogsPath('*.job')), [])
        with open(queued.getStdoutLog()) as log:
            self.assertEqual(log.read().count("job goes to the queue"), 4)

    def testAlignmentGivesTheLocalRunsFiles(self):
        local, queued = self.alignments[False], self.alignments[True]
        self.assertSameFiles(local, queued, 'alignment_batch_*.npz', 2)
        self.assertSameFiles(local, queued, 'refinement_batch_*.npz', 2)
        expected = [particle.getTransform().getMatrix()
                    for particle in local.outputParticles.iterItems(orderBy='id')]
        actual = [particle.getTransform().getMatrix()
                  for particle in queued.outputParticles.iterItems(orderBy='id')]
        np.testing.assert_array_equal(np.array(actual), np.array(expected))

    def testPosteriorFitsRunAsQueueJobs(self):
        self.assertJobsQueued(self.posteriors[True], 'fit_posterior_part', 3)

    def testPosteriorGivesTheLocalRunsFiles(self):
        local, queued = self.posteriors[False], self.posteriors[True]
        self.assertSameFiles(local, queued, 'posterior_*.npz', 3)
        np.testing.assert_array_equal(_mapData(queued, 'mean'), _mapData(local, 'mean'))

    def testHyperMoleculeChainsRunAsQueueJobs(self):
        self.assertJobsQueued(self.chains[True], 'run_hyper_molecule_chain', 2)
        self.assertSameFiles(self.chains[False], self.chains[True], 'chain_*.npz', 2)

    def testJobInputsAreRemoved(self):
        for protocol in (self.alignments[True], self.alignments[False]):
            self.assertEqual(glob.glob(protocol._getExtraPath('jobs', '*.npz')), [])
            self.assertEqual(len(glob.glob(protocol._getExtraPath('jobs', '*.json'))), 4)


class TestBatchJobCommand(unittest.TestCase):
    """The job command on its own: the command line pyworkflow builds from it (the
    step's GPUs as CUDA_VISIBLE_DEVICES), and a failing task leaves its message."""

    def testCommandSeesOnlyTheStepsGpus(self):
        program, arguments = CryoHessProtocolMixin._batchJobCommand('/jobs/batch.json', True)
        command = buildRunCommand(program, arguments, 1, env=Plugin.getEnviron(4),
                                  gpuList=[1, 3])
        self.assertIn('CUDA_VISIBLE_DEVICES=1,3 %s -m cryohess_plugin.run_batch '
                      '"/jobs/batch.json"' % sys.executable, command)
        program, arguments = CryoHessProtocolMixin._batchJobCommand('/jobs/batch.json', False)
        self.assertNotIn('CUDA_VISIBLE_DEVICES', buildRunCommand(program, arguments, 1))
        environ = Plugin.getEnviron(4)
        self.assertEqual((environ['NUMBA_NUM_THREADS'], environ['OMP_NUM_THREADS'],
                          environ['CUDA_DEVICE_ORDER']), ('4', '4', 'PCI_BUS_ID'))

    def testFailedJobLeavesItsMessage(self):
        with tempfile.TemporaryDirectory() as folder:
            jobPath = os.path.join(folder, 'job.json')
            job = run_batch.write_job(
                jobPath, 'align_batch', os.path.join(folder, 'out.npz'),
                inputs={'particles': os.path.join(folder, 'missing_particles.npz'),
                        'references': os.path.join(folder, 'references.npz')})
            command = subprocess.run([sys.executable, '-m', 'cryohess_plugin.run_batch',
                                      jobPath], capture_output=True, text=True)
            self.assertEqual(command.returncode, 1, command.stderr)
            with self.assertRaisesRegex(run_batch.BatchJobError,
                                        "align_batch job .* did not finish: "
                                        "FileNotFoundError: .*missing_particles.npz"):
                run_batch.job_notes(job)


def _jobOf(script):
    """The task of the job file a job script runs."""
    with open(script) as scriptFile:
        jobPath = scriptFile.read().split('run_batch')[1].split('"')[1]
    with open(jobPath) as jobFile:
        return json.load(jobFile)['task']


def _withoutSeconds(history):
    values = json.loads(str(history))
    values.pop('seconds', None)
    return values


def _mapData(protocol, key):
    from cryohess_plugin.core import mrc
    return mrc.read_volume(protocol._getFileName(key))[0]
