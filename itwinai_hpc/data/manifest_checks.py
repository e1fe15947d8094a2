"""What a shard manifest states must be what its shards hold, or a reader divides by zero,
crashes inside torch or silently miscounts: its description (image shape, class count and
counts, normalization) when it is read, and the shards' arrays against it as they are read.
Each problem is one UserError naming the manifest and the field. Pure: no file is opened here
(shards.py reads; these are its checks).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.dtypes import numeric_dtype

REWRITE = "the manifest does not describe its shards: rerun preprocess to rewrite it"


def dims(shape) -> str:
    """[28, 28] -> '28x28'."""
    return "x".join(str(s) for s in shape)


def _whole(value, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def check_description(m, path: Path) -> None:
    """What the readers and the model compute with: an image shape of positive sizes, a class
    count that every class_counts list agrees with, a finite mean and a std above 0 (the readers
    divide by it). A manifest that lied here divided by zero or crashed inside torch mid-run;
    whether the shards' arrays agree is checked where they are read
    (check_image_shape, check_labels)."""
    where = str(path)
    if m.arrays:
        check_arrays_description(m, where)
    else:
        _check_images(m, where)
    for name, split in m.splits.items():
        entries = [(f"splits.{name}", split.class_counts, split.num_samples)]
        entries += [(f"splits.{name}.shards[{i}]", s.class_counts, s.num_samples)
                    for i, s in enumerate(split.shards)]
        for key, counts, samples in entries:
            _check_counts(m, key, counts, samples, where)


def _check_images(m, where: str) -> None:
    """The uint8-image (MNIST) format's description."""
    shape = m.image_shape
    if not (isinstance(shape, list) and shape and all(_whole(s, 1) for s in shape)):
        raise UserError(f"must be a list of positive whole numbers such as [28, 28], got "
                        f"{shape!r}; {REWRITE}", file=where, field="image_shape")
    if not _whole(m.num_classes, 1):
        raise UserError(f"must be a whole number >= 1, got {m.num_classes!r}; {REWRITE}",
                        file=where, field="num_classes")
    norm = m.normalization
    for key in ("mean", "std"):
        value = norm.get(key) if isinstance(norm, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise UserError(f"must be a finite number, got {value!r}; {REWRITE}", file=where,
                            field=f"normalization.{key}")
    if not norm["std"] > 0:
        raise UserError(f"must be above 0, got {norm['std']!r}: the readers divide the pixels by "
                        "it (0 means every training pixel has the same value, so there is "
                        "nothing to learn from); rerun preprocess with normalization: dataset, "
                        "or with varied data", file=where, field="normalization.std")


def _check_counts(m, key: str, counts, samples, where: str) -> None:
    """A split's or shard's sample count and class counts (none when num_classes is 0)."""
    if not _whole(samples):
        raise UserError(f"must be a whole number >= 0, got {samples!r}; {REWRITE}",
                        file=where, field=f"{key}.num_samples")
    if not (isinstance(counts, list) and all(_whole(c) for c in counts)):
        raise UserError(f"must be a list of whole numbers >= 0, got {counts!r}; "
                        f"{REWRITE}", file=where, field=f"{key}.class_counts")
    if len(counts) != m.num_classes:
        raise UserError(f"the manifest says {m.num_classes} classes, but {key}."
                        f"class_counts counts {len(counts)}; {REWRITE}", file=where,
                        field="num_classes")
    if m.num_classes and sum(counts) != samples:
        raise UserError(f"adds up to {sum(counts)} samples, {key}.num_samples says "
                        f"{samples}; {REWRITE}", file=where, field=f"{key}.class_counts")


def check_shard_entry(shard, split: str, path: Path) -> None:
    """Every reader and stage-shards joins `file` to the manifest's folder (and to the staging
    folder): it must name a file there, never climb out of it or point anywhere else."""
    name = shard.file
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UserError(f"shard name {name!r} in the {split} split is not a plain file name in "
                        "the manifest's folder (no '/', no '..', not empty, no NUL); refused",
                        file=str(path))
    if type(shard.num_bytes) is not int or shard.num_bytes < 0:
        raise UserError(f"shard {name!r}: num_bytes must be a whole number of bytes, got "
                        f"{shard.num_bytes!r}", file=str(path))


def check_image_shape(shape: tuple[int, ...], shard, manifest) -> None:
    if tuple(shape[1:]) != tuple(manifest.image_shape):
        raise UserError(f"the manifest says {dims(manifest.image_shape)} images, shard "
                        f"{shard.file!r} holds {dims(shape[1:])} images; {REWRITE}",
                        file=str(manifest.path), field="image_shape")


def check_labels(labels: np.ndarray, shard, manifest) -> None:
    """Labels read from `shard` must be classes of `manifest` (0..num_classes-1)."""
    n = manifest.num_classes
    if len(labels) and not 0 <= labels.min() <= labels.max() < n:
        bad = labels.max() if labels.max() >= n else labels.min()
        raise UserError(f"the manifest says {n} classes (labels 0..{n - 1}), shard "
                        f"{shard.file!r} holds label {int(bad)}; {REWRITE}",
                        file=str(manifest.path), field="num_classes")


def check_class_counts(manifest, split: str, labels: np.ndarray) -> None:
    """A whole split's labels against the manifest's class_counts for it."""
    counted = np.bincount(labels, minlength=manifest.num_classes).tolist()
    stated = manifest.splits[split].class_counts
    if counted != stated:
        raise UserError(f"says {stated}, the {split} shards' labels count {counted}; {REWRITE}",
                        file=str(manifest.path), field=f"splits.{split}.class_counts")


def check_arrays_description(m, where: str) -> None:
    """The manifest's `arrays` (numeric dtypes, sample shapes of positive sizes, `inputs`
    among them), `image_shape` = the inputs' sample shape, a class count of 0 (targets are not
    classes) or >= 1 with integer scalar targets, and every split holding inputs."""
    if not isinstance(m.arrays, dict) or "inputs" not in m.arrays:
        raise UserError(f"must map array names to dtype and shape, with 'inputs' among them, "
                        f"got {m.arrays!r}; {REWRITE}", file=where, field="arrays")
    for name, spec in m.arrays.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(shape, list) and all(_whole(s, 1) for s in shape)):
            raise UserError(f"must be a list of positive whole numbers, got {shape!r}; "
                            f"{REWRITE}", file=where, field=f"arrays.{name}.shape")
        try:
            numeric_dtype(spec.get("dtype"), what=f"arrays.{name}", where=where)
        except UserError as e:
            raise UserError(f"{e.message}; {REWRITE}", file=where,
                            field=f"arrays.{name}.dtype") from None
    if m.image_shape != m.arrays["inputs"]["shape"]:
        raise UserError(f"must be the inputs' sample shape {m.arrays['inputs']['shape']}, got "
                        f"{m.image_shape!r}; {REWRITE}", file=where, field="image_shape")
    if not _whole(m.num_classes):
        raise UserError(f"must be a whole number >= 0, got {m.num_classes!r}; {REWRITE}",
                        file=where, field="num_classes")
    if m.num_classes:
        target = m.arrays.get("targets")
        if not target or np.dtype(target["dtype"]).kind not in "iu" or target["shape"]:
            raise UserError(f"the manifest says {m.num_classes} classes, but the targets are "
                            f"not one integer per sample ({target!r}); {REWRITE}", file=where,
                            field="num_classes")
    for name, split in m.splits.items():
        held = split.arrays
        if not (isinstance(held, list) and "inputs" in held and set(held) <= set(m.arrays)):
            raise UserError(f"must list the split's arrays, 'inputs' among them, each described "
                            f"in `arrays`, got {held!r}; {REWRITE}", file=where,
                            field=f"splits.{name}.arrays")
