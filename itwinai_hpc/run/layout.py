"""The run folder's layout: every file name the backends, templates and ML steps agree on.

One home for each rule, so the next edit cannot fix one copy and miss another. The functions
take folder and id parts as strings, so a template can pass shell variables instead
(`exit_marker("$ITWINAI_HPC_RUN_DIR", "$SLURM_JOB_ID")`). Pure: no I/O.
"""

from __future__ import annotations

MANIFEST = "run.json"           # the run: its plan and every step's state
LOCK = ".lock"                  # flock'ed around every read-modify-write of run.json
OPERATION_LOCK = ".operation.lock"   # held by a whole submit / resume / cancel
RESOLVED_WORKFLOW = "workflow.yml"
SUBMIT_SCRIPT = "submit.sh"
JOBS_TSV = "jobs.tsv"           # "STEP<TAB>JOB_ID" lines appended by submit.sh
LOGS = "logs"
CHECKPOINTS = "checkpoints"
# SLURM's --output patterns: %x job name, %j job id, %A array job id, %a task id.
LOG_PATTERN = "%x-%j.out"
ARRAY_LOG_PATTERN = "%x-%A_%a.out"


def task_job_id(job_id: str, task=None) -> str:
    """An array task's job id as SLURM writes it, ARRAYID_TASK (a plain job: its id)."""
    return job_id if task is None else f"{job_id}_{task}"


def job_name(workflow: str, step: str) -> str:
    return f"{workflow}.{step}"


def sbatch_script(index: int, step: str, width: int = 2) -> str:
    """01-preprocess.sbatch: the run order in the name, so `ls` shows the chain."""
    return f"{index:0{width}d}-{step}.sbatch"


def local_script(sbatch_name: str) -> str:
    """01-preprocess.sh: the same step for backends that run without sbatch."""
    return sbatch_name.removesuffix(".sbatch") + ".sh"


def log_pattern(array: bool) -> str:
    return ARRAY_LOG_PATTERN if array else LOG_PATTERN


def log_file(run_dir: str, job: str, job_id: str, task: str | None = None) -> str:
    """Where SLURM's log_pattern points for one job (or one array task)."""
    name = f"{job}-{job_id}" + ("" if task is None else f"_{task}")
    return f"{run_dir}/{LOGS}/{name}.out"


def log_glob(run_dir: str, job: str, job_id: str, array: bool) -> str:
    """The job's log, or a glob over its array tasks' logs."""
    return log_file(run_dir, job, job_id, "*" if array else None)


def exit_marker(run_dir: str, job_id: str) -> str:
    """The exit status a job leaves behind (one line: the number), written by the job script's
    EXIT trap (array tasks: job_id is ARRAYID_TASK). With no accounting it is all that tells
    `status` how a job that left the queue ended."""
    return f"{run_dir}/{LOGS}/.exit-{job_id}"


def stopped_marker(run_dir: str, job_id: str) -> str:
    """Left by a step's processes that stopped early to be resumed (the stop contract,
    core/job_env.STOP_EXIT): torchrun reports a worker's 75 as 1, so the job script reads this
    mark and records 75 all the same. Removed when the job (or its requeued run) starts."""
    return f"{run_dir}/{LOGS}/.stopped-{job_id}"


def started_marker(run_dir: str, job_id: str) -> str:
    """Written when a job's script starts (its mtime is the start time)."""
    return f"{run_dir}/{LOGS}/.started-{job_id}"


def hung_marker(run_dir: str, job_id: str, rank: int | str) -> str:
    """Left by a rank whose watchdog fired (JSON: rank, node, last progress); `status` shows
    the step as HUNG from these."""
    return f"{run_dir}/{LOGS}/.hung-{job_id}-rank{rank}"


def hung_glob(run_dir: str, job_id: str) -> str:
    return f"{run_dir}/{LOGS}/.hung-{job_id}-rank*"


def stop_file(run_dir: str, step: str) -> str:
    """Created when a step should checkpoint and stop (time limit, preemption); exported to the
    step as $ITWINAI_HPC_STOP_FILE, the one name the step's code reads."""
    return f"{run_dir}/{step}.STOP"


SWEEPS = "sweeps"               # sweeps/<sweep>/<task>.json: what each task of a sweep achieved


def checkpoint_dir(run_dir: str, sweep: str | None = None, task: str | None = None) -> str:
    """Where a step's code keeps its checkpoints by default: checkpoints/, and a sweep's task
    its own checkpoints/<sweep>.<task> (a task must never resume from another's)."""
    return f"{run_dir}/{CHECKPOINTS}" + (f"/{sweep}.{task}" if sweep and task else "")


def ok_marker(run_dir: str, group: str, task: str | None = None) -> str:
    """Left by a step (a sweep's task: group is the sweep, task its index) that succeeded, for
    the steps that need it with `any`: they run once it ended, and check that one succeeded."""
    return f"{run_dir}/{LOGS}/.ok-{group}" + ("" if task is None else f".{task}")


def sweep_id(run_id: str, sweep: str) -> str:
    """The id a sweep's MLflow runs are tagged with (itwinai_hpc.sweep_id)."""
    return f"{run_id}.{sweep}"


def sweep_result(run_dir: str, sweep: str, task: str) -> str:
    """What one task of a sweep achieved (JSON, written by the step's code when it finishes):
    `status` shows the sweep's best from these without asking MLflow."""
    return f"{run_dir}/{SWEEPS}/{sweep}/{task}.json"
