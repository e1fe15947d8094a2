"""The registry of data sets preprocessing can read, by name: a second data set is one new
module that calls `register_dataset`, with no change to the preprocessing or the reader."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from itwinai_hpc.core.errors import UserError


@dataclass
class RawData:
    """A data set as read from its source: train (incl. what becomes validation) and test.

    The image arrays may be memory-mapped (np.memmap): preprocessing takes rows from them block
    by block and never holds a whole array, so a source larger than memory is fine. A source
    that yields records should write them to a file once and map it (as IDX files are)."""

    train_images: np.ndarray  # uint8 N×H×W, in memory or memory-mapped
    train_labels: np.ndarray  # integer N (held in memory: a few bytes a sample)
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # a sentence saying where it came from, written into the manifest
    # A cheap identity of the source's content (e.g. file names, sizes, mtimes) that changes
    # whenever the content does; None: the shard plan hashes the images themselves.
    fingerprint: str | None = None


@dataclass
class DatasetSpec:
    """How to read one data set, and the constants the reader needs."""

    name: str
    load: Callable[[str], RawData]  # source (folder or source name) -> RawData
    num_classes: int
    # Published normalisation constants on the 0..1 scale; None means "compute from train".
    mean: float | None = None
    std: float | None = None
    sources: tuple[str, ...] = field(default=())  # named sources besides a folder, for messages


_REGISTRY: dict[str, DatasetSpec] = {}
# Built-in data sets are imported on first use, so the registry stays cheap to import.
_BUILTIN_MODULES = {"mnist": "itwinai_hpc.data.mnist"}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset(name: str, *, file: str | None = None) -> DatasetSpec:
    """The spec registered under `name`; an unknown name is a UserError listing the valid ones."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        valid = ", ".join(sorted(set(_REGISTRY) | set(_BUILTIN_MODULES)))
        raise UserError(f"unknown dataset {name!r}; valid datasets: {valid}", file=file,
                        field="dataset")
    return _REGISTRY[name]


def check_raw(raw: RawData, spec: DatasetSpec) -> None:
    """A registered data set's arrays are what the uint8-image shards hold: uint8 pixels and
    integer labels. Anything else is refused, never cast (a float32 field of 280.4 K became 24
    when it was): such data goes through write_shards, which stores any numeric dtype."""
    for name in ("train_images", "test_images", "train_labels", "test_labels"):
        array = getattr(raw, name)
        dtype = getattr(array, "dtype", None)
        want = "uint8" if name.endswith("images") else "an integer dtype"
        ok = dtype == np.uint8 if name.endswith("images") else \
            dtype is not None and dtype.kind in "iu"
        if not ok:
            raise UserError(f"data set {spec.name!r} returned {name} of dtype {dtype}, expected "
                            f"{want}: the image shards hold uint8 pixels and nothing is "
                            "converted silently; for other data (float fields, regression "
                            "targets) write shards with itwinai_hpc.data.write_shards, or "
                            "preprocess NetCDF/Zarr/NumPy files with a `variables:` config",
                            field=name)
