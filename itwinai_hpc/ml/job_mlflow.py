"""The MLflow and registry half of `itwinai_hpc.job` (ml/job.py documents the contract): the
step's run (resumed after a requeue), the champion rule, the sweep result and the tags that
`status` and `scaling` read. Rank 0 only; calls tracking, registry, provenance, sweep and
scaling, never copies them. mlflow is imported only when called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from itwinai_hpc.core import atomic
from itwinai_hpc.ml import job_where as job

RUN_ID_FILE = "mlflow_run_id"    # in job.checkpoint_dir(): the step's MLflow run, for resumes


class _Session:
    experiment: str | None = None
    run_id: str | None = None
    origin: Any = None


_session = _Session()


def mlflow_run(experiment: str = "itwinai-hpc", *, tracking_uri: str | None = None,
               params: dict[str, Any] | None = None, system_metrics_every_s: int = 0):
    """Rank 0: start this step's MLflow run, or resume the one an earlier run of the step (a
    requeue, `itwinai-hpc resume`) started, whose id is in checkpoint_dir()/mlflow_run_id;
    returns mlflow's ActiveRun (the active one when called again). Other ranks: None.

    Tags: what the built-in trainer sets (provenance: run id, step, workflow, git, backend;
    a sweep task's itwinai_hpc.sweep_id/.sweep/.sweep_task and matrix.KEY; slurm.* on a
    cluster; itwinai_hpc.kind=train, .world_size, .nnodes, .procs_per_node, .gpus_per_node).
    `params` are logged once (a resumed run keeps its own). The store: `tracking_uri`, else
    $MLFLOW_TRACKING_URI, else ./mlruns (a folder is allowed)."""
    if job.rank() != 0:
        return None
    import mlflow

    if mlflow.active_run() is not None:
        return mlflow.active_run()
    from itwinai_hpc.ml import distributed as D
    from itwinai_hpc.ml import tracking
    from itwinai_hpc.ml.provenance import Provenance, log_run_scripts
    from itwinai_hpc.ml.session import TrackingSession

    tracking.configure(tracking_uri)
    origin = Provenance.from_env()
    slurm = {k: os.environ[k] for k in D.SLURM_KEYS if k in os.environ}
    ctx = job.context()
    if ctx.backend is None:    # no process group (yet): what torchrun says
        ctx.world_size = job.world_size()
        ctx.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    ctx.device = job.device()
    # The trainer's shape tags (they read only the context): one rule for both routes.
    tags = {**origin.tags(slurm), **TrackingSession.shape_tags(SimpleNamespace(ctx=ctx))}  # type: ignore[arg-type]
    id_file = job.checkpoint_dir() / RUN_ID_FILE
    previous = id_file.read_text().strip() if id_file.is_file() else None
    run_id = tracking.start_run(experiment, run_id=previous or None, run_name=origin.run_name(),
                                tags=tags, system_metrics_every_s=system_metrics_every_s)
    for key in origin.stale_tags():
        tracking.delete_tag(key)
    if not previous:
        if params:
            tracking.log_params(params)
        atomic.write_text(id_file, run_id + "\n")
    if origin.run_dir and Path(origin.run_dir).is_dir():
        log_run_scripts(origin.run_dir)
    _session.experiment, _session.run_id, _session.origin = experiment, run_id, origin
    return mlflow.active_run()


def end_stopped(reason: str) -> None:
    """Rank 0, stopping early: the run ends KILLED with the tag itwinai_hpc.stopped, as the
    built-in trainer's (a resume deletes the tag and runs it again)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tags({"itwinai_hpc.stopped": reason})
        mlflow.end_run("KILLED")


def _mode(metric: str, mode: str | None) -> str:
    if mode is None:
        from itwinai_hpc.ml.metrics import HIGHER_IS_BETTER, default_mode

        base = metric.split("_", 1)[1] if metric.startswith(("val_", "test_")) else metric
        if base not in HIGHER_IS_BETTER:   # a guess could crown the worst model
            raise ValueError(f"which way is better for {metric!r} is not known: pass "
                             "mode='min' (an error, a loss) or mode='max' (a score)")
        return default_mode(metric)
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    return mode


