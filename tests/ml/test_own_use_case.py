"""Issue 22, done-when: a package outside the repository (written here under tmp_path: its own
nn.Module, its own preprocessing script calling itwinai_hpc.data.write_shards; float32 2x16x16
fields, a next-step regression) trains under torchrun with 2 gloo processes, registers with the
champion chosen by the lowest val_rmse, predicts into predictions.h5 in test-sample order, and
loads through plain mlflow.pyfunc; its mistakes are located errors, exit 2, before training."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ml_helpers import ml_env, torchrun_train
from own_package import write_package

CONFIG = """
dataset: tinyfield
model: tinyfield.net:StepNet
model_args: {channels: 2, hidden: 8}
task: regression
trainer: {epochs: 2, batch_size: 25, eval_batch_size: 20, lr_schedule: constant, lr: 0.003}
registry: {model_name: tinyfield, select_by: val_rmse}
tracking: {experiment: tinyfield, system_metrics_every_s: 0}
"""


@pytest.fixture(scope="module")
def use_case(tmp_path_factory) -> SimpleNamespace:
    root = write_package(tmp_path_factory.mktemp("own-use-case"))
    (root / "train.yml").write_text(textwrap.dedent(CONFIG))
    store = root / "mlruns"
    env = ml_env(store, PYTHONPATH=str(root))
    for out, extra in (("shards", []), ("shards-no-targets", ["--no-targets"])):
        subprocess.run([sys.executable, str(root / "prep.py"), str(root / out), *extra],
                       env=env, check=True, timeout=120)
    return SimpleNamespace(root=root, shards=root / "shards", config=root / "train.yml",
                           store=store, env=env)


@pytest.fixture(scope="module")
def trained(use_case) -> subprocess.CompletedProcess:
    return torchrun_train(["--config", str(use_case.config), "--data", str(use_case.shards)],
                          use_case.env, nproc=2, timeout=400)


def client(store: Path):
    import mlflow

    from itwinai_hpc.ml import tracking

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"   # the test store is a folder
    tracking.configure(f"file:{store}")
    return mlflow.MlflowClient()


def test_trains_on_two_ranks_and_the_champion_is_the_lowest_val_rmse(use_case, trained):
    assert "registered tinyfield version 1 as @champion" in trained.stdout
    c = client(use_case.store)
    champion = c.get_model_version_by_alias("tinyfield", "champion")
    run = c.get_run(champion.run_id)
    vals = [m.value for m in c.get_metric_history(run.info.run_id, "val_rmse")]
    assert len(vals) == 2 and float(champion.tags["val_rmse"]) == pytest.approx(min(vals))
    assert run.data.params["registry.mode"] == "min" and run.data.params["task"] == "regression"
    for key in ("test_rmse", "test_mae", "test_r2", "test_loss", "val_r2", "best_val_rmse"):
        assert key in run.data.metrics, key
    assert run.data.metrics["test_r2"] > 0.5   # it learned something
    shown = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation/test")}
    assert {"evaluation/test/fields.png", "evaluation/test/scatter.png"} <= shown


def test_predict_writes_h5_in_sample_order_and_plain_pyfunc_loads_it(use_case, trained,
                                                                     monkeypatch):
    import h5py
    import mlflow

    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.data.shards import read_manifest

    inf = use_case.root / "inference.yml"
    inf.write_text("dataset: tinyfield\nbatch_size: 16\ntracking: {experiment: tinyfield-inf, "
                   "system_metrics_every_s: 0}\n")
    from itwinai_hpc.cli import main

    out = use_case.root / "out"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{use_case.store}")
    monkeypatch.syspath_prepend(str(use_case.root))   # the package, as its PYTHONPATH
    # In this process (the console script's main): a second start-up of torch and MLflow
    # would cost more than the predictions.
    assert main(["predict", "--config", str(inf), "--data", str(use_case.shards), "--model",
                 "models:/tinyfield@champion", "--output", f"{out}/"]) == 0
    with h5py.File(out / "predictions.h5") as f:
        predictions = f["predictions"][:]
    inputs, targets = read_rows(read_manifest(use_case.shards), "test", 0, 50)[:2]
    assert predictions.shape == (50, 2, 16, 16) and predictions.dtype == np.float32
    client(use_case.store)
    model = mlflow.pyfunc.load_model("models:/tinyfield@champion")
    schema = model.metadata.signature.inputs.inputs[0]
    assert (str(schema.type), schema.shape) == ("float32", (-1, 2, 16, 16))
    direct = model.predict(inputs.astype(np.float32))
    np.testing.assert_allclose(predictions, direct, rtol=1e-5, atol=1e-5)   # same order
    import torch

    from itwinai_hpc.ml.served import load_trainable

    net = load_trainable("models:/tinyfield@champion")   # the package's own class, to fine-tune
    assert type(net).__name__ == "StepNet" and not net.training
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(inputs)).numpy(), direct, atol=1e-5)
    rmse = float(np.sqrt(np.mean((predictions - targets) ** 2)))
    runs = mlflow.search_runs(experiment_names=["tinyfield-inf"], output_format="list")
    assert runs[0].data.metrics["rmse"] == pytest.approx(rmse, rel=1e-4)


@pytest.mark.parametrize("change, shards, words", [
    ("model: nowhere.net:StepNet", "shards",
     ["train.yml:3: model: cannot import 'nowhere.net'", "sys.path searched"]),
    ("model: tinyfield.net:NoSuchNet", "shards", ["train.yml:3: model: ", "no attribute"]),
    ("model: tinyfield.net:FirstChannel", "shards",
     ["train.yml:3: model: ", "outputs of 1x16x16 per sample",
      "targets' sample shape is 2x16x16"]),
    ("model: tinyfield.net:StepNet", "shards-no-targets",
     ["train.yml:5: task: a regression needs targets", "shards-no-targets"]),
    ("registry: {model_name: x, select_by: val_accuracy}", "shards",
     ["registry.select_by: 'val_accuracy' is not logged", "val_rmse"]),
])
def test_mistakes_are_located_exit_2_before_training(use_case, tmp_path, monkeypatch, capsys,
                                                     change, shards, words):
    """In this process (the CLI's main, as the console script calls it): each start-up of
    torch costs more than the check."""
    from itwinai_hpc.cli import main

    key = change.split(":")[0]
    lines = [ln for ln in CONFIG.strip().splitlines() if not ln.startswith(key + ":")]
    config = tmp_path / "train.yml"
    config.write_text("\n".join(["# a use case's own model", *lines[:1], change, *lines[1:]])
                      + "\n")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    monkeypatch.syspath_prepend(str(use_case.root))
    rc = main(["train", "--config", str(config), "--data", str(use_case.root / shards)])
    out, err = capsys.readouterr()
    assert rc == 2, out + err
    assert "Traceback" not in err and "epoch 1" not in out
    for w in words:
        assert w in err, (w, err)
    assert not store.exists()   # no MLflow run was started
