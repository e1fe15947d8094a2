"""The `classifier` trainer: DDP over the sharded reader, per-epoch validation, step-granular
checkpoints with exact resume, early stop on request, and a run that fails (TrainingFailed) when
its loss diverges; finish.py hands the best model to the registry.

`Trainer.fit` is the loop; its parts are built by train_setup.py. Rank 0 alone talks to MLflow
(through session.py) and writes checkpoints; every rank reads the checkpoint on start, and every
rank makes the same collectives in the same order (any_rank, all_reduce, barrier), or DDP hangs.
Knows nothing about the scheduler that launched it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

from itwinai_hpc.core import startup
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml import tasks
from itwinai_hpc.ml.checkpoint import checkpoint_path, load_checkpoint
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.finish import finish
from itwinai_hpc.ml.fit_checks import check_resumable, check_same_model
from itwinai_hpc.ml.progress import progress, progress_done
from itwinai_hpc.ml.session import TrackingSession
from itwinai_hpc.ml.train_setup import Parts, build_optimizer, build_parts  # noqa: F401
from itwinai_hpc.ml.training_state import (  # noqa: F401  (the trainer's API)
    Best,
    EpochMetrics,
    EpochSums,
    Training,
    TrainingFailed,
    TrainOptions,
    TrainResult,
    diverged,
)

if TYPE_CHECKING:
    import torch

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.ml.step import LossWatch, StepLosses

TRAINERS: dict[str, Callable] = {}


def register_trainer(name: str):
    def wrap(fn):
        TRAINERS[name] = fn
        return fn
    return wrap


def get_trainer(name: str):
    if name not in TRAINERS:
        raise UserError(f"unknown trainer {name!r}; registered trainers: "
                        f"{', '.join(sorted(TRAINERS))}", field="trainer.name")
    return TRAINERS[name]


class Trainer:
    """One invocation of the `classifier` trainer: `Trainer.build(...).fit()`."""

    # set by start(), once the MLflow run is on
    t: Training                # what the checkpoints and finish() share
    stop: D.StopRequest
    val_loader: ShardedLoader
    losses: StepLosses | None  # rank 0 logs step losses as their asynchronous copies arrive
    watch: LossWatch           # every rank's step losses: a diverged run fails

    def __init__(self, config: TrainConfig, opts: TrainOptions, ctx: D.Context, parts: Parts,
                 log: Callable[..., None] = print):
        self.config, self.opts, self.ctx, self.parts, self.log = config, opts, ctx, parts, log
        self.epochs, self.device = config.trainer.epochs, cast("torch.device", ctx.device)
        self.where = str(checkpoint_path(opts.checkpoint_dir or "."))
        self.ck: dict | None = None            # the checkpoint resumed
        self.start_epoch, self.start_batch, self.resumed_best = 0, 0, Best()
        self.partial = (0.0, 0.0)   # rank 0: loss and samples of the resumed epoch's first part

    @classmethod
    def build(cls, config: TrainConfig, opts: TrainOptions, ctx: D.Context,
              log: Callable[..., None] = print) -> Trainer:
        return cls(config, opts, ctx, build_parts(config, opts, ctx, log), log)

    def fit(self) -> TrainResult:
        """Train to the end (finish: test, register), or until the ranks agree to stop (a
        checkpoint to resume from); TrainingFailed when the loss diverged. Every rank runs it."""
        if (done := self.resume()) is not None:
            return done            # the checkpoint is a finished training's
        self.start()
        startup.release_collector()   # torch, dynamo and MLflow are loaded (core/startup.py)
        with self.session_guard():
            for epoch in range(self.start_epoch, self.epochs):
                trained = self.train_epoch(epoch)
                if isinstance(trained, TrainResult):
                    return trained     # the ranks agreed to stop mid-epoch: checkpointed
                metrics = self.validate(epoch, trained)
                if (stopped := self.end_epoch(epoch, metrics)) is not None:
                    return stopped
            progress_done()     # evaluation and registration follow at their own pace
            return finish(self.t)

    def resume(self) -> TrainResult | None:
        """Load the checkpoint, if there is one, into the parts and say where to start; a
        finished training's result when it is one's (e.g. a requeue that raced the end)."""
        p, ctx, where = self.parts, self.ctx, self.where
        ck = self.ck = load_checkpoint(self.opts.checkpoint_dir)
        if ck is None:
            return None
        check_same_model(ck, self.config.model, p.model, p.manifest, where)
        if ck.get("finished"):
            if ctx.is_main:
                self.log(f"training already finished in {where} (model version "
                         f"{ck.get('model_version')}); nothing to do", flush=True)
            return TrainResult("already-finished", ck["epochs"], ck.get("mlflow_run_id"),
                               model_version=ck.get("model_version"))
        check_resumable(ck, ctx.world_size, self.epochs, where)
        p.model.load_state_dict(ck["model"])
        p.optimizer.load_state_dict(ck["optimizer"])
        p.scheduler.load_state_dict(ck["scheduler"])
        p.train_step.load_state_dict(ck.get("step") or {})
        self.start_epoch, self.start_batch = ck["epoch"], ck["batch"]
        self.resumed_best = Best(**ck["best"])
        self.partial = tuple(ck["partial"]) if ctx.is_main else (0.0, 0.0)
        return None

    def start(self) -> None:
        """Start the MLflow run (or resume the checkpoint's) and what the loop watches."""
        from itwinai_hpc.ml.step import LossWatch, StepLosses

        p, ctx, ck, tcfg = self.parts, self.ctx, self.ck, self.config.trainer
        session = TrackingSession(ctx, self.config, self.opts, p.manifest,
                                  resume_run_id=ck.get("mlflow_run_id") if ck else None)
        t = self.t = Training(self.config, self.opts, ctx, p.manifest, p.model, p.optimizer,
                              p.scheduler, p.memory_format, session, self.log, self.resumed_best,
                              data_device=p.data_device, train_step=p.train_step,
                              custom=p.custom)
        t.run_id = session.start()
        if ctx.is_main and ck is not None:
            self.log(f"resuming at epoch {self.start_epoch + 1} batch {self.start_batch} from "
                     f"{self.where} (MLflow run {t.run_id})", flush=True)
        self.stop = D.StopRequest(ctx, Path(self.opts.stop_file) if self.opts.stop_file else None)
        self.val_loader = t.loader("validation")
        self.losses = StepLosses(session.log_steps) if ctx.is_main else None
        self.watch = LossWatch(tcfg.nan_patience, tcfg.stop_check_every_steps, ctx.device)

    @contextmanager
    def session_guard(self) -> Iterator[None]:
        """Any error ends the MLflow run FAILED (a TrainingFailed's message as its tag); the
        signal handlers are restored however the loop ends."""
        try:
            yield
        except TrainingFailed as e:
            self.t.session.failed(str(e))
            raise
        except BaseException:
            self.t.session.failed()
            raise
        finally:
            self.stop.restore()

    def train_epoch(self, epoch: int) -> EpochSums | TrainResult:
        """The epoch's steps (a resumed epoch's from its checkpointed batch). Every
        `stop_check_every_steps` steps, the one host sync inside an epoch: all ranks agree
        whether to stop, asked to (a stopped result) or diverged (TrainingFailed); over the CPU
        when the GPUs talk nccl; on a GPU the losses read are those that have arrived."""
        import torch

        p, ctx, tcfg = self.parts, self.ctx, self.config.trainer
        p.batches.set_epoch(epoch)
        first = self.start_batch if epoch == self.start_epoch else 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, every = 0, tcfg.stop_check_every_steps
        t0 = time.perf_counter()
        with closing(p.batches.batches(first)) as epoch_batches:  # type: ignore[type-var]
            for b, (images, labels) in enumerate(epoch_batches, start=first):
                if p.generic:   # stored dtype -> the model's (tasks.cast)
                    images, labels = tasks.cast(images, labels, p.dtype, self.config.task)
                loss = p.train_step(images, labels)
                progress(tcfg.watchdog_s)
                loss_sum += loss * labels.shape[0]
                seen += labels.shape[0]
                step = epoch * p.steps_per_epoch + b + 1
                self.watch.add(step, loss)
                if self.losses is not None and step % self.config.tracking.log_every_steps == 0:
                    self.losses.add(step, loss, p.scheduler.get_last_lr()[0])  # type: ignore[arg-type]
                if (b + 1) % every or b + 1 >= p.steps_per_epoch:
                    continue
                requested, nonfinite = D.any_rank(ctx, self.stop.local(),
                                                  self.watch.poll() is not None)
                if nonfinite:
                    raise self.failure(step)
                if requested:
                    return self.stop_in_epoch(epoch, b + 1, loss_sum, seen)
        return self.sum_epoch(epoch, loss_sum, seen, t0)

    def stop_in_epoch(self, epoch: int, batch: int, loss_sum: torch.Tensor, seen: int
                      ) -> TrainResult:
        """Checkpoint after `batch` of `epoch` with the epoch's sums so far, and stop."""
        ctx, t, stop = self.ctx, self.t, self.stop
        if self.losses is not None:
            self.losses.flush()
        D.broadcast_buffers(ctx, self.parts.model)
        sums = D.all_reduce_sum(ctx, [loss_sum.item(), float(seen)])
        t.checkpoint(epoch, batch, [sums[0] + self.partial[0], sums[1] + self.partial[1]])
        reason = stop.reason()   # before consume() removes the stop file it may name
        if ctx.is_main:
            self.log(f"stopped in epoch {epoch + 1} after batch {batch}/"
                     f"{self.parts.steps_per_epoch} ({reason}); rerun with the same "
                     "checkpoint dir to resume", flush=True)
        stop.consume()
        return t.session.stopped(TrainResult("stopped", epoch, t.run_id), reason)

    def sum_epoch(self, epoch: int, loss_sum: torch.Tensor, seen: int, t0: float) -> EpochSums:
        """The epoch's training loss over ranks, once no rank's losses diverged (before the
        epoch is validated or checkpointed; at the end of training a run of non-finite losses
        still open fails it, however short)."""
        ctx = self.ctx
        local_loss = loss_sum.item()   # waits for the epoch's last step to finish
        train_time = time.perf_counter() - t0
        if self.losses is not None:
            self.losses.flush()
        if D.any_rank(ctx, self.watch.poll(wait=True, end=epoch + 1 == self.epochs)
                      is not None)[0]:
            raise self.failure((epoch + 1) * self.parts.steps_per_epoch)
        D.broadcast_buffers(ctx, self.parts.model)
        loss_total, samples_now = D.all_reduce_sum(ctx, [local_loss, float(seen)])
        loss_total, samples = loss_total + self.partial[0], samples_now + self.partial[1]
        self.partial = (0.0, 0.0)
        return EpochSums(loss_total / max(samples, 1), samples_now, train_time, t0)

    def failure(self, at_step: int) -> TrainingFailed:
        if self.losses is not None:
            self.losses.flush()   # the non-finite step losses are in MLflow too
        return diverged(self.ctx, self.watch, self.parts.steps_per_epoch,
                        self.config.trainer.nan_patience, at_step)

    def validate(self, epoch: int, trained: EpochSums) -> EpochMetrics:
        """Evaluate the validation split (every rank), and keep the epoch if it is the best."""
        val = self.t.evaluate(self.val_loader)
        scores = {f"val_{k}": v for k, v in tasks.metrics_of(val).items()}
        values = {"train_loss": trained.train_loss, **scores, "val_loss": val.loss,
                  "epoch_time_s": time.perf_counter() - trained.t0,
                  "samples_per_s": trained.samples_now / trained.train_time
                  if trained.train_time else 0.0}
        self.t.consider(epoch + 1, val)   # never an epoch with a NaN metric
        return EpochMetrics(values, scores)

    def end_epoch(self, epoch: int, metrics: EpochMetrics) -> TrainResult | None:
        """Log the epoch, agree on a stop (a collective every rank makes every epoch),
        checkpoint when due or stopping; a stopped result when stopping."""
        ctx, t, stop, opts, m = self.ctx, self.t, self.stop, self.opts, metrics.values
        if ctx.is_main:
            t.session.log_epoch(m, epoch + 1)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.scores.items())
            self.log(f"epoch {epoch + 1}/{self.epochs}  train_loss {m['train_loss']:.4f}  "
                     f"val_loss {m['val_loss']:.4f}  {shown}  {m['epoch_time_s']:.1f}s  "
                     f"{m['samples_per_s']:.0f} samples/s", flush=True)
        done = epoch + 1
        requested = stop.agreed()
        enough = (opts.stop_after_epochs is not None
                  and done - self.start_epoch >= opts.stop_after_epochs)
        asked = (requested or enough) and done < self.epochs
        if asked or done == self.epochs or done % self.config.trainer.checkpoint_every_epochs == 0:
            t.checkpoint(done, 0, (0.0, 0.0))
        if not asked:
            return None
        reason = stop.reason() if requested else f"--stop-after-epochs {opts.stop_after_epochs}"
        if ctx.is_main:
            self.log(f"stopped after epoch {done} ({reason}); rerun with the same checkpoint "
                     "dir to resume", flush=True)
        stop.consume()
        return t.session.stopped(TrainResult("stopped", done, t.run_id), reason)


@register_trainer("classifier")
def train_classifier(config: TrainConfig, opts: TrainOptions, ctx: D.Context,
                     log: Callable[..., None] = print) -> TrainResult:
    """The trainer `trainer.name: classifier` (ml/cli.py calls it on every rank)."""
    return Trainer.build(config, opts, ctx, log).fit()
