"""preprocess from NetCDF (xarray + h5netcdf), Zarr and NumPy files: variables stacked as
channels into `inputs`/`targets`, split by a time coordinate or by index, the fields landing in
the shards bit for bit; bad configs and sources are one located error, exit 2 through the CLI,
nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.config import load_config
from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.preprocess import preprocess

T = 48  # hourly steps of two days


def _fields() -> xr.Dataset:
    rng = np.random.default_rng(5)
    temp = (280.4 + rng.standard_normal((T, 16, 16))).astype(np.float32)
    wind = rng.standard_normal((T, 16, 16)).astype(np.float32)
    return xr.Dataset(
        {"temperature": (("time", "y", "x"), temp), "wind": (("time", "y", "x"), wind),
         "temperature_next": (("time", "y", "x"), np.roll(temp, -1, axis=0))},
        coords={"time": np.datetime64("2020-01-01T00") + np.arange(T) * np.timedelta64(1, "h"),
                "y": np.arange(16), "x": np.arange(16)})


CONFIG = """\
dataset: heat
arrays:
  inputs: [temperature, wind]
  targets: temperature_next
split:
  by: time
  train: [2020-01-01T00:00, 2020-01-01T23:00]
  validation: ["2020-01-02T00:00", "2020-01-02T11:00"]
  test: [2020-01-02T12:00, 2020-01-02T23:00]
