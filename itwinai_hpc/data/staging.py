"""Node-local staging: copy a step's shards from the shared file system (Lustre, GPFS) to
node-local storage ($TMPDIR, a local disk, /dev/shm) once per node, checking every shard's
sha256 as it is copied, so that the ranks then read locally instead of all hammering the shared
file system with small reads. It knows no scheduler: "once per node" is a file lock in the
target folder, which every rank of the node may call at the same time.

Used by `itwinai-hpc stage-shards` and, when $ITWINAI_HPC_STAGE_DIR is set, by ShardedLoader.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc.core import atomic, job_env, locks
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.loader_settings import describe_bytes
from itwinai_hpc.data.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    open_shard,
    read_manifest,
)

STAGE_ENV = job_env.STAGE_DIR
_COPY_BLOCK = 8 << 20


@dataclass
class StageResult:
    source: Path  # the folder staged from
    folder: Path  # the staged copy, holding manifest.json
    seconds: float  # this call, including any wait for another rank of the node
    copied_files: int
    copied_bytes: int

    def describe(self) -> str:
        if self.copied_files == 0:
            return (f"shards already staged in {self.folder} on this node (ready after "
                    f"{self.seconds:.2f} s)")
        return (f"staged {self.copied_files} shard(s), {describe_bytes(self.copied_bytes)}, "
                f"from {self.source} to {self.folder} in {self.seconds:.2f} s")


def staged_folder(manifest: Manifest, to: Path) -> Path:
    """Where `manifest`'s shards go under `to`: named by the plan, so two data sets (or two
    preprocessing runs) never share a folder and a rerun finds its own copy."""
    return to / f"itwinai-hpc-shards-{manifest.plan_id[:16]}"


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among the processes of this node; a file system without flock (some
    parallel file systems) gets no lock: each process then copies, atomically, in parallel. A
    symlink planted at the lock's name is refused, not followed (it would truncate nothing, but
    create or lock a file elsewhere)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError("is a symbolic link; remove it (stage-shards locks a file of its "
                            "own there)", file=str(path)) from None
        raise
    with open(fd, "a") as f:
        try:
            locks.acquire(f)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            locks.release(f)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _staged(folder: Path, shard: ShardInfo) -> bool:
    """A copy is there (copies are renamed into place only once verified) of the right size
    (num_bytes is 0 in manifests that predate it)."""
    size = _size(folder / shard.file)
    return size is not None and (not shard.num_bytes or size == shard.num_bytes)


def _source_size(manifest: Manifest, shard: ShardInfo) -> int:
    """The size of a shard to copy, after open_shard's checks (a regular file, not a symlink,
    of the size the manifest states); a UserError naming the manifest and the shard if not."""
    source, size = open_shard(manifest.shard_path(shard), shard, manifest.path)
    source.close()
    return size


def _copy_verified(manifest: Manifest, shard: ShardInfo, dst: Path) -> int:
    """Copy `shard` to `dst` atomically, hashing the bytes on the way and reading no further
    than the size checked at open; a mismatch with the manifest leaves nothing at `dst`."""
    src = manifest.shard_path(shard)
    atomic.remove_stale_temporaries(dst)
    h, copied = hashlib.sha256(), 0
    source, size = open_shard(src, shard, manifest.path)  # checked again: it may have changed
    with source, atomic.atomic_path(dst) as tmp, open(tmp, "wb") as out:
        while copied < size and (block := source.read(min(_COPY_BLOCK, size - copied))):
            h.update(block)
            out.write(block)
            copied += len(block)
        if copied != size or source.read(1) or h.hexdigest() != shard.sha256:
            raise UserError("shard was modified or corrupted: its sha256 does not match the "
                            "manifest; rerun preprocess to repair it (nothing was staged)",
                            file=str(src))
    return copied


def _complete(folder: Path, manifest_bytes: bytes, shards: list[ShardInfo]) -> bool:
    # The manifest is copied last, so its presence (same bytes) promises every shard; sizes
    # catch a copy someone removed. Readers check each shard's sha256 as they read it.
    try:
        if (folder / MANIFEST_NAME).read_bytes() != manifest_bytes:
            return False
    except FileNotFoundError:
        return False
    return all(_staged(folder, s) for s in shards)


def stage_shards(data: str | os.PathLike, to: str | os.PathLike) -> StageResult:
    """Copy the shards + manifest in `data` into a folder under `to` (see staged_folder), once
    per node: concurrent callers wait for the first, later ones find the copy and return."""
    t0 = time.perf_counter()
    manifest = read_manifest(data)
    source = manifest.path.parent
    manifest_bytes = manifest.path.read_bytes()
    shards = [s for split in manifest.splits.values() for s in split.shards]
    folder = staged_folder(manifest, Path(to))
    if _complete(folder, manifest_bytes, shards):  # the manifest is copied last: nothing to do
        return StageResult(source, folder, time.perf_counter() - t0, 0, 0)
    # Every source must be a regular file of the stated size before anything is written under
    # `to` (read_manifest already refused shard names that would leave either folder).
    sizes = {s.file: _source_size(manifest, s) for s in shards}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the staging folder ({e.strerror}); choose a writable "
                        "node-local path", file=str(folder)) from None
    copied_files = copied_bytes = 0
    with _node_lock(folder.with_name(folder.name + ".lock")):
        if not _complete(folder, manifest_bytes, shards):
            todo = [s for s in shards if not _staged(folder, s)]
            needed = sum(sizes[s.file] for s in todo)
            free = shutil.disk_usage(folder).free
            if needed > free:
                raise UserError(f"staging needs {describe_bytes(needed)}, only "
                                f"{describe_bytes(free)} free there; choose another node-local "
                                "path (or fewer data)", file=str(folder))
            for shard in todo:
                copied_bytes += _copy_verified(manifest, shard, folder / shard.file)
                copied_files += 1
            atomic.write_bytes(folder / MANIFEST_NAME, manifest_bytes)
    return StageResult(source, folder, time.perf_counter() - t0, copied_files, copied_bytes)


_STAGED: dict[tuple[str, str], StageResult] = {}


def stage_from_environment(manifest: Manifest) -> tuple[Manifest, StageResult | None]:
    """With $ITWINAI_HPC_STAGE_DIR set: `manifest` staged there (once per process and node) and
    its staged copy; else `manifest` unchanged and None."""
    to = os.environ.get(STAGE_ENV)
    if not to or manifest.path is None:
        return manifest, None
    if manifest.path.resolve().is_relative_to(Path(to).resolve()):
        return manifest, None  # already reading a staged copy
    key = (str(manifest.path.resolve()), to)
    if key not in _STAGED:
        _STAGED[key] = stage_shards(manifest.path.parent, to)
    result = _STAGED[key]
    return read_manifest(result.folder), result
