"""Bad input to write_shards and to the uint8-image preprocessing: one UserError naming the
split, the array, its dtype or shape and the expected one; nothing half-written, and a data set
already in the output folder stays readable as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import write_shards
from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.shards import read_manifest


def _fields(n: int, dtype=np.float32) -> np.ndarray:
    return np.arange(n * 2 * 4 * 4, dtype=dtype).reshape(n, 2, 4, 4)


def _nothing_written(out) -> None:
    assert not out.exists() or sorted(os.listdir(out)) == []


@pytest.mark.parametrize("bad, words", [
    ({"train": {"inputs": _fields(10), "targets": np.zeros(9, np.float32)}},
     ["'train'", "different lengths", "inputs: 10", "targets: 9"]),
    ({"train": {"inputs": np.array([object()] * 4)}},
     ["'inputs'", "object", "numeric dtype"]),
    ({"train": {"inputs": np.array(["a", "b"])}}, ["'inputs'", "<U1", "numeric dtype"]),
    ({"train": {"inputs": np.arange(3).astype("datetime64[D]")}},
     ["'inputs'", "datetime64[D]", "numeric dtype"]),
    ({"train": {"inputs": _fields(0)}}, ["'train'", "empty"]),
    ({"train": iter([])}, ["'train'", "empty"]),
    ({"train": {"inputs": _fields(4)}, "test": {"inputs": np.zeros((4, 2, 8, 8), np.float32)}},
     ["'test'", "'inputs'", "8x8", "expected 2x4x4"]),
    ({"train": {"inputs": _fields(4)}, "test": {"inputs": _fields(4, np.float64)}},
     ["'test'", "'inputs'", "float64", "expected float32"]),
    ({"train": {"targets": _fields(4)}}, ["'train'", "'inputs'"]),
    ({"training": {"inputs": _fields(4)}}, ["training", "train, validation, test"]),
])
def test_bad_arrays_are_one_clear_error_and_nothing_is_written(tmp_path, bad, words):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        write_shards(out, bad, dataset="fields", shard_size=3)
    for word in words:
        assert word in str(e.value)
    _nothing_written(out)


def _chunks(shapes_and_dtypes):
    for shape, dtype in shapes_and_dtypes:
        yield {"inputs": np.ones(shape, dtype), "targets": np.ones(shape[0], np.float32)}


@pytest.mark.parametrize("late, words", [
    ([((5, 2, 4, 4), np.float32), ((5, 2, 4, 5), np.float32)],
     ["chunk 1", "'inputs'", "2x4x5", "expected 2x4x4"]),
    ([((5, 2, 4, 4), np.float32), ((5, 2, 4, 4), np.float16)],
     ["chunk 1", "'inputs'", "float16", "expected float32"]),
    ([((5, 2, 4, 4), np.float32), ((5, 2, 4, 4), np.str_)],
     ["chunk 1", "'inputs'", "numeric dtype"]),
])
def test_a_bad_late_chunk_leaves_the_earlier_data_set_as_it_was(tmp_path, late, words):
    """Shards of the good chunks were already written when the bad one came: they go, and the
    data set that was in the folder before is still complete and readable."""
    out = tmp_path / "out"
    before = write_shards(out, {"train": {"inputs": _fields(6)}}, dataset="old", shard_size=4)
    files = sorted(os.listdir(out))
    with pytest.raises(UserError) as e:
        write_shards(out, {"train": _chunks(late)}, dataset="new", shard_size=3)
    for word in words:
        assert word in str(e.value)
    assert sorted(os.listdir(out)) == files
    again = read_manifest(out)
    assert again.plan_id == before.plan_id
    np.testing.assert_array_equal(read_rows(again, "train", 0, 6)[0], _fields(6))


def test_targets_outside_the_classes_are_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        write_shards(out, {"train": {"inputs": _fields(4), "targets": np.array([0, 1, 2, 3])}},
                     dataset="c", num_classes=3)
    assert "'targets' holds 3" in str(e.value) and "0..2" in str(e.value)
    _nothing_written(out)
    with pytest.raises(UserError) as e:
        write_shards(out, {"train": {"inputs": _fields(4), "targets": np.zeros(4, np.float32)}},
                     dataset="c", num_classes=3)
    assert "float32" in str(e.value) and "integer class number" in str(e.value)


def _float_mnist(source: str):
    from itwinai_hpc.data.registry import RawData

    rng = np.random.default_rng(0)
    fields = (280.0 + rng.standard_normal((40, 28, 28))).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    return RawData(fields[:30], labels[:30], fields[30:], labels[30:], source="float kelvin")


def test_preprocess_refuses_float_pixels_instead_of_casting_them_to_uint8(tmp_path):
    """The bug of issue 22: a registered data set returning float32 fields was cast to uint8
    (280.4 K became 24) and preprocess exited 0 with a normal-looking manifest."""
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.registry import DatasetSpec, register_dataset

    register_dataset(DatasetSpec(name="float-kelvin", load=_float_mnist, num_classes=10,
                                 mean=0.5, std=0.25))
    out = tmp_path / "out"
    config = make_config({"dataset": "float-kelvin", "validation_size": 5,
                          "shards": 1})
    with pytest.raises(UserError) as e:
        preprocess("anywhere", out, config, progress=False)
    message = str(e.value)
    assert "train_images" in message and "float32" in message and "uint8" in message
    assert "write_shards" in message
    _nothing_written(out)


def test_an_output_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(UserError) as e:
        write_shards(tmp_path / "out", {"train": {"inputs": _fields(3)}}, dataset="f")
    assert "cannot create the output folder" in str(e.value) and "out" in str(e.value)


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_run(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "out"
    left = out / f".write-shards.{socket.gethostname()}.{dead}.tmp"
    left.mkdir(parents=True)
    (left / "train-00000.h5").write_bytes(b"half")
    write_shards(out, {"train": {"inputs": _fields(3)}}, dataset="f")
    assert not left.exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_masked_array_with_masked_entries_is_refused(tmp_path):
    # netCDF4-python hands out MaskedArrays; the raw values under the mask were stored silently.
    fields = np.ma.masked_equal(_fields(6), 7.0)  # one entry masked
    fields[4, 1] = np.ma.masked  # 16 more
    out = tmp_path / "out"
    for splits, where in (({"train": {"inputs": fields}}, "the split's arrays"),
                          ({"train": iter([{"inputs": _fields(6)}, {"inputs": fields}])},
                           "chunk 1")):
        with pytest.raises(UserError) as e:
            write_shards(out, splits, dataset="fields", shard_size=4)
        for word in ("'train'", "'inputs'", where, "masked array", "17 of 192", "fill", "drop"):
            assert word in str(e.value)
        _nothing_written(out)


def test_a_masked_array_with_nothing_masked_is_stored_as_its_data(tmp_path):
    fields = np.ma.masked_array(_fields(6), mask=False)
    m = write_shards(tmp_path / "out", {"train": {"inputs": fields}}, dataset="f", shard_size=4)
    np.testing.assert_array_equal(read_rows(m, "train", 0, 6)[0], _fields(6))


@pytest.mark.parametrize("fail_on", [".h5.json", "manifest.json"])
def test_a_full_disk_while_publishing_leaves_the_earlier_data_set_as_it_was(
        tmp_path, monkeypatch, fail_on):
    """ENOSPC writing a sidecar or the manifest: the old manifest had already been deleted and
    new shards renamed over the old ones, leaving neither data set."""
    import errno
    import json

    import itwinai_hpc.data.write as write
    from itwinai_hpc.data.shards import sha256_file, sidecar_path

    out = tmp_path / "out"
    before = write_shards(out, {"train": {"inputs": _fields(6)}}, dataset="old", shard_size=3)
    files = sorted(os.listdir(out))
    real = write.write_json

    def full_disk(path, obj):
        if str(path).endswith(fail_on):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    monkeypatch.setattr(write, "write_json", full_disk)
    with pytest.raises(UserError) as e:
        write_shards(out, {"train": {"inputs": _fields(6) + 1}}, dataset="new", shard_size=3)
    assert "No space left" in str(e.value) and "nothing was written" in str(e.value)
    assert sorted(os.listdir(out)) == files
    again = read_manifest(out)
    assert again.plan_id == before.plan_id and again.dataset == "old"
    for info in again.splits["train"].shards:  # every shard verifies against manifest + sidecar
        assert sha256_file(out / info.file) == info.sha256
        assert json.loads(sidecar_path(out / info.file).read_text())["sha256"] == info.sha256
    np.testing.assert_array_equal(read_rows(again, "train", 0, 6)[0], _fields(6))
