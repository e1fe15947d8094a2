"""One training invocation's state, shared by the loop (trainer.py), its checkpoints and the
end of training (finish.py): the options a job passes, the best epoch so far, an epoch's sums
and figures, the result, and the error of a training whose loss diverged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.checkpoint import save_checkpoint
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.evaluation import Evaluation, evaluate
from itwinai_hpc.ml.session import TrackingSession

if TYPE_CHECKING:
    import torch

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import Manifest
    from itwinai_hpc.ml.step import LossWatch, TrainStep
    from itwinai_hpc.ml.tasks import RegressionEvaluation


@dataclass
class TrainOptions:
    data: str
    checkpoint_dir: str | None = None
    run_dir: str | None = None
    register_as: str | None = None
    tracking_uri: str | None = None
    stop_after_epochs: int | None = None   # this invocation only: checkpoint, then exit 0
    stop_file: str | None = None           # appears when the job should checkpoint and stop


@dataclass
class TrainResult:
    status: str                      # "finished", "stopped" or "already-finished"
    epoch: int                       # epochs completed
    run_id: str | None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    model_version: str | None = None
    champion: bool = False
    weights_sha256: str = ""


class TrainingFailed(RuntimeError):
    """Training ran but has no model to register: its loss diverged (inf, NaN), or no epoch had
    a finite validation result. Every rank raises it at the same point (they agreed); the CLI
    prints it as one `error:` line and exits 1, the MLflow run ends FAILED with it as the tag
    `itwinai_hpc.failed`, and nothing is registered."""


def diverged(ctx: D.Context, watch: LossWatch, steps_per_epoch: int, patience: int,
             at_step: int) -> TrainingFailed:
    """The error of a training stopped at `at_step` for non-finite losses: every rank calls
    this (it gathers each rank's LossWatch.report) and gets the same message, about the run
    that began first."""
    reports = D.all_gather_object(ctx, watch.report)
    rank, r = min(((i, r) for i, r in enumerate(reports) if r is not None),
                  key=lambda found: found[1].first_step)

    def at(step: int) -> str:
        epoch, batch = divmod(step - 1, steps_per_epoch)
        return f"step {step} (epoch {epoch + 1}, batch {batch + 1} of {steps_per_epoch})"

    what = (f"training ended {r.count} step(s) into it" if r.ended else
            f"{r.count} steps in a row")
    before = (f"last finite loss {r.last_finite:.4g} at step {r.last_finite_step}"
              if r.last_finite is not None else "no finite loss before it")
    return TrainingFailed(
        f"non-finite training loss ({r.first_loss}) from {at(r.first_step)}"
        + (f" on rank {rank}" if ctx.distributed else "")
        + f": {what} (trainer.nan_patience {patience}); {before}. Stopped at {at(at_step)}; "
        "nothing is registered. Usual cause: a learning rate too high (trainer.lr, "
        "trainer.max_lr)")


@dataclass
class Best:
    """The best epoch so far by the registry's metric, with its weights (CPU copies)."""

    metric: float | None = None
    epoch: int | None = None
    state: dict | None = None

    def beaten_by(self, value: float, mode: str = "max") -> bool:
        """Whether `value` is a better metric than the best so far (`mode` max: higher is
        better; min: lower is): a non-finite one never is (with `>` alone, a first epoch's NaN
        became the best and then nothing beat it)."""
        if not math.isfinite(value):
            return False
        if self.metric is None:
            return True
        return value > self.metric if mode == "max" else value < self.metric


@dataclass
class EpochSums:
    """An epoch's training, summed over ranks (and, resumed mid-epoch, over its invocations)."""

    train_loss: float          # mean per sample
    samples_now: float         # trained in this invocation: the throughput's samples
    train_time: float          # this rank's seconds in the steps
    t0: float                  # when the epoch's steps began (perf_counter)


@dataclass
class EpochMetrics:
    """An epoch's figures once validated."""

    values: dict[str, float]   # what MLflow gets for the epoch
    scores: dict[str, float]   # the validation metrics (val_<name>) the log line shows


@dataclass
class Training:
    """One invocation's training state: what the loop, the checkpoints and finish() share."""

    config: TrainConfig
    opts: TrainOptions
    ctx: D.Context
    manifest: Manifest
    model: torch.nn.Module           # the model itself, not its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    memory_format: torch.memory_format
    session: TrackingSession
    log: Callable[..., None] = print
    best: Best = field(default_factory=Best)
    run_id: str | None = None
    data_device: torch.device | None = None   # where readers hold the splits (a GPU: they fit)
    train_step: TrainStep | None = None       # its GradScaler is training state too
    custom: dict[str, Callable] = field(default_factory=dict)   # metrics by import path

    @property
    def epochs(self) -> int:
        return self.config.trainer.epochs

    def loader(self, split: str, **kw) -> ShardedLoader:
        """An evaluation loader over `split`: every row once across ranks, with indices."""
        from itwinai_hpc.data.dataset import ShardedLoader

        kw.setdefault("device", self.data_device)
        return ShardedLoader(self.manifest, split, self.config.trainer.eval_batch_size,
                             shuffle=False, rank_remainder="keep", rank=self.ctx.rank,
                             world_size=self.ctx.world_size, return_index=True, **kw)

    def evaluate(self, loader: ShardedLoader, keep_examples: int = 0
                 ) -> Evaluation | RegressionEvaluation:
        """An Evaluation (classification) or tasks.RegressionEvaluation of `loader`."""
        if self.config.task == "regression":
            from itwinai_hpc.ml.tasks import evaluate_regression

            return evaluate_regression(self.ctx, self.model, loader, self.memory_format,
                                       self.config, self.custom, keep_examples=keep_examples)
        return evaluate(self.ctx, self.model, loader, self.memory_format,
                        self.manifest.num_classes, normalization=self.manifest.normalization,
                        keep_examples=keep_examples, custom=self.custom)

    def consider(self, epoch: int, val: Evaluation | RegressionEvaluation) -> bool:
        """Make `epoch` the best (with a CPU copy of the weights) when its validation `val`
        beats the best so far by registry.select_by and registry.mode. A NaN or infinite loss
        disqualifies it too: non-finite logits still give an accuracy (argmax picks the NaN)."""
        from itwinai_hpc.ml.tasks import selected

        reg = self.config.registry
        value = selected(val, reg.select_by or "val_accuracy")
        if not (math.isfinite(val.loss) and self.best.beaten_by(value, reg.mode or "max")):
            return False
        self.best = Best(value, epoch, copy.deepcopy(
            {k: v.cpu() for k, v in self.model.state_dict().items()}))
        return True

    def checkpoint(self, epoch: int, batch: int, sums: Sequence[float], **extra: object) -> None:
        if self.ctx.is_main and self.opts.checkpoint_dir:
            best = {"metric": self.best.metric, "epoch": self.best.epoch, "state": self.best.state}
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch": batch,
                     "partial": list(sums), "best": best, "world_size": self.ctx.world_size,
                     "epochs": self.epochs, "mlflow_run_id": self.run_id,
                     "config": self.config.model_dump(),
                     "data": {"num_classes": self.manifest.num_classes,
                              "image_shape": list(self.manifest.image_shape)},
                     "step": self.train_step.state_dict() if self.train_step else {}, **extra}
            self.session.log_checkpoint(save_checkpoint(state, self.opts.checkpoint_dir))
        D.barrier(self.ctx)   # nobody moves on (or exits) before the checkpoint is on disk
