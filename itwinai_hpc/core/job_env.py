"""The job-environment contract: every ITWINAI_HPC_* variable the job scripts export and the
Python side reads, named once (as run/layout.py is for file names). The templates export
OWNED in every job; a workflow's env may not set them (the run's marks and stop file would go
elsewhere). SETTINGS are knobs a user may set, in a step's env or their shell.
"""

from __future__ import annotations

import os

# Exported by every job script (templates/_environment.j2) or the local runner; read by the
# ML steps, the sweep marks and `itwinai_hpc.job`.
RUN_DIR = "ITWINAI_HPC_RUN_DIR"            # the run folder
RUN_ID = "ITWINAI_HPC_RUN_ID"
STEP = "ITWINAI_HPC_STEP"                  # the step's name
BACKEND = "ITWINAI_HPC_BACKEND"            # slurm, local or submitit
WORKFLOW_FILE = "ITWINAI_HPC_WORKFLOW_FILE"
STOP_FILE = "ITWINAI_HPC_STOP_FILE"        # appears when the step should checkpoint and stop
MATRIX = "ITWINAI_HPC_MATRIX"              # a sweep task's values, as a JSON object
SWEEP = "ITWINAI_HPC_SWEEP"                # the sweep's name
SWEEP_TASK = "ITWINAI_HPC_SWEEP_TASK"      # the task's number
SWEEP_ID = "ITWINAI_HPC_SWEEP_ID"          # run id + sweep: groups the tasks in MLflow
LOCAL_JOB = "ITWINAI_HPC_LOCAL_JOB"        # the local backends' process marker
NO_PROGRESS = "ITWINAI_HPC_NO_PROGRESS"    # the step's watchdog, in seconds (when it has one)
GPUS_PER_NODE = "ITWINAI_HPC_GPUS_PER_NODE"  # the GPUs the step asked for (when it did)

OWNED = frozenset({RUN_DIR, RUN_ID, STEP, BACKEND, WORKFLOW_FILE, STOP_FILE, MATRIX, SWEEP,
                   SWEEP_TASK, SWEEP_ID, LOCAL_JOB, NO_PROGRESS, GPUS_PER_NODE})

# The stop contract. A step asked to stop early (the file $ITWINAI_HPC_STOP_FILE appeared, or
# SIGUSR2/SIGTERM reached its processes: a time limit, preemption, `touch`) checkpoints and exits
# with STOP_EXIT, and only then: "stopped early, resume me". 75 is sysexits' EX_TEMPFAIL ("try
# again later"). The SLURM job script requeues a job whose step left it after the time-limit
# warning; every backend records a step that ended with it as STOPPED (never COMPLETED), its
# dependents do not run, `status` shows it, and `itwinai-hpc resume` continues it. A step that
# ends with 0 after a stop request finished its work (it is not requeued). The built-in trainer
# and `itwinai_hpc.job` (job.STOP_EXIT) use it.
STOP_EXIT = 75

# Knobs a user may set (a step's env, or the shell itwinai-hpc runs in).
DATA_MODE = "ITWINAI_HPC_DATA_MODE"                    # memory or stream (data/loader_settings)
DATA_MEMORY_BUDGET = "ITWINAI_HPC_DATA_MEMORY_BUDGET"
STAGE_DIR = "ITWINAI_HPC_STAGE_DIR"                    # node-local staging target
LOCAL_PARALLEL = "ITWINAI_HPC_LOCAL_PARALLEL"          # steps at once on the local backend
SUBMITIT_CLUSTER = "ITWINAI_HPC_SUBMITIT_CLUSTER"      # slurm or local
RUNS = "ITWINAI_HPC_RUNS"                              # where run folders go
PROFILES = "ITWINAI_HPC_PROFILES"                      # extra site profile folders
NORMAL_EXIT = "ITWINAI_HPC_NORMAL_EXIT"                # 1: Python's teardown at exit (profilers)
GC = "ITWINAI_HPC_GC"                                  # normal: no collector hold (core/startup)

SETTINGS = frozenset({DATA_MODE, DATA_MEMORY_BUDGET, STAGE_DIR, LOCAL_PARALLEL,
                      SUBMITIT_CLUSTER, RUNS, PROFILES, NORMAL_EXIT, GC})


def owned_problem(name: str) -> str | None:
    """Why a workflow may not set the variable `name`, or None."""
    if name in OWNED:
        return (f"'{name}' is set by itwinai-hpc in every job (the run's marks, stop file and "
                "sweep results depend on it); a workflow may not set it")
    if name.startswith("ITWINAI_HPC_") and name not in SETTINGS:
        return (f"'{name}' is in itwinai-hpc's namespace but is none of its settings "
                f"({', '.join(sorted(SETTINGS))}); a workflow may not set it")
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on: what SLURM's binding or a cgroup's cpuset leaves it,
    else all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
