"""The on-disk format: HDF5 shards (`images` uint8 N×H×W, `labels` int64), their sidecars and
the manifest, written atomically and byte-for-byte reproducibly. It knows no data set and no
scheduler; preprocess.py decides what goes into which shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from itwinai_hpc.errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT = "itwinai-hpc-shards/1"
COMPRESSIONS = ("none", "gzip", "lzf")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.h5"


def sidecar_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def build_shard(images: np.ndarray, labels: np.ndarray, *, split: str, compression: str,
                chunk_rows: int) -> bytes:
    """The complete HDF5 file for one shard, as bytes. Built in memory so that its sha256 is
    known before anything touches the disk, and identical for identical input: no timestamps
    (track_times=False), no attributes that vary."""
    import h5py

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    rows = max(1, min(chunk_rows, len(images)))
    options = {} if compression == "none" else {"compression": compression}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        # Whole-row-block chunks: a reader slicing contiguous rows touches whole chunks only.
        f.create_dataset("images", data=np.ascontiguousarray(images, dtype=np.uint8),
                         chunks=(rows, *images.shape[1:]), track_times=False, **options)
        f.create_dataset("labels", data=np.ascontiguousarray(labels, dtype=np.int64),
                         chunks=(rows,), track_times=False, **options)
        f.attrs["split"] = split
    return buffer.getvalue()


def _tmp_name(path: Path) -> Path:
    # Host and pid in the name: two array tasks (or a requeued one) never share a temporary.
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` so that `path` either keeps its old content or holds all of `data`."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` left by killed processes on this host (never a live one's)."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{path.name}.{host}.*.tmp"):
        pid = tmp.name[len(f".{path.name}.{host}."):-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@dataclass
class ShardInfo:
    file: str  # relative to the manifest's folder
    split: str
    index: int
    num_samples: int
    class_counts: list[int]
    sha256: str
    plan_id: str = ""  # the preprocessing plan that produced it (sidecars only)


@dataclass
class SplitInfo:
    num_samples: int
    class_counts: list[int]
    shards: list[ShardInfo] = field(default_factory=list)


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
    path: Path | None = None  # where it was read from; not written

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("path")
        for split in d["splits"].values():
            for shard in split["shards"]:
                shard.pop("plan_id")
        return d

    def shard_path(self, shard: ShardInfo) -> Path:
        assert self.path is not None
        return self.path.parent / shard.file


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a manifest (or the manifest.json inside a folder); structural problems are UserErrors."""
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
        return Manifest(splits=splits, path=path, **d)
    except (TypeError, KeyError, AttributeError) as e:
        raise UserError(f"manifest is malformed ({e}); rerun preprocess to rewrite it",
                        file=str(path)) from None
