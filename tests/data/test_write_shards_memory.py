"""Peak memory of write_shards, preprocess from a NumPy file and the streaming reader stays
about one shard (the reader: the few shards it holds), not the data set: measured as the growth
of a fresh process's peak RSS (VmHWM) over its RSS after the imports, on a float32
set twenty times a shard. The 2 GB version with numbers is benchmarks/bench_preprocess.py --fields.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

SAMPLES, SHARD = 7680, 384  # 2x64x64 float32 = 32 KiB a sample: 252 MB, shards of 12.6 MB
SAMPLE_BYTES = 2 * 64 * 64 * 4
MB = 1 << 20

SCRIPT = r"""
import json, sys
import numpy as np, h5py
from itwinai_hpc.data import write_shards
from itwinai_hpc.data.config import make_config
from itwinai_hpc.data.preprocess import preprocess

def peak():
    # This process's own high-water mark. (getrusage's ru_maxrss is no use here: Linux carries
    # the parent's peak across fork and exec, so a child of a big pytest process would start
    # "peaked" and hide its own growth.)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

what, out, samples, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if what == "read":  # torch only where it is used: its import alone takes seconds
    import torch
    from itwinai_hpc.data.dataset import ShardedLoader
if what == "chunks":
    def chunks():
        for lo in range(0, samples, 100):
            n = min(100, samples - lo)
            yield {"inputs": np.full((n, 2, 64, 64), lo, np.float32),
                   "targets": np.full((n, 1), lo, np.float32)}
    source = {"train": chunks()}
elif what == "memmap":
    source = {"train": {"inputs": np.load(sys.argv[5], mmap_mode="r")}}
before = peak()
if what == "read":
    loader = ShardedLoader(out, "train", 64, mode="stream", rank=1, world_size=2)
    n = sum(len(x) for x, _ in loader)
    assert n == samples // 2, n
elif what == "preprocess":
    config = make_config({"arrays": {"inputs": "fields"}, "shard_size": shard,
                          "split": {"train": [0, samples - 768], "test": [samples - 768, samples]}})
    preprocess(sys.argv[5], out, config, progress=False)
else:
    write_shards(out, source, dataset="big", shard_size=shard)
print(json.dumps({"before": before, "growth": peak() - before}))
"""


def _run(*args) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_peak_rss_is_about_one_shard_for_a_set_twenty_shards_large(tmp_path):
    total, shard = SAMPLES * SAMPLE_BYTES, SHARD * SAMPLE_BYTES
    assert total >= 20 * shard
    out = tmp_path / "chunks"
    grew = _run("chunks", out, SAMPLES, SHARD)["growth"]
    # One shard buffer (plus its 3 KiB of targets a shard) and a 100-sample chunk, plus slack.
    assert grew < shard + 40 * MB, f"write_shards grew {grew / MB:.0f} MB for {total / MB:.0f} MB"

    path = tmp_path / "fields" / "fields.npy"
    path.parent.mkdir()
    mapped = np.lib.format.open_memmap(path, "w+", np.float32, (SAMPLES, 2, 64, 64))
    for lo in range(0, SAMPLES, 1000):
        mapped[lo:lo + 1000] = lo
    mapped.flush()
    del mapped
    grew = _run("memmap", tmp_path / "mapped", SAMPLES, SHARD, path)["growth"]
    assert grew < shard + 40 * MB, f"memmap input grew {grew / MB:.0f} MB"
    grew = _run("preprocess", tmp_path / "pre", SAMPLES, SHARD, path.parent)["growth"]
    assert grew < shard + 40 * MB, f"preprocess from .npy grew {grew / MB:.0f} MB"

    # The streaming reader holds the shard being batched, one read ahead and the one being
    # read: about 3 shards, whatever the split's size.
    grew = _run("read", out, SAMPLES, SHARD)["growth"]
    assert grew < 3 * shard + 50 * MB, f"stream reader grew {grew / MB:.0f} MB"
    # the bound means something: this rank reads half the set, more than the bound
    assert 3 * shard + 50 * MB < total / 2
