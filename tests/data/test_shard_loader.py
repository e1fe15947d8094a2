"""The rank-aware reader: exact data, DistributedSampler semantics, verified shards, in both
modes (memory and stream), which must yield the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import weakref
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
import torch
from data_helpers import N_TRAIN

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.dataset import ShardedLoader, read_rows
from itwinai_hpc.data.shards import read_manifest

N = N_TRAIN - 200  # train samples in the `shards` fixture: 1001, odd


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return [int(i) for _, _, idx in loader for i in idx]


MODES = ["memory", "stream"]


@pytest.mark.parametrize("mode", MODES)
def test_batches_give_back_the_exact_pixels_and_labels(shards, mode):
    loader = ShardedLoader(shards, "test", 50, raw=True, return_index=True, rank=0, world_size=1,
                           mode=mode)
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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("remainder", ["keep", "pad", "drop"])
def test_two_ranks_see_every_sample_once_per_epoch_up_to_the_documented_remainder(
        shards, remainder, mode):
    loaders = [ShardedLoader(shards, "train", 64, rank=r, world_size=2, return_index=True,
                             rank_remainder=remainder, mode=mode) for r in range(2)]
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


def test_samples_move_between_ranks_from_epoch_to_epoch(shards):
    loaders = [ShardedLoader(shards, "train", 64, rank=r, world_size=2, return_index=True,
                             mode="stream") for r in range(2)]
    owned = [set(_epoch(loaders[0], epoch)) for epoch in range(3)]
    assert owned[0] != owned[1] and owned[1] != owned[2]
    assert all(len(o) >= (N - 1) // 2 for o in owned)


def test_without_shuffle_rank_r_reads_rows_r_n_over_w_in_order(shards):
    loader = ShardedLoader(shards, "train", 64, rank=1, world_size=3, return_index=True,
                           rank_remainder="keep", shuffle=False)
    assert _epoch(loader, 0) == _epoch(loader, 1) == list(range(333, 667))


@pytest.mark.parametrize("world, remainder, batch", [(1, "pad", 64), (2, "pad", 50),
                                                     (3, "drop", 7), (2, "keep", 1000)])
def test_memory_and_stream_modes_yield_identical_batches(shards, world, remainder, batch):
    for rank in range(world):
        kw = dict(rank=rank, world_size=world, rank_remainder=remainder, return_index=True,
                  seed=5)
        memory = ShardedLoader(shards, "train", batch, mode="memory", **kw)
        stream = ShardedLoader(shards, "train", batch, mode="stream", prefetch_shards=1, **kw)
        for epoch in range(2):
            memory.set_epoch(epoch)
            stream.set_epoch(epoch)
            a, b = list(memory), list(stream)
            assert len(a) == len(b) == len(memory) == len(stream)
            assert all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))


def test_a_resumed_loader_replays_the_rest_of_the_epoch_exactly(shards):
    def batches(start):
        loader = ShardedLoader(shards, "train", 32, rank=1, world_size=2, seed=9,
                               return_index=True, mode="stream")
        loader.set_epoch(3)
        return [b[2].tolist() for b in islice(loader, start, None)]

    assert batches(5) == batches(0)[5:]


def test_stream_mode_holds_a_few_shards_however_many_there_are(tmp_path):
    from data_helpers import make_idx_folder

    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess

    make_idx_folder(tmp_path / "raw", n_train=2400, n_test=20)
    preprocess(str(tmp_path / "raw"), tmp_path / "s",
               make_config({"validation_size": 400, "shards": {"train": 20}}), progress=False)
    loader = ShardedLoader(tmp_path / "s", "train", 16, rank=0, world_size=1, mode="stream",
                           prefetch_shards=1)
    alive, most = set(), 0
    load = loader._load_piece

    def counted(piece):
        images, labels = load(piece)
        alive.add(id(images))
        weakref.finalize(images, alive.discard, id(images))
        return images, labels

    loader._load_piece = counted
    for _ in loader:
        most = max(most, len(alive))
    # the current shard, the one a batch may straddle into, one queued, one being read
    assert most <= 4


def test_stream_mode_reads_few_shards_before_the_first_batch(shards, monkeypatch):
    from itwinai_hpc.data import dataset

    reads = []
    real = dataset.read_shard
    monkeypatch.setattr(dataset, "read_shard", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    loader = ShardedLoader(shards, "train", 8, rank=0, world_size=1, mode="stream",
                           prefetch_shards=1)
    assert reads == []  # opening reads nothing
    next(iter(loader))
    assert 1 <= len(reads) <= 3


def test_stopping_early_stops_the_prefetch_thread(shards):
    loader = ShardedLoader(shards, "train", 8, rank=0, world_size=1, mode="stream")
    batches = iter(loader)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "itwinai-hpc-prefetch"]


def test_a_modified_shard_in_stream_mode_stops_the_epoch_before_its_rows_are_yielded(shards):
    victim = shards / "train-00002-of-00003.h5"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    loader = ShardedLoader(shards, "train", 10, rank=0, world_size=1, mode="stream",
                           shuffle=False, return_index=True, prefetch_shards=1)
    seen = []
    with pytest.raises(UserError, match="sha256 does not match") as e:
        for _, _, idx in loader:
            seen += idx.tolist()
    assert e.value.file == str(victim)
    first_bad_row = sum(s.num_samples for s in read_manifest(shards).splits["train"].shards[:2])
    assert seen and max(seen) < first_bad_row


def test_auto_mode_streams_a_split_larger_than_the_memory_budget(shards, monkeypatch):
    small = ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    assert small.mode == "memory" and "memory mode" in small.describe()
    monkeypatch.setenv("ITWINAI_HPC_DATA_MEMORY_BUDGET", "100kB")
    big = ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    assert big.mode == "stream"
    assert "stream mode (1,001 samples, 792.79 kB > memory budget 100.00 kB" in big.describe()


def test_a_bad_mode_or_budget_in_the_environment_names_the_variable(shards, monkeypatch):
    monkeypatch.setenv("ITWINAI_HPC_DATA_MODE", "fast")
    with pytest.raises(UserError, match="one of auto, memory, stream") as e:
        ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    assert e.value.field == "ITWINAI_HPC_DATA_MODE"
    monkeypatch.setenv("ITWINAI_HPC_DATA_MODE", "auto")
    monkeypatch.setenv("ITWINAI_HPC_DATA_MEMORY_BUDGET", "lots")
    with pytest.raises(UserError, match="not a size") as e:
        ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    assert e.value.field == "ITWINAI_HPC_DATA_MEMORY_BUDGET"


def test_drop_last_drops_the_incomplete_batch(shards):
    loader = ShardedLoader(shards, "train", 100, rank=0, world_size=1, drop_last=True)
    assert len(loader) == 10 and all(len(y) == 100 for _, y in loader)


def test_rank_and_world_size_default_to_the_environment(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    loader = ShardedLoader(shards, "train", 64)
    assert (loader.rank, loader.world_size) == (1, 4)


@pytest.mark.parametrize("mode", MODES)
def test_a_manifest_pointing_to_a_missing_shard_names_the_shard_on_open(shards, mode):
    (shards / "train-00001-of-00003.h5").unlink()
    with pytest.raises(UserError, match="missing") as e:
        ShardedLoader(shards, "train", 64, rank=0, world_size=1, mode=mode)
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
    for mode in ("memory", "stream"):
        for epoch in range(2):
            keep = [r[f"{mode}-keep"]["epochs"][epoch] for r in ranks]
            assert sorted(keep[0] + keep[1]) == list(range(N))
            pad = [r[f"{mode}-pad"]["epochs"][epoch] for r in ranks]
            assert len(pad[0]) == len(pad[1]) and sorted(set(pad[0] + pad[1])) == list(range(N))
        assert ranks[0][f"{mode}-pad"]["batches"] == ranks[1][f"{mode}-pad"]["batches"]
        rank0 = ranks[0][f"{mode}-keep"]["epochs"]
        assert set(rank0[0]) != set(rank0[1])  # samples moved between the ranks
    assert all(r["memory-pad"] == r["stream-pad"] for r in ranks)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("world, start", [(1, 0), (1, 20), (2, 9), (2, 15), (3, 10)])
def test_iter_from_gives_the_batches_after_start_and_reads_no_earlier_shard(
        shards, monkeypatch, mode, world, start):
    from itwinai_hpc.data import dataset

    loader = ShardedLoader(shards, "train", 32, rank=world - 1, world_size=world, seed=4,
                           return_index=True, mode=mode, prefetch_shards=0)
    loader.set_epoch(2)
    everything = [b[2].tolist() for b in loader]
    reads = []
    real = dataset.read_shard
    monkeypatch.setattr(dataset, "read_shard", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert [b[2].tolist() for b in loader.iter_from(start)] == everything[start:]
    if mode == "stream":
        plan = loader.plan()
        needed = {plan.pieces[k].shard for k in range(len(plan.pieces))
                  if plan.bounds[k + 1] > start * 32}
        assert len(reads) <= len(needed) + 1  # + the first shard again for a padded sample
