"""The on-disk format: HDF5 shards (`images` uint8 N×H×W, `labels` int64), their sidecars and
the manifest; shards written block by block and byte-for-byte reproducibly, and read back only
after their bytes matched the manifest's sha256. It knows no data set and no scheduler;
preprocess.py decides what goes into which shard, the reader which rows it needs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.manifest_checks import (
    check_description,
    check_image_shape,
    check_labels,
    check_shard_entry,
)
from itwinai_hpc.data.verified import read_arrays

MANIFEST_NAME = "manifest.json"
FORMAT = "itwinai-hpc-shards/1"
COMPRESSIONS = ("none", "gzip", "lzf")
_READ_BLOCK = 1 << 22


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.h5"


def sidecar_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def sha256_file(path: Path | BinaryIO, limit: int | None = None) -> str:
    """sha256 of a file (of its first `limit` bytes at most), read in 4 MiB blocks (memory
    stays constant whatever its size)."""
    if not hasattr(path, "readinto"):
        with open(path, "rb") as f:
            return sha256_file(f, limit)
    h, buffer = hashlib.sha256(), bytearray(_READ_BLOCK)
    view = memoryview(buffer)
    left = limit
    while left is None or left > 0:
        n = path.readinto(view if left is None or left >= len(view) else view[:left])
        if not n:
            break
        h.update(view[:n])
        if left is not None:
            left -= n
    return h.hexdigest()


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def open_shard(path: Path, shard: ShardInfo, manifest: Path | None = None) -> tuple[BinaryIO, int]:
    """Open a shard for reading and return it with its size: only a regular file (a symlink, a
    device or a FIFO is refused without reading or waiting for a writer: O_NOFOLLOW|O_NONBLOCK,
    then fstat), of the size the manifest states (num_bytes; 0 in old manifests). Read no
    further than that size: a file can still grow after this check. Errors name `manifest` and
    the shard (or, without a manifest, the shard's path)."""
    if manifest is not None:
        where, what = str(manifest), f"shard {shard.file!r} listed in it"
    else:
        where, what = str(path), "shard"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError("shard listed in the manifest is missing; rerun preprocess to repair "
                        "it", file=str(path)) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{what} is a symlink; shards must be regular files in the "
                            "manifest's folder (refused, nothing read)", file=where) from None
        raise UserError(f"cannot open {what} ({e.strerror})", file=where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise UserError(f"{what} is not a regular file ({kind}); refused, nothing read",
                            file=where)
        if shard.num_bytes and st.st_size != shard.num_bytes:
            raise UserError(f"{what} is {st.st_size} bytes, the manifest states "
                            f"{shard.num_bytes} bytes; it was modified or replaced: rerun "
                            "preprocess to repair it", file=where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _write_failure(e: Exception, path: Path) -> OSError:
    """An HDF5 write failure as an OSError with the errno the file system gave (h5py reports
    some as RuntimeError, the errno only in its multi-line text)."""
    code = getattr(e, "errno", None)
    if not code:
        found = re.search(r"errno = (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def write_shard(path: Path, image_blocks: Iterable[np.ndarray], labels: np.ndarray, *,
                image_shape: tuple[int, ...], split: str, compression: str,
                chunk_rows: int) -> None:
    """Write one shard file at `path` from uint8 image blocks (in row order, together
    len(labels) rows; every block but the last a multiple of chunk_rows rows), holding one block
    at a time. Identical input gives identical bytes whatever the block sizes: no timestamps
    (track_times=False), no varying attributes, whole chunks written in row order, images
    before labels."""
    import h5py

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    n = len(labels)
    rows = max(1, min(chunk_rows, n))
    options = {} if compression == "none" else {"compression": compression}
    try:
        # No raw-data chunk cache (rdcc_nbytes=0): each chunk reaches the file inside the write
        # that fills it, so chunks lie in row order whatever the block sizes, and a failing
        # write (ENOSPC, EDQUOT, EFBIG) fails that call. With HDF5's cache it failed in the
        # flush on close instead, which leaves HDF5's state corrupt: the process segfaulted
        # later (HDFGroup/hdf5#6601, h5py#914).
        with h5py.File(path, "w", rdcc_nbytes=0) as f:
            # Whole-row-block chunks: a reader slicing contiguous rows touches whole chunks.
            images = f.create_dataset("images", shape=(n, *image_shape), dtype=np.uint8,
                                      chunks=(rows, *image_shape), track_times=False, **options)
            stored = f.create_dataset("labels", shape=(n,), dtype=np.int64, chunks=(rows,),
                                      track_times=False, **options)
            at = 0
            for block in image_blocks:
                images[at:at + len(block)] = block
                at += len(block)
            if at != n:
                raise ValueError(f"{at} image rows for {n} labels")
            stored[:] = np.ascontiguousarray(labels, dtype=np.int64)
            f.attrs["split"] = split
    except (OSError, RuntimeError) as e:
        raise _write_failure(e, path) from None


def write_json(path: Path, obj: dict) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class ShardInfo:
    file: str  # relative to the manifest's folder
    split: str
    index: int
    num_samples: int
    class_counts: list[int]
    sha256: str
    num_bytes: int = 0  # file size; 0 in manifests written before it was recorded
    # Sidecars only (never in the manifest): the plan that produced the shard, and the sums of
    # its pixels and squared pixels, so "computed" normalisation needs no second pass.
    plan_id: str = ""
    pixel_sum: int = 0
    pixel_sq_sum: int = 0


SIDECAR_ONLY = ("plan_id", "pixel_sum", "pixel_sq_sum")


@dataclass
class SplitInfo:
    num_samples: int
    class_counts: list[int]
    shards: list[ShardInfo] = field(default_factory=list)
    arrays: list[str] = field(default_factory=list)  # names held (write_shards); [] = images


@dataclass
class Manifest:
    dataset: str
    source: str
    seed: int
    plan_id: str
    image_shape: list[int]
    num_classes: int
    normalization: dict[str, float]  # mean, std on the 0..1 pixel scale
    compression: str
    chunk_rows: int
    splits: dict[str, SplitInfo]
    format: str = FORMAT
    # write_shards: {name: {"dtype": "float32", "shape": [sample dims]}}; {} = uint8 images.
    arrays: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None  # where it was read from; not written

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("path")
        if not d["arrays"]:  # the images format's manifests stay byte for byte as they were
            d.pop("arrays")
        for split in d["splits"].values():
            if not split["arrays"]:
                split.pop("arrays")
            for shard in split["shards"]:
                for key in SIDECAR_ONLY:
                    shard.pop(key)
        return d

    def shard_path(self, shard: ShardInfo) -> Path:
        assert self.path is not None
        return self.path.parent / shard.file


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a manifest (or the manifest.json inside a folder); structural problems are
    UserErrors."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("no shard manifest here; run `itwinai-hpc preprocess` first (the "
                        "manifest is written last, when every shard is complete)",
                        file=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not a valid JSON manifest ({e})", file=str(path)) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(f"not an itwinai-hpc shard manifest (expected format {FORMAT!r})",
                        file=str(path))
    try:
        splits = {}
        for name, s in d.pop("splits").items():
            shards = [ShardInfo(**sh) for sh in s.pop("shards")]
            splits[name] = SplitInfo(shards=shards, **s)
        manifest = Manifest(splits=splits, path=path, **d)
    except (TypeError, KeyError, AttributeError) as e:
        raise UserError(f"manifest is malformed ({e}); rerun preprocess to rewrite it",
                        file=str(path)) from None
    for name, split in manifest.splits.items():
        for shard in split.shards:
            check_shard_entry(shard, name, path)
    check_description(manifest, path)
    return manifest


def read_shard(path: Path, shard: ShardInfo, ranges: list[tuple[int, int]], *,
               verify: bool = True, manifest: Manifest | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows `ranges` ([(lo, hi), ...] within the shard, in that order) of one shard, after its
    bytes matched `shard.sha256` (verify=True). With `manifest`, the arrays must be what it
    describes (its image_shape, before any row is used; labels below its num_classes), else a
    UserError naming the manifest and the field.

    The file is read once, into memory, and HDF5 reads those checked bytes (verified.py), so a
    shard modified after its checksum cannot slip through. Peak memory: about one shard."""
    def check(h5) -> None:
        images, labels = h5["images"], h5["labels"]
        n = images.shape[0]
        if n != shard.num_samples or labels.shape != (n,):
            raise UserError(f"shard holds {n} images, the manifest says {shard.num_samples}",
                            file=str(path))
        if manifest is not None:
            check_image_shape(images.shape, shard, manifest)

    f, size = open_shard(path, shard)
    got = read_arrays(f, size, path, ["images", "labels"], ranges,
                      sha256=shard.sha256 if verify else None, check=check)
    if manifest is not None:
        check_labels(got["labels"], shard, manifest)
    return got["images"], got["labels"].astype(np.int64, copy=False)
