"""One batch step of a cryohess protocol, run from files: ``python -m cryohess_plugin.run_batch JOB``.

A protocol's batch step writes a job file (:func:`write_job`): a JSON object naming the
task, the files it reads, its options, its threads and device, and the file it writes.
The step then runs the job in its own process (:func:`run_job`) or, when the run sends
its steps to a queue, as this command through Scipion's ``runJob`` on a cluster node.
Either way the task calls the same core function and writes its result to the job's
output, which the protocol's merge step reads, and then a done file (:func:`done_path`)
with the few numbers the step logs; a job that fails leaves its message in
:func:`error_path` instead, for the protocol to report.

This module imports no pyworkflow or pwem: a node needs only the numerical core.
"""
import json
import os
import sys
import time
import traceback

import numpy as np

#: Keys of a job file.
JOB_KEYS = ("task", "output", "inputs", "options", "threads", "gpu", "backend")


class BatchJobError(RuntimeError):
    """A batch job ended without finishing its task."""


def write_job(path, task, output, inputs=None, options=None, threads=1, gpu=None,
              backend="cpu"):
    """Write the job file ``path`` and return the job (a dict).

    :param task: name of a function of :data:`TASKS`.
    :param output: the ``.npz`` the task writes (whole or not at all; a task may continue
        from it, as a chain from its checkpoint).
    :param inputs: ``{name: path}`` of the files the task reads.
    :param options: ``{name: value}`` of plain JSON values the task takes.
    :param threads: CPU threads of numba kernels, FFTs and BLAS in the job.
    :param gpu: CUDA device number the job's kernels run on, or None.
    :param backend: kernel backend of the core (``"cpu"`` or ``"auto"``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown batch task {task!r}; known: {sorted(TASKS)}")
    job = dict(task=task, output=os.path.abspath(output),
               inputs={name: os.path.abspath(value) for name, value in (inputs or {}).items()},
               options=dict(options or {}), threads=int(threads), gpu=gpu, backend=backend)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as jobFile:
        json.dump(job, jobFile, indent=1)
    return job


def read_job(path):
    """The job of the job file ``path``."""
    with open(path) as jobFile:
        job = json.load(jobFile)
    missing = [key for key in JOB_KEYS if key not in job]
    if missing:
        raise ValueError(f"{path} is not a batch job file: it lacks {missing}")
    return job


def error_path(job):
    """Where a failed job leaves its message."""
    return job["output"] + ".error"


def done_path(job):
    """The file a job writes once its task has finished: the numbers its step logs."""
    return job["output"] + ".done.json"


def clear_job(job):
    """Remove what an earlier run of ``job`` left besides its output (its done and error
    files), so that only this run's end counts."""
    for stale in (error_path(job), done_path(job)):
        if os.path.exists(stale):
            os.remove(stale)


def run_job(job, progress=None):
    """Run ``job``'s task in this process and write its done file.

    :param progress: callback of the core's :class:`.core.progress.Progress` events.
    """
    clear_job(job)
    notes = TASKS[job["task"]](job, progress)
    with open(done_path(job), "w") as doneFile:
        json.dump(notes, doneFile)


def job_notes(job):
    """The numbers a finished job left for its step; :class:`BatchJobError` with the job's
    own message when it did not finish."""
    if os.path.exists(done_path(job)) and os.path.exists(job["output"]):
        with open(done_path(job)) as doneFile:
            return json.load(doneFile)
    message = "no message (see the job's log)"
    if os.path.exists(error_path(job)):
        with open(error_path(job)) as errorFile:
            message = errorFile.read().strip()
    raise BatchJobError(f"The {job['task']} job for {job['output']} did not finish: {message}")


def set_threads(threads, gpu=None):
    """Bound numba, FFT and BLAS threads of this process; bind CUDA device ``gpu``."""
    import numba
    from threadpoolctl import threadpool_limits
    from cryohess_plugin.core.fourier import set_fft_workers
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    set_fft_workers(threads)
    threadpool_limits(threads, user_api="blas")
    if gpu is not None:
        from cryohess_plugin.core.kernels import cudasim_active
        if not cudasim_active():
            from numba import cuda
            cuda.select_device(int(gpu))
    return threads


