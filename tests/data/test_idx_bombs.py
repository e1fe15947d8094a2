"""Hostile IDX inputs: a small gzip that inflates to hundreds of MB, and headers whose dimensions
multiply past any real size, are clean UserErrors naming the file, found before the data is
inflated or allocated (memory stays bounded)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.idx import read_idx, write_idx

ZEROS_MB = 200


def _header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _gzip_then_zeros(path: Path, head: bytes, megabytes: int = ZEROS_MB) -> Path:
    """`head` followed by `megabytes` MiB of zeros, gzipped: ~1000:1, a few hundred kB."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    parts, zeros = [c.compress(head)], bytes(1 << 20)
    parts += [c.compress(zeros) for _ in range(megabytes)]
    path.write_bytes(b"".join(parts) + c.flush())
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    ten_images = _header(0x08, 10, 28, 28) + bytes(range(256)) * 30 + bytes(160)  # 7840 bytes
    return {
        # the header and its 10 images are right; 200 MB of zeros follow them
        "trailing": _gzip_then_zeros(folder / "trailing-idx3-ubyte.gz", ten_images),
        # not an IDX file at all: the first four bytes say so
        "magic": _gzip_then_zeros(folder / "magic-idx3-ubyte.gz", b"\x12\x34\x08\x03"),
        # claims a million images (784 MB): more than a gzip of this size can hold
        "claims more": _gzip_then_zeros(folder / "more-idx3-ubyte.gz",
                                        _header(0x08, 1_000_000, 28, 28)),
    }


MEASURE = textwrap.dedent("""
    import resource, sys
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.data.idx import read_idx
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_idx(sys.argv[1], expect_ndim=3)
        print("returned")
    except UserError as e:
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"{grown_mb:.1f}")
        print(e.format())
""")


@pytest.mark.parametrize("kind", ["trailing", "magic", "claims more"])
def test_a_gzip_bomb_is_refused_without_inflating_it(bombs, kind):
    path = bombs[kind]
    assert path.stat().st_size < 400_000
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    grown_mb, message = proc.stdout.splitlines()
    assert str(path) in message
    assert float(grown_mb) < 100, f"peak memory grew by {grown_mb} MB reading {path.name}"


def test_trailing_data_after_the_last_gzipped_item_is_an_error(bombs):
    with pytest.raises(UserError, match="longer than its header says") as e:
        read_idx(bombs["trailing"])
    assert e.value.file == str(bombs["trailing"])


def test_a_gzip_that_holds_less_than_its_header_claims_is_truncated(bombs):
    with pytest.raises(UserError, match="truncated") as e:
        read_idx(bombs["claims more"])
    assert e.value.file == str(bombs["claims more"])


def test_a_well_formed_gzip_of_a_few_megabytes_still_reads_exactly(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (5000, 28, 28), dtype=np.uint8)
    a[::7] = 0  # some of it compresses
    assert np.array_equal(read_idx(write_idx(tmp_path / "x-idx3-ubyte.gz", a)), a)
    labels = np.arange(5000, dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "y-idx1-ubyte.gz", labels)), labels)


OVERFLOWING = {
    "3 x 2^31 uint8": _header(0x08, 2**31, 2**31, 2**31),
    "2^31 x 2^31 float64": _header(0x0E, 2**31, 2**31),
    "4 x (2^32-1) int32": _header(0x0C, *[2**32 - 1] * 4),
}


@pytest.mark.parametrize("data_bytes", [0, 64])
@pytest.mark.parametrize("how", ["raw", "mmap", "gz"])
@pytest.mark.parametrize("dims", list(OVERFLOWING))
def test_dimensions_whose_product_overflows_are_a_user_error_naming_the_file(
        tmp_path, how, dims, data_bytes):
    head = OVERFLOWING[dims] + bytes(data_bytes)
    path = tmp_path / ("x-idx-ubyte.gz" if how == "gz" else "x-idx-ubyte")
    path.write_bytes(gzip.compress(head) if how == "gz" else head)
    with pytest.raises(UserError) as e:
        read_idx(path, mmap=how == "mmap")
    assert e.value.file == str(path) and "truncated" in e.value.message
