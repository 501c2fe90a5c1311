"""Demo workflow: a local, headless Scipion project running the cryohess protocols.

Usage::

    python -m cryohess_plugin.demo [--data-dir ./scipion_data] [--project cryohess_demo]

The project is created under ``DATA_DIR/projects/PROJECT`` (runs are added to
it if it exists), every stage runs as a Scipion protocol, and the plots of
each stage are written to ``DATA_DIR/projects/PROJECT/plots``.  Open the
project in the Scipion GUI with::

    SCIPION_USER_DATA=DATA_DIR SCIPION_HOME=DATA_DIR/scipion_home \\
        python -O -m pyworkflow.apps.pw_project PROJECT
"""
import argparse
import os
import sys

from cryohess_plugin.headless import configure_environment

#: SNR of the demo's particles (whole box, as the simulation protocol defines it).
PARTICLE_SNR = 0.1
#: Smallest particle box the demo runs: at SNR 0.1 smaller boxes hold too little signal per
#: particle for the alignment stage to find the poses (a 32 px box aligns at chance).
MIN_BOX = 64


def parseArgs(argv):
    parser = argparse.ArgumentParser(
        prog="python -m cryohess_plugin.demo",
        description="Run the cryohess demo workflow in a headless Scipion project.")
    parser.add_argument("--data-dir", default="scipion_data",
                        help="folder for Scipion configuration and projects "
                             "(default: ./scipion_data)")
    parser.add_argument("--project", default="cryohess_demo",
                        help="project name (default: cryohess_demo)")
    parser.add_argument("--particles", type=int, default=500,
                        help="number of simulated particles (default: 500)")
    parser.add_argument("--box", type=int, default=MIN_BOX,
                        help="particle box in pixels, at least %d (default: %d)"
                             % (MIN_BOX, MIN_BOX))
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads per protocol (default: 2)")
    args = parser.parse_args(argv)
    if args.box < MIN_BOX:
        parser.error("--box %d is too small: the demo simulates its particles at SNR %g, and "
                     "below %d px they hold too little signal for the alignment to find their "
                     "poses (at 32 px it assigns them at chance); use --box %d or larger"
                     % (args.box, PARTICLE_SNR, MIN_BOX, MIN_BOX))
    return args


def openProject(name):
    """Load project ``name`` or create it, and work from its folder (Scipion's
    paths are relative to it); returns the pyworkflow Project."""
    from pyworkflow.project import Manager
    manager = Manager()
    if manager.hasProject(name):
        project = manager.loadProject(name)
    else:
        project = manager.createProject(name)
    os.chdir(project.getPath())
    return project


def runProtocol(project, protocol):
    """Run ``protocol`` to completion; exit with its error if it fails."""
    print("Running %s ..." % protocol.getObjLabel(), flush=True)
    project.launchProtocol(protocol, wait=True)
    if protocol.isFailed():
        sys.exit("%s failed: %s\nSee %s" % (protocol.getObjLabel(), protocol.getErrorMessage(),
                                            protocol.getLogPaths()[0]))
    return protocol


def savePlots(viewerClass, project, protocol, plotDir, prefix):
    """Save every plot of a viewer as PNG files (its other views, such as opening ChimeraX,
    are left out); returns their paths."""
    viewer = viewerClass(project=project, protocol=protocol)
    viewer.setProtocol(protocol)
    paths = []
    for name, show in viewer._getVisualizeDict().items():
        if name in getattr(viewer, 'NOT_PLOTS', ()):
            continue
        plotter = show(name)[0]
        path = os.path.join(plotDir, "%s_%s.png" % (prefix, name))
        plotter.savefig(path)
        plotter.close()
        paths.append(path)
    return paths


def simulateStage(project, args, plotDir, done):
    """Stage 1: a simulated phantom data set with micrographs."""
    from cryohess_plugin.protocols import CryoHessProtSimulate
    from cryohess_plugin.viewers import CryoHessSimulateViewer
    protocol = project.newProtocol(
        CryoHessProtSimulate, boxSize=args.box, samplingRate=1.5, numberOfParticles=args.particles,
        numberOfDefocusGroups=10, snr=PARTICLE_SNR, doMicrographs=True, numberOfMicrographs=3,
        particlesPerMicrograph=20, micrographSize=512, numberOfThreads=args.threads)
    protocol.setObjLabel("cryohess - simulate")
    runProtocol(project, protocol)
    particles = protocol.outputParticles
    print("  %d particles, %d micrographs; ground truth: %s"
          % (particles.getSize(), protocol.outputMicrographs.getSize(),
             os.path.abspath(protocol.outputVolume.getFileName())))
    print("  data: %s" % os.path.abspath(protocol._getExtraPath()))
    for path in savePlots(CryoHessSimulateViewer, project, protocol, plotDir, "simulate"):
        print("  plot: %s" % path)
    return protocol


