"""`preprocess` for NetCDF, Zarr and NumPy sources: the config's `arrays` section picks the
variables that make `inputs` and `targets` (a list stacked as channels, axis 1), its `split`
section the samples of each split (by index or by a coordinate such as time), and the rows go
to write_shards a block at a time, so memory stays about one shard whatever the source's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.config import PreprocessConfig
from itwinai_hpc.data.dtypes import numeric_dtype
from itwinai_hpc.data.gather import release
from itwinai_hpc.data.sources import Source, guess_format, split_indices

BLOCK_BYTES = 16 << 20  # source rows read per step


def _sample_dim(src: Source, config: PreprocessConfig, first: str) -> str:
    split = config.split
    assert split is not None
    if src.format == "numpy":
        if split.dim is not None:
            raise UserError("NumPy files have no named dimensions: the first axis is the "
                            "samples; leave `dim` out", file=str(src.path), field="split.dim")
        return "sample"
    if split.dim is not None:
        return split.dim
    if split.by != "index":
        src.require(split.by, "split.by")
        return src.dims[split.by][0] if src.dims[split.by] else split.by
    return src.dims[first][0]


def _check_variables(src: Source, names: dict[str, list[str]], dim: str) -> int:
    """Every variable has the sample dimension; a stacked list agrees in dtype and shape; all
    have the same number of samples, which is returned."""
    where, n = str(src.path), None
    for key, variables in names.items():
        first = None
        for v in variables:
            src.require(v, f"arrays.{key}")
            src.check_raw(v, f"arrays.{key}")
            if dim not in src.dims[v]:
                raise UserError(f"variable {v!r} has dimensions {src.dims[v]}, without the "
                                f"sample dimension {dim!r}", file=where, field=f"arrays.{key}")
            dtype = numeric_dtype(src.var[v].dtype, what=f"variable {v!r}",  # type: ignore[attr-defined]
                                  where=where)
            shape = tuple(np.shape(src.var[v]))
            size = src.length(v, dim)
            other = tuple(s for d, s in zip(src.dims[v], shape) if d != dim)
            if first is not None and (dtype, other) != first[1:]:
                raise UserError(f"variables {first[0]!r} ({first[1]}, {first[2]}) and {v!r} "
                                f"({dtype}, {other}) cannot be stacked as channels: they need "
                                "the same dtype and shape (nothing is converted)", file=where,
                                field=f"arrays.{key}")
            first = first or (v, dtype, other)
            if n is not None and size != n:
                raise UserError(f"variable {v!r} has {size} samples along {dim!r}, the others "
                                f"{n}", file=where, field=f"arrays.{key}")
            n = size
    assert n is not None
    return n


def _blocks(src: Source, names: dict[str, list[str]], dim: str, lo: int, hi: int,
            stack: dict[str, bool]) -> Iterator[dict[str, np.ndarray]]:
    row_bytes = sum(src.var[v].dtype.itemsize  # type: ignore[attr-defined]
                    * math.prod(np.shape(src.var[v])) // max(1, src.length(v, dim))
                    for vs in names.values() for v in vs)
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        block, views = {}, []
        for key, variables in names.items():
            parts = [src.rows(v, dim, a, b) for v in variables]
            block[key] = np.stack(parts, axis=1) if stack[key] else parts[0]
            views += parts
        yield block
        for view in views:  # copied by now: a mapped .npy's pages go back to the kernel
            release(view)


def preprocess_files(source: str, output: str | Path, config: PreprocessConfig):
    """Write the shards + manifest of a NetCDF, Zarr or NumPy source; returns the manifest."""
    from itwinai_hpc.data.write import write_shards

    assert config.arrays is not None and config.split is not None
    path = Path(source)
    src = Source(path, guess_format(path, config.format))
    try:
        names = {k: config.arrays.variables(k) for k in ("inputs", "targets")}
        names = {k: v for k, v in names.items() if v}
        stack = {k: not isinstance(getattr(config.arrays, k), str) for k in names}
        dim = _sample_dim(src, config, names["inputs"][0])
        n = _check_variables(src, names, dim)
        ranges = split_indices(src, config.split, n, dim)
        dataset = config.dataset if "dataset" in config.model_fields_set else path.stem
        described = ", ".join(f"{k} = {'stacked ' if stack[k] else ''}{'+'.join(v)}"
                              for k, v in names.items())
        return write_shards(
            output, {s: _blocks(src, names, dim, lo, hi, stack) for s, (lo, hi) in
                     ranges.items()},
            dataset=dataset, shard_size=config.shard_size, compression=config.compression,
            source=f"{src.format} {path.resolve()}: {described}; samples along {dim!r}, "
                   + ", ".join(f"{s} [{lo}, {hi})" for s, (lo, hi) in ranges.items()))
    finally:
        src.close()
