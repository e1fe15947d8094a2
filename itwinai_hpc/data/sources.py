"""NetCDF, Zarr and NumPy files as variables read a block of samples at a time: NetCDF (h5netcdf
engine) and Zarr through xarray without loading anything (its lazy backend arrays read only
the rows asked for), `.npy` files memory-mapped. xarray, h5netcdf and zarr are the `formats`
extra, imported on first use. Which variables make the shards' arrays and which samples each
split takes come from the config's `arrays` and `split` sections (source_config.py).
"""

from __future__ import annotations

import datetime as dt
import importlib
import warnings
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError

SUFFIXES = {".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".h5": "netcdf",
            ".zarr": "zarr", ".npy": "numpy", ".npz": "numpy"}
EXTRA = "pip install 'itwinai-hpc[formats]'"
CF_PACKING = ("scale_factor", "add_offset", "_Unsigned")  # CF attributes that change values


def _need(module: str, fmt: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"reading {fmt} needs the Python package {module!r}, which is not "
                        f"installed; {EXTRA} (xarray, h5netcdf, zarr)") from None


def guess_format(path: Path, given: str | None) -> str:
    if given:
        return given
    if path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()]
    if path.is_dir() and ((path / ".zgroup").exists() or (path / "zarr.json").exists()):
        return "zarr"
    if path.is_dir() and any(path.glob("*.npy")):
        return "numpy"
    raise UserError("cannot tell the source's format from its name; set `format:` (netcdf, "
                    "zarr or numpy) in the config", file=str(path), field="format")


