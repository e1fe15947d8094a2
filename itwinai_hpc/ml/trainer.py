"""The `classifier` trainer: DDP over the sharded reader, per-epoch validation, step-granular
checkpoints with exact resume, early stop on request, and the best model handed to the registry.

Rank 0 alone talks to MLflow (through itwinai_hpc.tracking) and writes checkpoints; every rank
reads the checkpoint on start. Knows nothing about the scheduler that launched it.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from itwinai_hpc.errors import UserError
from itwinai_hpc.train import distributed as D
from itwinai_hpc.train.checkpoint import load_checkpoint, save_checkpoint
from itwinai_hpc.train.models import build_model
from itwinai_hpc.train.session import TrackingSession

TRAINERS: dict[str, object] = {}


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


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def evaluate(ctx, model, loader, memory_format) -> float:
    """Accuracy over a split: each rank counts its own rows ("keep" remainder), then all_reduce."""
    import torch

    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
            correct += (model(images).argmax(1) == labels.to(ctx.device)).sum()
    total_correct, total = D.all_reduce_sum(ctx, [float(correct.item()), float(loader.num_samples)])
    model.train()
    return total_correct / total


def build_optimizer(model, tcfg: dict, total_steps: int):
    import torch

    if tcfg["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=tcfg["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=0.9)
    if tcfg["lr_schedule"] == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["max_lr"],
                                                    total_steps=total_steps)
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
def train_classifier(config: dict, opts: TrainOptions, ctx: D.Context, log=print) -> TrainResult:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from itwinai_hpc.data.dataset import ShardedLoader
    from itwinai_hpc.data.shards import read_manifest

    tcfg = config["trainer"]
    manifest = read_manifest(opts.data)
    if manifest.dataset != config["dataset"]:
        raise UserError(f"the shards in {opts.data} hold data set {manifest.dataset!r}, the "
                        f"config says dataset: {config['dataset']!r}", field="dataset")
    torch.manual_seed(tcfg["seed"])   # same initial weights on every rank (DDP also broadcasts)
    model = build_model(config["model"], manifest.num_classes).to(ctx.device)
    memory_format = torch.channels_last if tcfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    train_loader = ShardedLoader(manifest, "train", tcfg["batch_size"], seed=tcfg["seed"],
                                 rank=ctx.rank, world_size=ctx.world_size)
    val_loader = ShardedLoader(manifest, "validation", tcfg["eval_batch_size"], shuffle=False,
                               rank_remainder="keep", rank=ctx.rank, world_size=ctx.world_size)
    steps_per_epoch, epochs = len(train_loader), tcfg["epochs"]
    ddp = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else model
    opt, sched = build_optimizer(model, tcfg, epochs * steps_per_epoch)
    loss_fn = torch.nn.CrossEntropyLoss()

    ck = load_checkpoint(opts.checkpoint_dir)
    ckpt_where = str(Path(opts.checkpoint_dir or ".") / "checkpoint.pt")
    start_epoch, start_batch, partial = 0, 0, (0.0, 0.0)
    best = {"metric": None, "epoch": None, "state": None}
    if ck is not None:
        if ck.get("finished"):   # e.g. a requeue that raced the end of training
            if ctx.is_main:
                log(f"training already finished in {ckpt_where} (model version "
                    f"{ck.get('model_version')}); nothing to do", flush=True)
            return TrainResult("already-finished", ck["epochs"], ck.get("mlflow_run_id"),
                               model_version=ck.get("model_version"))
        check_resumable(ck, ctx.world_size, epochs, ckpt_where)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, start_batch, best = ck["epoch"], ck["batch"], ck["best"]
        partial = tuple(ck["partial"]) if ctx.is_main else (0.0, 0.0)

    session = TrackingSession(ctx, config, opts, resume_run_id=ck.get("mlflow_run_id") if ck
                              else None)
    run_id = session.start()
    if ctx.is_main and ck is not None:
        log(f"resuming at epoch {start_epoch + 1} batch {start_batch} from {ckpt_where} "
            f"(MLflow run {run_id})", flush=True)
    stop = D.StopRequest(ctx, Path(opts.stop_file) if opts.stop_file else None)

    def checkpoint(epoch: int, batch: int, sums, **extra) -> None:
        if ctx.is_main and opts.checkpoint_dir:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "epoch": epoch, "batch": batch,
                     "partial": list(sums), "best": best, "world_size": ctx.world_size,
                     "epochs": epochs, "mlflow_run_id": run_id, "config": config, **extra}
            session.log_checkpoint(save_checkpoint(state, opts.checkpoint_dir))
        D.barrier(ctx)   # nobody moves on (or exits) before the checkpoint is on disk

    epoch, every = start_epoch, tcfg["stop_check_every_steps"]
    try:
        for epoch in range(start_epoch, epochs):
            train_loader.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
            seen = 0
            t0 = time.perf_counter()
            for b, (images, labels) in enumerate(islice(train_loader, first, None), start=first):
                images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(ctx.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(ddp(images), labels)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach() * labels.shape[0]
                seen += labels.shape[0]
                step = epoch * steps_per_epoch + b + 1
                if ctx.is_main and step % config["tracking"]["log_every_steps"] == 0:
                    session.log_step(loss.item(), sched.get_last_lr()[0], step)
                if (b + 1) % every == 0 and b + 1 < steps_per_epoch and stop.agreed():
                    D.broadcast_buffers(ctx, model)
                    sums = D.all_reduce_sum(ctx, [loss_sum.item(), float(seen)])
                    sums = [sums[0] + partial[0], sums[1] + partial[1]]
                    checkpoint(epoch, b + 1, sums)
                    if ctx.is_main:
                        log(f"stopped in epoch {epoch + 1} after batch {b + 1}/{steps_per_epoch}"
                            f" ({stop.reason()}); rerun with the same checkpoint dir to resume",
                            flush=True)
                    stop.consume()
                    return session.stopped(TrainResult("stopped", epoch, run_id), stop.reason())
            train_time = time.perf_counter() - t0
            D.broadcast_buffers(ctx, model)
            loss_total, samples_now = D.all_reduce_sum(ctx, [loss_sum.item(), float(seen)])
            loss_total, samples = loss_total + partial[0], samples_now + partial[1]
            partial = (0.0, 0.0)
            val_acc = evaluate(ctx, model, val_loader, memory_format)
            metrics = {"train_loss": loss_total / max(samples, 1), "val_accuracy": val_acc,
                       "epoch_time_s": time.perf_counter() - t0,
                       "samples_per_s": samples_now / train_time if train_time else 0.0}
            if best["metric"] is None or val_acc > best["metric"]:
                best = {"metric": val_acc, "epoch": epoch + 1,
                        "state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()})}
            if ctx.is_main:
                session.log_epoch(metrics, epoch + 1)
                log(f"epoch {epoch + 1}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
                    f"val_accuracy {val_acc:.4f}  {metrics['epoch_time_s']:.1f}s  "
                    f"{metrics['samples_per_s']:.0f} samples/s", flush=True)
            done = epoch + 1
            requested = stop.agreed()   # a collective: every rank calls it every epoch
            enough = (opts.stop_after_epochs is not None
                      and done - start_epoch >= opts.stop_after_epochs)
            asked = (requested or enough) and done < epochs
            if asked or done == epochs or done % tcfg["checkpoint_every_epochs"] == 0:
                checkpoint(done, 0, (0.0, 0.0))
            if asked:
                reason = stop.reason() if requested else \
                    f"--stop-after-epochs {opts.stop_after_epochs}"
                if ctx.is_main:
                    log(f"stopped after epoch {done} ({reason}); rerun with the same checkpoint "
                        "dir to resume", flush=True)
                stop.consume()
                return session.stopped(TrainResult("stopped", done, run_id), reason)
        return finish(config, opts, ctx, model, best, manifest, session, run_id, memory_format,
                      checkpoint, epochs, log)
    except BaseException:
        session.failed()
        raise
    finally:
        stop.restore()


def finish(config, opts, ctx, model, best, manifest, session, run_id, memory_format,
           checkpoint, epochs, log) -> TrainResult:
    """Best weights -> test accuracy -> registry; the final checkpoint marks the run finished so
    that a requeued job does not register the model twice."""
    from itwinai_hpc.data.dataset import ShardedLoader

    # DDP must leave every rank with the same weights: gather each rank's hash to check.
    hashes = D.all_gather_object(ctx, weights_sha256(model))
    final_sha = hashes[ctx.rank]
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    test_loader = ShardedLoader(manifest, "test", config["trainer"]["eval_batch_size"],
                                shuffle=False, rank_remainder="keep", rank=ctx.rank,
                                world_size=ctx.world_size)
    test_acc = evaluate(ctx, model, test_loader, memory_format)
    result = TrainResult("finished", epochs, run_id, val_accuracy=best["metric"],
                         test_accuracy=test_acc, weights_sha256=final_sha)
    if ctx.is_main:
        export = build_model(config["model"], manifest.num_classes)
        export.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        export.eval()
        example = next(iter(ShardedLoader(manifest, "validation", 2, shuffle=False, rank=0,
                                          world_size=1, verify=False)))[0]
        result.model_version, result.champion = session.register(
            export, example.numpy(), best=best, test_accuracy=test_acc, epochs=epochs)
        log(f"best val_accuracy {best['metric']:.4f} (epoch {best['epoch']}), test_accuracy "
            f"{test_acc:.4f}; registered {session.model_name} version {result.model_version}"
            + (f" as @{session.alias}" if result.champion else
               f" (the current @{session.alias} is better or equal)"), flush=True)
    result.model_version = D.broadcast_object(ctx, result.model_version)
    checkpoint(epochs, 0, (0.0, 0.0), finished=True, model_version=result.model_version)
    if ctx.is_main:
        for rank, sha in enumerate(hashes):
            log(f"[rank {rank}] final weights sha256 {sha}", flush=True)
        session.finished(hashes)
    return result
