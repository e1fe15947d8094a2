"""Preprocessing: a data set's source -> train/validation/test HDF5 shards + manifest.

Streaming: a shard is written block by block from the (possibly memory-mapped) source, so peak
memory is one block plus a few bytes a sample of row numbers and labels, whatever the data set's
size. Deterministic for a seed, atomic, resumable, and safe as a SLURM job array (task i writes
global shard i; whoever finds every shard complete writes the manifest). It never reads
scheduler state beyond the shard index it is given.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.config import SPLITS, PreprocessConfig
from itwinai_hpc.data.gather import take
from itwinai_hpc.data.loader_settings import describe_bytes
from itwinai_hpc.data.registry import DatasetSpec, check_raw, get_dataset
from itwinai_hpc.data.shard_plan import (
    PlannedShard,
    SplitRows,
    count_shards,
    plan_id,
    plan_shards,
    split_data,
)
from itwinai_hpc.data.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    sha256_file,
    sidecar_path,
    write_json,
    write_shard,
)

__all__ = ["PreprocessResult", "count_shards", "default_shard_index", "preprocess"]

# Source rows taken per step while writing a shard: the working set of preprocessing.
BLOCK_BYTES = 16 << 20


@dataclass
class PreprocessResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete and verified
    missing: list[str] = field(default_factory=list)  # other tasks' shards not there yet
    manifest: Path | None = None  # None until every shard is complete


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


def _image_blocks(rows: SplitRows, shard: PlannedShard, chunk_rows: int,
                  sums: list[int]) -> Iterator[np.ndarray]:
    """The shard's images in row order, a whole number of HDF5 chunks at a time (so the file's
    bytes do not depend on BLOCK_BYTES), adding pixel and squared-pixel sums to `sums`."""
    row_bytes = max(1, math.prod(rows.images.shape[1:]))
    step = max(1, BLOCK_BYTES // (row_bytes * chunk_rows)) * chunk_rows
    for a in range(shard.start, shard.end, step):
        block = take(rows.images, rows.source_rows(a, min(a + step, shard.end)))
        assert block.dtype == np.uint8  # check_raw refused anything else: never cast
        for part in np.array_split(block.reshape(-1), max(1, block.size >> 20)):
            sums[0] += int(part.sum(dtype=np.uint64))
            sums[1] += int(np.square(part, dtype=np.uint16).sum(dtype=np.uint64))
        yield block


def _cannot_write(output: Path, name: str, e: OSError) -> UserError:
    return UserError(f"cannot write {name} ({e.strerror or e}); free space (or quota) there or "
                     "choose another --output, then rerun: complete shards are kept, nothing "
                     "half-written was left", file=str(output))


def _check_space(output: Path, name: str, rows: int, image_shape: tuple[int, ...],
                 compression: str) -> None:
    """Refuse before writing a shard that cannot fit: its pixels and labels alone, uncompressed,
    need more than the free space. (A compressed shard's size is unknown in advance; a write that
    runs out of space still fails cleanly, see write_shard.)"""
    if compression != "none":
        return
    needed = rows * (math.prod(image_shape) + np.dtype(np.int64).itemsize)
    free = shutil.disk_usage(output).free
    if needed > free:
        raise UserError(f"not enough space for {name}: it needs at least "
                        f"{describe_bytes(needed)}, only {describe_bytes(free)} free there; "
                        "free space or choose another --output", file=str(output))


def ensure_shard(output: Path, shard: PlannedShard, rows: SplitRows, config: PreprocessConfig,
                 spec: DatasetSpec, pid: str) -> bool:
    """Make `shard` complete and verified; return True if its bytes had to be (re)written."""
    path = output / shard.name
    atomic.remove_stale_temporaries(path)
    atomic.remove_stale_temporaries(sidecar_path(path))
    info = _read_sidecar(path)
    existing = sha256_file(path) if path.is_file() else None
    if info and info.plan_id == pid and existing == info.sha256:
        return False
    labels = rows.labels[shard.start:shard.end].astype(np.int64)
    _check_space(output, shard.name, len(labels), rows.images.shape[1:], config.compression)
    sums = [0, 0]
    try:  # a failed write (full disk, quota) removes the temporary: nothing half-written
        with atomic.atomic_path(path) as tmp:
            write_shard(tmp, _image_blocks(rows, shard, config.chunk_rows, sums), labels,
                        image_shape=rows.images.shape[1:], split=shard.split,
                        compression=config.compression, chunk_rows=config.chunk_rows)
            digest, size = sha256_file(tmp), tmp.stat().st_size
            rewrite = digest != existing
            if rewrite:
                _invalidate_foreign_manifest(output, pid)
    except OSError as e:
        raise _cannot_write(output, shard.name, e) from None
    # The sidecar goes after the shard: its presence promises a complete shard of this plan.
    try:
        write_json(sidecar_path(path), ShardInfo(
            file=shard.name, split=shard.split, index=shard.index, num_samples=len(labels),
            class_counts=_class_counts(labels, spec.num_classes), sha256=digest,
            num_bytes=size, plan_id=pid, pixel_sum=sums[0], pixel_sq_sum=sums[1]).__dict__)
    except OSError as e:
        path.unlink(missing_ok=True)  # no promise, no shard: a rerun writes both
        raise _cannot_write(output, sidecar_path(path).name, e) from None
    return rewrite


def _normalization(spec: DatasetSpec, config: PreprocessConfig, train: list[ShardInfo],
                   image_shape: tuple[int, ...]) -> dict:
    if config.normalization == "dataset" and spec.mean is not None and spec.std is not None:
        return {"mean": spec.mean, "std": spec.std}
    # Exact integer sums from the sidecars: the same numbers whichever task finalises.
    count = sum(s.num_samples for s in train) * math.prod(image_shape)
    mean = sum(s.pixel_sum for s in train) / count
    var = max(0.0, sum(s.pixel_sq_sum for s in train) / count - mean * mean)
    return {"mean": round(mean / 255.0, 6), "std": round(math.sqrt(var) / 255.0, 6)}


def _complete(path: Path, info: ShardInfo | None, pid: str, verify: bool) -> bool:
    if not (info and info.plan_id == pid and path.is_file()):
        return False
    if verify:
        return sha256_file(path) == info.sha256
    # Array tasks each finalise: rehashing every shard in each would read the data set once per
    # task. The sidecar (written after its shard) and the size vouch; readers check the sha256.
    return info.num_bytes == path.stat().st_size


def finalize(output: Path, plan: list[PlannedShard], config: PreprocessConfig,
             spec: DatasetSpec, pid: str, source: str, splits: dict[str, SplitRows], *,
             verify: bool = False) -> tuple[Path | None, list[str]]:
    """Write the manifest if every planned shard is complete (verify: and its sha256 matches);
    else name the rest."""
    infos, missing = {}, []
    for shard in plan:
        path = output / shard.name
        infos[shard.name] = _read_sidecar(path)
        if not _complete(path, infos[shard.name], pid, verify):
            missing.append(shard.name)
    if missing:
        return None, missing
    split_infos = {}
    for split in SPLITS:
        labels = splits[split].labels
        split_infos[split] = SplitInfo(num_samples=len(labels),
                                       class_counts=_class_counts(labels, spec.num_classes),
                                       shards=[infos[s.name] for s in plan if s.split == split])
    image_shape = tuple(splits["train"].images.shape[1:])
    manifest = Manifest(dataset=spec.name, source=source, seed=config.seed, plan_id=pid,
                        image_shape=list(image_shape), num_classes=spec.num_classes,
                        normalization=_normalization(spec, config, split_infos["train"].shards,
                                                     image_shape),
                        compression=config.compression, chunk_rows=config.chunk_rows,
                        splits=split_infos)
    path = output / MANIFEST_NAME
    # Several array tasks may get here at once: each writes identical bytes under its own
    # temporary name and renames, so any winner is a complete, correct manifest.
    try:
        write_json(path, manifest.to_json())
    except OSError as e:
        raise _cannot_write(output, MANIFEST_NAME, e) from None
    return path, []


def default_shard_index() -> int | None:
    """The array task id when running inside a SLURM job array, else None (write every shard)."""
    value = os.environ.get("SLURM_ARRAY_TASK_ID")
    return int(value) if value and value.isdigit() else None


def _from_files(source: str, output: str | os.PathLike, config: PreprocessConfig,
                shard_index: int | None, finalize_only: bool) -> PreprocessResult:
    """A NetCDF, Zarr or NumPy source (from_files.py): one task writes every shard."""
    from itwinai_hpc.data.from_files import preprocess_files

    if finalize_only or shard_index not in (None, 0):
        raise UserError("a NetCDF, Zarr or NumPy source is preprocessed by one task, which "
                        "writes every shard and the manifest: run it without --finalize, "
                        "--shard-index or a job array", field="--shard-index")
    manifest = preprocess_files(source, output, config)
    assert manifest.path is not None
    return PreprocessResult(written=[s.file for split in manifest.splits.values()
                                     for s in split.shards], manifest=manifest.path)


def preprocess(source: str, output: str | os.PathLike, config: PreprocessConfig | None = None,
               *, shard_index: int | None = None, finalize_only: bool = False,
               progress: bool | None = None) -> PreprocessResult:
    """Read `source` with the configured data set's reader and write shards + manifest to `output`.

    shard_index=None writes every shard then the manifest; shard_index=i writes global shard i
    (train shards first, then validation, then test) and the manifest too if it was the last
    one missing; finalize_only checks every shard's sha256 and writes only the manifest, raising
    UserError if a shard is missing. A re-run skips shards that verify and repairs the rest.
    """
    config = config or PreprocessConfig()
    if config.arrays is not None:
        return _from_files(source, output, config, shard_index, finalize_only)
    spec = get_dataset(config.dataset)
    raw = spec.load(source)
    check_raw(raw, spec)
    splits = split_data(raw, config)
    plan = plan_shards(config, {s: len(splits[s]) for s in SPLITS})
    pid = plan_id(config, raw, splits)
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
            if ensure_shard(output, shard, splits[shard.split], config, spec, pid):
                result.written.append(shard.name)
            else:
                result.skipped.append(shard.name)

    result.manifest, result.missing = finalize(output, plan, config, spec, pid, raw.source,
                                               splits, verify=finalize_only)
    if result.manifest is None and (finalize_only or shard_index is None):
        raise UserError(f"cannot write the manifest: {len(result.missing)} shard(s) missing or "
                        f"not verified ({', '.join(result.missing[:5])}"
                        f"{', ...' if len(result.missing) > 5 else ''}); rerun their array "
                        "tasks or preprocess without --shard-index", file=str(output))
    return result
