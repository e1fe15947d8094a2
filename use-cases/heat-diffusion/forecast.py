"""Forecast fields from `itwinai-hpc predict`'s predictions.h5, put back on the simulation's grid
and clock: forecast.nc with `temperature_forecast` (member, time, y, x) valid at each pair's
target time, the simulated truth beside it, and the RMSE of the forecast and of persistence
(tomorrow = today), printed and stored as attributes.

    python forecast.py --predictions RUN/predictions.h5 --input data/heat.nc \
                       --output RUN/forecast.nc

--lead, --validation-members and --test-members must be preprocess.py's (the pairs' order)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

import h5py
import numpy as np
import xarray as xr
from heat_forecast.pairs import pair_index, split_members


def refuse(message: str) -> NoReturn:
    """Bad input: one line naming the file, exit 2 (nothing is written)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--input", required=True, type=Path, help="the NetCDF file preprocessed")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--lead", type=int, default=1)
    p.add_argument("--validation-members", type=int, default=None,
                   help="members for validation (default: a sixth, at least 1)")
    p.add_argument("--test-members", type=int, default=None,
                   help="members for test (default: a sixth, at least 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with h5py.File(args.predictions, "r") as f:
        predicted = f["predictions"][...]
    with xr.open_dataset(args.input, engine="h5netcdf") as ds:
        truth = ds["temperature"].load()
    members, times = truth.shape[:2]
    test = split_members(members, args.validation_members, args.test_members)["test"]
    index = pair_index(test, times, args.lead)
    if predicted.shape[0] != len(index) or predicted.shape[-2:] != truth.shape[-2:]:
        refuse(f"{args.predictions}: predictions {predicted.shape} do not fit "
                         f"{len(index)} test pairs of {truth.shape[-2:]} fields in {args.input} "
                         "(same --lead and member counts as preprocess.py?)")
    valid = truth.isel(member=test, time=slice(args.lead, None))
    forecast = np.full(valid.shape, np.nan, dtype=np.float32)
    persistence = np.empty_like(forecast)
    for row, (m, t) in enumerate(index):
        forecast[list(test).index(m), t] = predicted[row].reshape(truth.shape[-2:])
        persistence[list(test).index(m), t] = truth.values[m, t]

    def rmse(field: np.ndarray) -> float:
        return float(np.sqrt(np.mean((field - valid.values) ** 2)))

    out = valid.to_dataset(name="temperature_truth")
    out["temperature_forecast"] = (valid.dims, forecast,
                                   {"units": "K", "lead_times": args.lead})
    out.attrs.update(rmse_forecast=rmse(forecast), rmse_persistence=rmse(persistence))
    partial = args.output.with_name(f".{args.output.name}.{os.getpid()}.partial")
    try:
        out.to_netcdf(partial, engine="h5netcdf")
        os.replace(partial, args.output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {args.output}: {len(index)} forecast fields; RMSE {rmse(forecast):.4f} K "
          f"(persistence {rmse(persistence):.4f} K)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
