"""`write_shards`: a use case's own arrays -> the same HDF5 shards, sidecars and manifest that
`preprocess` writes, readable by ShardedLoader, read_rows and stage-shards.

Streaming: rows are copied into one shard-sized buffer per array, and each full buffer is
written as a shard, so peak memory is about one shard whatever the data set's size (a mapped
source's pages are released as they are copied, see gather.py). Atomic: shards, sidecars and
the manifest are written into a temporary folder inside the output; only when every split is
complete are they renamed into place, the manifest last. Any error (bad input found in a late
chunk, a full disk) removes the temporary folder: nothing half-written, and an earlier data set
in the folder stays as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.chunks import SPLITS, Spec, blocks, check_classes, check_options, merge_spec
from itwinai_hpc.data.loader_settings import describe_bytes, parse_bytes
from itwinai_hpc.data.shards import (
    FORMAT,
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    _write_failure,
    read_manifest,
    shard_name,
    sidecar_path,
    write_json,
)

DEFAULT_SHARD_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20  # HDF5 chunk: this many bytes of whole samples of the inputs


def _shard_rows(shard_size, row_bytes: int) -> int:
    if shard_size is None:
        return max(1, DEFAULT_SHARD_BYTES // row_bytes)
    if isinstance(shard_size, int) and not isinstance(shard_size, bool):
        if shard_size < 1:
            raise UserError(f"shard_size must be >= 1 sample, got {shard_size}",
                            field="shard_size")
        return shard_size
    return max(1, parse_bytes(shard_size, field="shard_size") // row_bytes)


def _write_file(path: Path, buffers: dict[str, np.ndarray], n: int, split: str,
                chunk_rows: int, compression: str) -> None:
    """One shard: a dataset per array (sorted by name), rows [0, n) of each buffer; the same
    input gives the same bytes (no timestamps, whole chunks in row order)."""
    import h5py

    options = {} if compression == "none" else {"compression": compression}
    try:
        with h5py.File(path, "w", rdcc_nbytes=0) as f:  # no chunk cache: see shards.write_shard
            for name in sorted(buffers):
                buf = buffers[name]
                ds = f.create_dataset(name, shape=(n, *buf.shape[1:]), dtype=buf.dtype,
                                      chunks=(min(chunk_rows, n), *buf.shape[1:]),
                                      track_times=False, **options)
                ds[:] = buf[:n]
            f.attrs["split"] = split
    except (OSError, RuntimeError) as e:
        raise _write_failure(e, path) from None


class _SplitWriter:
    """Fills shard-sized buffers from blocks and writes each full one into `tmp`."""

    def __init__(self, tmp: Path, split: str, spec: Spec, shard_rows: int, chunk_rows: int,
                 compression: str, num_classes: int):
        self.tmp, self.split, self.shard_rows = tmp, split, shard_rows
        self.chunk_rows, self.compression, self.num_classes = chunk_rows, compression, num_classes
        self.buffers = {k: np.empty((shard_rows, *shape), dt) for k, (dt, shape) in spec.items()}
        self.filled, self.total = 0, 0
        self.shards: list[ShardInfo] = []

    def add(self, block: dict[str, np.ndarray]) -> None:
        n = len(next(iter(block.values())))
        at = 0
        while at < n:
            take = min(n - at, self.shard_rows - self.filled)
            for name, rows in block.items():
                self.buffers[name][self.filled:self.filled + take] = rows[at:at + take]
            self.filled, at = self.filled + take, at + take
            if self.filled == self.shard_rows:
                self.flush()

    def _class_counts(self, n: int) -> list[int]:
        if not self.num_classes:
            return []
        labels = self.buffers["targets"][:n]
        if n and not 0 <= labels.min() <= labels.max() < self.num_classes:
            bad = labels.max() if labels.max() >= self.num_classes else labels.min()
            raise UserError(f"split {self.split!r}: array 'targets' holds {int(bad)}, expected "
                            f"class numbers 0..{self.num_classes - 1} (num_classes="
                            f"{self.num_classes})", field="num_classes")
        return np.bincount(labels, minlength=self.num_classes).tolist()

    def flush(self) -> None:
        n, self.filled = self.filled, 0
        if not n:
            return
        counts = self._class_counts(n)
        path = self.tmp / _part_name(self)
        _write_file(path, self.buffers, n, self.split, self.chunk_rows, self.compression)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        from itwinai_hpc.data.shards import sha256_file

        self.shards.append(ShardInfo(file=path.name, split=self.split, index=len(self.shards),
                                     num_samples=n, class_counts=counts,
                                     sha256=sha256_file(path), num_bytes=path.stat().st_size))
        self.total += n


def _plan_id(dataset: str, arrays: dict, infos: dict[str, list[ShardInfo]]) -> str:
    content = {"dataset": dataset, "arrays": arrays,
               "shards": {s: [i.sha256 for i in v] for s, v in infos.items()}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _old_files(output: Path) -> set[str]:
    """Shard files the manifest in `output` names now (removed once the new set is in)."""
    try:
        old = read_manifest(output)
    except UserError:
        return set()
    return {s.file for split in old.splits.values() for s in split.shards}


def _publish(output: Path, tmp: Path, manifest: Manifest) -> None:
    """Sidecars and the manifest written into `tmp` first (a full disk fails there, leaving
    the earlier data set as it was); then the old manifest removed (none ever names a mixed
    set), shards and sidecars renamed into place, the manifest renamed in last; stale shards
    of the previous manifest removed after."""
    old = _old_files(output)
    moves = []
    for split in manifest.splits.values():
        for info in split.shards:
            sidecar = sidecar_path(output / info.file).name
            write_json(tmp / sidecar, info.__dict__)
            moves += [(tmp / _part_name(info), output / info.file),
                      (tmp / sidecar, output / sidecar)]
    write_json(tmp / MANIFEST_NAME, manifest.to_json())
    atomic.fsync_folder(tmp)
    (output / MANIFEST_NAME).unlink(missing_ok=True)
    for source, target in moves:
        os.replace(source, target)
    atomic.fsync_folder(output)
    os.replace(tmp / MANIFEST_NAME, output / MANIFEST_NAME)
    atomic.fsync_folder(output)
    new = {s.file for split in manifest.splits.values() for s in split.shards}
    for name in old - new:
        (output / name).unlink(missing_ok=True)
        sidecar_path(output / name).unlink(missing_ok=True)


def write_shards(output_dir: str | os.PathLike, splits: Mapping, *, dataset: str,
                 shard_size: int | str | None = None, num_classes: int = 0,
                 compression: str = "none", source: str = "write_shards") -> Manifest:
    """Write `splits` ({"train"|"validation"|"test": {"inputs": X, "targets": Y, ...} or an
    iterator of such chunk mappings}) as HDF5 shards + sidecars + manifest.json in
    `output_dir`, and return the manifest. Any numeric dtype and sample shape, first axis =
    samples, stored as given (never cast); `targets` optional. `shard_size`: samples per shard
    (int) or bytes ("64MB"; default 256 MiB). `num_classes` > 0 says the targets are class
    numbers 0..num_classes-1 (class counts recorded); 0: anything else (regression). Bad input
    is a UserError naming the split, array, dtype or shape and the expected one; nothing is
    left half-written."""
    check_options(dataset, num_classes, compression)
    if not isinstance(splits, Mapping) or not splits:
        raise UserError(f"splits must map {', '.join(SPLITS)} to arrays, got {splits!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown split(s) {unknown}; valid splits: {', '.join(SPLITS)}")
    spec: Spec | None = None
    streams = {}
    for split in (s for s in SPLITS if s in splits):  # every mapping checked before writing
        got, streams[split] = blocks(split, splits[split], spec)
        spec = merge_spec(spec, split, got)
    assert spec is not None
    check_classes(spec, num_classes)
    output = Path(output_dir)
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_folder(output)
    except OSError as e:
        raise UserError(f"cannot create the output folder ({e.strerror or e})",
                        file=str(output)) from None
    inputs_bytes = spec["inputs"][0].itemsize * math.prod(spec["inputs"][1])
    chunk_rows = max(1, min(4096, CHUNK_BYTES // max(1, inputs_bytes)))
    infos: dict[str, list[ShardInfo]] = {}
    held: dict[str, list[str]] = {}
    try:
        for split, stream in streams.items():
            row_bytes = sum(dt.itemsize * math.prod(shape) for dt, shape in spec.values())
            writer = None
            for block in stream:
                if writer is None:
                    names = {k: spec[k] for k in block}
                    rows = _shard_rows(shard_size, sum(dt.itemsize * math.prod(shape)
                                                       for dt, shape in names.values()) or 1)
                    _check_space(output, rows * row_bytes, compression)
                    writer = _SplitWriter(tmp, split, names, rows, chunk_rows, compression,
                                          num_classes)
                writer.add(block)
            assert writer is not None
            writer.flush()
            if not writer.total:
                raise UserError(f"split {split!r} is empty (0 samples); leave it out or give "
                                "it samples")
            infos[split], held[split] = writer.shards, sorted(writer.buffers)
        manifest = _manifest(dataset, source, spec, infos, held, num_classes, chunk_rows,
                             compression)
        _publish(output, tmp, manifest)
    except OSError as e:
        raise UserError(f"cannot write shards ({e.strerror or e}); free space (or quota) "
                        "there or choose another output folder; nothing was written",
                        file=str(output)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not (output / MANIFEST_NAME).exists():
            shutil.rmtree(output, ignore_errors=True)
    return read_manifest(output)


def _temporary_folder(output: Path) -> Path:
    """`.write-shards.HOST.PID.tmp` in `output`, after removing those of killed processes on
    this host (never a live one's, nor another host's)."""
    host = socket.gethostname()
    for old in output.glob(f".write-shards.{host}.*.tmp"):
        pid = old.name.split(".")[-2]
        try:
            if pid.isdigit() and int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(old, ignore_errors=True)
    tmp = output / f".write-shards.{host}.{os.getpid()}.tmp"
    tmp.mkdir()
    return tmp


def _check_space(output: Path, needed: int, compression: str) -> None:
    free = shutil.disk_usage(output).free
    if compression == "none" and needed > free:
        raise UserError(f"not enough space for a shard: it needs {describe_bytes(needed)}, "
                        f"only {describe_bytes(free)} free there", file=str(output))


def _manifest(dataset: str, source: str, spec: Spec, infos: dict[str, list[ShardInfo]],
              held: dict[str, list[str]], num_classes: int, chunk_rows: int,
              compression: str) -> Manifest:
    arrays = {k: {"dtype": dt.name, "shape": list(shape)} for k, (dt, shape) in
              sorted(spec.items())}
    pid = _plan_id(dataset, arrays, infos)
    split_infos = {}
    for split, shards in infos.items():
        for info in shards:
            info.file = shard_name(split, info.index, len(shards))
            info.plan_id = pid
        counts = np.sum([s.class_counts for s in shards], axis=0).tolist() if num_classes \
            else []
        split_infos[split] = SplitInfo(num_samples=sum(s.num_samples for s in shards),
                                       class_counts=counts, shards=shards, arrays=held[split])
    return Manifest(dataset=dataset, source=source, seed=0, plan_id=pid,
                    image_shape=list(spec["inputs"][1]), num_classes=num_classes,
                    normalization={}, compression=compression, chunk_rows=chunk_rows,
                    splits=split_infos, format=FORMAT, arrays=arrays)


def _part_name(shard) -> str:
    """The name a shard has in the temporary folder (its final name needs the shard count)."""
    if isinstance(shard, ShardInfo):
        return f"{shard.split}-{shard.index:05d}.h5"
    return f"{shard.split}-{len(shard.shards):05d}.h5"
