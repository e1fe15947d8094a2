"""Simulate an ensemble of 2-D heat-diffusion runs and write them as one NetCDF file, the stand-in
for an ERA5-style download: dims (member, time, y, x), float32 variables with units.

    python generate.py --output data/heat.nc [--members 32 --times 9 --size 64 --seed 0]

Written to a temporary name and renamed, so a half-written file never looks finished. The same
arguments give the same file's values (seeded per member)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from heat_forecast.simulate import simulate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, type=Path, help="the NetCDF file to write")
    p.add_argument("--members", type=int, default=32, help="ensemble members (trajectories)")
    p.add_argument("--times", type=int, default=9, help="saved times per member")
    p.add_argument("--size", type=int, default=64, help="grid side (a multiple of 4)")
    p.add_argument("--substeps", type=int, default=20, help="solver steps between saved times")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("members", "times", "size", "substeps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.size % 4:
        p.error(f"--size must be a multiple of 4 (the U-Net halves the grid twice), "
                f"not {args.size}")
    return args


def to_dataset(temperature, kappa, source, substeps: int, seed: int) -> xr.Dataset:
    members, times, size = temperature.shape[0], temperature.shape[1], temperature.shape[-1]
    coords = {"member": np.arange(members), "y": np.arange(size), "x": np.arange(size),
              "time": pd.date_range("2026-01-01", periods=times, freq="6h")}
    return xr.Dataset(
        {"temperature": (("member", "time", "y", "x"), temperature,
                         {"units": "K", "long_name": "temperature"}),
         "diffusivity": (("member", "y", "x"), kappa,
                         {"units": "cell2 substep-1", "long_name": "thermal diffusivity"}),
         "heat_source": (("member", "y", "x"), source,
                         {"units": "K substep-1", "long_name": "heat source"})},
        coords=coords,
        attrs={"title": "2-D heat diffusion ensemble (itwinai-hpc heat-diffusion use case)",
               "substeps_per_time": substeps, "seed": seed})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fields = simulate(args.members, args.times, args.size, args.substeps, args.seed)
    ds = to_dataset(*fields, substeps=args.substeps, seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.{os.getpid()}.partial")
    try:
        ds.to_netcdf(partial, engine="h5netcdf")
        os.replace(partial, args.output)
    finally:
        partial.unlink(missing_ok=True)
    t = fields[0]
    print(f"wrote {args.output}: {args.members} members x {args.times} times x "
          f"{args.size}x{args.size}, temperature {t.min():.1f}-{t.max():.1f} K")
    return 0


if __name__ == "__main__":
    sys.exit(main())
