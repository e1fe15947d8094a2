"""A shard is read once: its bytes checked against the manifest's sha256 are the bytes HDF5
reads (verified.py), whatever the layout of its datasets; the streaming reader reads each
shard file once (it read it twice: once to hash it, once through HDF5)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import write_shards
from itwinai_hpc.data.dataset import ShardedLoader
from itwinai_hpc.data.shards import ShardInfo, open_shard
from itwinai_hpc.data.verified import _runs, read_arrays


def _info(path: Path, n: int) -> ShardInfo:
    data = path.read_bytes()
    return ShardInfo(file=path.name, split="train", index=0, num_samples=n, class_counts=[],
                     sha256=hashlib.sha256(data).hexdigest(), num_bytes=len(data))


def _read(path: Path, shard: ShardInfo, names: list[str], ranges: list[tuple[int, int]], *,
          verify: bool = True) -> dict[str, np.ndarray]:
    f, size = open_shard(path, shard)
    return read_arrays(f, size, path, names, ranges, sha256=shard.sha256 if verify else None)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_rows_come_back_exactly_from_chunks_with_hdf5_metadata_between_them(tmp_path):
    # 300 chunks of 64 rows: HDF5 puts B-tree nodes between runs of chunks, which the reader
    # moves its rows past in place.
    path, x = tmp_path / "s.h5", np.arange(300 * 64 * 3, dtype=np.float32).reshape(-1, 3)
    with h5py.File(path, "w", rdcc_nbytes=0) as f:
        ds = f.create_dataset("inputs", shape=x.shape, dtype=x.dtype, chunks=(64, 3))
        for lo in range(0, len(x), 64):
            ds[lo:lo + 64] = x[lo:lo + 64]
    with h5py.File(path, "r") as h5:
        assert len(_runs(h5["inputs"])) > 1  # the layout this test is about
    shard = _info(path, len(x))
    assert np.array_equal(_read(path, shard, ["inputs"], [(0, len(x))])["inputs"], x)
    assert np.array_equal(_read(path, shard, ["inputs"], [(5000, 19200)])["inputs"],
                          x[5000:])
    assert np.array_equal(_read(path, shard, ["inputs"], [(10, 20)])["inputs"], x[10:20])
    got = _read(path, shard, ["inputs"], [(100, 200), (7, 9)])["inputs"]
    assert np.array_equal(got, np.concatenate([x[100:200], x[7:9]]))
    assert _read(path, shard, ["inputs"], [])["inputs"].shape == (0, 3)


def test_interleaved_chunks_contiguous_odd_offsets_and_compression_read_back_exactly(tmp_path):
    n = 1001
    a = np.arange(n * 2, dtype=np.int64).reshape(n, 2)
    b = np.linspace(0, 1, n * 5, dtype=np.float64).reshape(n, 5)
    c = (np.arange(n) % 3 == 0)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w", rdcc_nbytes=0) as f:
        da = f.create_dataset("a", shape=a.shape, dtype=a.dtype, chunks=(10, 2))
        db = f.create_dataset("b", shape=b.shape, dtype=b.dtype, chunks=(10, 5))
        for lo in range(0, n, 10):  # chunks of a and b alternate in the file
            da[lo:lo + 10], db[lo:lo + 10] = a[lo:lo + 10], b[lo:lo + 10]
        f.create_dataset("c", data=c)  # contiguous, 1001 bytes: what follows is at an odd offset
        f.create_dataset("d", data=a)
        f.create_dataset("e", data=b, chunks=(10, 5), compression="gzip")
        f.create_dataset("f", data=a, chunks=(7, 1))  # chunks that are not whole samples
    with h5py.File(path, "r") as f:
        assert _runs(f["d"])[0][0] % 8  # the layouts this test is about
        assert _runs(f["c"]) and _runs(f["e"]) is None and _runs(f["f"]) is None
    got = _read(path, _info(path, n), list("abcdef"), [(0, n)])
    for name, want in zip("abcdef", (a, b, c, a, b, a)):
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name
        assert got[name].flags.aligned and got[name].flags.writeable, name


def test_a_corrupted_byte_is_refused_before_hdf5_sees_the_file(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=np.ones((100, 4), np.float32))
    shard = _info(path, 100)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 does not match") as e:
        _read(path, shard, ["inputs"], [(0, 100)])
    assert e.value.file == str(path)
    path.write_bytes(bytes(len(data)))  # unchecked, a file that is not HDF5 is named
    with pytest.raises(UserError, match="not a readable shard") as e:
        _read(path, shard, ["inputs"], [(0, 100)], verify=False)
    assert e.value.file == str(path)


def test_the_streaming_reader_reads_each_shard_file_once(tmp_path):
    x = np.random.default_rng(0).standard_normal((4000, 2, 16, 16), dtype=np.float32)
    m = write_shards(tmp_path / "s", {"train": {"inputs": x, "targets": x[:, 0]}},
                     dataset="fields", shard_size=1000)
    loader = ShardedLoader(tmp_path / "s", "train", 64, mode="stream", shuffle=False)
    before = _rchar()
    got = np.concatenate([i.numpy() for i, _ in loader])
    read = _rchar() - before
    files = sum(s.num_bytes for s in m.splits["train"].shards)
    assert np.array_equal(got, x)
    assert files <= read < 1.2 * files  # was 2x: a checksum pass, then HDF5 read it again
