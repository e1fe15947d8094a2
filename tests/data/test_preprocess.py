"""Preprocessing: exact, deterministic, atomic, resumable shards and a manifest written last."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from data_helpers import N_TEST, N_TRAIN

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.config import make_config
from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.preprocess import count_shards, preprocess
from itwinai_hpc.data.shards import read_manifest, sha256_file

SHARD_NAMES = ["train-00000-of-00003.h5", "train-00001-of-00003.h5", "train-00002-of-00003.h5",
               "validation-00000-of-00001.h5", "test-00000-of-00002.h5", "test-00001-of-00002.h5"]


def _rows(manifest, split):
    n = manifest.splits[split].num_samples
    return read_rows(manifest, split, 0, n)


def test_shards_hold_exactly_the_source_pixels_and_labels(shards, idx_folder):
    arrays = idx_folder[1]
    m = read_manifest(shards)
    test_images, test_labels = _rows(m, "test")
    assert np.array_equal(test_images, arrays["test_images"])  # test keeps its order
    assert np.array_equal(test_labels, arrays["test_labels"])
    # train + validation are a permutation of the original training set, pixels intact
    images = np.concatenate([_rows(m, "train")[0], _rows(m, "validation")[0]])
    labels = np.concatenate([_rows(m, "train")[1], _rows(m, "validation")[1]])
    key = lambda imgs: [bytes(x) for x in imgs.reshape(len(imgs), -1)]  # noqa: E731
    original = dict(zip(key(arrays["train_images"]), arrays["train_labels"]))
    assert sorted(key(images)) == sorted(original)
    assert all(original[k] == lab for k, lab in zip(key(images), labels))


def test_manifest_records_counts_checksums_seed_and_normalization(shards, idx_folder):
    m = read_manifest(shards)
    assert {s: m.splits[s].num_samples for s in m.splits} == {
        "train": N_TRAIN - 200, "validation": 200, "test": N_TEST}
    assert m.splits["test"].class_counts == np.bincount(idx_folder[1]["test_labels"],
                                                        minlength=10).tolist()
    assert [s.file for sp in ("train", "validation", "test")
            for s in m.splits[sp].shards] == SHARD_NAMES
    for shard in m.splits["train"].shards:
        assert sha256_file(shards / shard.file) == shard.sha256
    assert (m.seed, m.normalization) == (7, {"mean": 0.1307, "std": 0.3081})
    assert "IDX files in" in m.source and m.dataset == "mnist"


def test_shards_are_uint8_images_and_int64_labels_in_whole_row_chunks(shards):
    with h5py.File(shards / SHARD_NAMES[0]) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (28, 28)
        assert f["labels"].dtype == np.int64
        assert f["images"].chunks == (64, 28, 28)


def test_same_seed_gives_byte_identical_files(idx_folder, small_config, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    preprocess(str(idx_folder[0]), a, small_config, progress=False)
    preprocess(str(idx_folder[0]), b, small_config, progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all(sha256_file(a / n) == sha256_file(b / n) for n in names)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_shards_are_deterministic_and_read_back(idx_folder, tmp_path, compression):
    config = make_config({"compression": compression, "validation_size": 100, "shards": 1})
    a, b = tmp_path / "a", tmp_path / "b"
    preprocess(str(idx_folder[0]), a, config, progress=False)
    preprocess(str(idx_folder[0]), b, config, progress=False)
    assert sha256_file(a / "train-00000-of-00001.h5") == sha256_file(b / "train-00000-of-00001.h5")
    assert np.array_equal(_rows(read_manifest(a), "test")[0], idx_folder[1]["test_images"])


def test_another_seed_gives_another_validation_split(idx_folder, small_config, tmp_path):
    other = make_config({**small_config.as_dict(), "seed": 8})
    preprocess(str(idx_folder[0]), tmp_path / "a", small_config, progress=False)
    preprocess(str(idx_folder[0]), tmp_path / "b", other, progress=False)
    va = _rows(read_manifest(tmp_path / "a"), "validation")[0]
    vb = _rows(read_manifest(tmp_path / "b"), "validation")[0]
    assert not np.array_equal(va, vb)


def test_rerun_skips_verified_shards_and_repairs_a_modified_one(shards, idx_folder, small_config):
    before = {n: sha256_file(shards / n) for n in SHARD_NAMES}
    victim = shards / SHARD_NAMES[1]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = preprocess(str(idx_folder[0]), shards, small_config, progress=False)
    assert result.written == [SHARD_NAMES[1]]
    assert result.skipped == [n for n in SHARD_NAMES if n != SHARD_NAMES[1]]
    assert {n: sha256_file(shards / n) for n in SHARD_NAMES} == before


def test_a_changed_config_rewrites_shards_and_manifest(shards, idx_folder, small_config):
    other = make_config({**small_config.as_dict(), "seed": 99})
    result = preprocess(str(idx_folder[0]), shards, other, progress=False)
    assert len(result.written) == 4  # train + validation change; test keeps its order
    assert read_manifest(shards).seed == 99


def test_array_tasks_each_write_one_shard_and_the_last_writes_the_manifest(
        idx_folder, small_config, tmp_path):
    out = tmp_path / "out"
    assert count_shards(small_config) == len(SHARD_NAMES)
    for i in reversed(range(len(SHARD_NAMES))):
        result = preprocess(str(idx_folder[0]), out, small_config, shard_index=i, progress=False)
        assert result.written == [SHARD_NAMES[i]]
        if i > 0:
            assert result.manifest is None and not (out / "manifest.json").exists()
    assert result.manifest == out / "manifest.json"
    assert read_manifest(out).splits["train"].num_samples == N_TRAIN - 200


def test_concurrent_array_tasks_produce_one_valid_manifest(idx_folder, small_config, tmp_path):
    out, config = tmp_path / "out", tmp_path / "pre.yml"
    config.write_text(json.dumps(small_config.as_dict()))  # JSON is YAML
    procs = [subprocess.Popen(
        [sys.executable, "-m", "itwinai_hpc.cli", "preprocess", "--source",
         str(idx_folder[0]), "--output", str(out), "--config", str(config)],
        env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i)}, stdout=subprocess.PIPE, text=True)
        for i in range(len(SHARD_NAMES))]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs)
    assert any("manifest:" in o for o in outputs)
    m = read_manifest(out)
    for split in m.splits.values():
        for shard in split.shards:
            assert sha256_file(out / shard.file) == shard.sha256
    assert not list(out.glob(".*.tmp"))


def test_finalize_without_every_shard_names_the_missing_ones(idx_folder, small_config, tmp_path):
    preprocess(str(idx_folder[0]), tmp_path, small_config, shard_index=0, progress=False)
    with pytest.raises(UserError, match="train-00001-of-00003.h5") as e:
        preprocess(str(idx_folder[0]), tmp_path, small_config, finalize_only=True)
    assert e.value.file == str(tmp_path)


def test_an_empty_split_is_refused_before_anything_is_written(idx_folder, tmp_path):
    config = make_config({"validation_size": 200, "shards": {"test": N_TEST + 1}})
    with pytest.raises(UserError, match="test split has .* fewer than its"):
        preprocess(str(idx_folder[0]), tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_validation_size_that_leaves_no_training_data_is_refused(idx_folder, tmp_path):
    with pytest.raises(UserError, match="validation_size"):
        preprocess(str(idx_folder[0]), tmp_path, make_config({"validation_size": N_TRAIN}))


def test_shard_index_out_of_range_names_the_valid_range(idx_folder, small_config, tmp_path):
    with pytest.raises(UserError, match=r"0\.\.5"):
        preprocess(str(idx_folder[0]), tmp_path, small_config, shard_index=6)


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from itwinai_hpc.data import shards
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess
    real_fsync, calls = os.fsync, []
    def fsync(fd):  # pause inside the second shard's write: bytes on disk, not yet renamed
        calls.append(fd)
        if len(calls) == 5:  # shard 0 and its sidecar (file + folder each), then shard 1
            print("writing", flush=True)
            time.sleep(60)
        real_fsync(fd)
    shards.os.fsync = fsync
    preprocess(sys.argv[1], sys.argv[2], make_config({"validation_size": 1000, "shards": 2}),
               progress=False)
""")


def test_kill_9_while_writing_leaves_no_partial_shard_and_a_rerun_completes(tmp_path):
    from data_helpers import make_idx_folder

    raw = tmp_path / "raw"
    make_idx_folder(raw, n_train=20000, n_test=100, gz=False)  # ~7.5 MB per train shard
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(raw), str(out)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (out / "train-00000-of-00002.h5").exists()
    assert not (out / "train-00001-of-00002.h5").exists()  # the partial one is only a temporary
    assert list(out.glob(".train-00001-of-00002.h5.*.tmp"))
    assert not (out / "manifest.json").exists()

    config = make_config({"validation_size": 1000, "shards": 2})
    result = preprocess(str(raw), out, config, progress=False)
    assert result.skipped == ["train-00000-of-00002.h5"]
    assert "train-00001-of-00002.h5" in result.written
    assert not list(out.glob(".*.tmp"))
    m = read_manifest(out)
    assert sum(s.num_samples for s in m.splits["train"].shards) == 19000
    assert all(sha256_file(out / s.file) == s.sha256 for sp in m.splits.values() for s in sp.shards)
