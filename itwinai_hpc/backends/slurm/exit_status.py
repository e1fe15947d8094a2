"""How the exit status each job script leaves in the run folder (run/exit_status.py) completes
SLURM's answer about jobs the controller has forgotten.

Without slurmdbd nothing else remembers an array's tasks once they are purged (`sacct -c`
finds only the one task whose own id is the array's), and without any accounting nothing
remembers a job at all. Reading files only; the merge functions are pure.
"""

from __future__ import annotations

from dataclasses import replace

from itwinai_hpc.backends.slurm.query import JobInfo, aggregate
from itwinai_hpc.core.slurm_syntax import parse_array
from itwinai_hpc.run import layout
from itwinai_hpc.run.exit_status import (  # noqa: F401
    FROM_FILE,
    KILLED_WITHOUT_STATUS,
    NO_STATUS,
    describe_exit,
    read_exit_status,
    read_task_exit_statuses,
)
from itwinai_hpc.run.states import StepState, from_exit


def info_from_exit_status(job_id: str, code: int) -> JobInfo:
    return JobInfo(job_id, from_exit(code), code, 0, reason=describe_exit(code))


def array_task_ids(spec: str) -> set[str]:
    """The task ids an array spec ('0-3', '[5-9%2]' as a task key of JobInfo.tasks) names."""
    try:
        return {str(i) for i in parse_array(spec.strip("[]")).ids}
    except ValueError:
        return set()


def complete_array(job_id: str, array_spec: str, info: JobInfo | None,
                   exit_statuses: dict[str, int]) -> JobInfo | None:
    """What became of an array step, from what SLURM still says and the tasks' exit statuses.

    For clusters where the controller is asked first (accounting 'jobcomp' or 'none'): a task it
    no longer lists has ended. `info` is the controller's view (tasks by id), or the job
    completion log's record of one task of the array (no tasks: which one is not said), or
    None. A task the controller still runs keeps the array active; a task nobody knows and
    that left no exit status counts as CANCELLED. None when nothing at all is known.
    """
    if info is not None and not info.finished and info.tasks:
        return info                             # some task still pending or running
    tasks = dict(info.tasks) if info is not None else {}
    covered = set().union(*(array_task_ids(k) for k in tasks)) if tasks else set()
    for task, code in exit_statuses.items():
        if task not in covered:
            tasks[task] = info_from_exit_status(layout.task_job_id(job_id, task), code)
            covered.add(task)
    if info is not None and not info.tasks and info.finished:
        tasks["?"] = info                       # the log's record of one (unnamed) task
    if not tasks:
        return None
    for task in sorted(array_task_ids(array_spec) - covered, key=int):
        tasks[task] = JobInfo(layout.task_job_id(job_id, task), StepState.CANCELLED,
                              reason=NO_STATUS)
    return aggregate(job_id, tasks)


def until_recorded_in_full(array_spec: str, info: JobInfo | None) -> JobInfo | None:
    """For full accounting (sacct through slurmdbd), which knows every task but records them
    one by one: an array whose finished tasks do not yet include every task is not final (the
    others ended a moment ago, or the failed one is still on its way)."""
    if info is None or not info.finished:
        return info
    covered = set().union(*(array_task_ids(k) for k in info.tasks)) if info.tasks else set()
    missing = array_task_ids(array_spec) - covered
    if not missing:
        return info
    tasks = ", ".join(sorted(missing, key=int))
    return replace(info, state=StepState.RUNNING, exit_code=None, signal=None,
                   reason=f"accounting has not recorded task(s) {tasks} yet")
