"""Issue 22, done-when: a package outside the repository (tests/own_package.py writes it under
tmp_path: its own nn.Module, its own preprocessing script calling write_shards) goes through a
workflow of its own - preprocess (its script), train (torchrun, 2 processes), predict - on the
local backend and on the SLURM test cluster (2 nodes), with nothing of it inside itwinai-hpc;
the predictions equal what plain mlflow.pyfunc gives for the champion, which holds the lowest
val_rmse."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from own_package import N_TEST, write_package

from itwinai_hpc.cli import main
from itwinai_hpc.data.rows import read_rows
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

pytestmark = pytest.mark.slow

TRAIN = """
dataset: tinyfield
model: tinyfield.net:StepNet
model_args: {channels: 2, hidden: 8}
task: regression
loss: mse
metrics: [rmse]
trainer: {epochs: 2, batch_size: 25, eval_batch_size: 25, lr_schedule: constant, lr: 0.003}
registry: {model_name: tinyfield, select_by: val_rmse, mode: min}
tracking: {experiment: tinyfield, system_metrics_every_s: 0}
"""

INFERENCE = """
dataset: tinyfield
batch_size: 16
tracking: {experiment: tinyfield-inference, system_metrics_every_s: 0}
"""

WORKFLOW = """
name: tinyfield
description: A package of its own - preprocess, train, predict.
vars:
  data_dir: ${{workdir}}/data
  mlflow_dir: ${{workdir}}/mlruns
defaults:
  container: none
  resources: {{time: "00:10:00"}}
  env:
    PYTHONPATH: {package}
    MLFLOW_TRACKING_URI: file:${{mlflow_dir}}
    MLFLOW_ALLOW_FILE_STORE: "true"
steps:
  - name: preprocess
    description: its own script -> HDF5 shards (write_shards)
    command: python3
    args: ["{package}/prep.py", "${{data_dir}}/shards"]
  - name: train
    description: torchrun DDP of tinyfield.net:StepNet
    needs: [preprocess]
    launcher: torchrun
    nproc-per-node: {nproc}
    command: itwinai-hpc train
    args: [--config, "{package}/train.yml", --data, "${{data_dir}}/shards"]
    resources: {{nodes: {nodes}}}
  - name: predict
    description: the champion predicts the test split
    needs: [train]
    command: itwinai-hpc predict
    args: [--config, "{package}/inference.yml", --data, "${{data_dir}}/shards",
           --model, "models:/tinyfield@champion", --output, "${{run_dir}}/predictions/"]
"""


def _workflow(folder: Path, *, nodes: int, nproc: int) -> Path:
    package = write_package(folder / "tinyfield-src")
    (package / "train.yml").write_text(textwrap.dedent(TRAIN))
    (package / "inference.yml").write_text(textwrap.dedent(INFERENCE))
    workflow = package / "workflow.yml"
    workflow.write_text(WORKFLOW.format(package=package, nodes=nodes, nproc=nproc))
    return workflow


def _check_run(folder: Path, monkeypatch, world_size: int) -> None:
    run = RunManifest.load(find_run(None))
    assert {s.name: str(s.state) for s in run.steps} == \
        {"preprocess": "COMPLETED", "train": "COMPLETED", "predict": "COMPLETED"}
    log = Path(run.step("train").log).read_text()
    assert "registered tinyfield version 1 as @champion" in log, log[-3000:]
    hashes = {line.split()[-1] for line in log.splitlines() if "final weights sha256" in line}
    assert len(hashes) == 1                            # the ranks ended with the same weights

    import mlflow
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.syspath_prepend(str(folder / "tinyfield-src"))   # the package, for unpickling
    store = f"file:{folder / 'mlruns'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("tinyfield", "champion")
    history = [m.value for m in client.get_metric_history(champion.run_id, "val_rmse")]
    assert len(history) == 2
    assert float(champion.tags["val_rmse"]) == pytest.approx(min(history))
    params = client.get_run(champion.run_id).data.params
    assert params["world_size"] == str(world_size) and params["registry.mode"] == "min"

    inputs = read_rows(read_manifest(folder / "data" / "shards"), "test", 0, N_TEST)[0]
    with h5py.File(Path(run.run_dir) / "predictions" / "predictions.h5") as f:
        predictions = f["predictions"][:]
    assert predictions.shape == (N_TEST, 2, 16, 16) and predictions.dtype == np.float32
    model = mlflow.pyfunc.load_model("models:/tinyfield@champion")
    np.testing.assert_allclose(predictions, model.predict(inputs), rtol=1e-5, atol=1e-5)


@pytest.fixture
def venv_on_path(monkeypatch) -> None:
    """python3, torchrun and itwinai-hpc of this venv, as an activated one gives them."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_own_package_trains_registers_and_predicts_on_the_local_backend(
        run_folder, venv_on_path, capsys, monkeypatch):
    workflow = _workflow(run_folder, nodes=1, nproc=2)
    assert main(["submit", str(workflow), "--backend", "local", "--wait"]) == 0, \
        capsys.readouterr().err
    _check_run(run_folder, monkeypatch, world_size=2)


@pytest.mark.slurm
def test_own_package_trains_on_two_nodes_of_the_slurm_cluster(
        run_folder, venv_on_path, capsys, monkeypatch):
    workflow = _workflow(run_folder, nodes=2, nproc=1)
    assert main(["submit", str(workflow), "--backend", "slurm", "--wait"]) == 0, \
        capsys.readouterr().err
    _check_run(run_folder, monkeypatch, world_size=2)