shard_size: 10
"""


def _check(out, ds: xr.Dataset) -> None:
    from itwinai_hpc.data.shards import read_manifest

    m = read_manifest(out)
    assert m.dataset == "heat" and m.num_classes == 0 and m.normalization == {}
    assert m.arrays == {"inputs": {"dtype": "float32", "shape": [2, 16, 16]},
                        "targets": {"dtype": "float32", "shape": [16, 16]}}
    bounds = {"train": (0, 24), "validation": (24, 36), "test": (36, 48)}
    stacked = np.stack([ds.temperature.values, ds.wind.values], axis=1)
    for split, (lo, hi) in bounds.items():
        assert m.splits[split].num_samples == hi - lo
        inputs, targets = read_rows(m, split, 0, hi - lo)
        assert np.array_equal(inputs, stacked[lo:hi])  # bit for bit, channels in config order
        assert np.array_equal(targets, ds.temperature_next.values[lo:hi])
    assert [s.num_samples for s in m.splits["train"].shards] == [10, 10, 4]


def test_netcdf_split_by_time_through_the_cli(tmp_path):
    ds = _fields()
    ds.to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG)
    proc = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "preprocess", "--source",
                           str(tmp_path / "era.nc"), "--output", str(tmp_path / "out"),
                           "--config", str(tmp_path / "pre.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "manifest:" in proc.stdout
    _check(tmp_path / "out", ds)


def test_one_task_writes_a_file_source(tmp_path):
    from itwinai_hpc.data.preprocess import count_shards

    (tmp_path / "pre.yml").write_text(CONFIG)
    assert count_shards(load_config(tmp_path / "pre.yml")) == 1
    _fields().to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    with pytest.raises(UserError) as e:
        preprocess(str(tmp_path / "era.nc"), tmp_path / "out",
                   load_config(tmp_path / "pre.yml"), shard_index=3, progress=False)
    assert "one task" in str(e.value) and not (tmp_path / "out").exists()


def test_zarr_split_by_time(tmp_path):
    ds = _fields()
    ds.to_zarr(tmp_path / "era.zarr", consolidated=False)
    (tmp_path / "pre.yml").write_text(CONFIG)
    preprocess(str(tmp_path / "era.zarr"), tmp_path / "out", load_config(tmp_path / "pre.yml"),
               progress=False)
    _check(tmp_path / "out", ds)


def test_numpy_folder_split_by_time_and_npz_by_index(tmp_path):
    ds = _fields()
    folder = tmp_path / "npy"
    folder.mkdir()
    for name in ("temperature", "wind", "temperature_next", "time"):
        np.save(folder / f"{name}.npy", ds[name].values)
    (tmp_path / "pre.yml").write_text(CONFIG)
    preprocess(str(folder), tmp_path / "out", load_config(tmp_path / "pre.yml"), progress=False)
    _check(tmp_path / "out", ds)

    np.savez(tmp_path / "f.npz", **{n: ds[n].values for n in ("temperature", "wind",
                                                               "temperature_next")})
    (tmp_path / "idx.yml").write_text(CONFIG.split("split:")[0] + "split:\n  train: [0, 24]\n"
                                      "  validation: [24, 36]\n  test: [36, 48]\n"
                                      "shard_size: 10\n")
    preprocess(str(tmp_path / "f.npz"), tmp_path / "out2", load_config(tmp_path / "idx.yml"),
               progress=False)
    _check(tmp_path / "out2", ds)


@pytest.mark.parametrize("change, words", [
    (("inputs: [temperature, wind]", "inputs: [temperature, wnd]"),
     ["arrays.inputs", "no variable 'wnd'", "wind"]),
    (("train: [2020-01-01T00:00, 2020-01-01T23:00]", "train: [2021-01-01, 2021-02-01]"),
     ["split.train", "selects no sample", "2020-01-01T00"]),
    (("test: [2020-01-02T12:00, 2020-01-02T23:00]", "test: [2020-01-02T06:00, 2020-01-02T23:00]"),
     ["split.test", "overlap"]),
    (("by: time", "by: level"), ["split.by", "no variable 'level'"]),
    (("inputs: [temperature, wind]", "inputs: [temperature, x]"),
     ["arrays.inputs", "'x'", "sample dimension 'time'"]),
])
def test_a_bad_config_for_the_source_names_the_file_and_field(tmp_path, change, words):
    _fields().to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG.replace(*change))
    with pytest.raises(UserError) as e:
        preprocess(str(tmp_path / "era.nc"), tmp_path / "out",
                   load_config(tmp_path / "pre.yml"), progress=False)
    for word in words:
        assert word in str(e.value)
    assert "era.nc" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_variables_of_different_dtypes_are_not_stacked(tmp_path):
    ds = _fields()
    ds["wind"] = ds.wind.astype(np.float64)
    ds.to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG)
    with pytest.raises(UserError) as e:
        preprocess(str(tmp_path / "era.nc"), tmp_path / "out",
                   load_config(tmp_path / "pre.yml"), progress=False)
    assert "'temperature' (float32" in str(e.value) and "'wind' (float64" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, line, words", [
    (CONFIG.replace("targets:", "target:"), 4, ["arrays.target", "did you mean 'targets'"]),
    (CONFIG.replace("train: [2020-01-01T00:00, 2020-01-01T23:00]", "train: [2020-01-01]"),
     7, ["split.train", "range [start, end]"]),
    (CONFIG + "validation_size: 10\n", 11, ["validation_size", "split:"]),
    ("split:\n  train: [0, 10]\n", 1, ["split", "arrays:"]),
    (CONFIG.replace("  by: time\n", "").replace("2020-01-01T00:00, 2020-01-01T23:00", "5, 2"), 6,
     ["split", "0 <= start < end"]),
])
def test_bad_sections_are_located_errors_and_exit_2(tmp_path, text, line, words):
    (tmp_path / "pre.yml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "preprocess", "--source",
                           str(tmp_path / "none.nc"), "--output", str(tmp_path / "out"),
                           "--config", str(tmp_path / "pre.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"pre.yml:{line}:" in proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_formats_extra_says_what_to_install(tmp_path, monkeypatch):
    _fields().to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG)
    monkeypatch.setitem(sys.modules, "h5netcdf", None)  # import h5netcdf raises ImportError
    with pytest.raises(UserError) as e:
        preprocess(str(tmp_path / "era.nc"), tmp_path / "out",
                   load_config(tmp_path / "pre.yml"), progress=False)
    assert "'h5netcdf'" in str(e.value) and "itwinai-hpc[formats]" in str(e.value)


def _packed(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """`temperature` as a CF file stores it: int16 with scale/offset and a fill value (classic
    ERA5), or float32 with a -9999 fill value marking missing entries."""
    ds = ds.copy()
    if kind == "packed":
        raw = np.round((ds.temperature.values - 280.0) / 0.01).astype(np.int16)
        raw[3, 4, 5] = -32767
        ds["temperature"] = (ds.temperature.dims, raw, {
            "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": np.int16(-32767)})
        ds["wind"] = ds.wind.astype(np.int16)  # stackable with it
    else:
        values = ds.temperature.values.copy()
        values[3, 4, 5] = -9999.0
        ds["temperature"] = (ds.temperature.dims, values, {"_FillValue": np.float32(-9999.0)})
    return ds


@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
@pytest.mark.parametrize("kind, words", [
    ("packed", ["int16", "scale_factor=0.01", "add_offset=280.0", "_FillValue=-32767"]),
    ("fill", ["float32", "_FillValue=-9999.0"]),
])
def test_packed_or_fill_valued_variables_are_refused_not_converted(tmp_path, fmt, kind, words):
    # Opened with xarray's defaults, the int16 came out float64 (fill -> NaN) and was written
    # as float64 shards with exit 0; the fill-valued float32 lost its -9999 to NaN.
    ds = _packed(_fields(), kind)
    path = tmp_path / ("era.nc" if fmt == "netcdf" else "era.zarr")
    if fmt == "netcdf":
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        ds.to_zarr(path, consolidated=False)
    (tmp_path / "pre.yml").write_text(CONFIG)
    with pytest.raises(UserError) as e:
        preprocess(str(path), tmp_path / "out", load_config(tmp_path / "pre.yml"),
                   progress=False)
    message = str(e.value)
    for word in ["'temperature'", "arrays.inputs", path.name, "fill", *words]:
        assert word in message
    assert not (tmp_path / "out").exists()


def test_a_packed_variable_is_exit_2_through_the_cli(tmp_path):
    _packed(_fields(), "packed").to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG)
    proc = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "preprocess", "--source",
                           str(tmp_path / "era.nc"), "--output", str(tmp_path / "out"),
                           "--config", str(tmp_path / "pre.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "'temperature'" in proc.stderr and "scale_factor" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_unpacked_int16_variable_is_stored_as_int16(tmp_path):
    ds = _fields()
    for name in ("temperature", "wind", "temperature_next"):
        ds[name] = (ds[name] * 100).astype(np.int16)
    ds.to_netcdf(tmp_path / "era.nc", engine="h5netcdf")
    (tmp_path / "pre.yml").write_text(CONFIG)
    from itwinai_hpc.data.shards import read_manifest

    preprocess(str(tmp_path / "era.nc"), tmp_path / "out", load_config(tmp_path / "pre.yml"),
               progress=False)
    m = read_manifest(tmp_path / "out")
    assert m.arrays["inputs"]["dtype"] == "int16"
    inputs, _ = read_rows(m, "train", 0, 24)
    assert np.array_equal(inputs[:, 0], ds.temperature.values[:24])