class Source:
    """Named variables, each samples-first: `dims[name]` (dimension names, the sample one
    first), `var[name]` (sliceable along the first axis), `coords[name]` (1-D)."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.format = path, fmt
        self.var: dict[str, object] = {}
        self.dims: dict[str, tuple[str, ...]] = {}
        if not path.exists():
            raise UserError("source not found", file=str(path))
        if fmt == "numpy":
            self._open_numpy()
        else:
            self._open_xarray()

    def _open_xarray(self) -> None:
        xr = _need("xarray", self.format)
        _need("h5netcdf" if self.format == "netcdf" else "zarr", self.format)
        engine = "h5netcdf" if self.format == "netcdf" else "zarr"
        try:
            with warnings.catch_warnings():  # a store without consolidated metadata is fine
                warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
                # chunks=None: no dask; variables stay lazy backend arrays, read on slicing.
                # mask_and_scale=False: values as stored (no unpacking to float64, no fill
                # value turned into NaN); packed variables are refused in `check_raw`.
                self.dataset = xr.open_dataset(self.path, engine=engine, chunks=None,
                                               mask_and_scale=False, decode_timedelta=False)
        except Exception as e:  # noqa: BLE001 - any backend's refusal is the user's file
            raise UserError(f"not a readable {self.format} source ({type(e).__name__}: {e})",
                            file=str(self.path)) from None
        for name, da in self.dataset.variables.items():
            self.var[str(name)] = da
            self.dims[str(name)] = tuple(str(d) for d in da.dims)

    def _open_numpy(self) -> None:
        p = self.path
        files = sorted(p.glob("*.npy")) if p.is_dir() else [p]
        try:
            for f in files:
                if f.suffix == ".npz":
                    with np.load(f, allow_pickle=False) as z:  # zip: read whole, once
                        for name in z.files:
                            self.var[name] = z[name]
                else:
                    self.var[f.stem] = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"not a readable NumPy file ({e})", file=str(p)) from None
        self.dims = {k: tuple(f"axis{i}" if i else "sample" for i in range(np.ndim(v)))
                     for k, v in self.var.items()}

    def close(self) -> None:
        if hasattr(self, "dataset"):
            self.dataset.close()

    def require(self, name: str, field: str) -> None:
        if name not in self.var:
            raise UserError(f"no variable {name!r} in the source; it has "
                            f"{', '.join(sorted(self.var)) or 'none'}", file=str(self.path),
                            field=field)

    def check_raw(self, name: str, field: str) -> None:
        """Refuse a variable whose stored values are not its values: CF packing (scale_factor,
        add_offset, _Unsigned) or a fill value other than NaN (missing entries). Storing it
        raw would hide that; unpacking it would convert it: the user decides."""
        attrs = getattr(self.var[name], "attrs", {})
        packed = {k: attrs[k] for k in CF_PACKING if k in attrs}
        for key in ("_FillValue", "missing_value"):
            if key in attrs and not np.all(np.isnan(np.asarray(attrs[key], dtype=float))):
                packed[key] = attrs[key]
        if packed:
            shown = ", ".join(f"{k}={np.asarray(v).tolist()!r}" for k, v in packed.items())
            raise UserError(
                f"variable {name!r} ({self.var[name].dtype}) is stored packed or with "  # type: ignore[attr-defined]
                f"missing entries ({shown}); preprocess copies values exactly and does not "
                "unpack or mask them. Write the values you want (unpacked, missing entries "
                "filled or dropped) to a new file, or pass your own arrays to write_shards",
                file=str(self.path), field=field)

    def rows(self, name: str, dim: str, lo: int, hi: int) -> np.ndarray:
        v = self.var[name]
        if self.format == "numpy":  # of a .npy: a view of the mapped file (gather.release)
            return v[lo:hi]  # type: ignore[index]
        return np.asarray(v.isel({dim: slice(lo, hi)}).transpose(dim, ...).values)  # type: ignore[attr-defined]

    def length(self, name: str, dim: str) -> int:
        return int(np.shape(self.var[name])[self.dims[name].index(dim)])

    def coordinate(self, name: str, field: str) -> np.ndarray:
        self.require(name, field)
        values = np.asarray(self.var[name][:] if self.format == "numpy" else
                            self.var[name].values)  # type: ignore[attr-defined]
        if values.ndim != 1:
            raise UserError(f"coordinate {name!r} has {values.ndim} dimensions, expected 1 "
                            "(one value per sample)", file=str(self.path), field=field)
        if len(values) > 1 and not bool(np.all(values[1:] > values[:-1])):
            raise UserError(f"coordinate {name!r} is not strictly increasing; a split by it "
                            "needs sorted values", file=str(self.path), field=field)
        return values


def _as_coordinate_value(bound, coord: np.ndarray, where: str, field: str):
    try:
        if coord.dtype.kind == "M":
            value = bound if not isinstance(bound, dt.date) else bound.isoformat()
            return np.datetime64(value)
        if isinstance(bound, (str, dt.date)):
            raise ValueError("not a number")
        return coord.dtype.type(bound)
    except ValueError:
        raise UserError(f"{bound!r} is not a value of the coordinate (dtype {coord.dtype}, "
                        f"from {coord[0]} to {coord[-1]})", file=where, field=field) from None


def split_indices(source: Source, split, n: int, dim: str) -> dict[str, tuple[int, int]]:
    """{split: (lo, hi)} sample ranges; coordinate ranges include both ends. A range that
    selects nothing, runs past the data or overlaps another is an error naming it."""
    where, out = str(source.path), {}
    coord = source.coordinate(split.by, "split.by") if split.by != "index" else None
    for name, (start, end) in split.ranges().items():
        field = f"split.{name}"
        if coord is None:
            lo, hi = start, end
            if hi > n:
                raise UserError(f"range [{start}, {end}) runs past the source's {n} samples "
                                f"along {dim!r}", file=where, field=field)
        else:
            a = _as_coordinate_value(start, coord, where, field)
            b = _as_coordinate_value(end, coord, where, field)
            lo = int(np.searchsorted(coord, a, side="left"))
            hi = int(np.searchsorted(coord, b, side="right"))
            if lo >= hi:
                raise UserError(f"[{start}, {end}] selects no sample: {split.by!r} runs from "
                                f"{coord[0]} to {coord[-1]}", file=where, field=field)
        out[name] = (lo, hi)
    ordered = sorted(out.items(), key=lambda kv: kv[1])
    for (a, (_, a_hi)), (b, (b_lo, _)) in zip(ordered, ordered[1:]):
        if b_lo < a_hi:
            raise UserError(f"the {a} and {b} ranges overlap (samples {b_lo}..{a_hi - 1} "
                            "would be in both)", file=where, field=f"split.{b}")
    return out
