"""Read and write IDX files (the MNIST format), raw or gzipped, validating every header field;
uncompressed files can be memory-mapped, so a source larger than memory is never read whole.

Pure numpy; it must not guess: a truncated, corrupt or mislabelled file is a UserError naming it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import UserError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only the ones MNIST-like data uses.
_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


# Deflate emits at most 258 bytes for 2 bits of input, so no gzip file inflates to more than
# ~1032 times its size: a header claiming more is refused before anything is inflated.
_GZIP_MAX_RATIO = 1032
_READ_BLOCK = 1 << 22


def _header(head: bytes, path: Path, expect_ndim: int | None) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, header length) from the first bytes of an IDX file, every field checked."""
    if len(head) < 4:
        raise UserError(f"too short for an IDX header ({len(head)} bytes); the file is truncated",
                        file=str(path))
    zero, code, ndim = int.from_bytes(head[:2], "big"), head[2], head[3]
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise UserError(f"wrong magic number 0x{head[:4].hex()}; not an IDX file (expected "
                        "0x0000 then a type code such as 0x08 and the number of dimensions, e.g. "
                        "0x00000803 for images, 0x00000801 for labels)", file=str(path))
    if expect_ndim is not None and ndim != expect_ndim:
        raise UserError(f"IDX file has {ndim} dimension(s), expected {expect_ndim} "
                        f"({'images N×rows×cols' if expect_ndim == 3 else 'labels N'}); "
                        "are the image and label files swapped?", file=str(path))
    size = 4 + 4 * ndim
    if len(head) < size:
        raise UserError("the IDX header is truncated", file=str(path))
    shape = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return _DTYPES[code], shape, size


def _data_bytes(dtype: np.dtype, shape: tuple) -> int:
    """The data bytes a header's shape needs, in Python integers: exact however large (numpy's
    int64 product wraps around, to 0 for three dimensions of 2^31)."""
    return math.prod(shape) * dtype.itemsize


def _check_length(path: Path, dtype: np.dtype, shape: tuple, got: int) -> None:
    expected = _data_bytes(dtype, shape)
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise UserError(f"IDX file is {what}: header shape {shape} needs {expected} data bytes, "
                        f"found {got}", file=str(path))


def _allocate(path: Path, dtype: np.dtype, shape: tuple) -> np.ndarray:
    try:
        return np.empty(shape, dtype)
    except (MemoryError, ValueError):
        raise UserError(f"the IDX array of shape {shape} ({_data_bytes(dtype, shape)} bytes) does "
                        "not fit in memory", file=str(path)) from None


def _fill(f, array: np.ndarray, path: Path, shape: tuple) -> None:
    """Read exactly the array's bytes from `f` into it, a block at a time; nothing may follow."""
    expected, got = array.nbytes, 0
    view = memoryview(array.reshape(-1).view(np.uint8))
    while got < expected:
        n = f.readinto(view[got:got + _READ_BLOCK])
        if not n:
            raise UserError(f"IDX file is truncated: header shape {shape} needs {expected} data "
                            f"bytes, found {got}", file=str(path))
        got += n
    if f.read(1):
        raise UserError(f"IDX file is longer than its header says: header shape {shape} needs "
                        f"{expected} data bytes, more follow them", file=str(path))


def _read_gzip(raw, path: Path, expect_ndim: int | None) -> np.ndarray:
    """Check the header first (the first bytes of the stream), then inflate a block at a time,
    never beyond the size it states: a small file that inflates to gigabytes costs nothing."""
    compressed = os.fstat(raw.fileno()).st_size
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            head = f.read(4)
            if len(head) == 4:
                head += f.read(4 * head[3])
            dtype, shape, _ = _header(head, path, expect_ndim)
            expected = _data_bytes(dtype, shape)
            if expected > _GZIP_MAX_RATIO * compressed:
                raise UserError(f"IDX file is truncated or corrupt: header shape {shape} needs "
                                f"{expected} data bytes, more than a {compressed}-byte gzip "
                                "file can hold; download it again", file=str(path))
            array = _allocate(path, dtype, shape)
            _fill(f, array, path, shape)
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; EOFError means the compressed stream was cut short.
        raise UserError(f"cannot decompress this gzip file ({e}); it is truncated or corrupt, "
                        "download it again", file=str(path)) from None
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None,
             mmap: bool = False) -> np.ndarray:
    """Return the array stored in an IDX file (`.gz` is decompressed), checking magic and size.

    Nothing is read or allocated before the header is checked and the size it implies matches
    the file (a gzip's: could fit in it). mmap=True maps an uncompressed file read-only instead
    of reading it (a data set larger than memory stays on disk until rows are taken from it); a
    `.gz` file is inflated into memory, never beyond the size its header states."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    with f:
        if path.suffix == ".gz":
            return _read_gzip(f, path, expect_ndim)
        dtype, shape, header = _header(f.read(4 + 4 * 255), path, expect_ndim)
        _check_length(path, dtype, shape, os.fstat(f.fileno()).st_size - header)
        if 0 in shape:
            return np.empty(shape, dtype.newbyteorder("="))
        if mmap:
            return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=shape)
        f.seek(header)
        array = _allocate(path, dtype, shape)
        _fill(f, array, path, shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8/int8 array as an IDX file (gzipped when the name ends in .gz), atomically."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"write_idx supports uint8 and int8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the gzip bytes identical from run to run.
        payload = gzip.compress(payload, mtime=0)
    return atomic.write_bytes(path, payload)
