"""The rank-aware reader: exact data, DistributedSampler semantics, verified shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_helpers import N_TRAIN
from itwinai_hpc.data.dataset import ShardedLoader, read_rows
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.errors import UserError

N = N_TRAIN - 200  # train samples in the `shards` fixture: 1001, odd


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return [int(i) for _, _, idx in loader for i in idx]


def test_batches_give_back_the_exact_pixels_and_labels(shards):
    loader = ShardedLoader(shards, "test", 50, raw=True, return_index=True, rank=0, world_size=1)
    m = read_manifest(shards)
    images, labels = read_rows(m, "test", 0, m.splits["test"].num_samples)
    for x, y, idx in loader:
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(images[idx.numpy()]))
        assert torch.equal(y, torch.from_numpy(labels[idx.numpy()]))


def test_default_batches_are_normalized_float_images_and_int64_labels(shards):
    x, y = next(iter(ShardedLoader(shards, "train", 32, rank=0, world_size=1)))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw, _ = next(iter(ShardedLoader(shards, "train", 32, rank=0, world_size=1, raw=True)))
    expected = (raw.float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("remainder", ["keep", "pad", "drop"])
def test_two_ranks_see_every_sample_once_per_epoch_up_to_the_documented_remainder(
        shards, remainder):
    loaders = [ShardedLoader(shards, "train", 64, rank=r, world_size=2, return_index=True,
                             rank_remainder=remainder) for r in range(2)]
    for epoch in range(2):
        seen = [_epoch(loader, epoch) for loader in loaders]
        counts = Counter(seen[0] + seen[1])
        if remainder == "keep":
            assert sorted(counts) == list(range(N)) and set(counts.values()) == {1}
        elif remainder == "pad":  # 1001 over 2 ranks: one sample repeated
            assert sorted(counts) == list(range(N)) and sum(counts.values()) == N + 1
            assert len(seen[0]) == len(seen[1]) == 501
        else:  # drop: one sample left out
            assert len(counts) == N - 1 and set(counts.values()) == {1}
    if remainder != "keep":
        assert len(loaders[0]) == len(loaders[1])


def test_set_epoch_reshuffles_and_the_same_epoch_repeats(shards):
    loader = ShardedLoader(shards, "train", 64, rank=0, world_size=1, return_index=True, seed=3)
    assert _epoch(loader, 0) == _epoch(loader, 0)
    assert _epoch(loader, 0) != _epoch(loader, 1)
    assert sorted(_epoch(loader, 1)) == list(range(N))


def test_each_rank_reads_only_its_own_contiguous_block(shards):
    loader = ShardedLoader(shards, "train", 64, rank=1, world_size=3, return_index=True,
                           rank_remainder="keep")
    assert (loader.start, loader.end) == (333, 667)
    assert sorted(_epoch(loader)) == list(range(333, 667))


def test_drop_last_drops_the_incomplete_batch(shards):
    loader = ShardedLoader(shards, "train", 100, rank=0, world_size=1, drop_last=True)
    assert len(loader) == 10 and all(len(y) == 100 for _, y in loader)


def test_rank_and_world_size_default_to_the_environment(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    loader = ShardedLoader(shards, "train", 64)
    assert (loader.rank, loader.world_size) == (1, 4)


def test_a_manifest_pointing_to_a_missing_shard_names_the_shard(shards):
    (shards / "train-00001-of-00003.h5").unlink()
    with pytest.raises(UserError, match="missing") as e:
        ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    assert e.value.file == str(shards / "train-00001-of-00003.h5")


def test_a_modified_shard_is_detected_on_open_and_named(shards):
    victim = shards / "validation-00000-of-00001.h5"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 does not match") as e:
        ShardedLoader(shards, "validation", 64, rank=0, world_size=1)
    assert e.value.file == str(victim)


def test_a_missing_manifest_says_to_run_preprocess(tmp_path):
    with pytest.raises(UserError, match="run `itwinai-hpc preprocess`") as e:
        ShardedLoader(tmp_path, "train", 64, rank=0, world_size=1)
    assert e.value.file == str(tmp_path / "manifest.json")


def test_more_ranks_than_samples_is_refused(shards):
    with pytest.raises(UserError, match="fewer than the"):
        ShardedLoader(shards, "validation", 8, rank=0, world_size=201)


def test_torchrun_two_processes_each_see_their_share_exactly_once(shards, tmp_path):
    out = tmp_path / "seen.json"
    torchrun = Path(sys.executable).parent / "torchrun"   # installed with torch, never optional
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2",
                    str(Path(__file__).parent / "torchrun_worker.py"), str(shards), str(out)],
                   check=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks = json.loads(out.read_text())
    for epoch in range(2):
        keep = ranks[0]["keep"]["epochs"][epoch] + ranks[1]["keep"]["epochs"][epoch]
        assert sorted(keep) == list(range(N))
        pad = [r["pad"]["epochs"][epoch] for r in ranks]
        assert len(pad[0]) == len(pad[1]) and sorted(set(pad[0] + pad[1])) == list(range(N))
    assert ranks[0]["pad"]["batches"] == ranks[1]["pad"]["batches"]
    assert ranks[0]["keep"]["epochs"][0] != ranks[0]["keep"]["epochs"][1]
