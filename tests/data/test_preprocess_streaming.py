"""Streaming preprocessing: shards written block by block from a memory-mapped source, with the
same bytes as ever, and memory that does not grow with the data set."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from data_helpers import make_idx_folder

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import preprocess as pre
from itwinai_hpc.data.config import make_config
from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.preprocess import preprocess
from itwinai_hpc.data.shards import read_manifest, sha256_file


def _digests(folder):
    return {p.name: sha256_file(p) for p in sorted(folder.glob("*.h5"))}


def test_shard_bytes_do_not_depend_on_how_many_rows_are_taken_at_once(
        idx_folder, small_config, tmp_path, monkeypatch):
    preprocess(str(idx_folder[0]), tmp_path / "a", small_config, progress=False)
    monkeypatch.setattr(pre, "BLOCK_BYTES", 1)  # one HDF5 chunk (64 rows) per step
    preprocess(str(idx_folder[0]), tmp_path / "b", small_config, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_a_memory_mapped_source_and_its_gzipped_copy_give_identical_shards(tmp_path,
                                                                            small_config):
    make_idx_folder(tmp_path / "raw", gz=False)
    make_idx_folder(tmp_path / "gz", gz=True)
    preprocess(str(tmp_path / "raw"), tmp_path / "a", small_config, progress=False)
    preprocess(str(tmp_path / "gz"), tmp_path / "b", small_config, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_computed_normalization_is_the_mean_and_std_of_the_train_pixels(idx_folder, tmp_path):
    config = make_config({"validation_size": 200, "shards": 3, "normalization": "computed"})
    preprocess(str(idx_folder[0]), tmp_path, config, progress=False)
    m = read_manifest(tmp_path)
    pixels = read_rows(m, "train", 0, m.splits["train"].num_samples)[0] / 255.0
    assert m.normalization == {"mean": round(float(pixels.mean()), 6),
                               "std": round(float(pixels.std()), 6)}


def test_a_rewritten_memory_mapped_source_is_noticed_on_rerun(tmp_path, small_config):
    make_idx_folder(tmp_path / "raw", gz=False, seed=1)
    out = tmp_path / "out"
    preprocess(str(tmp_path / "raw"), out, small_config, progress=False)
    make_idx_folder(tmp_path / "raw", gz=False, seed=2)  # same sizes, other pixels
    result = preprocess(str(tmp_path / "raw"), out, small_config, progress=False)
    assert len(result.written) == 6 and not result.skipped


def test_finalize_checks_every_shard_checksum(shards, idx_folder, small_config):
    victim = shards / "train-00001-of-00003.h5"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF  # same size: only the checksum can tell
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-00001-of-00003.h5"):
        preprocess(str(idx_folder[0]), shards, small_config, finalize_only=True)


# VmHWM, not ru_maxrss: Linux carries the parent's RSS over the child's exec into ru_maxrss.
PEAK_CHILD = textwrap.dedent("""
    import sys
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess
    n = int(sys.argv[3])
    config = make_config({"validation_size": 1000, "shards": {"train": n // 12000}})
    preprocess(sys.argv[1], sys.argv[2], config, progress=False)
    print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
""")


def test_peak_memory_of_preprocess_does_not_grow_with_the_data_set(tmp_path):
    peaks = {}
    for n in (24_000, 240_000):  # 19 MB and 188 MB of pixels, 12k-image shards both times
        make_idx_folder(tmp_path / f"raw{n}", n_train=n, n_test=100, gz=False)
        peaks[n] = int(subprocess.run(
            [sys.executable, "-c", PEAK_CHILD, str(tmp_path / f"raw{n}"), str(tmp_path / f"o{n}"),
             str(n)], capture_output=True, text=True, check=True).stdout)
    assert peaks[240_000] - peaks[24_000] < 30, peaks
