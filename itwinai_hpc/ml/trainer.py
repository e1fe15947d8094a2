"""The `classifier` trainer: DDP over the sharded reader, per-epoch validation, step-granular
checkpoints with exact resume, early stop on request, and a run that fails (TrainingFailed) when
its loss diverges; finish.py hands the best model to the registry.

Rank 0 alone talks to MLflow (through session.py) and writes checkpoints; every rank reads the
checkpoint on start. Knows nothing about the scheduler that launched it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml import tasks
from itwinai_hpc.ml.checkpoint import checkpoint_path, load_checkpoint
from itwinai_hpc.ml.config import TrainConfig
from itwinai_hpc.ml.fit_checks import check_resumable, check_same_model
from itwinai_hpc.ml.progress import progress, progress_done
from itwinai_hpc.ml.session import TrackingSession
from itwinai_hpc.ml.training_state import (  # noqa: F401  (the trainer's API)
    Best,
    Training,
    TrainingFailed,
    TrainOptions,
    TrainResult,
)

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


def diverged(ctx: D.Context, watch, steps_per_epoch: int, patience: int, at_step: int
             ) -> TrainingFailed:
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


@register_trainer("classifier")
def train_classifier(config: TrainConfig, opts: TrainOptions, ctx: D.Context,
                     log=print) -> TrainResult:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml.batches import DeviceBatches, data_device
    from itwinai_hpc.ml.finish import finish
    from itwinai_hpc.ml.step import LossWatch, StepLosses, TrainStep

    tcfg = config.trainer
    manifest = read_manifest(opts.data)
    if manifest.dataset != config.dataset:
        raise UserError(f"the shards in {opts.data} hold data set {manifest.dataset!r}, the "
                        f"config says dataset: {config.dataset!r}", field="dataset")
    on_gpu = ctx.device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True   # fixed input shapes: pick the fastest kernels
    torch.manual_seed(tcfg.seed)   # same initial weights on every rank (DDP also broadcasts)
    model = tasks.build(config, manifest)   # a registered name or an import path
    tasks.check_fits(config, model, manifest)
    custom = tasks.custom_metrics(config)    # import paths resolved before any step
    generic, dtype = tasks.generic(manifest), next(iter(model.parameters())).dtype
    model = model.to(ctx.device)
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
    loss_fn = tasks.loss_function(config)
    train_step = TrainStep(ddp, loss_fn, opt, sched, ctx.device, precision=tcfg.precision,
                           compile=tcfg.compile)

    ck = load_checkpoint(opts.checkpoint_dir)
    where = str(checkpoint_path(opts.checkpoint_dir or "."))
    start_epoch, start_batch, partial, best = 0, 0, (0.0, 0.0), Best()
    if ck is not None:
        check_same_model(ck, config.model, model, manifest, where)
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
                 best, data_device=held_on, train_step=train_step, custom=custom)
    t.run_id = session.start()
    if ctx.is_main and ck is not None:
        log(f"resuming at epoch {start_epoch + 1} batch {start_batch} from {where} "
            f"(MLflow run {t.run_id})", flush=True)
    stop = D.StopRequest(ctx, Path(opts.stop_file) if opts.stop_file else None)
    val_loader = t.loader("validation")

    # Rank 0 logs step losses as their asynchronous copies arrive: no wait for the device.
    losses = StepLosses(session.log_steps) if ctx.is_main else None
    epoch, every = start_epoch, tcfg.stop_check_every_steps
    # Every rank's step losses, read where the ranks agree anyway: a diverged run fails there.
    watch = LossWatch(tcfg.nan_patience, every, ctx.device)

    def fail(at_step: int) -> TrainingFailed:
        if losses is not None:
            losses.flush()   # the non-finite step losses are in MLflow too
        return diverged(ctx, watch, steps_per_epoch, tcfg.nan_patience, at_step)

    try:
        for epoch in range(start_epoch, epochs):
            batches.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
            seen = 0
            t0 = time.perf_counter()
            with closing(batches.batches(first)) as epoch_batches:
                for b, (images, labels) in enumerate(epoch_batches, start=first):
                    if generic:   # stored dtype -> the model's (tasks.cast)
                        images, labels = tasks.cast(images, labels, dtype, config.task)
                    loss = train_step(images, labels)
                    progress(tcfg.watchdog_s)
                    loss_sum += loss * labels.shape[0]
                    seen += labels.shape[0]
                    step = epoch * steps_per_epoch + b + 1
                    watch.add(step, loss)
                    if losses is not None and step % config.tracking.log_every_steps == 0:
                        losses.add(step, loss, sched.get_last_lr()[0])
                    # The one host sync inside an epoch, every `every` steps: all ranks agree
                    # whether to stop, asked to or diverged (over the CPU when the GPUs talk
                    # nccl; on a GPU the losses read are those that have arrived, not waited
                    # for).
                    if (b + 1) % every or b + 1 >= steps_per_epoch:
                        continue
                    requested, nonfinite = D.any_rank(ctx, stop.local(),
                                                      watch.poll() is not None)
                    if nonfinite:
                        raise fail(step)
                    if requested:
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
            # Before this epoch is validated or checkpointed; at the end of training a run of
            # non-finite losses still open fails it, however short.
            if D.any_rank(ctx, watch.poll(wait=True, end=epoch + 1 == epochs) is not None)[0]:
                raise fail((epoch + 1) * steps_per_epoch)
            D.broadcast_buffers(ctx, model)
            loss_total, samples_now = D.all_reduce_sum(ctx, [local_loss, float(seen)])
            loss_total, samples = loss_total + partial[0], samples_now + partial[1]
            partial = (0.0, 0.0)
            val = t.evaluate(val_loader)
            scores = {f"val_{k}": v for k, v in tasks.metrics_of(val).items()}
            metrics = {"train_loss": loss_total / max(samples, 1), **scores,
                       "val_loss": val.loss, "epoch_time_s": time.perf_counter() - t0,
                       "samples_per_s": samples_now / train_time if train_time else 0.0}
            t.consider(epoch + 1, val)   # never an epoch with a NaN metric
            if ctx.is_main:
                session.log_epoch(metrics, epoch + 1)
                shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
                log(f"epoch {epoch + 1}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
                    f"val_loss {val.loss:.4f}  {shown}  "
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
        progress_done()     # evaluation and registration follow at their own pace
        return finish(t)
    except TrainingFailed as e:
        session.failed(str(e))
        raise
    except BaseException:
        session.failed()
        raise
    finally:
        stop.restore()
