"""The `classifier` trainer: DDP over the sharded reader, per-epoch validation, step-granular
checkpoints with exact resume, and early stop on request; finish.py hands the best model to the
registry.

Rank 0 alone talks to MLflow (through session.py) and writes checkpoints; every rank reads the
checkpoint on start. Knows nothing about the scheduler that launched it.
"""

from __future__ import annotations

import copy
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from itwinai_hpc.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.evaluation import Evaluation, evaluate
from itwinai_hpc.ml.models import build_model
from itwinai_hpc.ml.session import TrackingSession

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


@dataclass
class Best:
    """The best epoch so far by the registry's metric, with its weights (CPU copies)."""

    metric: float | None = None
    epoch: int | None = None
    state: dict | None = None


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

    def evaluate(self, loader, keep_examples: int = 0) -> Evaluation:
        return evaluate(self.ctx, self.model, loader, self.memory_format,
                        self.manifest.num_classes, normalization=self.manifest.normalization,
                        keep_examples=keep_examples)

    def checkpoint(self, epoch: int, batch: int, sums, **extra) -> None:
        if self.ctx.is_main and self.opts.checkpoint_dir:
            best = {"metric": self.best.metric, "epoch": self.best.epoch, "state": self.best.state}
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch": batch,
                     "partial": list(sums), "best": best, "world_size": self.ctx.world_size,
                     "epochs": self.epochs, "mlflow_run_id": self.run_id,
                     "config": self.config.model_dump(),
                     "step": self.train_step.state_dict() if self.train_step else {}, **extra}
            self.session.log_checkpoint(save_checkpoint(state, self.opts.checkpoint_dir))
        D.barrier(self.ctx)   # nobody moves on (or exits) before the checkpoint is on disk


def build_optimizer(model, tcfg, total_steps: int, *, fused: bool = False):
    """The optimizer and its per-batch schedule; `fused` (a GPU): Adam's update in one kernel
    instead of a launch per tensor."""
    import torch

    if tcfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, fused=fused or None)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=0.9)
    if tcfg.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.max_lr,
                                                    total_steps=total_steps,
                                                    pct_start=tcfg.pct_start)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return opt, sched


def check_resumable(ck: dict, world: int, epochs: int, where: str) -> None:
    if ck["world_size"] != world:
        raise UserError(f"this checkpoint was written by {ck['world_size']} processes, this run "
                        f"has {world}; the data split and LR schedule depend on it. Resume with "
                        f"{ck['world_size']} processes, or use a new --checkpoint-dir", file=where)
    if ck["epochs"] != epochs:
        raise UserError(f"this checkpoint is for a {ck['epochs']}-epoch schedule, this run asks "
                        f"for {epochs}; resume with --epochs {ck['epochs']}, or use a new "
                        "--checkpoint-dir", file=where)


