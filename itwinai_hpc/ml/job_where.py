"""Where a training process runs, for `itwinai_hpc.job` (ml/job.py documents the contract) and
the built-in trainer's CLI: ranks, device, run and checkpoint folders, the stop file, and the
stopped mark. Reads environment variables only (torchrun's, SLURM's, core/job_env's); imports
torch only in device() and context().
"""

from __future__ import annotations

import os
from pathlib import Path

import itwinai_hpc.run.layout as layout
from itwinai_hpc.core import atomic, job_env


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


def stop_file(env=os.environ) -> str | None:
    """The file whose appearance asks this step to checkpoint and stop: $ITWINAI_HPC_STOP_FILE,
    which every job script exports; by hand, $ITWINAI_HPC_RUN_DIR/$ITWINAI_HPC_STEP.STOP."""
    if env.get(job_env.STOP_FILE):
        return env[job_env.STOP_FILE]
    if env.get(job_env.RUN_DIR) and env.get(job_env.STEP):
        return layout.stop_file(env[job_env.RUN_DIR], env[job_env.STEP])
    return None


def device():
    """torch.device: cuda:LOCAL_RANK (made current) where this rank has a GPU, else cpu. A step
    that asked for GPUs and sees none is a UserError, never a silent CPU run."""
    import torch

    from itwinai_hpc.ml.distributed import check_gpus_seen

    check_gpus_seen(torch, local_rank())
    if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
        dev = torch.device(f"cuda:{local_rank()}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def checkpoint_dir() -> Path:
    """The step's checkpoint folder (layout.checkpoint_dir, as the built-in trainer's): stable
    across requeues and resumes of the same step; a sweep task's own. ./checkpoints outside a
    run. Created."""
    rd = run_dir()
    path = Path(layout.checkpoint_dir(rd, os.environ.get(job_env.SWEEP),
                                      os.environ.get(job_env.SWEEP_TASK)) if rd
                else "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def context():
    """distributed.Context of this process: the process group when one is initialised."""
    from itwinai_hpc.ml import distributed as D

    backend, r, w = None, rank(), world_size()
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend, r, w = dist.get_backend(), dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    import torch

    dev = torch.device(f"cuda:{local_rank()}") if backend == "nccl" else torch.device("cpu")
    return D.Context(r, w, local_rank(), dev, backend,
                     local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE") or 1))


def _job_id() -> str | None:
    """The job id the job script names its marks with (an array task: ARRAYID_TASK)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return layout.task_job_id(array, task) if array and task else \
        os.environ.get("SLURM_JOB_ID") or None


def mark_stopped() -> Path | None:
    """Leave the stopped mark (layout.stopped_marker) the job script reads: the step stopped
    early to be resumed. Every rank may call it; None outside a run."""
    rd, job_id = run_dir(), _job_id()
    if not rd or not job_id:
        return None
    return atomic.write_text(Path(layout.stopped_marker(rd, job_id)), f"rank {rank()}\n")
