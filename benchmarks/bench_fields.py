"""Float fields at scale: peak RSS and time of preprocess from NetCDF, write_shards from a
memory-mapped .npy, and one streaming reader rank, on a float32 set of GB (default 2 GB:
2 variables x 64x64 float32 = 32 KiB a sample), each in a fresh process (peak RSS growth over
the process's RSS after its imports, from /proc/self/status VmHWM). Times as ratios against a
plain baseline: `cp` of the source file (preprocess, write_shards) and a plain h5py read of the
shards (reader). Issue 22's goal: a 2 GB float32 set < 1 GB RSS in preprocessing and in one
reader rank.

Run: .venv/bin/python benchmarks/bench_preprocess.py --fields [GB]   (needs ~4x GB of /tmp)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE = (2, 64, 64)
MB = 1 << 20

CHILD = r"""
import json, sys, time
import numpy as np, h5py
what, src, out = sys.argv[1:4]
if what == "read":
    import torch
    from itwinai_hpc.data.dataset import ShardedLoader
def peak():  # VmHWM: ru_maxrss would carry this benchmark's own peak across fork and exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
before, t = peak(), time.perf_counter()
if what == "netcdf":
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess
    n = int(sys.argv[4])
    config = make_config({"dataset": "fields", "arrays": {"inputs": ["a", "b"]},
                          "split": {"by": "time", "train": [0, n - 1025], "test": [n - 1024, n]}})
    preprocess(src, out, config, progress=False)
elif what == "memmap":
    from itwinai_hpc.data import write_shards
    write_shards(out, {"train": {"inputs": np.load(src, mmap_mode="r")}}, dataset="fields")
elif what == "read":
    loader = ShardedLoader(out, "train", 256, mode="stream")
    assert sum(len(x) for x, _ in loader) == loader.total
elif what == "plain-read":
    import glob
    for path in sorted(glob.glob(out + "/train-*.h5")):
        with h5py.File(path, "r") as f:
            f["inputs"][:]
print(json.dumps({"growth": peak() - before, "seconds": time.perf_counter() - t}))
"""


def child(*args) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout)


def make_sources(tmp: Path, n: int) -> tuple[Path, Path]:
    """A NetCDF file (variables a, b over time, y, x) and a .npy of the stacked fields, written
    a block at a time (this process never holds the set)."""
    import h5netcdf

    nc, npy = tmp / "fields.nc", tmp / "fields.npy"
    mapped = np.lib.format.open_memmap(npy, "w+", np.float32, (n, *SAMPLE))
    with h5netcdf.File(nc, "w") as f:
        f.dimensions = {"time": n, "y": SAMPLE[1], "x": SAMPLE[2]}
        f.create_variable("time", ("time",), np.float64)[:] = np.arange(n, dtype=np.float64)
        a = f.create_variable("a", ("time", "y", "x"), np.float32)
        b = f.create_variable("b", ("time", "y", "x"), np.float32)
        rng = np.random.default_rng(0)
        for lo in range(0, n, 4096):
            hi = min(n, lo + 4096)
            block = rng.standard_normal((hi - lo, *SAMPLE), dtype=np.float32)
            a[lo:hi], b[lo:hi] = block[:, 0], block[:, 1]
            mapped[lo:hi] = block
    mapped.flush()
    del mapped
    return nc, npy


def main(gb: float = 2.0) -> None:
    n = int(gb * 1e9) // (4 * int(np.prod(SAMPLE)))
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        nc, npy = make_sources(tmp, n)
        size = npy.stat().st_size
        print(f"data: {n} samples of float32 {SAMPLE}, {size / 1e9:.2f} GB; shards of 256 MiB")
        t = time.perf_counter()
        shutil.copyfile(nc, tmp / "copy.nc")
        cp = time.perf_counter() - t
        (tmp / "copy.nc").unlink()
        print(f"cp of the NetCDF file (baseline)      {cp:7.2f} s   1.00x")
        for what, src in (("netcdf", nc), ("memmap", npy)):
            r = child(what, src, tmp / what, n)
            label = {"netcdf": "preprocess from NetCDF",
                     "memmap": "write_shards from .npy memmap"}[what]
            print(f"{label:<37} {r['seconds']:7.2f} s  {r['seconds'] / cp:5.2f}x cp   "
                  f"peak RSS +{r['growth'] / MB:.0f} MB")
        plain = child("plain-read", "", tmp / "memmap")
        print(f"h5py read of the train shards (baseline) {plain['seconds']:5.2f} s   1.00x   "
              f"peak RSS +{plain['growth'] / MB:.0f} MB")
        r = child("read", "", tmp / "memmap")
        print(f"ShardedLoader stream, 1 rank, sha256  {r['seconds']:7.2f} s  "
              f"{r['seconds'] / plain['seconds']:5.2f}x     peak RSS +{r['growth'] / MB:.0f} MB")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