def printOrientationErrors(particles, simulation, gridStep, what="", rotations=None):
    """Compare the assigned orientations (those of ``particles``, or ``rotations``) with
    the simulation's ground truth."""
    import numpy as np
    from cryohess_plugin import convert
    from cryohess_plugin.core.rotations import angular_distance
    if rotations is None:
        rotations = convert.particles_to_arrays(particles, need_alignment=True,
                                                read_images=False).rotations
    truth = np.load(simulation._getFileName('particleTruth'))
    error = angular_distance(rotations, truth['rotations'])
    print("  orientation error vs ground truth%s: median %.2f deg; %.1f %% within one grid "
          "step (%g deg)" % (what, np.median(error), 100 * np.mean(error <= gridStep), gridStep))


def alignStage(project, args, plotDir, done):
    """Stage 2: global projection matching of the particles with the radial-SVD."""
    from cryohess_plugin.protocols import CryoHessProtAlignParticles
    from cryohess_plugin.viewers import CryoHessAlignParticlesViewer
    simulation = done['simulate']
    protocol = project.newProtocol(CryoHessProtAlignParticles, numberOfThreads=args.threads)
    protocol.inputParticles.set(simulation.outputParticles)
    protocol.inputVolume.set(simulation.outputVolume)
    protocol.setObjLabel("cryohess - radial-SVD alignment")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    step = protocol.angularStep.get()
    printOrientationErrors(None, simulation, step, " on the search's grid",
                           protocol.getSearchPoses()[0])
    printOrientationErrors(protocol.outputParticles, simulation, step,
                           " after local refinement")
    for path in savePlots(CryoHessAlignParticlesViewer, project, protocol, plotDir, "align"):
        print("  plot: %s" % path)
    return protocol


def softModesStage(project, args, plotDir, done):
    """Stage 3: the Hessian soft modes of the map for the aligned particles."""
    from cryohess_plugin.protocols import CryoHessProtSoftModes
    from cryohess_plugin.viewers import CryoHessSoftModesViewer
    protocol = project.newProtocol(CryoHessProtSoftModes, maxResolution=20.0,
                                   numberOfThreads=args.threads)
    protocol.inputVolume.set(done['simulate'].outputVolume)
    protocol.inputParticles.set(done['align'].outputParticles)
    protocol.setObjLabel("cryohess - Hessian soft modes")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    for path in savePlots(CryoHessSoftModesViewer, project, protocol, plotDir, "softmodes"):
        print("  plot: %s" % path)
    return protocol


def refineStage(project, args, plotDir, done):
    """Stage 4: local refinement of the aligned particles' grid poses on the
    Fourier-slice likelihood."""
    from cryohess_plugin.protocols import CryoHessProtRefinePoses
    from cryohess_plugin.viewers import CryoHessRefinePosesViewer
    protocol = project.newProtocol(CryoHessProtRefinePoses, numberOfThreads=args.threads)
    protocol.inputParticles.set(done['align'].outputParticles)
    protocol.setObjLabel("cryohess - Fourier-slice refine poses")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    printOrientationErrors(protocol.outputParticles, done['simulate'], gridStep=1.0)
    for path in savePlots(CryoHessRefinePosesViewer, project, protocol, plotDir, "refine"):
        print("  plot: %s" % path)
    return protocol


def posteriorStage(project, args, plotDir, done):
    """Stage 5: the Fourier-slice posterior of the refined particles, with half maps and
    the single-fit resolution curve."""
    from cryohess_plugin.protocols import CryoHessProtFourierPosterior
    from cryohess_plugin.viewers import CryoHessFourierPosteriorViewer
    protocol = project.newProtocol(CryoHessProtFourierPosterior, numberOfThreads=args.threads)
    protocol.inputParticles.set(done['refine'].outputParticles)
    protocol.setObjLabel("cryohess - Fourier posterior")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    for path in savePlots(CryoHessFourierPosteriorViewer, project, protocol, plotDir,
                          "posterior"):
        print("  plot: %s" % path)
    return protocol


def micrographEMStage(project, args, plotDir, done):
    """Stage 6: a map straight from simulated micrographs of the same phantom, with well
    separated particles, by micrograph EM; prints its FSC to the ground truth."""
    from cryohess_plugin.constants import PLACEMENT_SEPARATED, SNR_ENERGY
    from cryohess_plugin.protocols import CryoHessProtMicrographEM, CryoHessProtSimulate
    from cryohess_plugin.viewers import CryoHessMicrographEMViewer
    simulation = project.newProtocol(
        CryoHessProtSimulate, boxSize=args.box, samplingRate=1.5, numberOfParticles=10,
        numberOfDefocusGroups=2, snr=1.0, doMicrographs=True, numberOfMicrographs=4,
        micrographSize=1024, micrographPlacement=PLACEMENT_SEPARATED, micrographDensity=0.4,
        micrographSnr=SNR_ENERGY, numberOfThreads=args.threads)
    simulation.setObjLabel("cryohess - simulate separated micrographs")
    runProtocol(project, simulation)
    protocol = project.newProtocol(
        CryoHessProtMicrographEM, particleDiameter=2.4 * simulation.phantomRadius.get(),
        stageIterations='10 6 6', batchFraction=0.2, numberOfStarts=2,
        numberOfThreads=args.threads)
    protocol.inputMicrographs.set(simulation.outputMicrographs)
    protocol.ctfRelations.set(simulation.outputCTF)
    protocol.setObjLabel("cryohess - micrograph EM")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    printMapFsc(protocol, simulation.outputVolume)
    for path in savePlots(CryoHessMicrographEMViewer, project, protocol, plotDir,
                          "micrograph_em"):
        print("  plot: %s" % path)
    return protocol


