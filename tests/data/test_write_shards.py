"""write_shards -> ShardedLoader: a use case's float fields come back bit for bit, in their
dtype and shape, through both reader modes, two ranks dealing per epoch, node-local staging,
memory-mapped and chunked input; the manifest describes the arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from itwinai_hpc.data import write_shards
from itwinai_hpc.data.dataset import ShardedLoader, read_rows
from itwinai_hpc.data.shards import read_manifest

N = 90


def _fields(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-channel 64x64 float32 fields (temperature in K, a second variable) and the next
    step as targets; values no uint8 or float16 could hold."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 2, 64, 64), np.float32)
    x[:, 0] = 280.4 + rng.standard_normal((n, 64, 64), np.float32)
    x[:, 1] = rng.standard_normal((n, 64, 64), np.float32) * 1e-7
    return x, np.roll(x, -1, axis=0) + np.float32(0.25)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    x, y = _fields()
    out = tmp_path_factory.mktemp("fields")
    manifest = write_shards(out, {"train": {"inputs": x[:60], "targets": y[:60]},
                                  "validation": {"inputs": x[60:75], "targets": y[60:75]},
                                  "test": {"inputs": x[75:]}},
                            dataset="heat", shard_size=16)
    return out, manifest, x, y


def test_the_manifest_describes_the_arrays_and_the_splits(written):
    out, manifest, _, _ = written
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["arrays"] == {"inputs": {"dtype": "float32", "shape": [2, 64, 64]},
                                 "targets": {"dtype": "float32", "shape": [2, 64, 64]}}
    assert on_disk["num_classes"] == 0 and on_disk["normalization"] == {}
    assert on_disk["dataset"] == "heat" and on_disk["image_shape"] == [2, 64, 64]
    assert {s: v["num_samples"] for s, v in on_disk["splits"].items()} == \
        {"train": 60, "validation": 15, "test": 15}
    assert {s: len(v["shards"]) for s, v in on_disk["splits"].items()} == \
        {"train": 4, "validation": 1, "test": 1}
    assert on_disk["splits"]["test"]["arrays"] == ["inputs"]
    for split in on_disk["splits"].values():  # sidecars and checksums as preprocess writes
        for shard in split["shards"]:
            side = json.loads((out / (shard["file"] + ".json")).read_text())
            assert side["sha256"] == shard["sha256"] and side["plan_id"] == on_disk["plan_id"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_two_ranks_get_every_field_bit_for_bit_once_per_epoch(written, mode):
    out, _, x, y = written
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = ShardedLoader(out, "train", 7, rank=rank, world_size=2, mode=mode,
                                   return_index=True, seed=3)
            loader.set_epoch(epoch)
            assert loader.mode == mode
            for inputs, targets, index in loader:
                assert inputs.dtype == torch.float32 and targets.dtype == torch.float32
                assert tuple(inputs.shape[1:]) == (2, 64, 64)
                rows = index.numpy()
                assert np.array_equal(inputs.numpy(), x[rows])  # bit for bit, no cast
                assert np.array_equal(targets.numpy(), y[rows])
                seen.append(rows)
        assert sorted(np.concatenate(seen).tolist()) == list(range(60))


def test_both_modes_give_identical_batches_and_targets_none_without_targets(written):
    out, _, x, _ = written
    batches = {}
    for mode in ("memory", "stream"):
        loader = ShardedLoader(out, "test", 4, mode=mode, shuffle=False)
        batches[mode] = [(i.clone(), t) for i, t in loader]
    assert all(t is None for _, t in batches["stream"] + batches["memory"])
    got = torch.cat([i for i, _ in batches["stream"]]).numpy()
    assert np.array_equal(got, x[75:])
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches["memory"], batches["stream"]))


def test_read_rows_spans_shards(written):
    _, manifest, x, y = written
    inputs, targets = read_rows(manifest, "train", 10, 50)
    assert inputs.dtype == np.float32 and np.array_equal(inputs, x[10:50])
    assert np.array_equal(targets, y[10:50])
    inputs, targets = read_rows(manifest, "test", 0, 15)
    assert targets is None and np.array_equal(inputs, x[75:])


def test_staged_reader_serves_the_same_fields(written, tmp_path, monkeypatch):
    out, _, x, y = written
    monkeypatch.setenv("ITWINAI_HPC_STAGE_DIR", str(tmp_path / "node"))
    loader = ShardedLoader(out, "validation", 8, mode="stream", shuffle=False)
    assert loader.staged is not None and str(loader.manifest.path).startswith(str(tmp_path))
    inputs = torch.cat([i for i, _ in loader]).numpy()
    assert np.array_equal(inputs, x[60:75])


def test_memory_mapped_input_and_odd_dtypes(tmp_path):
    x, _ = _fields(20)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    counts = np.arange(20, dtype=np.uint16).reshape(20, 1) * 1000
    out = tmp_path / "out"
    manifest = write_shards(out, {"train": {"inputs": mapped, "targets": counts}},
                            dataset="mapped", shard_size="200kB")
    assert manifest.arrays["targets"] == {"dtype": "uint16", "shape": [1]}
    # 200 kB of samples of 32,770 bytes (32 KiB of inputs, 2 of targets): 6 a shard
    assert [s.num_samples for s in manifest.splits["train"].shards] == [6, 6, 6, 2]
    loader = ShardedLoader(out, "train", 5, shuffle=False, mode="stream")
    got = list(loader)
    assert got[0][1].dtype == torch.uint16
    assert np.array_equal(torch.cat([i for i, _ in got]).numpy(), x)
    assert np.array_equal(torch.cat([t for _, t in got]).numpy(), counts)


def test_chunk_iterator_input_gives_the_same_shards_as_the_whole_arrays(tmp_path):
    x, y = _fields(50)

    def chunks():
        for lo in range(0, 50, 7):
            yield {"inputs": x[lo:lo + 7], "targets": y[lo:lo + 7]}

    a = write_shards(tmp_path / "a", {"train": chunks()}, dataset="heat", shard_size=12)
    b = write_shards(tmp_path / "b", {"train": {"inputs": x, "targets": y}}, dataset="heat",
                     shard_size=12)
    assert [s.sha256 for s in a.splits["train"].shards] == \
        [s.sha256 for s in b.splits["train"].shards]
    assert a.plan_id == b.plan_id and a.splits["train"].num_samples == 50
    inputs, targets = read_rows(a, "train", 0, 50)
    assert np.array_equal(inputs, x) and np.array_equal(targets, y)


def test_class_targets_count_classes_and_a_rewrite_removes_stale_shards(tmp_path):
    out = tmp_path / "out"
    x = np.arange(40, dtype=np.int16).reshape(40, 1)
    labels = np.arange(40) % 4
    write_shards(out, {"train": {"inputs": x, "targets": labels}}, dataset="c",
                 num_classes=4, shard_size=5)
    manifest = write_shards(out, {"train": {"inputs": x, "targets": labels}}, dataset="c",
                            num_classes=4, shard_size=20)
    assert manifest.num_classes == 4 and manifest.splits["train"].class_counts == [10] * 4
    assert sorted(p.name for p in out.glob("*.h5")) == \
        ["train-00000-of-00002.h5", "train-00001-of-00002.h5"]
    inputs, targets = next(iter(ShardedLoader(out, "train", 40, shuffle=False)))
    assert inputs.dtype == torch.int16 and targets.dtype == torch.int64
    assert np.array_equal(targets.numpy(), labels)
    assert read_manifest(out).plan_id == manifest.plan_id


@pytest.mark.parametrize("prefetch", [0, 2])
def test_device_batches_pass_float_fields_through_uncast(written, prefetch):
    """The trainer's batches (ml/batches.py): no uint8 assumption, no normalisation; the
    MNIST path keeps its uint8-on-device arithmetic (tests/ml/test_batches.py)."""
    from itwinai_hpc.ml.batches import DeviceBatches, split_nbytes

    out, manifest, x, y = written
    assert split_nbytes(manifest, "train") == 60 * 2 * (2 * 64 * 64 * 4)
    assert split_nbytes(manifest, "test") == 15 * (2 * 64 * 64 * 4)
    loader = ShardedLoader(out, "train", 8, raw=True, shuffle=False, mode="stream")
    batches = DeviceBatches(loader, "cpu", torch.channels_last, prefetch=prefetch)
    got = list(batches.batches())
    assert len(got) == 8
    inputs = torch.cat([i for i, _ in got])
    assert inputs.dtype == torch.float32 and got[0][0].is_contiguous(
        memory_format=torch.channels_last)
    assert np.array_equal(inputs.numpy(), x[:60])
    assert np.array_equal(torch.cat([t for _, t in got]).numpy(), y[:60])
    test = DeviceBatches(ShardedLoader(out, "test", 8, raw=True, shuffle=False), "cpu",
                         torch.contiguous_format, prefetch=prefetch)
    assert all(t is None for _, t in test.batches())


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_an_odd_split_over_two_ranks_pads_as_for_mnist(written, mode):
    """15 validation samples on 2 ranks: 8 each, rank 1 repeating one, every sample seen."""
    out, _, x, y = written
    seen = []
    for rank in (0, 1):
        loader = ShardedLoader(out, "validation", 3, rank=rank, world_size=2, mode=mode,
                               return_index=True)
        got = list(loader)
        assert len(loader) == 3 and sum(len(i) for i, _, _ in got) == 8
        for inputs, targets, index in got:
            assert np.array_equal(inputs.numpy(), x[60 + index.numpy()])
            assert np.array_equal(targets.numpy(), y[60 + index.numpy()])
            seen += index.tolist()
    assert sorted(set(seen)) == list(range(15)) and len(seen) == 16


def test_importing_the_package_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, itwinai_hpc.data; from itwinai_hpc.data import write_shards; "
            "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'xarray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
