"""The heat-diffusion use case (use-cases/heat-diffusion): its simulator, its NetCDF -> shards
preprocessing through write_shards (float32 kelvin, never converted), its U-Net, and both
workflows end to end on the local backend (small ensemble, few epochs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.data.rows import read_rows
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "use-cases" / "heat-diffusion"


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(CASE)}
    return subprocess.run([sys.executable, str(CASE / name), *args], capture_output=True,
                          text=True, env=env, timeout=240)


@pytest.fixture(autouse=True)
def _case_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(CASE))


def test_the_simulation_conserves_heat_where_there_is_no_source():
    from heat_forecast.simulate import member_fields, step

    temperature, kappa, _ = member_fields(0, 0, 32)
    after = temperature
    for _ in range(50):
        after = step(after, kappa, np.zeros_like(kappa))
    assert after.sum() == pytest.approx(temperature.sum(), rel=1e-12)
    assert after.std() < temperature.std()                # diffusion smooths
    assert np.all(after <= temperature.max()) and np.all(after >= temperature.min())


def test_the_generator_writes_float32_netcdf_with_units(tmp_path):
    import xarray as xr

    out = tmp_path / "heat.nc"
    p = _script("generate.py", "--output", str(out), "--members", "3", "--times", "4",
                "--size", "16")
    assert p.returncode == 0, p.stderr
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds["temperature"].dims == ("member", "time", "y", "x")
        assert ds["temperature"].shape == (3, 4, 16, 16)
        assert {ds[v].dtype for v in ("temperature", "diffusivity", "heat_source")} == \
            {np.dtype("float32")}
        assert ds["temperature"].attrs["units"] == "K"
        assert 270 < float(ds["temperature"].mean()) < 310
    assert [p.name for p in tmp_path.iterdir()] == ["heat.nc"]       # no temporary left


def test_preprocessing_keeps_the_kelvin_fields_as_they_are_in_the_shards(tmp_path):
    import xarray as xr

    nc, shards = tmp_path / "heat.nc", tmp_path / "shards"
    assert _script("generate.py", "--output", str(nc), "--members", "4", "--times", "3",
                   "--size", "16").returncode == 0
    p = _script("preprocess.py", "--input", str(nc), "--output", str(shards),
                "--validation-members", "1", "--test-members", "1")
    assert p.returncode == 0, p.stderr
    manifest = read_manifest(shards)
    assert manifest.dataset == "heat-diffusion"
    assert {s: manifest.splits[s].num_samples for s in manifest.splits} == \
        {"train": 4, "validation": 2, "test": 2}              # 2 members x 2 pairs; 1; 1
    inputs, targets = read_rows(manifest, "test", 0, 2)[:2]
    assert inputs.dtype == np.float32 and inputs.shape == (2, 3, 16, 16)
    with xr.open_dataset(nc, engine="h5netcdf") as ds:
        t = ds["temperature"].values
        assert np.array_equal(inputs[1, 0], t[3, 1])          # test member 3, start time 1
        assert np.array_equal(targets[1, 0], t[3, 2])
        assert np.array_equal(inputs[0, 1], ds["diffusivity"].values[3])


def test_preprocessing_refuses_a_float64_file_and_writes_no_shards(tmp_path):
    import xarray as xr

    nc = tmp_path / "heat.nc"
    assert _script("generate.py", "--output", str(nc), "--members", "3", "--times", "3",
                   "--size", "8").returncode == 0
    with xr.open_dataset(nc, engine="h5netcdf") as ds:
        doubled = ds.load().astype("float64")
    doubled.to_netcdf(tmp_path / "f64.nc", engine="h5netcdf")
    p = _script("preprocess.py", "--input", str(tmp_path / "f64.nc"),
                "--output", str(tmp_path / "shards"), "--validation-members", "1",
                "--test-members", "1")
    assert p.returncode == 2
    assert "temperature is float64" in p.stderr and "expected float32" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "shards").exists()


def test_the_unet_starts_as_persistence_and_keeps_the_grid():
    import torch
    from heat_forecast.model import UNet

    model = UNet(width=4, mean=[290.0, 0.1, 0.0], std=[5.0, 0.05, 0.02])
    x = torch.randn(2, 3, 16, 16) + torch.tensor([290.0, 0.1, 0.0]).view(1, 3, 1, 1)
    out = model(x)
    assert out.shape == (2, 1, 16, 16)
    assert torch.equal(out, x[:, :1])                     # zero head: tomorrow = today
    with pytest.raises(ValueError, match="one per input channel"):
        UNet(mean=[0.0], std=[1.0])


@pytest.mark.slow
def test_both_workflows_train_the_champion_by_lowest_val_rmse_and_write_the_forecast(
        run_folder, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    small = ["--set", "defaults.container=none", "--set", "vars.members=6",
             "--set", "vars.epochs=2"]
    assert main(["submit", str(CASE / "training-workflow.yml"), "--backend", "local",
                 "--wait", *small]) == 0, capsys.readouterr().err
    train = RunManifest.load(find_run(None))
    log = Path(train.step("train").log).read_text()
    assert "registered heat-unet version 1 as @champion" in log, log[-3000:]

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    import mlflow
    store = f"file:{run_folder / 'mlruns'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("heat-unet", "champion")
    history = [m.value for m in client.get_metric_history(version.run_id, "val_rmse")]
    assert len(history) == 2
    assert float(version.tags["val_rmse"]) == pytest.approx(min(history))
    with h5py.File(Path(train.run_dir) / "predictions.h5") as f:
        assert f["predictions"].shape == (8, 1, 64, 64)   # 1 test member x 8 pairs
        assert f["predictions"].dtype == np.float32

    assert main(["submit", str(CASE / "inference-workflow.yml"), "--backend", "local",
                 "--wait", "--set", "defaults.container=none"]) == 0, capsys.readouterr().err
    infer = RunManifest.load(find_run(None))
    import xarray as xr
    with xr.open_dataset(Path(infer.run_dir) / "forecast.nc", engine="h5netcdf") as ds:
        forecast = ds["temperature_forecast"]
        assert forecast.dims == ("member", "time", "y", "x") and forecast.shape == (1, 8, 64, 64)
        assert np.isfinite(forecast.values).all()
        assert 270 < float(forecast.mean()) < 310
        assert ds.attrs["rmse_forecast"] > 0
    assert "RMSE" in Path(infer.step("forecast").log).read_text()
