"""The heat-diffusion use case on the real cluster: generate -> preprocess -> 2-node torchrun DDP
of the use case's own U-Net (by import path, PYTHONPATH from the workflow) -> the champion's
predictions.h5, then the inference workflow's forecast.nc."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

CASE = Path(__file__).resolve().parent.parent / "use-cases" / "heat-diffusion"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_heat_forecast_trains_on_two_nodes_and_its_champion_forecasts(
        slurm_cluster, run_folder, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    no_container = ["--set", "defaults.container=none"]
    assert main(["submit", str(CASE / "training-workflow.yml"), "--backend", "slurm", "--wait",
                 "--set", "steps.train.resources.nodes=2", "--set", "vars.members=6",
                 "--set", "vars.epochs=1", *no_container]) == 0, capsys.readouterr().err
    train = RunManifest.load(find_run(None))
    log = Path(train.step("train").log).read_text()
    assert "registered heat-unet version 1 as @champion" in log, log[-3000:]
    hashes = {line.split()[-1] for line in log.splitlines() if "final weights sha256" in line}
    assert len(hashes) == 1                               # both ranks ended with the same weights

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    import mlflow
    store = f"file:{run_folder / 'mlruns'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("heat-unet", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params.get("world_size") == "2"
    assert 0 < run.data.metrics["val_rmse"] < 2.0        # kelvin; persistence is ~0.3
    with h5py.File(Path(train.run_dir) / "predictions.h5") as f:
        assert f["predictions"].shape == (8, 1, 64, 64)

    assert main(["submit", str(CASE / "inference-workflow.yml"), "--backend", "slurm",
                 "--wait", *no_container]) == 0, capsys.readouterr().err
    infer = RunManifest.load(find_run(None))
    assert (Path(infer.run_dir) / "forecast.nc").is_file()
    assert "RMSE" in Path(infer.step("forecast").log).read_text()