@register_trainer("classifier")
def train_classifier(config: TrainConfig, opts: TrainOptions, ctx: D.Context,
                     log=print) -> TrainResult:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml.batches import DeviceBatches, data_device
    from itwinai_hpc.ml.finish import finish
    from itwinai_hpc.ml.step import StepLosses, TrainStep

    tcfg = config.trainer
    manifest = read_manifest(opts.data)
    if manifest.dataset != config.dataset:
        raise UserError(f"the shards in {opts.data} hold data set {manifest.dataset!r}, the "
                        f"config says dataset: {config.dataset!r}", field="dataset")
    on_gpu = ctx.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True   # fixed input shapes: pick the fastest kernels
    torch.manual_seed(tcfg.seed)   # same initial weights on every rank (DDP also broadcasts)
    model = build_model(config.model, manifest.num_classes).to(ctx.device)
    memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    held_on, where_held = data_device(manifest, ("train", "validation"), ctx.device,
                                      tcfg.device_data_share)
    train_loader = ShardedLoader(manifest, "train", tcfg.batch_size, seed=tcfg.seed,
                                 rank=ctx.rank, world_size=ctx.world_size, raw=True,
                                 device=held_on)
    prefetch = tcfg.prefetch_batches if tcfg.prefetch_batches is not None else 2 * on_gpu
    batches = DeviceBatches(train_loader, ctx.device, memory_format, prefetch)
    steps_per_epoch, epochs = len(train_loader), tcfg.epochs
    if ctx.is_main:   # memory or stream mode, and why; node-local staging and its time
        log(f"{train_loader.describe()}; held {where_held}, {tcfg.precision}"
            + (f", compiled ({tcfg.compile})" if tcfg.compile else ""), flush=True)
    ddp = DDP(model, device_ids=[ctx.device.index] if on_gpu else None) \
        if ctx.distributed else model
    opt, sched = build_optimizer(model, tcfg, epochs * steps_per_epoch, fused=on_gpu)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    train_step = TrainStep(ddp, loss_fn, opt, sched, ctx.device, precision=tcfg.precision,
                           compile=tcfg.compile)

    ck = load_checkpoint(opts.checkpoint_dir)
    where = str(checkpoint_path(opts.checkpoint_dir or "."))
    start_epoch, start_batch, partial, best = 0, 0, (0.0, 0.0), Best()
    if ck is not None:
        if ck.get("finished"):   # e.g. a requeue that raced the end of training
            if ctx.is_main:
                log(f"training already finished in {where} (model version "
                    f"{ck.get('model_version')}); nothing to do", flush=True)
            return TrainResult("already-finished", ck["epochs"], ck.get("mlflow_run_id"),
                               model_version=ck.get("model_version"))
        check_resumable(ck, ctx.world_size, epochs, where)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        train_step.load_state_dict(ck.get("step") or {})
        start_epoch, start_batch, best = ck["epoch"], ck["batch"], Best(**ck["best"])
        partial = tuple(ck["partial"]) if ctx.is_main else (0.0, 0.0)

    session = TrackingSession(ctx, config, opts, manifest,
                              resume_run_id=ck.get("mlflow_run_id") if ck else None)
    t = Training(config, opts, ctx, manifest, model, opt, sched, memory_format, session, log,
                 best, data_device=held_on, train_step=train_step)
    t.run_id = session.start()
    if ctx.is_main and ck is not None:
        log(f"resuming at epoch {start_epoch + 1} batch {start_batch} from {where} "
            f"(MLflow run {t.run_id})", flush=True)
    stop = D.StopRequest(ctx, Path(opts.stop_file) if opts.stop_file else None)
    val_loader = t.loader("validation")

    # Rank 0 logs step losses as their asynchronous copies arrive: no wait for the device.
    losses = StepLosses(session.log_steps) if ctx.is_main else None
    epoch, every = start_epoch, tcfg.stop_check_every_steps
    try:
        for epoch in range(start_epoch, epochs):
            batches.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
            seen = 0
            t0 = time.perf_counter()
            with closing(batches.batches(first)) as epoch_batches:
                for b, (images, labels) in enumerate(epoch_batches, start=first):
                    loss = train_step(images, labels)
                    loss_sum += loss * labels.shape[0]
                    seen += labels.shape[0]
                    step = epoch * steps_per_epoch + b + 1
                    if losses is not None and step % config.tracking.log_every_steps == 0:
                        losses.add(step, loss, sched.get_last_lr()[0])
                    # The one host sync inside an epoch, every `every` steps: all ranks agree
                    # whether to stop (over the CPU when the GPUs talk nccl).
                    if (b + 1) % every == 0 and b + 1 < steps_per_epoch and stop.agreed():
                        if losses is not None:
                            losses.flush()
                        D.broadcast_buffers(ctx, model)
                        sums = D.all_reduce_sum(ctx, [loss_sum.item(), float(seen)])
                        t.checkpoint(epoch, b + 1, [sums[0] + partial[0], sums[1] + partial[1]])
                        if ctx.is_main:
                            log(f"stopped in epoch {epoch + 1} after batch {b + 1}/"
                                f"{steps_per_epoch} ({stop.reason()}); rerun with the same "
                                "checkpoint dir to resume", flush=True)
                        stop.consume()
                        return session.stopped(TrainResult("stopped", epoch, t.run_id),
                                               stop.reason())
            local_loss = loss_sum.item()   # waits for the epoch's last step to finish
            train_time = time.perf_counter() - t0
            if losses is not None:
                losses.flush()
            D.broadcast_buffers(ctx, model)
            loss_total, samples_now = D.all_reduce_sum(ctx, [local_loss, float(seen)])
            loss_total, samples = loss_total + partial[0], samples_now + partial[1]
            partial = (0.0, 0.0)
            val = t.evaluate(val_loader)
            metrics = {"train_loss": loss_total / max(samples, 1), "val_accuracy": val.accuracy,
                       "val_loss": val.loss, "epoch_time_s": time.perf_counter() - t0,
                       "samples_per_s": samples_now / train_time if train_time else 0.0}
            if t.best.metric is None or val.accuracy > t.best.metric:
                t.best = Best(val.accuracy, epoch + 1, copy.deepcopy(
                    {k: v.cpu() for k, v in model.state_dict().items()}))
            if ctx.is_main:
                session.log_epoch(metrics, epoch + 1)
                log(f"epoch {epoch + 1}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
                    f"val_loss {val.loss:.4f}  val_accuracy {val.accuracy:.4f}  "
                    f"{metrics['epoch_time_s']:.1f}s  {metrics['samples_per_s']:.0f} samples/s",
                    flush=True)
            done = epoch + 1
            requested = stop.agreed()   # a collective: every rank calls it every epoch
            enough = (opts.stop_after_epochs is not None
                      and done - start_epoch >= opts.stop_after_epochs)
            asked = (requested or enough) and done < epochs
            if asked or done == epochs or done % tcfg.checkpoint_every_epochs == 0:
                t.checkpoint(done, 0, (0.0, 0.0))
            if asked:
                reason = stop.reason() if requested else \
                    f"--stop-after-epochs {opts.stop_after_epochs}"
                if ctx.is_main:
                    log(f"stopped after epoch {done} ({reason}); rerun with the same checkpoint "
                        "dir to resume", flush=True)
                stop.consume()
                return session.stopped(TrainResult("stopped", done, t.run_id), reason)
        return finish(t)
    except BaseException:
        session.failed()
        raise
    finally:
        stop.restore()
