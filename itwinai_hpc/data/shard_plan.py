"""Which source rows go into which shard: the seeded train/validation split, the shard
boundaries, and the plan id that says whether a shard on disk belongs to this plan. Pure: it
writes nothing and never copies the source's images (they may be a memory-mapped file larger
than memory); only row numbers and labels (a few bytes a sample) are held.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.config import SPLITS, PreprocessConfig
from itwinai_hpc.data.gather import take
from itwinai_hpc.data.registry import RawData
from itwinai_hpc.data.shards import shard_name

# Bump when the bytes a plan produces change for the same config and source (sidecars of an
# older plan are then never trusted). 2: streamed shards, pixel sums in the sidecars.
PLAN_VERSION = "2"
_HASH_BLOCK = 16 << 20


@dataclass(frozen=True)
class SplitRows:
    """One split as rows of a source array: the images stay where they are until a shard takes
    them."""

    images: np.ndarray  # the source's image array (may be memory-mapped), N×H×W
    rows: np.ndarray | None  # source rows in split order; None: all rows, in source order
    labels: np.ndarray  # class numbers in split order (uint8 up to 256 classes)

    def __len__(self) -> int:
        return len(self.labels)

    def source_rows(self, start: int, end: int) -> np.ndarray | slice:
        """Source rows of split rows [start, end), for gather.take."""
        return slice(start, end) if self.rows is None else self.rows[start:end]


@dataclass(frozen=True)
class PlannedShard:
    split: str
    index: int  # within its split
    count: int  # shards in its split
    start: int  # rows [start, end) of the split
    end: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.count)


def count_shards(config: PreprocessConfig) -> int:
    """How many array tasks a job array needs: one per shard, all splits together (a NetCDF,
    Zarr or NumPy source: one task writes every shard)."""
    if config.arrays is not None:
        return 1
    return sum(config.shards[split] for split in SPLITS)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Labels in the smallest unsigned type that holds them (uint8 for up to 256 classes)."""
    labels = np.asarray(labels)
    if len(labels) and labels.min() < 0:
        raise UserError(f"negative label {int(labels.min())}; labels are class numbers 0..K-1",
                        field="dataset")
    top = int(labels.max()) if len(labels) else 0
    return labels.astype(np.min_scalar_type(top), copy=False)


def split_data(raw: RawData, config: PreprocessConfig) -> dict[str, SplitRows]:
    """Train/validation from a seeded permutation of the training set; test keeps its order
    (so prediction rows map back to the original test indices)."""
    n = len(raw.train_labels)
    n_val = config.validation_count(n)
    if not 1 <= n_val < n:
        raise UserError(f"{config.validation_size!r} must leave at least one sample in both "
                        f"train and validation, and the source has {n} training samples",
                        field="validation_size")
    order = np.random.default_rng(config.seed).permutation(n)
    if n < 2**31:  # row numbers and labels are the only per-sample memory: keep them small
        order = order.astype(np.int32)
    val, train = order[:n_val], order[n_val:]
    train_labels, test_labels = _compact(raw.train_labels), _compact(raw.test_labels)
    splits = {"train": SplitRows(raw.train_images, train, train_labels[train]),
              "validation": SplitRows(raw.train_images, val, train_labels[val]),
              "test": SplitRows(raw.test_images, None, test_labels)}
    for split, rows in splits.items():
        if len(rows) < config.shards[split]:
            raise UserError(f"the {split} split has {len(rows)} samples, fewer than its "
                            f"{config.shards[split]} shards; an empty split or shard is not "
                            "allowed",
                            field="shards")
    return splits


def plan_shards(config: PreprocessConfig, sizes: dict[str, int]) -> list[PlannedShard]:
    plan = []
    for split in SPLITS:
        k, n = config.shards[split], sizes[split]
        plan += [PlannedShard(split, i, k, i * n // k, (i + 1) * n // k) for i in range(k)]
    return plan


def _hash_rows(h, array: np.ndarray) -> None:
    # Block by block: a mapped source is read once, and its pages released as we go.
    step = max(1, _HASH_BLOCK // max(1, array[:1].nbytes))
    for a in range(0, len(array), step):
        h.update(take(array, slice(a, a + step)).data)


def plan_id(config: PreprocessConfig, raw: RawData, splits: dict[str, SplitRows]) -> str:
    """Identifies what the shards must contain: the config, the source, and the exact row
    order of every split. A shard or manifest from another plan is never trusted.

    The source counts by its content, or by `raw.fingerprint` where the source gives one (a
    memory-mapped file: name, size, mtime), so that every array task of a large data set does
    not read the whole source just to name the plan."""
    h = hashlib.sha256(f"plan/{PLAN_VERSION}".encode())
    h.update(json.dumps(config.as_dict(), sort_keys=True).encode())
    if raw.fingerprint is not None:
        h.update(raw.fingerprint.encode())
    else:
        for array in (raw.train_images, raw.test_images):
            _hash_rows(h, array)
    for split in SPLITS:
        rows = splits[split]
        h.update(split.encode())
        h.update(np.ascontiguousarray(rows.labels, dtype=np.int64).data)
        if rows.rows is not None:
            h.update(np.ascontiguousarray(rows.rows, dtype=np.int64).data)
    return h.hexdigest()
