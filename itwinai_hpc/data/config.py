"""The preprocessing config (YAML) as a frozen pydantic model, validated with the YAML's line
numbers by itwinai_hpc.core.validation, so a bad key reads `FILE:LINE: key: message` as it does in
every other config of the project. Reads a file; computes nothing.

Keys (all optional; the defaults suit MNIST on a laptop):

    dataset: mnist            # a registered data set name (itwinai_hpc.data.registry)
    validation_size: 10000    # samples taken from train for validation: a count, or a
                              # fraction in (0, 1)
    shards: {train: 4, validation: 1, test: 1}   # shards per split (or one int for all)
    seed: 0                   # drives the train/validation split; same seed, same bytes
    compression: none         # none | gzip | lzf
    chunk_rows: 256           # HDF5 chunk = this many whole images
    normalization: dataset    # dataset (published mean/std) | computed (from the train split)

NetCDF, Zarr and NumPy sources (source_config.py): `arrays` (variables -> inputs/targets),
`split` (by index or a coordinate), `format`, `shard_size`; with `arrays`, `dataset` is only the
name recorded in the manifest (default: the source's file name) and the image-only keys
(validation_size, shards, chunk_rows, normalization) are refused.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from itwinai_hpc.core.config_file import read_config
from itwinai_hpc.core.errors import UserError, UserErrors
from itwinai_hpc.core.validation import validate_model
from itwinai_hpc.core.yamlsrc import YamlDoc
from itwinai_hpc.data.shards import COMPRESSIONS
from itwinai_hpc.data.source_config import ArraysSection, FormatName, SplitSection

SPLITS = ("train", "validation", "test")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class PreprocessConfig(BaseModel):
    """What `itwinai-hpc preprocess` writes. Frozen: it is hashed into the shards' plan id."""

    # strict: YAML already types its values, so `seed: "1"` or `chunk_rows: true` is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    dataset: str = "mnist"
    validation_size: int | float = 10000
    shards: dict[str, int] = Field(default_factory=lambda: {s: n for s, n in
                                                            zip(SPLITS, (4, 1, 1))})
    seed: int = 0
    compression: str = "none"
    chunk_rows: Annotated[int, Field(ge=1)] = 256
    normalization: Literal["dataset", "computed"] = "dataset"
    # NetCDF, Zarr or NumPy source: which variables make `inputs` and `targets`
    arrays: ArraysSection | None = None
    # with `arrays`: the samples of each split, by index or by a coordinate such as time
    split: SplitSection | None = None
    # with `arrays`: the source's format (default: from its file name)
    format: FormatName | None = None
    # with `arrays`: samples per shard, or bytes such as 256MB (the default)
    shard_size: Annotated[int, Field(ge=1)] | str | None = None

    @field_validator("validation_size", mode="before")
    @classmethod
    def _count_or_fraction(cls, size: Any) -> Any:
        if (_is_int(size) and size >= 1) or (isinstance(size, float) and 0 < size < 1):
            return size
        raise ValueError(f"must be a sample count >= 1 or a fraction in (0, 1), got {size!r}; "
                         "an empty validation split is not allowed")

    @field_validator("shards", mode="before")
    @classmethod
    def _per_split(cls, shards: Any) -> Any:
        if _is_int(shards):
            shards = {split: shards for split in SPLITS}
        if not isinstance(shards, dict):
            raise ValueError("must be an integer or a mapping {train: N, validation: N, test: N}")
        for split, n in shards.items():
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
            if not _is_int(n) or n < 1:
                raise ValueError(f"{split}: must be an integer >= 1, got {n!r}")
        return {split: shards.get(split, 1) for split in SPLITS}

    @field_validator("compression", mode="before")
    @classmethod
    def _known_compression(cls, value: Any) -> Any:
        if value is None or value is False:
            value = "none"  # YAML reads a bare `none` or `no` as null or false
        if value not in COMPRESSIONS:
            raise ValueError(f"must be one of {', '.join(COMPRESSIONS)}, got {value!r}")
        return value

    def as_dict(self) -> dict:
        return self.model_dump(exclude_none=True)  # an image config's plan id as before

    def validation_count(self, num_train: int) -> int:
        if isinstance(self.validation_size, float):
            return int(round(self.validation_size * num_train))
        return self.validation_size


KEYS = tuple(PreprocessConfig.model_fields)


IMAGE_ONLY = ("validation_size", "shards", "chunk_rows", "normalization")
ARRAYS_ONLY = ("split", "format", "shard_size")


def _validated(doc: YamlDoc) -> PreprocessConfig:
    try:
        config = validate_model(PreprocessConfig, doc)
    except UserErrors as e:
        if len(e.errors) == 1:  # one problem: the error itself, so callers see file/line/field
            raise e.errors[0] from None
        raise
    errors = []
    for key in IMAGE_ONLY if config.arrays else ARRAYS_ONLY:
        if key in config.model_fields_set:
            file, line = doc.where((key,))
            why = ("is for registered image data sets; with `arrays:` choose samples with "
                   "`split:` and the shard size with `shard_size:`" if config.arrays else
                   "needs an `arrays:` section (a NetCDF, Zarr or NumPy source)")
            errors.append(UserError(why, file=file, line=line, field=key))
    if config.arrays and config.split is None:
        file, line = doc.where(("arrays",))
        errors.append(UserError("needs a `split:` section saying which samples go into train, "
                                "validation and test (by: index, or by a coordinate such as "
                                "time)", file=file, line=line, field="split"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)
    return config


def make_config(values: dict, *, file: str | None = None,
                lines: dict[str, int] | None = None) -> PreprocessConfig:
    """Validate `values` (e.g. parsed YAML; `lines` maps top-level keys to their line) into a
    config; every problem names file and key."""
    doc = YamlDoc(file=file or "<config>", data=dict(values),
                  lines={(key,): line for key, line in (lines or {}).items()})
    return _validated(doc)


def load_config(path: str | os.PathLike | None) -> PreprocessConfig:
    """The config in a YAML file, or the defaults when `path` is None or the file is empty."""
    return _validated(read_config(path))
