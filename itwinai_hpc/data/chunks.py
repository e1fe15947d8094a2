"""What a use case hands write_shards, as checked chunks: a split is a mapping of named arrays
(in memory, np.memmap, or anything with shape, dtype and row slicing: h5py, zarr) or an
iterator of such mappings. Every chunk is checked before any of its rows is kept: numeric
dtypes, one length per chunk, the same names, dtypes and sample shapes throughout (across chunks
and across splits). Nothing is converted: a mismatch is a UserError naming the split, the array,
its dtype or shape and the expected one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.dtypes import numeric_dtype
from itwinai_hpc.data.gather import release
from itwinai_hpc.data.manifest_checks import dims
from itwinai_hpc.data.shards import COMPRESSIONS

SPLITS = ("train", "validation", "test")
BLOCK_BYTES = 16 << 20  # rows taken from an array per step
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Spec = dict[str, tuple[np.dtype, tuple[int, ...]]]  # name -> (dtype, sample shape)


def _array(value, what: str, where: str = ""):
    if isinstance(value, np.ma.MaskedArray):  # netCDF4-python's default: the mask would go
        masked = int(np.ma.count_masked(value))
        if masked:
            raise UserError(f"{what} ({where}) is a masked array with {masked} of "
                            f"{value.size} entries masked (missing); shards store values, not "
                            "masks: fill the masked entries (array.filled(value)) or drop "
                            "those samples")
        value = value.data  # no entry masked: its values are the data
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__"):
        arr = value
    elif isinstance(value, (list, tuple)):
        arr = np.asarray(value)
    else:
        raise UserError(f"{what} is a {type(value).__name__}, expected an array (numpy, "
                        "np.memmap, h5py or zarr) with samples along the first axis")
    if len(arr.shape) == 0:
        raise UserError(f"{what} is a scalar, expected an array with samples along the first "
                        "axis")
    return arr


def check_chunk(split: str, chunk, spec: Spec | None, where: str) -> tuple[dict, Spec, int]:
    """(arrays, their spec, row count) of one chunk of `split`, checked against `spec` (the
    first chunk's, or another split's; None: this chunk sets it)."""
    if not isinstance(chunk, Mapping) or not chunk:
        raise UserError(f"split {split!r}: {where} is {type(chunk).__name__}, expected a "
                        "mapping of names to arrays such as {'inputs': X, 'targets': Y}")
    if "inputs" not in chunk:
        raise UserError(f"split {split!r}: {where} has arrays {sorted(chunk)}, expected "
                        "'inputs' among them (and optionally 'targets')")
    arrays, got, rows = {}, {}, {}
    for name, value in chunk.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"split {split!r}: array name {name!r} is not a plain identifier")
        what = f"split {split!r}: array {name!r}"
        arrays[name] = _array(value, what, where)
        dt = numeric_dtype(arrays[name].dtype, what=f"{what} ({where})")
        got[name] = (dt, tuple(int(s) for s in arrays[name].shape[1:]))
        rows[name] = int(arrays[name].shape[0])
    if len(set(rows.values())) > 1:
        lengths = ", ".join(f"{n}: {r}" for n, r in rows.items())
        raise UserError(f"split {split!r}: arrays of different lengths in {where} ({lengths}); "
                        "every array needs one row per sample")
    if spec is not None:
        for name, (dt, shape) in got.items():
            if name not in spec:  # a split may lack targets (or add them): merge_spec
                continue
            want_dt, want_shape = spec[name]
            if dt != want_dt:
                raise UserError(f"split {split!r}: array {name!r} has dtype {dt} in {where}, "
                                f"expected {want_dt} as elsewhere; no array is converted")
            if shape != want_shape:
                raise UserError(f"split {split!r}: array {name!r} has samples of shape "
                                f"{dims(shape) or 'scalar'} in {where}, expected "
                                f"{dims(want_shape) or 'scalar'} as elsewhere")
    return arrays, got, next(iter(rows.values()))


def _rows(array, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
    if isinstance(array, np.ndarray):  # a view: copied once, into the shard's buffer
        return array[lo:hi]
    return np.asarray(array[lo:hi], dtype=dtype)


def blocks(split: str, data, spec: Spec | None) -> tuple[Spec, Iterator[dict[str, np.ndarray]]]:
    """(the split's spec, its rows as in-memory blocks of named arrays). A mapping of arrays is
    checked whole here (length, dtype, shape) and read BLOCK_BYTES at a time; an iterator's
    chunks are checked as they come (its first one here)."""
    if isinstance(data, Mapping):
        arrays, got, n = check_chunk(split, data, spec, "the split's arrays")
        if n == 0:
            raise UserError(f"split {split!r} is empty (0 samples); leave it out or give it "
                            "samples")
        row_bytes = max(1, sum(dt.itemsize * int(np.prod(s)) for dt, s in got.values()))
        step = max(1, BLOCK_BYTES // row_bytes)

        def sliced() -> Iterator[dict[str, np.ndarray]]:
            for lo in range(0, n, step):
                block = {k: _rows(a, lo, min(n, lo + step), got[k][0]) for k, a in arrays.items()}
                yield block
                for rows in block.values():  # copied by now: a mapped file's pages go back
                    release(rows)
        return got, sliced()
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise UserError(f"split {split!r} is a {type(data).__name__}, expected a mapping of "
                        "arrays or an iterator of such mappings (chunks)")
    chunks = iter(data)
    first = next(chunks, None)
    if first is None:
        raise UserError(f"split {split!r} is empty (its iterator yielded no chunk)")
    arrays, got, _ = check_chunk(split, first, spec, "chunk 0")

    def checked() -> Iterator[dict[str, np.ndarray]]:
        yield {k: np.asarray(a) for k, a in arrays.items()}
        for i, chunk in enumerate(chunks, 1):
            more, more_spec, _ = check_chunk(split, chunk, got, f"chunk {i}")
            if set(more_spec) != set(got):
                raise UserError(f"split {split!r}: chunk {i} has arrays {sorted(more_spec)}, "
                                f"chunk 0 had {sorted(got)}; every chunk needs the same ones")
            yield {k: np.asarray(a) for k, a in more.items()}
    return got, checked()


def merge_spec(spec: Spec | None, split: str, got: Spec) -> Spec:
    """The data set's spec after `split` (whose arrays were checked against `spec`)."""
    merged = dict(spec or {})
    for name, value in got.items():
        if name in merged and merged[name] != value:
            raise UserError(f"split {split!r}: array {name!r} is {value[0]} "
                            f"{dims(value[1]) or 'scalar'}, expected {merged[name][0]} "
                            f"{dims(merged[name][1]) or 'scalar'} as in the other splits")
        merged.setdefault(name, value)
    return merged


def check_options(dataset: str, num_classes: int, compression: str) -> None:
    if not isinstance(dataset, str) or not dataset:
        raise UserError(f"dataset must be a non-empty name, got {dataset!r}", field="dataset")
    if type(num_classes) is not int or num_classes < 0:
        raise UserError(f"num_classes must be a whole number >= 0, got {num_classes!r}",
                        field="num_classes")
    if compression not in COMPRESSIONS:
        raise UserError(f"compression must be one of {', '.join(COMPRESSIONS)}, got "
                        f"{compression!r}", field="compression")


def check_classes(spec: Spec, num_classes: int) -> None:
    if not num_classes:
        return
    target = spec.get("targets")
    if target is None or target[0].kind not in "iu" or target[1]:
        got = "none" if target is None else f"{target[0]} {target[1] or 'scalar'}"
        raise UserError(f"num_classes={num_classes} needs targets of one integer class number "
                        f"per sample; array 'targets' is {got}", field="num_classes")
