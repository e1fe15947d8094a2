"""The use case's own preprocessing: the simulated NetCDF fields -> forecast pairs -> HDF5 shards
with a manifest, through itwinai-hpc's public shard writer (`itwinai_hpc.data.write_shards`).

    python preprocess.py --input data/heat.nc --output data/shards [--lead 1]
                         [--validation-members N --test-members N]

inputs: (3, H, W) float32 = temperature at t (K), diffusivity, heat source; targets: (1, H, W)
float32 = temperature at t + lead. Whole members go to one split (pairs.split_members)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import xarray as xr
from heat_forecast.pairs import SPLITS, make_pairs, pair_index, split_members

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import write_shards

DATASET = "heat-diffusion"        # the train and inference configs' `dataset:` name it



def refuse(message: str) -> NoReturn:
    """Bad input: one line naming the file, exit 2 (nothing is written)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, type=Path, help="NetCDF file from generate.py")
    p.add_argument("--output", required=True, type=Path, help="the shard folder to write")
    p.add_argument("--lead", type=int, default=1, help="saved times between input and target")
    p.add_argument("--validation-members", type=int, default=None,
                   help="members for validation (default: a sixth, at least 1)")
    p.add_argument("--test-members", type=int, default=None,
                   help="members for test (default: a sixth, at least 1)")
    p.add_argument("--shard-size", type=int, default=None, help="samples per shard")
    return p.parse_args(argv)


def read_fields(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """temperature (member, time, y, x), diffusivity and heat_source (member, y, x), float32
    as stored: a file of another dtype or layout is refused, never converted."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        wanted = {"temperature": ("member", "time", "y", "x"),
                  "diffusivity": ("member", "y", "x"), "heat_source": ("member", "y", "x")}
        arrays = []
        for name, dims in wanted.items():
            if name not in ds:
                refuse(f"{path}: no variable {name!r} (has: "
                                 f"{', '.join(map(str, ds.data_vars))})")
            var = ds[name]
            if var.dims != dims or var.dtype != np.float32:
                refuse(f"{path}: {name} is {var.dtype} {var.dims}; expected "
                                 f"float32 {dims}")
            arrays.append(var.values)
    return arrays[0], arrays[1], arrays[2]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temperature, kappa, source = read_fields(args.input)
    members, times = temperature.shape[:2]
    try:
        chosen = split_members(members, args.validation_members, args.test_members)
        index = {s: pair_index(chosen[s], times, args.lead) for s in SPLITS}
    except ValueError as exc:
        refuse(f"{args.input}: {exc}")
    splits = {s: make_pairs(temperature, kappa, source, index[s], args.lead) for s in SPLITS}
    try:
        write_shards(args.output, splits, dataset=DATASET, shard_size=args.shard_size)
    except UserError as exc:             # bad arrays: one located line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s} {len(index[s])}" for s in SPLITS)
    print(f"wrote {args.output}: {counts} pairs (lead {args.lead}) from {args.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
