"""The preprocessing config's sections for NetCDF, Zarr and NumPy sources (see README.md,
"Preprocess NetCDF, Zarr and NumPy files"): which variables make the `inputs` and `targets`
arrays, and which samples go into which split, by index or by a coordinate such as time.

    arrays:
      inputs: [temperature, humidity]   # a list stacks variables as channels (axis 1)
      targets: temperature_next         # one name: that variable as it is; optional
    split:
      by: time                          # a coordinate; or `index` (the default)
      train: [2020-01-01, 2020-09-30]   # coordinate ranges include both ends
      validation: [2020-10-01, 2020-11-15]
      test: [2020-11-16, 2020-12-31]
    format: netcdf                      # netcdf | zarr | numpy; default: from the file name
    shard_size: 256MB                   # bytes, or a sample count

Pure pydantic models; the sources are read in sources.py.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

FORMATS = ("netcdf", "zarr", "numpy")
SPLIT_NAMES = ("train", "validation", "test")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
Bound = int | float | str | dt.date | dt.datetime


def _names(value: Any) -> Any:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ValueError(f"must be a variable name or a non-empty list of names, got {value!r}")
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name")
    if len(set(names)) != len(names):
        raise ValueError(f"names a variable twice: {names}")
    return value


class ArraysSection(BaseModel):
    """Variables -> the shards' `inputs` and `targets` arrays. A list stacks its variables
    along a new axis 1 (channels); one name keeps that variable's shape."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # a variable, or a list of variables stacked as channels (axis 1)
    inputs: str | list[str]
    # as inputs; optional (a split without targets serves None)
    targets: str | list[str] | None = None

    @field_validator("inputs", "targets", mode="before")
    @classmethod
    def _check_names(cls, value: Any) -> Any:
        return value if value is None else _names(value)

    def variables(self, which: str) -> list[str]:
        value = getattr(self, which)
        return [] if value is None else [value] if isinstance(value, str) else list(value)


class SplitSection(BaseModel):
    """Which samples go into which split: by `index` ([start, end) as in Python slices) or by
    a coordinate of the sample dimension ([first, last], both included, as xarray's sel)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # `index`, or a coordinate (a 1-D, increasing variable) such as time
    by: str = "index"
    # the sample dimension (default: `by`'s dimension, else the first input's first)
    dim: str | None = None
    # [start, end): indices; [first, last]: coordinate values such as 2020-01-31T18:00
    train: list[Bound] | None = None
    # as train; ranges must not overlap
    validation: list[Bound] | None = None
    # as train
    test: list[Bound] | None = None

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _range(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"must be a range [start, end], got {value!r}")
        for bound in value:
            if isinstance(bound, bool) or not isinstance(bound, (int, float, str, dt.date)):
                raise ValueError(f"{bound!r} is not a bound: write an index, a number or a "
                                 "date/time")
        start, end = value
        if info.data.get("by", "index") == "index" and \
                (not all(type(b) is int for b in value) or not 0 <= start < end):
            raise ValueError(f"index ranges are [start, end) with whole numbers 0 <= start < "
                             f"end, got [{start}, {end}] (to split by a coordinate such as "
                             "time, set `by:`)")
        return value

    @model_validator(mode="after")
    def _some(self) -> SplitSection:
        if not self.ranges():
            raise ValueError("names no split: give train, validation and/or test ranges")
        return self

    def ranges(self) -> dict[str, list]:
        return {s: getattr(self, s) for s in SPLIT_NAMES if getattr(self, s) is not None}


FormatName = Literal["netcdf", "zarr", "numpy"]
