"""Training batches on the device (itwinai_hpc/ml/batches.py): bitwise the reader's own batches,
whether built inline or gathered ahead on a thread, from any batch of an epoch; where a split
is held (resident on a GPU only when it fits the configured share of its memory)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from itwinai_hpc.data.dataset import ShardedLoader
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.ml.batches import DeviceBatches, data_device, split_nbytes


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("start", [0, 7])
def test_device_batches_are_bitwise_the_readers_normalised_batches(mnist_shards, prefetch,
                                                                   start):
    reader = ShardedLoader(mnist_shards, "train", 64, seed=5, rank=1, world_size=2)
    raw = ShardedLoader(mnist_shards, "train", 64, seed=5, rank=1, world_size=2, raw=True)
    batches = DeviceBatches(raw, "cpu", torch.channels_last, prefetch)
    for epoch in (0, 1):
        reader.set_epoch(epoch)
        batches.set_epoch(epoch)
        expected = list(reader)[start:]
        got = list(batches.batches(start))
        assert len(got) == len(expected) == len(batches) - start
        for (x, y), (ex, ey) in zip(got, expected):
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_a_batch_stream_abandoned_mid_epoch_stops_its_thread(mnist_shards):
    import threading

    raw = ShardedLoader(mnist_shards, "train", 32, seed=1, rank=0, world_size=1, raw=True)
    it = DeviceBatches(raw, "cpu", torch.contiguous_format, prefetch=2).batches()
    next(it)
    it.close()   # what the trainer does when the ranks agree to stop mid-epoch
    assert not any(t.name == "itwinai-hpc-prefetch" for t in threading.enumerate())


def test_a_reader_without_raw_rows_is_refused(mnist_shards):
    with pytest.raises(ValueError, match="raw=True"):
        DeviceBatches(ShardedLoader(mnist_shards, "train", 32), "cpu", torch.contiguous_format)


def test_splits_stay_on_the_gpu_only_when_they_fit_the_share_of_its_memory(mnist_shards,
                                                                           monkeypatch):
    manifest = read_manifest(mnist_shards)
    need = split_nbytes(manifest, "train") + split_nbytes(manifest, "validation")
    assert need == 4000 * (28 * 28 + 8)
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=4 * need))
    where, why = data_device(manifest, ("train", "validation"), gpu, 0.25)
    assert where == gpu and why.startswith("resident on cuda:0")
    where, why = data_device(manifest, ("train", "validation"), gpu, 0.2)
    assert where == torch.device("cpu") and "pinned and prefetched to cuda:0" in why
    assert data_device(manifest, ("train",), gpu, 0.0)[0] == torch.device("cpu")
    assert data_device(manifest, ("train",), torch.device("cpu"), 1.0)[0] == torch.device("cpu")
