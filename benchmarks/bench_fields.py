"""Float fields at scale: peak RSS and time of preprocess from NetCDF, write_shards from a
memory-mapped .npy, and one streaming reader rank, on a float32 set of GB (default 2 GB:
2 variables x 64x64 float32 = 32 KiB a sample), each in a fresh process (peak RSS growth over
the process's RSS after its imports, from /proc/self/status VmHWM). Times as ratios against a
plain baseline: `cp` of the source file (preprocess, write_shards) and a plain h5py read of the
shards (reader). Issue 22's goal: a 2 GB float32 set < 1 GB RSS in preprocessing and in one
reader rank.

Run: .venv/bin/python benchmarks/bench_preprocess.py --fields [GB]   (needs ~4x GB of /tmp)

The reader alone, paired runs (the machine is shared: each round runs the baselines and the
reader back to back and prints the load average; the median ratio over rounds is the figure):

     .venv/bin/python benchmarks/bench_fields.py 1 --reader-only --rounds 5 [--compare-with DIR]

Per round: a plain h5py read of the train shards (1.00x), the same plus hashlib.sha256 of each
file (what any reader that checks the manifest's sha256 must at least do), ShardedLoader in
stream mode with its sha256 checks, and with verify=False. --compare-with DIR also times the
loader of another checkout, DIR holding its itwinai_hpc/ (for a before/after:
`git archive <commit> itwinai_hpc | tar -x -C DIR`).

Measured (2 GB, 8 shards, 2 shared cores, median of 5 rounds; load average 3-5, then 5-6):
plain h5py 1.00x (+273 MB), h5py + sha256 3.49x / 3.61x, the reader 3.35x / 4.30x (+537 MB),
the reader with verify=False 1.58x / 2.38x; the reader before db36661 (each shard read twice:
a sha256 pass, then HDF5) 4.53x / 5.11x (+551 MB), 5.98x in issue 22; round by round the
reader took 0.82x the old one's time (median of 10; 0.23-0.99x in 9, 1.22x in 1). What
remains is the sha256 of every byte (CPU, about 2.5x the cost of reading the bytes from the
page cache here), not the reading.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
if what.startswith("read"):
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
elif what.startswith("read"):
    loader = ShardedLoader(out, "train", 256, mode="stream", verify=what == "read")
    assert sum(len(x) for x, _ in loader) == loader.total
elif what.startswith("plain-read"):
    import glob, hashlib
    for path in sorted(glob.glob(out + "/train-*.h5")):
        if what == "plain-read-sha256":
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")
        with h5py.File(path, "r") as f:
            f["inputs"][:]
print(json.dumps({"growth": peak() - before, "seconds": time.perf_counter() - t}))
"""


def child(*args, pythonpath: str | None = None) -> dict:
    """CHILD in a fresh process; with `pythonpath`, the itwinai_hpc found there (the child runs
    in /tmp so that the current folder's package does not come first)."""
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=tempfile.gettempdir())
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


def make_shards(tmp: Path, n: int) -> Path:
    """write_shards of n samples from a memory-mapped .npy (the reader-only runs' data)."""
    npy = tmp / "fields.npy"
    mapped = np.lib.format.open_memmap(npy, "w+", np.float32, (n, *SAMPLE))
    rng = np.random.default_rng(0)
    for lo in range(0, n, 4096):
        mapped[lo:lo + 4096] = rng.standard_normal((min(n, lo + 4096) - lo, *SAMPLE),
                                                   dtype=np.float32)
    mapped.flush()
    del mapped
    child("memmap", npy, tmp / "memmap", n)
    npy.unlink()
    return tmp / "memmap"


def readers(shards: Path, rounds: int, compare_with: str | None = None) -> None:
    """Paired rounds: the baselines and the reader(s) back to back; median ratios."""
    runs = [("plain-read", None, "h5py read of the train shards (baseline)"),
            ("plain-read-sha256", None, "h5py read + hashlib sha256 of each file"),
            ("read", None, "ShardedLoader stream, 1 rank, sha256"),
            ("read-noverify", None, "ShardedLoader stream, 1 rank, verify=False")]
    if compare_with:
        compare_with = str(Path(compare_with).resolve())
        runs.append(("read", compare_with, f"ShardedLoader stream, sha256, {compare_with}"))
    ratios: dict[str, list[float]] = {label: [] for *_, label in runs}
    growth: dict[str, float] = {}
    for r in range(rounds):
        load = os.getloadavg()[0]
        got = {label: child(what, "", shards, pythonpath=path) for what, path, label in runs}
        base = got[runs[0][2]]["seconds"]
        print(f"round {r + 1}: load average {load:.2f} -> {os.getloadavg()[0]:.2f}   " +
              "  ".join(f"{g['seconds']:.2f}s" for g in got.values()))
        for label, g in got.items():
            ratios[label].append(g["seconds"] / base)
            growth[label] = max(growth.get(label, 0), g["growth"])
    for label, values in ratios.items():
        print(f"{label:<52} median {statistics.median(values):5.2f}x "
              f"(min {min(values):.2f}, max {max(values):.2f})   "
              f"peak RSS +{growth[label] / MB:.0f} MB")


def main(gb: float = 2.0, *, reader_only: bool = False, rounds: int = 1,
         compare_with: str | None = None) -> None:
    n = int(gb * 1e9) // (4 * int(np.prod(SAMPLE)))
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        if reader_only:
            shards = make_shards(tmp, n)
            print(f"data: {n} samples of float32 {SAMPLE}, {n * 32768 / 1e9:.2f} GB; "
                  f"shards of 256 MiB; {rounds} paired round(s)")
            readers(shards, rounds, compare_with)
            return
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
        readers(tmp / "memmap", rounds, compare_with)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gb", nargs="?", type=float, default=2.0)
    ap.add_argument("--reader-only", action="store_true", help="only the reader, paired runs")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--compare-with", metavar="DIR", help="also time DIR/itwinai_hpc's loader")
    args = ap.parse_args()
    main(args.gb, reader_only=args.reader_only, rounds=args.rounds,
         compare_with=args.compare_with)
