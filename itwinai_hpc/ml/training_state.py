"""One training invocation's state, shared by the loop (trainer.py), its checkpoints and the
end of training (finish.py): the options a job passes, the best epoch so far, the result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.checkpoint import save_checkpoint
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.evaluation import evaluate
from itwinai_hpc.ml.session import TrackingSession


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
class Training:
    """One invocation's training state: what the loop, the checkpoints and finish() share."""

    config: TrainConfig
    opts: TrainOptions
    ctx: D.Context
    manifest: Any
    model: Any
    optimizer: Any
    scheduler: Any
    memory_format: Any
    session: TrackingSession
    log: Callable = print
    best: Best = field(default_factory=Best)
    run_id: str | None = None
    data_device: Any = None          # where the readers hold the splits (a GPU when they fit)
    train_step: Any = None           # step.TrainStep: its GradScaler is training state too
    custom: dict = field(default_factory=dict)   # metrics by import path: name -> callable

    @property
    def epochs(self) -> int:
        return self.config.trainer.epochs

    def loader(self, split: str, **kw):
        """An evaluation loader over `split`: every row once across ranks, with indices."""
        from itwinai_hpc.data.dataset import ShardedLoader

        kw.setdefault("device", self.data_device)
        return ShardedLoader(self.manifest, split, self.config.trainer.eval_batch_size,
                             shuffle=False, rank_remainder="keep", rank=self.ctx.rank,
                             world_size=self.ctx.world_size, return_index=True, **kw)

    def evaluate(self, loader, keep_examples: int = 0):
        """An Evaluation (classification) or tasks.RegressionEvaluation of `loader`."""
        if self.config.task == "regression":
            from itwinai_hpc.ml.tasks import evaluate_regression

            return evaluate_regression(self.ctx, self.model, loader, self.memory_format,
                                       self.config, self.custom, keep_examples=keep_examples)
        return evaluate(self.ctx, self.model, loader, self.memory_format,
                        self.manifest.num_classes, normalization=self.manifest.normalization,
                        keep_examples=keep_examples, custom=self.custom)

    def consider(self, epoch: int, val) -> bool:
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

    def checkpoint(self, epoch: int, batch: int, sums, **extra) -> None:
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
