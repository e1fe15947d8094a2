"""What the `classifier` trainer (trainer.py) is built from, in the order it is built: the
shards checked against the config, the model (seeded, on its device, in its memory format),
the training batches, DDP, the optimizer and its schedule, the train step. Nothing here reads a
checkpoint or talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml import tasks
from itwinai_hpc.ml.config import TrainConfig, TrainerSection
from itwinai_hpc.ml.training_state import TrainOptions

if TYPE_CHECKING:
    import torch

    from itwinai_hpc.data.shards import Manifest
    from itwinai_hpc.ml.batches import DeviceBatches
    from itwinai_hpc.ml.step import TrainStep


def build_optimizer(model: torch.nn.Module, tcfg: TrainerSection, total_steps: int, *,
                    fused: bool = False
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and its per-batch schedule; `fused` (a GPU): Adam's update in one kernel
    instead of a launch per tensor."""
    import torch

    opt: torch.optim.Optimizer
    if tcfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, fused=fused or None)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=0.9)
    sched: torch.optim.lr_scheduler.LRScheduler
    if tcfg.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.max_lr,
                                                    total_steps=total_steps,
                                                    pct_start=tcfg.pct_start)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return opt, sched


@dataclass
class Parts:
    """A trainer's parts, built and not yet trained (the checkpoint, if any, loads into them)."""

    manifest: Manifest
    model: torch.nn.Module                   # itself, not its DDP wrapper (train_step has that)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_step: TrainStep
    batches: DeviceBatches                   # the training split's, on the device
    steps_per_epoch: int                     # this rank's batches per epoch
    memory_format: torch.memory_format
    data_device: torch.device                # where the readers hold the splits
    custom: dict[str, Callable]              # metrics by import path: name -> callable
    generic: bool                            # shards of write_shards: cast to the model's dtype
    dtype: torch.dtype                       # the model's parameters'


def build_parts(config: TrainConfig, opts: TrainOptions, ctx: D.Context,
                log: Callable[..., None]) -> Parts:
    """Check the shards against the config and build the parts on `ctx.device`, the same
    initial weights on every rank; rank 0 logs how the training split is read and held."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import read_manifest
    from itwinai_hpc.ml.batches import DeviceBatches, data_device
    from itwinai_hpc.ml.step import TrainStep

    tcfg, device = config.trainer, cast("torch.device", ctx.device)
    manifest = read_manifest(opts.data)
    if manifest.dataset != config.dataset:
        raise UserError(f"the shards in {opts.data} hold data set {manifest.dataset!r}, the "
                        f"config says dataset: {config.dataset!r}", field="dataset")
    on_gpu = device.type == "cuda"
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
    ddp = DDP(model, device_ids=[device.index] if on_gpu else None) \
        if ctx.distributed else model
    opt, sched = build_optimizer(model, tcfg, epochs * steps_per_epoch, fused=on_gpu)
    loss_fn = tasks.loss_function(config)
    train_step = TrainStep(ddp, loss_fn, opt, sched, ctx.device, precision=tcfg.precision,
                           compile=tcfg.compile)
    return Parts(manifest, model, opt, sched, train_step, batches, steps_per_epoch,
                 memory_format, held_on, custom, generic, dtype)
