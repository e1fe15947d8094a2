"""Shards of any numeric arrays (written by write_shards): what the manifest's `arrays` may
say, which arrays a reader serves, and one shard's named arrays read back checksummed and
checked against the manifest. The uint8-image (MNIST) format, whose manifests have no `arrays`,
stays in shards.py.

A shard of this kind holds one HDF5 dataset per array name (`inputs`, optionally `targets`,
any further names), first axis = samples, in the dtype the manifest states.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.manifest_checks import REWRITE, dims
from itwinai_hpc.data.shards import Manifest, ShardInfo, open_shard
from itwinai_hpc.data.verified import read_arrays

SERVED = ("inputs", "targets")  # what the loader yields, in this order


def is_generic(manifest: Manifest) -> bool:
    """True for shards written by write_shards (named arrays), False for uint8 images."""
    return bool(manifest.arrays)


def served(manifest: Manifest, split: str) -> list[str]:
    """The arrays the loader yields for `split`: inputs, and targets when the split has them."""
    held = manifest.splits[split].arrays
    return [name for name in SERVED if name in held]


def array_dtype(manifest: Manifest, name: str) -> np.dtype:
    return np.dtype(manifest.arrays[name]["dtype"])


def array_shape(manifest: Manifest, name: str) -> tuple[int, ...]:
    return tuple(manifest.arrays[name]["shape"])


def sample_nbytes(manifest: Manifest, split: str) -> int:
    """Bytes one sample of `split` takes as the loader holds it (the uint8 format: pixels plus
    an int64 label)."""
    if not is_generic(manifest):
        return math.prod(manifest.image_shape) + 8
    return sum(array_dtype(manifest, n).itemsize * math.prod(array_shape(manifest, n))
               for n in served(manifest, split))


def check_header(h5, names: list[str], shard: ShardInfo, manifest: Manifest,
                 path: Path) -> None:
    """The shard's datasets `names` exist with the manifest's dtype and sample shape and the
    shard's sample count (from the HDF5 header: no row read)."""
    for name in names:
        if name not in h5:
            raise UserError(f"shard {shard.file!r} holds no array {name!r}; {REWRITE}",
                            file=str(manifest.path), field=f"arrays.{name}")
        ds = h5[name]
        want_dtype, want_shape = array_dtype(manifest, name), array_shape(manifest, name)
        if ds.dtype != want_dtype or tuple(ds.shape[1:]) != want_shape:
            raise UserError(f"the manifest says {name} is {want_dtype} {dims(want_shape)}, "
                            f"shard {shard.file!r} holds {ds.dtype} {dims(ds.shape[1:])}; "
                            f"{REWRITE}", file=str(manifest.path), field=f"arrays.{name}")
        if ds.shape[0] != shard.num_samples:
            raise UserError(f"shard holds {ds.shape[0]} rows of {name}, the manifest says "
                            f"{shard.num_samples}", file=str(path))


def open_h5(f, path: Path):
    """h5py.File on the inode behind the open file `f` (the one whose bytes were checked)."""
    import h5py

    same_inode = Path(f"/proc/self/fd/{f.fileno()}")
    return h5py.File(same_inode if same_inode.exists() else path, "r")


def read_shard_arrays(path: Path, shard: ShardInfo, ranges: list[tuple[int, int]],
                      names: list[str], manifest: Manifest, *, verify: bool = True
                      ) -> dict[str, np.ndarray]:
    """Rows `ranges` of arrays `names` of one shard, after its bytes matched the manifest's
    sha256 (verify=True) and its header the manifest's dtypes and shapes. The file is read
    once, into memory (verified.py): peak memory is about one shard."""
    f, size = open_shard(path, shard)
    out = read_arrays(f, size, path, names, ranges, sha256=shard.sha256 if verify else None,
                      check=lambda h5: check_header(h5, names, shard, manifest, path))
    if manifest.num_classes and "targets" in out:
        from itwinai_hpc.data.manifest_checks import check_labels

        check_labels(out["targets"], shard, manifest)
    return out


def check_shard_arrays(path: Path, shard: ShardInfo, manifest: Manifest, names: list[str]
                       ) -> None:
    """check_header on a shard without reading a row or its checksum (a streaming reader
    checks its first shard so, before its first batch)."""
    f, _ = open_shard(path, shard)
    with f:
        try:
            h5 = open_h5(f, path)
        except OSError:
            return  # not a readable shard: read_shard_arrays says so when it reads it
        with h5:
            check_header(h5, names, shard, manifest, path)