def hyperMoleculeStage(project, args, plotDir, done):
    """Stage 7: a continuously moving domain (its own simulated data set) sampled as a
    hyper-molecule; prints the rank correlation of the particles' τ with the truth."""
    import numpy as np
    from cryohess_plugin import convert
    from cryohess_plugin.constants import (CONFORMATION, HETEROGENEITY_RIGID_REGION,
                                           HYPER_TAU_MEAN)
    from cryohess_plugin.core.hypermolecules import rank_correlation
    from cryohess_plugin.protocols import CryoHessProtHyperMolecule, CryoHessProtSimulate
    from cryohess_plugin.viewers import CryoHessHyperMoleculeViewer
    simulation = project.newProtocol(
        CryoHessProtSimulate, boxSize=args.box, samplingRate=2.0,
        numberOfParticles=max(args.particles, 2000), numberOfDefocusGroups=10, snr=0.1,
        heterogeneity=HETEROGENEITY_RIGID_REGION, domainFraction=0.35, hingeAngle=40.0,
        numberOfThreads=args.threads)
    simulation.setObjLabel("cryohess - simulate a moving domain")
    runProtocol(project, simulation)
    protocol = project.newProtocol(CryoHessProtHyperMolecule, chains=2, sweeps=100, burnIn=60,
                                   numberOfThreads=args.threads)
    protocol.inputParticles.set(simulation.outputParticles)
    protocol.setObjLabel("cryohess - hyper-molecule")
    runProtocol(project, protocol)
    for line in protocol.summary():
        print("  " + line)
    pairs = np.array([(np.atleast_1d(convert.read_column(p, HYPER_TAU_MEAN))[0],
                       convert.read_column(p, CONFORMATION))
                      for p in protocol.outputParticles.iterItems(orderBy='id')])
    print("  rank correlation of τ with the true conformation: Spearman ρ = %.3f"
          % rank_correlation(pairs[:, 0], pairs[:, 1]))
    for path in savePlots(CryoHessHyperMoleculeViewer, project, protocol, plotDir, "hyper"):
        print("  plot: %s" % path)
    return protocol


def printMapFsc(protocol, truthVolume):
    """The FSC of a micrograph EM map to the ground truth, after the best rotation and
    reflection, at the working pixel size."""
    import numpy as np
    from cryohess_plugin import convert
    from cryohess_plugin.core.micrograph_em import (MicrographEMResult, align_coefficients,
                                                    resample_volume)
    result = MicrographEMResult.load(protocol._getFileName('result'))
    basis = result.basis()
    truth, pixel = convert.volume_to_array(truthVolume)
    reference = basis.from_volume(resample_volume(truth, pixel, result.box, result.pixel_size))
    alignment = align_coefficients(basis, reference, result.coefficients)
    shells = np.arange(alignment.fsc.size) / (result.box * result.pixel_size)
    print("  FSC to the ground truth (%s): %s" % (
        "mirrored" if alignment.reflected else "same hand",
        ", ".join("%.3f at %.0f Å" % (value, 1 / f) if f else "%.3f" % value
                  for value, f in zip(alignment.fsc, shells))))


#: (name, stage): each stage gets the protocols of the stages before it by name.
STAGES = [('simulate', simulateStage), ('align', alignStage), ('softModes', softModesStage),
          ('refine', refineStage), ('posterior', posteriorStage),
          ('micrographEM', micrographEMStage), ('hyperMolecule', hyperMoleculeStage)]


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    configure_environment(args.data_dir, override=True)
    project = openProject(args.project)
    plotDir = os.path.join(project.getPath(), "plots")
    os.makedirs(plotDir, exist_ok=True)
    print("Scipion project: %s" % project.getPath())
    done = {}
    for name, stage in STAGES:
        done[name] = stage(project, args, plotDir, done)
    print("Done. Open the project in the Scipion GUI with:\n"
          "  SCIPION_USER_DATA=%s SCIPION_HOME=%s python -O -m pyworkflow.apps.pw_project %s"
          % (os.environ["SCIPION_USER_DATA"], os.environ["SCIPION_HOME"], args.project))


if __name__ == "__main__":
    main()
