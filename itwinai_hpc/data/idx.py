"""Read and write IDX files (the MNIST format), raw or gzipped, validating every header field;
uncompressed files can be memory-mapped, so a source larger than memory is never read whole.

Pure numpy; it must not guess: a truncated, corrupt or mislabelled file is a UserError naming it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from itwinai_hpc import atomic
from itwinai_hpc.errors import UserError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only the ones MNIST-like data uses.
_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; EOFError means the compressed stream was cut short.
        raise UserError(f"cannot decompress this gzip file ({e}); it is truncated or corrupt, "
                        "download it again", file=str(path)) from None


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


def _check_length(path: Path, dtype: np.dtype, shape: tuple, got: int) -> None:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise UserError(f"IDX file is {what}: header shape {shape} needs {expected} data bytes, "
                        f"found {got}", file=str(path))


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None,
             mmap: bool = False) -> np.ndarray:
    """Return the array stored in an IDX file (`.gz` is decompressed), checking magic and size.

    mmap=True maps an uncompressed file read-only instead of reading it (a data set larger than
    memory stays on disk until rows are taken from it); a `.gz` file is still read whole."""
    path = Path(path)
    if mmap and path.suffix != ".gz":
        try:
            with open(path, "rb") as f:
                head = f.read(4 + 4 * 255)
            total = path.stat().st_size
        except FileNotFoundError:
            raise UserError("file not found", file=str(path)) from None
        dtype, shape, header = _header(head, path, expect_ndim)
        _check_length(path, dtype, shape, total - header)
        if 0 in shape:
            return np.empty(shape, dtype.newbyteorder("="))
        return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=shape)
    data = _read_bytes(path)
    dtype, shape, header = _header(data[:4 + 4 * 255], path, expect_ndim)
    _check_length(path, dtype, shape, len(data) - header)
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


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