# --------------------------- tasks -----------------------------------------
def _particles(path):
    """Images, CTF parameters (or None), pixel size and ids of a particle input file."""
    from cryohess_plugin.core.ctf import params_from_rows
    with np.load(path) as data:
        ctfs = params_from_rows(data["ctfs"]) if "ctfs" in data.files else None
        return data["images"], ctfs, float(data["pixelSize"]), data["ids"]


def align_batch(job, progress):
    """Align a batch of particles against the references (:class:`ParticleSearch`)."""
    from cryohess_plugin.core import polar
    from cryohess_plugin.core.alignment import ParticleSearch, alignment_grid
    options, backend = job["options"], job["backend"]
    images, ctfs, pixel, ids = _particles(job["inputs"]["particles"])
    grid = alignment_grid(images.shape[-1], pixel, options["max_resolution"])
    with np.load(job["inputs"]["references"]) as references:
        templates = references["templates"]
    search = ParticleSearch(grid, templates, options["max_shift"], options["shift_step"],
                            backend=backend, rank=options["rank"],
                            tolerance=options["tolerance"],
                            ctf_tolerance=options["ctf_tolerance"])
    result = search.align(polar.polar_transform(images, grid, backend=backend),
                          ctf_params=ctfs, pixel_size=pixel, progress=progress)
    result.ids = ids
    result.save(job["output"])
    return dict(templates=int(search.n_templates))


def refine_batch(job, progress):
    """Refine the grid poses of a batch of particles locally against a volume."""
    from cryohess_plugin.core.pose_refinement import refine_search_poses
    options = job["options"]
    images, ctfs, pixel, _ = _particles(job["inputs"]["particles"])
    with np.load(job["inputs"]["poses"]) as poses:
        volume, rotations, shifts = poses["volume"], poses["rotations"], poses["shifts"]
    result, fit = refine_search_poses(volume, images, rotations, shifts, ctfs, pixel,
                                      max_resolution=options["max_resolution"],
                                      iterations=options["iterations"],
                                      backend=job["backend"], progress=progress)
    result.save(job["output"])
    return dict(amplitude=float(fit.amplitude_all), z_score=float(fit.z_score))


def refine_particle_batch(job, progress):
    """Refine the poses of a batch of converted particles locally against a reference."""
    from cryohess_plugin.core.ctf import params_from_rows
    from cryohess_plugin.core.pose_refinement import refine_particle_poses
    from cryohess_plugin.core.posterior import ParticleFiles
    options = dict(job["options"])
    first, count = options.pop("first"), options.pop("count")
    images = ParticleFiles.in_directory(job["inputs"]["particleFiles"],
                                        images=True).image_batch(first, count)
    with np.load(job["inputs"]["poses"]) as poses:
        result = refine_particle_poses(
            poses["reference"], images, poses["rotations"], poses["shifts"],
            params_from_rows(poses["ctfs"]), float(poses["pixelSize"]),
            backend=job["backend"], progress=progress, **options)
    result.save(job["output"])
    return {}


def fit_posterior_part(job, progress):
    """Fit the posterior of the converted particles (or a subset of them) at given poses."""
    from cryohess_plugin.core.posterior import ParticleFiles, fit_posterior
    options = dict(job["options"])
    check_polarity = options.pop("check_polarity")
    with np.load(job["inputs"]["poses"]) as poses:
        rotations, shifts = poses["rotations"], poses["shifts"]
        rows = poses["rows"] if "rows" in poses.files else None
    problem = ParticleFiles.in_directory(job["inputs"]["particleFiles"]).problem(
        rotations, shifts, backend=job["backend"])
    if rows is not None:
        problem = problem.subset(rows)
    started = time.perf_counter()
    posterior = fit_posterior(problem, progress=progress, **options)
    posterior.history.update(particles=problem.n_particles,
                             seconds=time.perf_counter() - started)
    if check_polarity:
        polarity = posterior.polarity().check()
        posterior.history.update(polarity=[polarity.contrast, polarity.standard_error])
    posterior.save(job["output"])
    return {}


