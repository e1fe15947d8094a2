"""The preprocessing config (YAML) and its validation. Reads a file; computes nothing.

Keys (all optional; the defaults suit MNIST on a laptop):

    dataset: mnist            # a registered data set name (itwinai_hpc.data.registry)
    validation_size: 10000    # samples taken from train for validation: a count, or a
                              # fraction in (0, 1)
    shards: {train: 4, validation: 1, test: 1}   # shards per split (or one int for all)
    seed: 0                   # drives the train/validation split; same seed, same bytes
    compression: none         # none | gzip | lzf
    chunk_rows: 256           # HDF5 chunk = this many whole images
    normalization: dataset    # dataset (published mean/std) | computed (from the train split)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from itwinai_hpc.data.shards import COMPRESSIONS
from itwinai_hpc.errors import UserError

SPLITS = ("train", "validation", "test")
NORMALIZATIONS = ("dataset", "computed")


def _default_shards() -> dict[str, int]:
    return {"train": 4, "validation": 1, "test": 1}


@dataclass(frozen=True)
class PreprocessConfig:
    dataset: str = "mnist"
    validation_size: int | float = 10000
    shards: dict[str, int] = field(default_factory=_default_shards)
    seed: int = 0
    compression: str = "none"
    chunk_rows: int = 256
    normalization: str = "dataset"

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def validation_count(self, num_train: int) -> int:
        if isinstance(self.validation_size, float):
            return int(round(self.validation_size * num_train))
        return self.validation_size


KEYS = tuple(f.name for f in fields(PreprocessConfig))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def make_config(values: dict, *, file: str | None = None,
                lines: dict[str, int] | None = None) -> PreprocessConfig:
    """Validate `values` (e.g. parsed YAML) into a config; every problem names file and key."""
    lines = lines or {}

    def fail(key: str, message: str) -> UserError:
        return UserError(message, file=file, line=lines.get(key), field=key)

    for key in values:
        if key not in KEYS:
            raise fail(str(key), f"unknown key {key!r}; valid keys: {', '.join(KEYS)}")
    v = dict(values)
    if "dataset" in v and not isinstance(v["dataset"], str):
        raise fail("dataset", "must be a data set name such as 'mnist'")
    if "validation_size" in v:
        size = v["validation_size"]
        if not ((_is_int(size) and size >= 1) or (isinstance(size, float) and 0 < size < 1)):
            raise fail("validation_size", f"must be a sample count >= 1 or a fraction in (0, 1), "
                                          f"got {size!r}; an empty validation split is not allowed")
    if "shards" in v:
        shards = v["shards"]
        if _is_int(shards):
            shards = {split: shards for split in SPLITS}
        if not isinstance(shards, dict):
            raise fail("shards", "must be an integer or a mapping {train: N, validation: N, test: N}")
        for split, n in shards.items():
            if split not in SPLITS:
                raise fail("shards", f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
            if not _is_int(n) or n < 1:
                raise fail("shards", f"{split}: must be an integer >= 1, got {n!r}")
        v["shards"] = {**{split: 1 for split in SPLITS}, **shards}
    if "seed" in v and not _is_int(v["seed"]):
        raise fail("seed", f"must be an integer, got {v['seed']!r}")
    if "compression" in v:
        if v["compression"] is None or v["compression"] is False:
            v["compression"] = "none"  # YAML reads a bare `none`/`no` as null/false
        if v["compression"] not in COMPRESSIONS:
            raise fail("compression", f"must be one of {', '.join(COMPRESSIONS)}, "
                                      f"got {v['compression']!r}")
    if "chunk_rows" in v and not (_is_int(v["chunk_rows"]) and v["chunk_rows"] >= 1):
        raise fail("chunk_rows", f"must be an integer >= 1, got {v['chunk_rows']!r}")
    if "normalization" in v and v["normalization"] not in NORMALIZATIONS:
        raise fail("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, "
                                    f"got {v['normalization']!r}")
    return PreprocessConfig(**v)


def load_config(path: str | os.PathLike | None) -> PreprocessConfig:
    """The config in a YAML file, or the defaults when `path` is None."""
    if path is None:
        return PreprocessConfig()
    path = Path(path)
    try:
        text = path.read_text()
        node = yaml.compose(text)
        values = yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError("config file not found", file=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", file=str(path),
                        line=mark.line + 1 if mark else None) from None
    if values is None:
        return PreprocessConfig()
    if not isinstance(values, dict):
        raise UserError("a preprocessing config must be a mapping of keys "
                        f"({', '.join(KEYS)})", file=str(path))
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    return make_config(values, file=str(path), lines=lines)
