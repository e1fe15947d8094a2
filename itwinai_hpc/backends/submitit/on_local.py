"""The submitit backend's local half: a step's .sh runs as a submitit LocalExecutor job whose
controller starts detached (its own session, no terminal, its output in submitit/
local-controllers.log), waits for its parents, runs an array's tasks at most %N at once, and
leaves exit statuses in the run folder, where local_state() reads them.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import time
import types
from pathlib import Path

import submitit
import submitit.local.local

from itwinai_hpc.backends.local.backend import parallel_limit
from itwinai_hpc.backends.local.procs import alive
from itwinai_hpc.backends.slurm.exit_status import complete_array
from itwinai_hpc.backends.submitit.on_slurm import WEEK_MIN
from itwinai_hpc.backends.submitit.step import SKIPPED, SubmititStep, exit_file
from itwinai_hpc.core.slurm_syntax import parse_array, time_minutes
from itwinai_hpc.run import guard, layout
from itwinai_hpc.run.exit_status import read_task_exit_statuses
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.planned import PlannedStep
from itwinai_hpc.run.states import StepState, from_exit

CONTROLLER_LOG = "local-controllers.log"   # in the submitit folder: what controllers print


class _DetachedPopen(subprocess.Popen):
    """How submitit's local executor starts a job's controller, detached. submitit uses a
    plain Popen, so the controller kept this process's stdout, stderr and process group:
    `submit --backend submitit | tee` waited for the jobs to end, and Ctrl-C during `--wait`
    killed them. Its last argument is the executor's folder (submitit.local.start_controller)."""

    def __init__(self, args, *rest, **kwargs):
        folder = Path(shlex.split(args)[-1] if isinstance(args, str) else args[-1])
        fd = guard.open_nofollow(folder / CONTROLLER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with open(fd, "ab") as log:
            kwargs.update(stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
            super().__init__(args, *rest, **kwargs)


def detach_controllers() -> None:
    """Make submitit's local executor start controllers through _DetachedPopen. Applied when a
    step is submitted locally, never on import: `status` or `logs` of a submitit run leave
    submitit as it is. (Only start_controller calls Popen in this process; the controller's own
    Popens run in the controller.)"""
    if getattr(submitit.local.local.subprocess, "Popen", None) is _DetachedPopen:
        return
    view = types.ModuleType("subprocess")
    view.__dict__.update(vars(subprocess), Popen=_DetachedPopen)
    submitit.local.local.subprocess = view


def local_tasks_at_once(array: str) -> int:
    """How many tasks of an array the local cluster runs at once: its %N, at most
    $ITWINAI_HPC_LOCAL_PARALLEL (as the local backend)."""
    spec = parse_array(array)
    return min(spec.limit or len(spec.ids), parallel_limit())


def submit_locally(folder: Path, manifest: RunManifest, step: StepRecord,
                    jobs: dict[str, PlannedStep], ok: list[str],
                    anyway: list[str]) -> submitit.Job:
    detach_controllers()
    job = step.plan
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=local_minutes(jobs, step.name),
                               tasks_per_node=1)
    tasks = parse_array(step.array).ids if step.array else None
    callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id, step.name,
                             str(Path(manifest.run_dir) / step.local_script), job.job_name,
                             ok, waits=anyway, tasks=tasks,
                             limit=local_tasks_at_once(step.array) if step.array else 1)
    return executor.submit(callable_)


def local_minutes(jobs: dict[str, PlannedStep], name: str) -> int:
    """submitit's local limit counts the wait for parents: the step's time plus its
    ancestors' (an array's once per round of tasks; a week where any is unknown)."""
    chain, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in chain:
            chain.add(n)
            todo.extend(jobs[n].needs + jobs[n].after)
    minutes: list[int | None] = []
    for n in chain:
        job = jobs[n]
        rounds = math.ceil(len(parse_array(job.array).ids) /
                           local_tasks_at_once(job.array)) if job.array else 1
        step_min = time_minutes(job.resources.time)
        minutes.append(None if step_min is None else step_min * rounds)
    return WEEK_MIN if None in minutes else sum(m for m in minutes if m is not None)


def local_state(run_dir: str, s: StepRecord) -> None:
    # alive first: a job leaves its exit status before it ends, so a job found ended and
    # without one afterwards never left one
    assert s.job_id is not None         # asked only about submitted steps
    running = alive(int(s.job_id))
    done = exit_file(run_dir, s.job_id)
    started = Path(layout.started_marker(run_dir, s.job_id))
    word, _, why = (done.read_text() if done.exists() else "").strip().partition(" ")
    if word == SKIPPED:
        s.state, s.reason = StepState.CANCELLED, why
        return
    if not word and running:
        if started.exists():
            s.state = StepState.RUNNING
            s.elapsed = int(time.time() - started.stat().st_mtime)
        else:
            s.state, s.reason = StepState.PENDING, "waiting for its dependencies"
        return
    if s.array:     # every task's own status; a task that left none never ran to its end
        info = complete_array(s.job_id, s.array, None,
                              read_task_exit_statuses(run_dir, s.job_id))
        code = None if info is None else info.exit_code
        state = None if info is None else info.state
    else:
        code = int(word) if word.isdigit() else None
        state = None if code is None else from_exit(code)
    if state is None:
        s.state = StepState.FAILED
        s.reason = "submitit's local job ended without a result; see the run's submitit/ folder"
        return
    s.state, s.exit_code = state, code
    if started.exists():
        s.elapsed = int((done.stat().st_mtime if done.exists() else time.time())
                        - started.stat().st_mtime)
