"""Preprocessing: a data set's source -> train/validation/test HDF5 shards + manifest.

Deterministic for a seed, atomic, resumable, and safe as a SLURM job array (task i writes
global shard i; whoever finds every shard complete writes the manifest). It never reads
scheduler state beyond the shard index it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from itwinai_hpc.data.config import SPLITS, PreprocessConfig
from itwinai_hpc.data.registry import DatasetSpec, RawData, get_dataset
from itwinai_hpc.data.shards import (MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, atomic_write,
                                     build_shard, remove_stale_temporaries, sha256_bytes,
                                     sha256_file, shard_name, sidecar_path, write_json)
from itwinai_hpc.errors import UserError


@dataclass(frozen=True)
class PlannedShard:
    split: str
    index: int  # within its split
    count: int  # shards in its split
    start: int  # rows [start, end) of the split's arrays
    end: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.count)


@dataclass
class PreprocessResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete and verified
    missing: list[str] = field(default_factory=list)  # other tasks' shards not there yet
    manifest: Path | None = None  # None until every shard is complete


def count_shards(config: PreprocessConfig) -> int:
    """How many array tasks a job array needs: one per shard, all splits together."""
    return sum(config.shards[split] for split in SPLITS)


def split_data(raw: RawData, config: PreprocessConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/validation from a seeded permutation of the training set; test keeps its order
    (so prediction rows map back to the original test indices)."""
    n = len(raw.train_images)
    n_val = config.validation_count(n)
    if not 1 <= n_val < n:
        raise UserError(f"{config.validation_size!r} must leave at least one sample in both "
                        f"train and validation, and the source has {n} training samples",
                        field="validation_size")
    order = np.random.default_rng(config.seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    splits = {"train": (raw.train_images[train], raw.train_labels[train]),
              "validation": (raw.train_images[val], raw.train_labels[val]),
              "test": (raw.test_images, raw.test_labels)}
    for split, (images, _) in splits.items():
        if len(images) < config.shards[split]:
            raise UserError(f"the {split} split has {len(images)} samples, fewer than its "
                            f"{config.shards[split]} shards; an empty split or shard is not allowed",
                            field="shards")
    return splits


def plan_shards(config: PreprocessConfig, sizes: dict[str, int]) -> list[PlannedShard]:
    plan = []
    for split in SPLITS:
        k, n = config.shards[split], sizes[split]
        plan += [PlannedShard(split, i, k, i * n // k, (i + 1) * n // k) for i in range(k)]
    return plan


def plan_id(config: PreprocessConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Identifies what the shards must contain: config + the exact split contents. A shard or
    manifest from another plan is never trusted."""
    h = hashlib.sha256(json.dumps(config.as_dict(), sort_keys=True).encode())
    for split in SPLITS:
        images, labels = splits[split]
        h.update(split.encode())
        h.update(np.ascontiguousarray(images).data)
        h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def _class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).tolist()


def _read_sidecar(path: Path) -> ShardInfo | None:
    try:
        return ShardInfo(**json.loads(sidecar_path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _invalidate_foreign_manifest(output: Path, pid: str) -> None:
    # A manifest from another plan must not outlive the shards we are about to replace.
    manifest = output / MANIFEST_NAME
    try:
        if json.loads(manifest.read_text()).get("plan_id") != pid:
            manifest.unlink(missing_ok=True)
    except (OSError, ValueError):
        manifest.unlink(missing_ok=True)


def ensure_shard(output: Path, shard: PlannedShard, splits, config: PreprocessConfig,
                 spec: DatasetSpec, pid: str) -> bool:
    """Make `shard` complete and verified; return True if it had to be (re)written."""
    path = output / shard.name
    remove_stale_temporaries(path)
    remove_stale_temporaries(sidecar_path(path))
    info = _read_sidecar(path)
    if info and info.plan_id == pid and path.is_file() and sha256_file(path) == info.sha256:
        return False
    images, labels = splits[shard.split]
    images, labels = images[shard.start:shard.end], labels[shard.start:shard.end]
    data = build_shard(images, labels, split=shard.split, compression=config.compression,
                       chunk_rows=config.chunk_rows)
    digest = sha256_bytes(data)
    rewrite = not (path.is_file() and sha256_file(path) == digest)
    if rewrite:
        _invalidate_foreign_manifest(output, pid)
        atomic_write(path, data)
    # The sidecar goes after the shard: its presence promises a complete shard of this plan.
    write_json(sidecar_path(path), ShardInfo(
        file=shard.name, split=shard.split, index=shard.index, num_samples=len(labels),
        class_counts=_class_counts(labels, spec.num_classes), sha256=digest,
        plan_id=pid).__dict__)
    return rewrite


def _normalization(spec: DatasetSpec, config: PreprocessConfig, train_images) -> dict:
    if config.normalization == "dataset" and spec.mean is not None and spec.std is not None:
        return {"mean": spec.mean, "std": spec.std}
    pixels = train_images.astype(np.float64) / 255.0
    return {"mean": round(float(pixels.mean()), 6), "std": round(float(pixels.std()), 6)}


def finalize(output: Path, plan: list[PlannedShard], config: PreprocessConfig,
             spec: DatasetSpec, pid: str, source: str, splits) -> tuple[Path | None, list[str]]:
    """Write the manifest if every planned shard is complete and verified; else name the rest."""
    infos, missing = {}, []
    for shard in plan:
        path = output / shard.name
        info = _read_sidecar(path)
        if not (info and info.plan_id == pid and path.is_file() and sha256_file(path) == info.sha256):
            missing.append(shard.name)
        infos[shard.name] = info
    if missing:
        return None, missing
    split_infos = {}
    for split in SPLITS:
        shards = [infos[s.name] for s in plan if s.split == split]
        labels = splits[split][1]
        split_infos[split] = SplitInfo(num_samples=len(labels),
                                       class_counts=_class_counts(labels, spec.num_classes),
                                       shards=shards)
    images = splits["train"][0]
    manifest = Manifest(dataset=spec.name, source=source, seed=config.seed, plan_id=pid,
                        image_shape=list(images.shape[1:]), num_classes=spec.num_classes,
                        normalization=_normalization(spec, config, images),
                        compression=config.compression, chunk_rows=config.chunk_rows,
                        splits=split_infos)
    path = output / MANIFEST_NAME
    # Several array tasks may get here at once: each writes identical bytes under its own
    # temporary name and renames, so any winner is a complete, correct manifest.
    write_json(path, manifest.to_json())
    return path, []


def default_shard_index() -> int | None:
    """The array task id when running inside a SLURM job array, else None (write every shard)."""
    value = os.environ.get("SLURM_ARRAY_TASK_ID")
    return int(value) if value and value.isdigit() else None


def preprocess(source: str, output: str | os.PathLike, config: PreprocessConfig | None = None,
               *, shard_index: int | None = None, finalize_only: bool = False,
               progress: bool | None = None) -> PreprocessResult:
    """Read `source` with the configured data set's reader and write shards + manifest to `output`.

    shard_index=None writes every shard then the manifest; shard_index=i writes global shard i
    (train shards first, then validation, then test) and the manifest too if it was the last
    one missing; finalize_only writes only the manifest and raises UserError if a shard is
    missing. A re-run skips shards that verify and repairs the rest.
    """
    config = config or PreprocessConfig()
    spec = get_dataset(config.dataset)
    raw = spec.load(source)
    splits = split_data(raw, config)
    plan = plan_shards(config, {s: len(splits[s][1]) for s in SPLITS})
    pid = plan_id(config, splits)
    output = Path(output)  # created only once the input has proved readable
    output.mkdir(parents=True, exist_ok=True)
    result = PreprocessResult()

    if not finalize_only:
        if shard_index is not None and not 0 <= shard_index < len(plan):
            raise UserError(f"shard index {shard_index} is out of range: this config has "
                            f"{len(plan)} shards (0..{len(plan) - 1}); run the job array as "
                            f"--array=0-{len(plan) - 1}", field="--shard-index")
        todo = plan if shard_index is None else [plan[shard_index]]
        from tqdm import tqdm

        show = sys.stderr.isatty() if progress is None else progress
        for shard in tqdm(todo, desc="shards", unit="shard", disable=not show):
            if ensure_shard(output, shard, splits, config, spec, pid):
                result.written.append(shard.name)
            else:
                result.skipped.append(shard.name)

    result.manifest, result.missing = finalize(output, plan, config, spec, pid, raw.source, splits)
    if result.manifest is None and (finalize_only or shard_index is None):
        raise UserError(f"cannot write the manifest: {len(result.missing)} shard(s) missing or "
                        f"not verified ({', '.join(result.missing[:5])}"
                        f"{', ...' if len(result.missing) > 5 else ''}); rerun their array "
                        "tasks or preprocess without --shard-index", file=str(output))
    return result