def run_hyper_molecule_chain(job, progress):
    """Run (or continue from the output, its checkpoint) one hyper-molecule chain."""
    from cryohess_plugin.core import hypermolecules as hm
    options = job["options"]
    data = hm.ParticleData.load(job["inputs"]["data"])
    with np.load(job["inputs"]["model"]) as model:
        initial = model["initial"] if "initial" in model.files else None
        components = [hm.Component(name, dimension,
                                   model["mask_%d" % index] if "mask_%d" % index in model.files
                                   else None)
                      for index, (name, dimension) in enumerate(options["components"])]
    problem = hm.HyperMoleculeProblem(data, components, options["state_order"], initial,
                                      backend=job["backend"])
    state = hm.run_chain(problem, hm.SamplerSettings(**options["settings"]), options["chain"],
                         checkpoint=job["output"], progress=progress)
    return dict(sweep=int(state.sweep), kept=int(state.kept))


def _micrograph_em_inputs(job):
    """The patches and the CTF images (or None) of a micrograph-EM job."""
    from cryohess_plugin.core.micrograph_em.patches import PatchSet
    inputs = job["inputs"]
    patch_set = PatchSet.concatenate(PatchSet.load(inputs["patches_%d" % index])
                                     for index in range(job["options"]["patch_files"]))
    with np.load(inputs["ctfs"]) as stored:
        return patch_set, list(stored["ctfs"]) if "ctfs" in stored.files else None


def run_micrograph_em_start(job, progress):
    """Run (or continue from its checkpoint) one random start of the micrograph EM; the
    output is the final state."""
    import shutil
    from cryohess_plugin.core.micrograph_em import EMSettings, EMState, run_start
    options = job["options"]
    patch_set, ctfs = _micrograph_em_inputs(job)
    settings = EMSettings(**{name: tuple(value) if isinstance(value, list) else value
                             for name, value in options["settings"].items()})
    checkpoint = job["inputs"]["checkpoint"]
    state = EMState.load(checkpoint) if os.path.exists(checkpoint) else None
    run_start(patch_set, settings, options["start"], options["seed"], ctfs, state=state,
              checkpoint=lambda current: current.save(checkpoint), progress=progress)
    shutil.copyfile(checkpoint, job["output"])
    return {}


def pick_micrographs(job, progress):
    """Posterior picks of the patches of some micrographs under the EM's result: rows
    ``(micrograph, x, y, score)`` in the micrographs' own pixels."""
    from cryohess_plugin.core.micrograph_em import (MicrographEMResult,
                                                    original_pixel_centres, pick_patches)
    options = job["options"]
    patch_set, ctfs = _micrograph_em_inputs(job)
    result = MicrographEMResult.load(job["inputs"]["result"])
    first, count = options["first"], options["count"]
    mine = np.flatnonzero((patch_set.micrograph >= first)
                          & (patch_set.micrograph < first + count))
    operator, model = result.operator_and_model(options["rotation_resolution"])
    picks = pick_patches(patch_set, operator, model, ctfs, mine, backend=job["backend"])
    rows = original_pixel_centres(patch_set, picks, mine)
    temporary = job["output"] + ".tmp.npz"
    np.savez(temporary, rows=rows)
    os.replace(temporary, job["output"])
    return dict(picks=len(rows))


#: The tasks a job may name.
TASKS = {task.__name__: task for task in (align_batch, refine_batch, refine_particle_batch,
                                           fit_posterior_part, run_hyper_molecule_chain,
                                           run_micrograph_em_start, pick_micrographs)}


def main(argv=None):
    """Run the job file given on the command line, with its threads and device."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m cryohess_plugin.run_batch JOB_FILE")
    job = read_job(argv[0])
    try:
        threads = set_threads(job["threads"], job["gpu"] if job["backend"] != "cpu" else None)
        print(f"{job['task']}: {os.path.basename(job['output'])} with {threads} thread(s)"
              + ("" if job["gpu"] is None else f" on GPU {job['gpu']}"), flush=True)
        run_job(job, progress=lambda event: print(event.line(), flush=True))
    except Exception as error:
        with open(error_path(job), "w") as errorFile:
            errorFile.write(f"{type(error).__name__}: {error}")
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
