"""A manifest that does not describe its shards (edited by hand, copied beside other shards) is
refused when it is read, or when a reader opens its split, before any batch: one UserError
naming the manifest and the field. It used to divide by zero (a std of 0), fail a numpy
broadcast (another image shape) or crash inside torch (a label beyond num_classes)."""

from __future__ import annotations

import json

import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.dataset import ShardedLoader
from itwinai_hpc.data.shards import MANIFEST_NAME, read_manifest


def _edit(shards, change) -> str:
    path = shards / MANIFEST_NAME
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))
    return str(path)


def _set(key, value):
    def change(d):
        *parents, last = key.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return change


def _all_counts_in_class_0(num_classes: int):
    """Every split and shard counts all its samples as class 0 of `num_classes`."""
    def change(d):
        d["num_classes"] = num_classes
        for split in d["splits"].values():
            for entry in [split, *split["shards"]]:
                entry["class_counts"] = [entry["num_samples"]] + [0] * (num_classes - 1)
    return change


READ_LIES = {
    "std-0": (_set("normalization.std", 0.0), "normalization.std", "above 0"),
    "std-negative": (_set("normalization.std", -0.3), "normalization.std", "above 0"),
    "std-missing": (_set("normalization", {"mean": 0.1}), "normalization.std", "None"),
    "mean-not-a-number": (_set("normalization.mean", "x"), "normalization.mean", "'x'"),
    "no-classes": (_set("num_classes", 0), "num_classes", ">= 1"),
    "num-classes-vs-counts": (_set("num_classes", 12), "num_classes", "counts 10"),
    "image-shape-empty": (_set("image_shape", []), "image_shape", "positive"),
    "image-shape-zero": (_set("image_shape", [28, 0]), "image_shape", "positive"),
    "counts-vs-num-samples": (_set("splits.test.class_counts", [1] * 10),
                              "splits.test.class_counts", "adds up to 10"),
}


@pytest.mark.parametrize("lie", list(READ_LIES))
def test_a_manifest_whose_description_lies_is_refused_when_read(shards, lie):
    change, field, words = READ_LIES[lie]
    path = _edit(shards, change)
    with pytest.raises(UserError) as err:
        read_manifest(shards)
    assert (err.value.file, err.value.field) == (path, field)
    assert words in err.value.message and "rerun preprocess" in err.value.message


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_an_image_shape_the_arrays_lack_is_refused_when_the_reader_opens(shards, mode,
                                                                        monkeypatch):
    from itwinai_hpc.data import dataset

    path = _edit(shards, _set("image_shape", [14, 56]))
    reads = []
    real = dataset.read_shard
    monkeypatch.setattr(dataset, "read_shard", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    with pytest.raises(UserError) as err:
        ShardedLoader(shards, "train", 8, rank=0, world_size=1, mode=mode)
    assert (err.value.file, err.value.field) == (path, "image_shape")
    assert "says 14x56 images" in err.value.message and "holds 28x28" in err.value.message
    if mode == "stream":
        assert reads == []            # the first shard's header only, no rows read


def test_labels_beyond_num_classes_are_refused_when_the_memory_reader_opens(shards):
    path = _edit(shards, _all_counts_in_class_0(5))
    with pytest.raises(UserError) as err:
        ShardedLoader(shards, "train", 8, rank=0, world_size=1, mode="memory")
    assert (err.value.file, err.value.field) == (path, "num_classes")
    assert "5 classes (labels 0..4)" in err.value.message


def test_labels_beyond_num_classes_are_refused_at_the_streamed_shard_that_holds_them(shards):
    path = _edit(shards, _all_counts_in_class_0(5))
    loader = ShardedLoader(shards, "train", 8, rank=0, world_size=1, mode="stream")
    with pytest.raises(UserError) as err:
        next(iter(loader))
    assert (err.value.file, err.value.field) == (path, "num_classes")


def test_class_counts_the_labels_do_not_have_are_refused_when_the_memory_reader_opens(shards):
    path = _edit(shards, _all_counts_in_class_0(10))
    with pytest.raises(UserError) as err:
        ShardedLoader(shards, "validation", 8, rank=0, world_size=1, mode="memory")
    assert (err.value.file, err.value.field) == (path, "splits.validation.class_counts")
