"""The submitit backend's SLURM half: a step's .sbatch body runs as a submitit SlurmExecutor
job (use_srun=False: submitit's python is the batch shell, and handles USR2 by checkpointing
and requeueing); an array is one submission whose pickle each task finds under its own id.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths

from itwinai_hpc.backends.submitit.step import SubmititStep
from itwinai_hpc.core import atomic
from itwinai_hpc.core.slurm_syntax import parse_array, time_minutes
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.planned import PlannedStep

WEEK_MIN = 7 * 24 * 60     # what a step without a time limit asks submitit for


def submit_to_slurm(folder: Path, manifest: RunManifest, step: StepRecord,
                     depends: list[str]) -> submitit.Job:
    job = step.plan
    executor = slurm_executor(folder, manifest, job, depends, step.array)
    # seconds between submitit's warning signal and the requeue (60 s of the 90 s default
    # warning, as the sbatch trap's default grace)
    callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id, step.name,
                             str(Path(manifest.run_dir) / step.script), job.job_name,
                             grace=job.requeue.grace if job.requeue else 60)
    sjob = executor.submit(callable_)
    if step.array:
        try:
            share_with_tasks(sjob, parse_array(step.array).ids)
        except BaseException:
            sjob.cancel(check=False)
            raise
    return sjob


def slurm_executor(folder: Path, manifest: RunManifest, job: PlannedStep,
                    depends: list[str], array: str | None):
    """`depends`: sbatch's dependency options (sbatch.dependency_option); `array`: the
    tasks to submit (the plan's, or a resumed sweep's unfinished ones)."""
    r = job.resources
    extra: dict[str, str | bool] = {
        "comment": f"itwinai-hpc:{manifest.run_id}", "chdir": manifest.workdir,
        # B: the batch shell, where submitit's python runs (use_srun=False) and
        # handles USR2 by checkpointing and requeueing
        "signal": f"B:USR2@{job.requeue.before_limit if job.requeue else 90}"}
    if array:
        # submitit's own logs per task, named as its map_array names them
        logs = JobPaths(folder)
        extra.update(array=array,
                     output=str(logs.stdout).replace("%j", "%A_%a").replace("%t", "0"),
                     error=str(logs.stderr).replace("%j", "%A_%a").replace("%t", "0"))
    if r.mem:
        extra["mem"] = r.mem        # submitit's own mem= wants gigabytes as a number
    for flag in (*depends, *job.extra_sbatch):
        key, _, value = flag[2:].partition("=")
        extra[key.replace("-", "_")] = value or True
    params = dict(job_name=job.job_name, nodes=r.nodes, ntasks_per_node=r.ntasks_per_node,
                  use_srun=False, additional_parameters=extra,
                  time=time_minutes(r.time) or WEEK_MIN)
    for key in ("cpus_per_task", "gpus_per_node", "partition", "account", "qos",
                "constraint"):
        value = getattr(r, key)
        if value:
            params[key] = value
    # `exec`: python replaces the batch shell, so the B:USR2 warning reaches submitit's
    # handler (checkpoint + requeue). Sent to a plain bash it would kill the job instead.
    # Ignored until that handler is installed: a step whose time limit is not much longer
    # than the warning gets it at SLURM's first check, which can fall while python starts,
    # and USR2's default action killed the job (exit 140, nothing in its log). Only an ignored
    # signal survives exec, and submitit's handler replaces it, so the step's own processes
    # get USR2's usual meaning.
    executor = submitit.SlurmExecutor(
        folder, python="trap '' USR2; exec " + shlex.quote(sys.executable))
    executor.update_parameters(**params)
    return executor


def share_with_tasks(job: submitit.Job, tasks: tuple[int, ...]) -> None:
    """Give every task of a SLURM array the array's callable: a copy of the submitted pickle
    under each task's name, where submitit's runtime looks (each its own: a requeued task
    rewrites its pickle with its checkpointed state)."""
    for task in tasks:
        task_id = layout.task_job_id(str(job.job_id), task)
        target = JobPaths(job.paths.folder, job_id=task_id).submitted_pickle
        tmp = atomic.temporary_name(target)     # renamed: a task never reads half a pickle
        shutil.copyfile(job.paths.submitted_pickle, tmp)
        os.replace(tmp, target)
