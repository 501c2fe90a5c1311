"""One batch step of a cryohess protocol, run from files: ``python -m cryohess_plugin.run_batch JOB``.

A protocol's batch step writes a job file (:func:`write_job`): a JSON object naming the
task, the files it reads, its options, its threads and device, and the file it writes.
The step then runs the job in its own process (:func:`run_job`) or, when the run sends
its steps to a queue, as this command through Scipion's ``runJob`` on a cluster node.
Either way the task calls the same core function and writes its result to the job's
output, which the protocol's merge step reads.  A job that fails leaves its message in
:func:`error_path` for the protocol to report.

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
    """A batch job ended without writing its output."""


def write_job(path, task, output, inputs=None, options=None, threads=1, gpu=None,
              backend="cpu"):
    """Write the job file ``path`` and return the job (a dict).

    :param task: name of a function of :data:`TASKS`.
    :param output: the ``.npz`` the task writes (whole or not at all).
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


def notes_path(job):
    """Where a job leaves the few numbers its step logs besides the result."""
    return job["output"] + ".notes.json"


def run_job(job, progress=None):
    """Run ``job``'s task in this process; its output file is written whole or not at all.

    :param progress: callback of the core's :class:`.core.progress.Progress` events.
    """
    for stale in (error_path(job), notes_path(job)):
        if os.path.exists(stale):
            os.remove(stale)
    notes = TASKS[job["task"]](job, progress)
    if notes:
        with open(notes_path(job), "w") as notesFile:
            json.dump(notes, notesFile)


def check_output(job):
    """Raise :class:`BatchJobError` with the job's own message unless it wrote its output."""
    if os.path.exists(job["output"]):
        return
    message = "no message (see the job's log)"
    if os.path.exists(error_path(job)):
        with open(error_path(job)) as errorFile:
            message = errorFile.read().strip()
    raise BatchJobError(f"The {job['task']} job did not write {job['output']}: {message}")


def read_notes(job):
    """The numbers the job left for its step (:func:`notes_path`), or {}."""
    if not os.path.exists(notes_path(job)):
        return {}
    with open(notes_path(job)) as notesFile:
        return json.load(notesFile)


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


#: The tasks a job may name.
TASKS = {task.__name__: task for task in (align_batch, refine_batch, fit_posterior_part)}


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
