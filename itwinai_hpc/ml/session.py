"""One training run's MLflow session as the trainer sees it: rank 0 makes the calls, every rank
learns the run id (or rank 0's error) so that no rank waits forever on a failed rank 0."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.config import TrainConfig, flatten
from itwinai_hpc.ml.evaluation import Evaluation
from itwinai_hpc.ml.provenance import Provenance, log_run_scripts, log_shards

# Why a run ended FAILED (e.g. its loss diverged); deleted when the run is resumed.
FAILED_TAG = "itwinai_hpc.failed"
MAX_TAG_CHARS = 5000   # MLflow's tag value limit on older stores
# Which split of the shards played which part (MLflow's dataset input context).
SPLIT_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}


class TrackingSession:
    def __init__(self, ctx: D.Context, config: TrainConfig, opts, manifest,
                 resume_run_id: str | None = None):
        self.ctx, self.config, self.opts, self.manifest = ctx, config, opts, manifest
        self.resume_run_id = resume_run_id
        self.model_name = opts.register_as or config.registry.model_name
        self.alias = config.registry.alias
        self.metric = config.registry.select_by
        self.run_id: str | None = None
        self.origin: Provenance | None = None   # rank 0, once started

    def start(self) -> str:
        """Create the experiment (rank 0, before anything else writes), start or resume the run,
        log params, provenance, data and scripts. Returns the run id on every rank."""
        outcome = None
        if self.ctx.is_main:
            try:
                outcome = ("ok", self._start_main())
            except UserError as e:
                outcome = ("user", e.format())
            except Exception as e:  # reported on every rank below, then re-raised here
                outcome = ("error", f"{type(e).__name__}: {e}")
                if not self.ctx.distributed:
                    raise
        kind, value = D.broadcast_object(self.ctx, outcome)
        if kind == "user":
            raise UserError(value)
        if kind == "error":
            raise RuntimeError(f"MLflow setup failed on rank 0: {value}")
        self.run_id = value
        return value

    def _start_main(self) -> str:
        from itwinai_hpc.ml import tracking

        tracking.configure(self.opts.tracking_uri)
        origin = self.origin = Provenance.from_env()
        tags = {**origin.tags(self.ctx.slurm), **self.shape_tags()}
        tags.setdefault("itwinai_hpc.step", "train")
        run_id = tracking.start_run(
            self.config.tracking.experiment, run_id=self.resume_run_id, run_name=origin.run_name(),
            tags=tags, system_metrics_every_s=self.config.tracking.system_metrics_every_s)
        for key in origin.stale_tags():
            tracking.delete_tag(key)
        if not self.resume_run_id:   # params and inputs are immutable: log them once per run
            slurm = {} if origin.backend == "local" else self.ctx.slurm
            params = flatten(self.config.model_dump())
            params.update({"world_size": self.ctx.world_size, "backend": self.ctx.backend or "none",
                           "device": self.ctx.device.type, "data": os.path.abspath(self.opts.data),
                           "registry.model_name": self.model_name,
                           "slurm_job_id": slurm.get("SLURM_JOB_ID", ""),
                           "slurm_nnodes": slurm.get("SLURM_NNODES", "")})
            tracking.log_params(params)
            log_shards(self.manifest, SPLIT_CONTEXTS)
        if self.opts.run_dir and os.path.isdir(self.opts.run_dir):
            log_run_scripts(self.opts.run_dir)
        return run_id

    def shape_tags(self) -> dict[str, str]:
        """What ran, as the scaling report reads it: world size, nodes, processes (and GPUs)
        per node, taken from torchrun's environment, so a local run says 1 node too."""
        ctx = self.ctx
        tags = {"itwinai_hpc.kind": "train", "itwinai_hpc.world_size": str(ctx.world_size),
                "itwinai_hpc.nnodes": str(ctx.nnodes),
                "itwinai_hpc.procs_per_node": str(ctx.local_world_size)}
        if ctx.device.type == "cuda":
            tags["itwinai_hpc.gpus_per_node"] = str(ctx.local_world_size)
        return tags

    def log_steps(self, entries: list[tuple[int, float, float]]) -> None:
        """(step, loss, lr) entries as train_loss_step and lr."""
        from itwinai_hpc.ml import tracking

        for step, loss, lr in entries:
            tracking.log_metrics({"train_loss_step": loss, "lr": lr}, step)

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        from itwinai_hpc.ml import tracking

        tracking.log_metrics(metrics, epoch)

    def log_checkpoint(self, path) -> None:
        from itwinai_hpc.ml import tracking

        tracking.log_artifact(path, "checkpoints")

    def register(self, registration, *, test: Evaluation, best_metric: float, epochs: int
                 ) -> tuple[str, bool]:
        from itwinai_hpc.ml import figure_process, registry, tracking
        from itwinai_hpc.ml.tasks import metrics_of

        task = self.config.task
        with tempfile.TemporaryDirectory(prefix="itwinai-hpc-figures-") as tmp:
            # The figures are drawn by a process of their own while the model is exported.
            drawing = figure_process.start(test, "test", task, Path(tmp))
            try:
                registered = registry.log_and_register(registration)
                # After log_model, which would otherwise copy them into their history again.
                scores = {f"test_{k}": v for k, v in metrics_of(test).items()}
                tracking.log_metrics({**scores, "test_loss": test.loss,
                                      f"best_{self.metric}": best_metric}, epochs)
                drawn = drawing.files() if drawing is not None else None
            finally:
                if drawing is not None:
                    drawing.stop()
            if task == "regression":
                tracking.log_regression(test, "test", drawn=drawn)
            else:
                tracking.log_evaluation(test, "test", drawn=drawn)
        tracking.set_tags({"registered_model": f"{self.model_name}/{registered[0]}"})
        return registered

    def write_sweep_result(self, value: float, model_version: str | None, champion: bool):
        """Rank 0, after registering: the sweep task's result file (sweep.SweepResult) when
        this run is a task of a sweep and has a run folder; returns its path, else None."""
        sweep = self.origin.sweep if self.origin else None
        if sweep is None or not self.opts.run_dir:
            return None
        import mlflow

        from itwinai_hpc.ml.scaling import run_throughput
        from itwinai_hpc.ml.sweep import SweepResult

        samples_per_s, epoch_time_s = run_throughput(mlflow.MlflowClient(), self.run_id)
        result = SweepResult(
            task=sweep.task, step=self.origin.step, matrix=sweep.matrix, metric=self.metric,
            value=float(value),
            higher_is_better=self.config.registry.mode != "min", mlflow_run_id=self.run_id,
            experiment=self.config.tracking.experiment, tracking_uri=mlflow.get_tracking_uri(),
            model_name=self.model_name, model_version=model_version, champion=champion,
            samples_per_s=samples_per_s, epoch_time_s=epoch_time_s, nnodes=self.ctx.nnodes,
            world_size=self.ctx.world_size)
        return result.write(sweep.result_file(self.opts.run_dir))

    def stopped(self, result, reason: str):
        if self.ctx.is_main:
            from itwinai_hpc.ml import tracking

            tracking.set_tags({"itwinai_hpc.stopped": reason})
            tracking.end_run("KILLED")   # resumed later: the same run goes back to RUNNING
        return result

    def finished(self, weight_hashes: list[str]) -> None:
        from itwinai_hpc.ml import tracking

        tracking.set_tags({f"weights_sha256.rank{r}": h for r, h in enumerate(weight_hashes)})
        tracking.end_run("FINISHED")

    def failed(self, reason: str | None = None) -> None:
        """End the run FAILED (rank 0); `reason`, when known, as its tag itwinai_hpc.failed."""
        if self.ctx.is_main and self.run_id:
            import mlflow

            if mlflow.active_run() is not None:
                if reason:
                    try:
                        mlflow.set_tag(FAILED_TAG, reason[:MAX_TAG_CHARS])
                    except Exception:   # the run must still end FAILED
                        pass
                mlflow.end_run("FAILED")
