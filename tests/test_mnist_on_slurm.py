"""The worked example on the real cluster: the MNIST training workflow (preprocess -> 2-node
torchrun DDP -> MLflow registry), then the inference workflow with the registered model."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def use_case(run_folder, monkeypatch, use_mnist_digits_25k):
    """A copy of use-cases/mnist with 1 training epoch on 25,000 real digits (all 10,000 test
    digits); the jobs find the venv's itwinai-hpc."""
    folder = run_folder / "mnist"
    shutil.copytree(ROOT / "use-cases/mnist", folder)
    use_mnist_digits_25k(folder)
    cfg = folder / "mnist-ai-train.yml"
    cfg.write_text(cfg.read_text().replace("epochs: 2", "epochs: 1"))
    assert "epochs: 1" in cfg.read_text()
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_mnist_trains_on_two_nodes_registers_the_model_and_predicts_with_it(
        slurm_cluster, run_folder, use_case, capsys):
    no_container = ["--set", "defaults.container=none"]
    assert main(["submit", str(use_case / "training-workflow.yml"), "--backend", "slurm",
                 "--wait", "--set", "steps.train.resources.nodes=2", *no_container]) == 0, \
        capsys.readouterr().err
    train = RunManifest.load(find_run(None))
    log = Path(train.step("train").log).read_text()
    assert "registered mnist-cnn version 1 as @champion" in log, log[-3000:]
    hashes = {line.split()[-1] for line in log.splitlines() if "final weights sha256" in line}
    assert len(hashes) == 1                               # both ranks ended with the same weights

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    import mlflow
    store = f"file:{run_folder / 'mlruns'}"      # both: an earlier test may have set a registry
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("mnist-cnn", "champion")
    run = client.get_run(version.run_id)
    val_accuracy = run.data.metrics["val_accuracy"]
    assert val_accuracy > 0.95                            # one epoch of 20,000 real digits
    assert float(version.tags["val_accuracy"]) == pytest.approx(val_accuracy)
    assert run.data.params.get("world_size") == "2"

    assert main(["submit", str(use_case / "inference-workflow.yml"), "--backend", "slurm",
                 "--wait", *no_container]) == 0, capsys.readouterr().err
    infer = RunManifest.load(find_run(None))
    assert infer.run_id != train.run_id
    with open(Path(infer.run_dir) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000                            # one row per test image
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert accuracy > 0.95
    assert f"accuracy {accuracy:.4f}" in Path(infer.step("predict").log).read_text()
