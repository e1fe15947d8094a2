"""Read and write IDX files (the MNIST format), raw or gzipped, validating every header field.

Pure numpy; it must not guess: a truncated, corrupt or mislabelled file is a UserError naming it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

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


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None) -> np.ndarray:
    """Return the array stored in an IDX file (`.gz` is decompressed), checking magic and size."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise UserError(f"too short for an IDX header ({len(data)} bytes); the file is truncated",
                        file=str(path))
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise UserError(f"wrong magic number 0x{data[:4].hex()}; not an IDX file (expected "
                        "0x0000 then a type code such as 0x08 and the number of dimensions, e.g. "
                        "0x00000803 for images, 0x00000801 for labels)", file=str(path))
    if expect_ndim is not None and ndim != expect_ndim:
        raise UserError(f"IDX file has {ndim} dimension(s), expected {expect_ndim} "
                        f"({'images N×rows×cols' if expect_ndim == 3 else 'labels N'}); "
                        "are the image and label files swapped?", file=str(path))
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError("the IDX header is truncated", file=str(path))
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise UserError(f"IDX file is {what}: header shape {shape} needs {expected} data bytes, "
                        f"found {got}", file=str(path))
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