def _last_value(metric: str) -> float:
    import mlflow

    run = mlflow.active_run()
    value = None if run is None else mlflow.get_run(run.info.run_id).data.metrics.get(metric)
    if value is None:
        raise ValueError(f"no metric {metric!r} was logged in this MLflow run: log it "
                         "(mlflow.log_metric) or pass value=")
    return float(value)


TASKS = ("classification", "regression")


def register(model, input_example, *, metric: str, mode: str | None = None,
             value: float | None = None, name: str | None = None, alias: str = "champion",
             description: str = "", task: str | None = None) -> tuple[str, bool] | None:
    """Rank 0: log `model` to the active run (job.mlflow_run()) and register it as a new
    version of `name` (default: the experiment's name); `alias` moves to it when `value`
    (default: the run's last logged `metric`) beats the holder's by `mode` (registry.better).
    `task` (classification: one score per class; regression: values) goes into the MLmodel
    metadata, where `itwinai-hpc predict` reads how to use the model (without it, predict
    refuses the model). A non-finite value or an unknown task is refused (ValueError), nothing
    logged. In a sweep the task's result file is written too (report). Returns (version,
    became alias holder); None on other ranks.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be 'classification' or 'regression' (or None), "
                         f"not {task!r}")
    if job.rank() != 0:
        return None
    import numpy as np

    from itwinai_hpc.ml import registry, tracking

    mode = _mode(metric, mode)
    value = _last_value(metric) if value is None else float(value)
    was_training = getattr(model, "training", False)
    model.eval()
    reg = registry.Registration(
        model=model, input_example=np.asarray(input_example), name=name or _experiment(),
        alias=alias, metric=metric, value=value, mode=mode, description=description,
        tags={"mlflow_run_id": _run_id() or ""}, metadata={"task": task} if task else {})
    try:
        version, champion = registry.log_and_register(reg)
    finally:
        model.train(was_training)
    tracking.set_tags({"registered_model": f"{reg.name}/{version}"})
    report(metric, value, mode=mode, model_name=reg.name, model_version=version,
           champion=champion)
    return version, champion


def report(metric: str, value: float, *, mode: str | None = None, model_name: str = "",
           model_version: str | None = None, champion: bool = False) -> Path | None:
    """Rank 0, in a sweep task inside a run folder: write the task's result file
    (sweep.SweepResult, what `status` shows as reported and best), with the run's throughput
    (scaling.run_throughput of its per-epoch samples_per_s and epoch_time_s). Returns the
    file's path; None elsewhere (not a sweep task, no run folder, not rank 0)."""
    from itwinai_hpc.ml.sweep import SweepTask

    sweep, rd = SweepTask.from_env(), job.run_dir()
    if job.rank() != 0 or sweep is None or not rd:
        return None
    if not math.isfinite(float(value)):
        raise ValueError(f"{metric} is {value!r}, not a finite number: nothing reported")
    import mlflow

    from itwinai_hpc.ml.scaling import run_throughput
    from itwinai_hpc.ml.sweep import SweepResult

    run_id = _run_id()
    samples_per_s, epoch_time_s = run_throughput(mlflow.MlflowClient(), run_id) if run_id \
        else (None, None)
    result = SweepResult(
        task=sweep.task, step=os.environ.get("ITWINAI_HPC_STEP"), matrix=sweep.matrix,
        metric=metric, value=float(value), higher_is_better=_mode(metric, mode) == "max",
        mlflow_run_id=run_id or "", experiment=_experiment(),
        tracking_uri=mlflow.get_tracking_uri(), model_name=model_name,
        model_version=model_version, champion=champion, samples_per_s=samples_per_s,
        epoch_time_s=epoch_time_s, nnodes=max(1, job.world_size() // int(
            os.environ.get("LOCAL_WORLD_SIZE") or 1)), world_size=job.world_size())
    return result.write(sweep.result_file(rd))


def _run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else _session.run_id


def _experiment() -> str:
    import mlflow

    if _session.experiment:
        return _session.experiment
    run = mlflow.active_run()
    if run is not None:
        return mlflow.get_experiment(run.info.experiment_id).name
    return "itwinai-hpc"
