"""One shard read once: its bytes read into memory and checked against the manifest's sha256 as
they arrive (on a second thread, so hashing a block overlaps reading the next), then HDF5 opened
on those same bytes, and the rows served as views into them where the layout allows (no
compression, whole-sample chunks lying in row order, as write_shards and preprocess write).

The bytes that were checked are the bytes used: nothing is read from the file after its
checksum (a shard modified in between cannot slip through), the file is read once (the reader
used to read it twice: once to hash it, once through HDF5), and memory holds one copy of it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import queue
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from itwinai_hpc.core.errors import UserError

_BLOCK = 8 << 20  # read and hash this many bytes at a time
_VIEW_KINDS = "biuf"  # dtypes served as views into the bytes (bool: HDF5 stores 0/1 bytes)


class _Sha256Behind:
    """sha256 of the blocks handed to `update`, in order, computed on a thread of its own
    (hashlib releases the GIL for large blocks). `hexdigest` waits for the last block."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._blocks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="itwinai-hpc-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._blocks.get()) is not None:
            self._hash.update(block)

    def update(self, block: memoryview) -> None:
        self._blocks.put(block)

    def close(self) -> None:
        if self._thread.is_alive():
            self._blocks.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


def read_verified(f: BinaryIO, size: int, path: Path, sha256: str | None) -> np.ndarray:
    """The bytes of the open shard file `f` (uint8, at most `size`: read no further), after
    they matched `sha256` (None: unchecked), else a UserError naming `path`. Closes `f`; open
    it with shards.open_shard (a regular file of the size the manifest states)."""
    verify = sha256 is not None
    buf = np.empty(size, np.uint8)
    view = memoryview(buf)
    hasher = (_Sha256Behind() if size > _BLOCK else hashlib.sha256()) if verify else None
    at = 0
    try:
        with f:
            while at < size:
                n = f.readinto(view[at:min(size, at + _BLOCK)])
                if not n:
                    break  # the file shrank after open_shard: the checksum says so
                if hasher is not None:
                    hasher.update(view[at:at + n])
                at += n
    finally:
        digest = hasher.hexdigest() if hasher is not None else None
    if verify and (at != size or digest != sha256):
        raise UserError("shard was modified or corrupted: its sha256 does not match the "
                        "manifest; rerun preprocess to repair it", file=str(path))
    return buf[:at]


class _BytesFile(io.RawIOBase):
    """A read-only file over a byte buffer, without copying it, for h5py's file-object driver."""

    def __init__(self, buf: np.ndarray):
        super().__init__()
        self._view, self._pos = memoryview(buf).cast("B"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


def _runs(ds) -> list[tuple[int, int]] | None:
    """The file's byte runs (offset, length) that, one after the other, hold the dataset's rows
    in C order, or None when there are none such: filters (compression), chunks that are not
    whole samples, a missing chunk, unallocated storage, a dtype served only through HDF5."""
    from h5py import h5d

    plist = ds.id.get_create_plist()
    n, row_bytes = ds.shape[0] if ds.ndim else 0, ds.dtype.itemsize * math.prod(ds.shape[1:])
    if plist.get_nfilters() or ds.dtype.kind not in _VIEW_KINDS or not n or not row_bytes:
        return None
    if plist.get_layout() == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        return None if offset is None else [(offset, n * row_bytes)]
    if plist.get_layout() != h5d.CHUNKED or tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None
    rows, found = ds.chunks[0], []
    try:
        ds.id.chunk_iter(lambda c: found.append((c.chunk_offset[0], c.byte_offset, c.size)))
    except (AttributeError, NotImplementedError):  # h5py < 3.8 or HDF5 < 1.12.3
        return None
    found.sort()
    if [row for row, _, _ in found] != list(range(0, n, rows)):
        return None
    runs: list[tuple[int, int]] = []
    for row, offset, size in found:
        if size != rows * row_bytes:
            return None
        length = min(rows, n - row) * row_bytes
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        else:
            runs.append((offset, length))
    return runs


def _overlaps(a: tuple[int, int], runs: list[tuple[int, int]]) -> bool:
    return any(a[0] < off + length and off < a[1] for off, length in runs)


def _movable(runs: list[tuple[int, int]], size: int) -> bool:
    """Runs inside the buffer, in ascending order, not overlapping: moving each in turn to
    just after the previous one then never overwrites a run not yet moved."""
    end = 0
    for offset, length in runs:
        if offset < end:
            return False
        end = offset + length
    return end <= size


def read_arrays(f: BinaryIO, size: int, path: Path, names: list[str],
                ranges: list[tuple[int, int]], *, sha256: str | None, check=None
                ) -> dict[str, np.ndarray]:
    """Rows `ranges` ([(lo, hi), ...], in that order) of the datasets `names` of the open shard
    file `f` (read_verified: closes it), after its bytes matched `sha256` (None: unchecked) and
    `check(h5)` (the caller's header checks) passed. The file is read once. A dataset whose
    rows lie in runs of whole-sample chunks in row order has them moved together in place,
    past the HDF5 metadata between them, once HDF5 is closed: one range of at least half its
    rows is then a view into the bytes (memory holds one copy of the shard), fewer rows or
    several ranges a copy. Any other layout (compression) is read through HDF5 from the
    bytes. HDF5 errors are a UserError naming `path`."""
    buf = read_verified(f, size, path, sha256)
    out: dict[str, np.ndarray] = {}
    place: dict[str, tuple] = {}
    try:
        with h5py_file(buf) as h5:
            if check is not None:
                check(h5)
            runs = {name: _runs(h5[name]) for name in names}
            for name in names:
                ds, mine = h5[name], runs[name]
                span = (mine[0][0], mine[0][0] + sum(n for _, n in mine)) if mine else None
                if span is None or not _movable(mine, len(buf)) or any(
                        _overlaps(span, r) for other, r in runs.items() if other != name and r):
                    parts = [ds[lo:hi] for lo, hi in ranges] or [ds[0:0]]
                    out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
                else:
                    place[name] = (mine, ds.dtype, ds.shape)
    except (OSError, KeyError) as e:
        raise UserError(f"not a readable shard ({e}); rerun preprocess",
                        file=str(path)) from None
    address = buf.ctypes.data
    for name, (mine, dtype, shape) in place.items():  # HDF5 is closed: its metadata may go
        at = mine[0][0]
        for offset, length in mine:
            if offset != at:
                ctypes.memmove(address + at, address + offset, length)
            at += length
        base = mine[0][0]
        if base % dtype.alignment == 0:
            rows = buf[base:at].view(dtype).reshape(shape)
        else:  # HDF5 placed it off the dtype's alignment: one aligned copy
            rows = np.empty(shape, dtype)
            rows.reshape(-1).view(np.uint8)[:] = buf[base:at]
        if len(ranges) == 1 and 2 * (ranges[0][1] - ranges[0][0]) >= len(rows):
            out[name] = rows[ranges[0][0]:ranges[0][1]]  # a view: the buffer stays
        else:  # a copy of the few rows wanted: the buffer goes
            out[name] = np.concatenate([rows[lo:hi] for lo, hi in ranges] or [rows[:0]])
    return out


def h5py_file(buf: np.ndarray):
    """h5py.File (read-only) on a shard's bytes in memory; raises OSError as h5py does for a
    file that is not HDF5."""
    import h5py

    return h5py.File(_BytesFile(buf), "r")
