"""`itwinai-hpc predict` on a model registered by a script of its own (`job.register`): the
task it records (`task=`) picks how predict reads the model; a model without one is a clear
error naming it, never a traceback from inside the classification path."""

from __future__ import annotations

import h5py
import mlflow
import numpy as np
import pytest
import torch

from itwinai_hpc import job
from itwinai_hpc.cli import main
from itwinai_hpc.data import write_shards


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Regression shards (4 float32 inputs -> their sum) and an MLflow file store."""
    store = f"file:{tmp_path / 'mlruns'}"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ITWINAI_HPC_RUN_DIR", "ITWINAI_HPC_STEP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).standard_normal((48, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    write_shards(tmp_path / "shards", {s: {"inputs": x[i::3], "targets": y[i::3]} for i, s in
                                       enumerate(("train", "validation", "test"))},
                 dataset="toy")
    (tmp_path / "inference.yml").write_text("dataset: toy\nbatch_size: 8\n")
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()


def register(name: str, **task) -> str:
    torch.manual_seed(0)
    with mlflow.start_run(experiment_id=mlflow.set_experiment("toy").experiment_id):
        version, _ = job.register(torch.nn.Linear(4, 1), np.zeros((2, 4), np.float32),
                                  metric="val_mse", mode="min", value=1.0, name=name, **task)
    return f"models:/{name}/{version}"


def predict(capsys, folder, uri: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["predict", "--config", str(folder / "inference.yml"), "--data",
               str(folder / "shards"), "--model", uri, "--output", f"{folder / 'out'}/"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_a_model_registered_with_its_task_predicts_through_the_cli(toy, capsys):
    uri = register("toy-reg", task="regression")
    rc, out = predict(capsys, toy, uri)
    assert rc == 0, out
    with h5py.File(toy / "out" / "predictions.h5") as f:
        assert f["predictions"].shape == (16, 1)


def test_a_model_without_a_task_is_one_clear_line_naming_it(toy, capsys):
    uri = register("toy-none")
    rc, out = predict(capsys, toy, uri)
    assert rc == 2, out
    assert "Traceback" not in out and not (toy / "out").exists()
    line = next(line for line in out.splitlines() if line.startswith("error:"))
    assert uri in line and "task='regression'" in line and "task='classification'" in line


def test_an_unknown_task_is_refused_before_anything_is_registered(toy):
    with pytest.raises(ValueError, match="task must be 'classification' or 'regression'"):
        register("toy-bad", task="segmentation")
    assert mlflow.MlflowClient().search_registered_models() == []


def test_a_metric_of_unknown_direction_needs_a_mode_and_nothing_is_registered(toy):
    # a guess of 'max' for an error metric would crown the worst model of a sweep
    with mlflow.start_run(experiment_id=mlflow.set_experiment("toy").experiment_id):
        with pytest.raises(ValueError, match="which way is better for 'val_my_error'"):
            job.register(torch.nn.Linear(4, 1), np.zeros((2, 4), np.float32),
                         metric="val_my_error", value=1.0, name="toy-dir", task="regression")
        assert mlflow.MlflowClient().search_registered_models() == []
        version, _ = job.register(torch.nn.Linear(4, 1), np.zeros((2, 4), np.float32),
                                  metric="val_rmse", value=1.0, name="toy-dir",
                                  task="regression")     # a known error metric: min
    holder = mlflow.MlflowClient().get_model_version_by_alias("toy-dir", "champion")
    assert str(holder.version) == str(version) and holder.tags["val_rmse"] == "1.0"
