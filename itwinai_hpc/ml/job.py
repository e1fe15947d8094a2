"""`from itwinai_hpc import job`: what a training script of your own gets from the job it runs
in, without the built-in trainer. Reads the job-environment contract (core/job_env.py and
torchrun's RANK/LOCAL_RANK/WORLD_SIZE); never asks the scheduler. No torch at import.
"""

from __future__ import annotations

import os

from itwinai_hpc.core import job_env
from itwinai_hpc.ml.progress import HUNG_EXIT, progress, progress_done

__all__ = ["HUNG_EXIT", "local_rank", "progress", "progress_done", "rank", "run_dir",
           "world_size"]


def rank() -> int:
    """This process's rank among all (torchrun's RANK, srun's SLURM_PROCID), 0 alone."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def local_rank() -> int:
    """This process's rank on its node (LOCAL_RANK, SLURM_LOCALID), 0 alone."""
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def world_size() -> int:
    """How many processes train together (WORLD_SIZE, SLURM_NTASKS), 1 alone."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def run_dir() -> str | None:
    """The itwinai-hpc run folder this step belongs to (None outside a run)."""
    return os.environ.get(job_env.RUN_DIR) or None
