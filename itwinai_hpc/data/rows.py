"""Contiguous rows of a split, whatever its format: `read_rows` (uint8 images and int64 labels
for the MNIST format; the stored arrays for shards written by write_shards), and the header
check a streaming reader makes on its first shard before its first batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.arrays import (
    array_dtype,
    array_shape,
    check_shard_arrays,
    is_generic,
    read_shard_arrays,
    served,
)
from itwinai_hpc.data.manifest_checks import check_image_shape
from itwinai_hpc.data.shards import Manifest, ShardInfo, open_shard, read_shard


def _check_split(manifest: Manifest, split: str) -> None:
    info = manifest.splits[split]
    held = sum(s.num_samples for s in info.shards)
    if held != info.num_samples:
        raise UserError(f"the {split} shards hold {held} samples, the manifest says "
                        f"{info.num_samples}", file=str(manifest.path))


def check_shard_header(path: Path, shard: ShardInfo, manifest: Manifest) -> None:
    """That the shard's arrays have the image shape `manifest` states, from the HDF5 header
    alone (no row read, no checksum pass). A file that is not a readable shard is left to
    read_shard."""
    import h5py

    f, _ = open_shard(path, shard)
    with f:
        same_inode = Path(f"/proc/self/fd/{f.fileno()}")
        try:
            with h5py.File(same_inode if same_inode.exists() else path, "r") as h5:
                shape = h5["images"].shape
        except (OSError, KeyError):
            return
    check_image_shape(shape, shard, manifest)


def check_first_shard(manifest: Manifest, split: str) -> None:
    """Before the first batch of a streaming reader, not mid-epoch: the split's first shard
    has the arrays the manifest states (its header only: no row is read)."""
    shards = manifest.splits[split].shards
    if not shards:
        return
    path = manifest.shard_path(shards[0])
    if is_generic(manifest):
        check_shard_arrays(path, shards[0], manifest, served(manifest, split))
    else:
        check_shard_header(path, shards[0], manifest)


def read_rows(manifest: Manifest, split: str, start: int, end: int, *,
              verify: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows [start, end) of `split`, reading only the shards they overlap, one contiguous
    slice per shard, each shard's bytes checked against the manifest's sha256 first. Peak
    memory: the rows plus one shard's slice.

    MNIST format: (uint8 images N x H x W, int64 labels N). Shards of write_shards: (inputs,
    targets) in their stored dtype and shape, targets None when the split has none."""
    _check_split(manifest, split)
    count = max(0, end - start)
    if is_generic(manifest):
        names = served(manifest, split)
        out = {n: np.empty((count, *array_shape(manifest, n)), array_dtype(manifest, n))
               for n in names}
    else:
        names = ["images", "labels"]
        out = {"images": np.empty((count, *manifest.image_shape), np.uint8),
               "labels": np.empty((count,), np.int64)}
    offset = 0
    for shard in manifest.splits[split].shards:
        lo, hi = max(start, offset), min(end, offset + shard.num_samples)
        if lo < hi:
            path, ranges = manifest.shard_path(shard), [(lo - offset, hi - offset)]
            if is_generic(manifest):
                part = read_shard_arrays(path, shard, ranges, names, manifest, verify=verify)
            else:
                part = dict(zip(names, read_shard(path, shard, ranges, verify=verify,
                                                  manifest=manifest)))
            for name in names:
                out[name][lo - start:hi - start] = part[name]
        offset += shard.num_samples
    first = out[names[0]]
    return first, out[names[1]] if len(names) > 1 else None
