"""The exit status each job script leaves in the run folder (templates/_exit_status.j2): every
backend's jobs write it, and status, operations and the backends read it here. Reading only.
"""

from __future__ import annotations

from pathlib import Path

from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.run import layout

FROM_FILE = "from the exit status the job left in the run folder"
NO_STATUS = "left the queue without an exit status (never started, or killed outright)"
# A job that started (SLURM opened its log), has left the controller, and left no exit status.
KILLED_WITHOUT_STATUS = ("started, then left the queue without an exit status: killed before "
                         "its script could record one")


def read_exit_status(run_dir: str, job_id: str) -> int | None:
    """The number a job (or an array task, job_id ARRAYID_TASK) left, or None."""
    try:
        text = Path(layout.exit_marker(run_dir, job_id)).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def read_task_exit_statuses(run_dir: str, array_job_id: str) -> dict[str, int]:
    """{task id: exit status} of the array tasks that have ended, from one folder listing."""
    prefix = Path(layout.exit_marker(run_dir, layout.task_job_id(array_job_id, "")))
    found = {}
    for path in prefix.parent.glob(prefix.name + "*"):
        task = path.name[len(prefix.name):]
        if not task.isdigit():
            continue
        code = read_exit_status(run_dir, layout.task_job_id(array_job_id, task))
        if code is not None:
            found[task] = code
    return found


def describe_exit(code: int) -> str:
    """The reason text of a state taken from an exit-status file."""
    if code == 128 + 15:
        return f"{FROM_FILE}: {code} = killed by SIGTERM (cancelled, or over its time limit)"
    if code > 128:
        return f"{FROM_FILE}: {code} = killed by signal {code - 128}"
    if code == STOP_EXIT:
        return f"{FROM_FILE}: {code} = stopped early, to be resumed (`itwinai-hpc resume`)"
    return FROM_FILE
