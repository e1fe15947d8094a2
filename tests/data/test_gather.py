"""Taking rows from a memory-mapped source: exact rows, and the mapping's pages do not pile up
in the process's memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from itwinai_hpc.data.gather import take


@pytest.fixture
def mapped(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (5000, 28, 28), dtype=np.uint8)
    path = tmp_path / "rows.bin"
    data.tofile(path)
    return data, np.memmap(path, dtype=np.uint8, mode="r", shape=data.shape)


def test_take_gives_the_rows_asked_for_in_the_order_asked(mapped):
    data, array = mapped
    rows = np.array([4999, 3, 3, 2500, 0, 17])
    assert np.array_equal(take(array, rows), data[rows])
    assert np.array_equal(take(array, slice(100, 4000)), data[100:4000])
    assert take(array, np.array([], dtype=np.int64)).shape == (0, 28, 28)
    assert np.array_equal(take(data, rows), data[rows])  # an in-memory array works alike


def test_take_converts_big_endian_rows_to_native_order(tmp_path):
    data = np.arange(40, dtype=">i4").reshape(10, 4)
    data.tofile(tmp_path / "be.bin")
    array = np.memmap(tmp_path / "be.bin", dtype=">i4", mode="r", shape=(10, 4))
    out = take(array, np.array([9, 1]))
    assert out.dtype == np.dtype("=i4") and out.tolist() == [[36, 37, 38, 39], [4, 5, 6, 7]]


RSS_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from itwinai_hpc.data.gather import take

    def peak_kb():
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0])

    array = np.memmap(sys.argv[1], dtype=np.uint8, mode="r").reshape(-1, 784)
    order = np.random.default_rng(0).permutation(len(array))
    before = peak_kb()
    for a in range(0, len(array), 20000):
        take(array, order[a:a + 20000])
    print((peak_kb() - before) // 1024)
""")


def test_taking_every_row_of_a_mapped_file_keeps_resident_memory_small(tmp_path):
    path = tmp_path / "big.bin"
    rows = 320_000  # 250 MB: without releasing its pages the process would hold all of it
    with open(path, "wb") as f:
        rng = np.random.default_rng(1)
        for _ in range(rows // 40_000):
            f.write(rng.integers(0, 256, (40_000, 784), dtype=np.uint8).tobytes())
    grown_mb = int(subprocess.run([sys.executable, "-c", RSS_CHILD, str(path)],
                                  capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 80, f"peak resident memory grew by {grown_mb} MB reading a 250 MB file"
