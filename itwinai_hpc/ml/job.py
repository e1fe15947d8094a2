"""`from itwinai_hpc import job`: what a training script of your own gets from the step it runs
in, without the built-in trainer: requeue with exact resume, MLflow discipline, the champion.

Where am I:
    job.rank(), job.local_rank(), job.world_size()   torchrun's RANK/LOCAL_RANK/WORLD_SIZE
                                                     (srun's SLURM_PROCID/...; 0, 0, 1 alone)
    job.device()        cuda:LOCAL_RANK where this rank has a GPU, else cpu; a step that asked
                        for GPUs (gpus-per-node) and sees none stops with a clear error
    job.run_dir()       the itwinai-hpc run folder (None when run by hand)
    job.checkpoint_dir()  the step's checkpoint folder, the same for every requeue and
                        `itwinai-hpc resume` of this step (a sweep task: its own); created
    job.save_checkpoint(state), job.load_checkpoint()   rank 0 writes atomically (old or new,
                        never half), every rank waits for it; None when there is none yet

The stop contract (one rule for every backend; core/job_env.STOP_EXIT):
    A step is asked to stop early when the file $ITWINAI_HPC_STOP_FILE appears (SLURM's
    time-limit warning, submitit's checkpoint, or you: `touch RUN/STEP.STOP`) or its processes
    get SIGUSR2 or SIGTERM. Check `job.should_stop()` between steps; when it says True:
    checkpoint, then `job.exit_stopped()` on every rank. That ends the MLflow run KILLED
    (tag itwinai_hpc.stopped), removes the stop file (the request is served), leaves a mark
    in the run folder (`job.mark_stopped()`: torchrun reports any failed worker as 1, the job
    script reads the mark and records 75 all the same) and exits with status 75 (job.STOP_EXIT,
    sysexits' EX_TEMPFAIL). A script that cannot call it: exit 75 from every process after
    `job.mark_stopped()`. Then:
      - SLURM (`requeue:` on the step): the job is requeued, and its next run resumes;
      - every backend (slurm, local, submitit) records the step STOPPED, never COMPLETED; its
        dependents do not run; `itwinai-hpc status` shows it; `itwinai-hpc resume` runs it
        again (it continues from job.load_checkpoint()).
    Exiting 0 after a stop request means "finished": nothing resumes it.
    `should_stop()` is COLLECTIVE once torch.distributed is initialised: every rank must call
    it at the same point (e.g. every N steps, the same N everywhere), and every rank gets the
    same answer (an all_reduce MAX over what each rank saw: only some ranks may see the file
    or get the signal). Without a process group it is this process's own answer.
    `job.stop_requested()` is the per-rank, non-blocking view; never stop on it alone under
    DDP (the other ranks would hang in their next collective). Signal handlers for SIGTERM and
    SIGUSR2 are installed at the first `should_stop()`/`stop_requested()`/`watch_stop()` call:
    call `job.watch_stop()` at start-up to catch them from then on.

MLflow and the registry (rank 0 only; other ranks get None):
    job.mlflow_run(experiment, tracking_uri=None, params=None)  starts the step's MLflow run
        with the tags `status` and `scaling` read (run, step, sweep task and matrix values,
        world size, nodes, processes per node, provenance), or, after a requeue or `resume`,
        resumes the SAME run (its id is kept in checkpoint_dir()). Log `samples_per_s` and
        `epoch_time_s` per epoch (step=epoch) for `itwinai-hpc scaling`.
    job.register(model, input_example, metric="val_rmse", mode="min")  logs the model (pt2,
        pyfunc signature from `input_example`, a numpy batch of >= 2) and registers it; the
        alias (default champion) moves to it only when its metric beats the holder's by `mode`
        (max: higher is better; min: lower is; default by the metric's kind). The value is the
        run's last logged `metric` unless `value=` is given. In a sweep it also writes the
        task's result file (`status` shows "N of M reported" and the best). Returns
        (version, became_champion). `task="classification"` or `"regression"` records how
        `itwinai-hpc predict` reads the model (it refuses a model without one).
    job.report(metric, value, mode=)  the sweep result alone, for a script that registers
        nothing.

Also: job.progress() / job.progress_done() (the watchdog's heartbeat, watchdog.no-progress).
Nothing here asks a scheduler; no torch or mlflow at import.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from itwinai_hpc.core import job_env
from itwinai_hpc.ml.job_mlflow import mlflow_run, register, report
from itwinai_hpc.ml.job_where import (
    checkpoint_dir,
    context,
    device,
    local_rank,
    mark_stopped,
    rank,
    run_dir,
    stop_file,
    world_size,
)
from itwinai_hpc.ml.progress import HUNG_EXIT, progress, progress_done

STOP_EXIT = job_env.STOP_EXIT

__all__ = ["HUNG_EXIT", "STOP_EXIT", "checkpoint_dir", "device", "exit_stopped", "load_checkpoint",
           "local_rank", "mark_stopped", "mlflow_run", "progress", "progress_done", "rank",
           "register", "report", "run_dir", "save_checkpoint", "should_stop", "stop_requested",
           "watch_stop", "world_size"]

_stop: Any = None      # distributed.StopRequest, once watched


def watch_stop():
    """Start watching for a stop request (SIGTERM, SIGUSR2, the stop file); idempotent."""
    global _stop
    from itwinai_hpc.ml import distributed as D

    if _stop is None:
        found = stop_file()
        _stop = D.StopRequest(context(), Path(found) if found else None)
    else:
        _stop.ctx = context()    # the process group may have started since
    return _stop


def stop_requested() -> bool:
    """Whether THIS process was asked to stop (per rank, no communication)."""
    return watch_stop().local()


def should_stop() -> bool:
    """Whether to checkpoint and stop now: collective under torch.distributed (every rank calls
    it at the same point and gets the same answer), this process's own answer otherwise."""
    return watch_stop().agreed()


def save_checkpoint(state: dict) -> Path:
    """Rank 0 writes `state` (torch.save) atomically to checkpoint_dir()/checkpoint.pt; every
    rank calls it and returns once it is on disk (a barrier under torch.distributed)."""
    from itwinai_hpc.ml import distributed as D
    from itwinai_hpc.ml.checkpoint import checkpoint_path
    from itwinai_hpc.ml.checkpoint import save_checkpoint as save

    folder = checkpoint_dir()
    if rank() == 0:
        save(state, folder)
    D.barrier(context())
    return checkpoint_path(folder)


def load_checkpoint() -> dict | None:
    """The checkpoint in checkpoint_dir() (on the CPU), or None when there is none yet."""
    from itwinai_hpc.ml.checkpoint import load_checkpoint as load

    return load(checkpoint_dir())


def exit_stopped(reason: str | None = None) -> NoReturn:
    """End this process as "stopped early, resume me": call it on every rank once the
    checkpoint is written. Rank 0 ends the MLflow run KILLED with the tag itwinai_hpc.stopped
    (resumed later, it goes back to RUNNING); rank 0 removes the stop file (served: a resume
    must not stop at once); every rank leaves the mark, waits for the others and exits
    STOP_EXIT (75)."""
    from itwinai_hpc.ml import distributed as D
    from itwinai_hpc.ml.job_mlflow import end_stopped

    why = reason or (_stop.reason() if _stop is not None else "asked to stop")
    if rank() == 0:
        end_stopped(why)
    watch_stop().consume()     # rank 0: the request is served; a resume must not stop at once
    mark_stopped()
    ctx = context()
    D.teardown(ctx, together=True)
    sys.stdout.flush()
    sys.exit(STOP_EXIT)
