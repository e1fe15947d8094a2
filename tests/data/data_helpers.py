"""Helpers for the data tests: small, real-format MNIST-like IDX folders and CLI arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from itwinai_hpc.data.idx import write_idx
from itwinai_hpc.data.mnist import IDX_FILES

N_TRAIN, N_TEST = 1201, 301  # odd on purpose: ranks and shards do not divide them evenly


def make_idx_folder(folder: Path, *, n_train: int = N_TRAIN, n_test: int = N_TEST,
                    gz: bool = True, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test).astype(np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in IDX_FILES.items():
        write_idx(folder / (base + (".gz" if gz else "")), arrays[key])
    return arrays


SMALL = {"validation_size": 200, "shards": {"train": 3, "validation": 1, "test": 2},
         "chunk_rows": 64, "seed": 7}


def cli_args(**kw) -> argparse.Namespace:
    defaults = {"source": None, "output": None, "config": None, "shard_index": None,
                "finalize": False, "count_shards": False}
    return argparse.Namespace(**{**defaults, **kw})
