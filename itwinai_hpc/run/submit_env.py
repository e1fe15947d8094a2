"""The environment sbatch is called with: the caller's, minus the job it may be running in.

Shared by the SLURM backend and submit.sh (rendered with KEEP_SLURM_ENV). Pure.
"""

from __future__ import annotations

import os

from itwinai_hpc.core import job_env

# SLURM_* variables that say which cluster to talk to, not which job we are in: they survive
# when a run is submitted from inside another job.
KEEP_SLURM_ENV = ("SLURM_CONF", "SLURM_CLUSTERS", "SLURM_TIME_FORMAT")


def submit_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus the SLURM_* variables of the job it may be running in:
    sbatch would otherwise hand that job's node count, memory or CPUs on to our jobs. The
    variables that choose the cluster (SLURM_CONF, ...) stay. Minus, too, the variables
    itwinai-hpc sets in every job (core/job_env.py): a run submitted from inside a step, or
    from a shell that set one, must not inherit that step's run folder, stop file or watchdog."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items()
            if (not k.startswith("SLURM_") or k in KEEP_SLURM_ENV) and k not in job_env.OWNED}
