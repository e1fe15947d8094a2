"""`itwinai-hpc predict` of a classifier trained by the built-in trainer on shards of
write_shards (float32 2x16x16 inputs, 3 classes, a model of the use case's own package named by
import path): predictions.csv holds, in the shards' sample order, the class plain mlflow.pyfunc
gives (argmax of its probabilities) and that probability; the inference run logs the accuracy
the file shows. A split without targets still predicts; inputs the model does not take are
located errors, exit 2, before any inference run."""

from __future__ import annotations

import csv
import textwrap
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from ml_helpers import itwinai_hpc, ml_env
from own_package import write_package

from itwinai_hpc.cli import main
from itwinai_hpc.data import write_shards
from itwinai_hpc.data.dataset import read_rows
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.ml.predict_classes import COLUMNS

NET = """
import torch


class ClassNet(torch.nn.Module):
    def __init__(self, channels=2, classes=3):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, classes))

    def forward(self, x):
        return self.body(x)
"""

CONFIG = """
dataset: tinyclasses
model: tinyfield.classes:ClassNet
model_args: {channels: 2, classes: 3}
task: classification
trainer: {epochs: 1, batch_size: 25, eval_batch_size: 20, lr_schedule: constant, lr: 0.01}
registry: {model_name: tinyclasses}
tracking: {experiment: tinyclasses, system_metrics_every_s: 0}
"""

INFERENCE = ("dataset: tinyclasses\nbatch_size: 16\n"
             "tracking: {experiment: tinyclasses-inf, system_metrics_every_s: 0}\n")
N, N_TEST = 300, 70   # test: 70 samples in shards of 32 and batches of 16 (ragged ends)


def fields(n: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """2x16x16 noise whose mean is the class (0, 1, 2): separable, not trivially."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 2, 16, 16)) + 0.3 * y[:, None, None, None]
    return x.astype(dtype), y


@pytest.fixture(autouse=True)
def _file_store_allowed(monkeypatch) -> None:
    """MLflow's file store, for the reads these tests make in this process (inference_runs,
    pyfunc_probabilities): set here, not left to a test that happened to run before."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="module")
def use_case(tmp_path_factory) -> SimpleNamespace:
    """The package (tinyfield of own_package plus a classifier module), its shards, and a
    champion trained by `itwinai-hpc train` (1 epoch, one process)."""
    root = write_package(tmp_path_factory.mktemp("classes"))
    (root / "tinyfield" / "classes.py").write_text(textwrap.dedent(NET))
    (root / "train.yml").write_text(textwrap.dedent(CONFIG))
    (root / "inference.yml").write_text(INFERENCE)
    x, y = fields(N)
    cut = {"train": slice(0, 180), "validation": slice(180, N - N_TEST),
           "test": slice(N - N_TEST, N)}
    write_shards(root / "shards", {s: {"inputs": x[c], "targets": y[c]} for s, c in cut.items()},
                 dataset="tinyclasses", shard_size=32, num_classes=3)
    write_shards(root / "unlabelled", {"test": {"inputs": x[cut["test"]]}},
                 dataset="tinyclasses", shard_size=32)
    store = root / "mlruns"
    env = ml_env(store, PYTHONPATH=str(root))
    p = itwinai_hpc(["train", "--config", str(root / "train.yml"), "--data",
                     str(root / "shards")], env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "registered tinyclasses version 1 as @champion" in p.stdout
    return SimpleNamespace(root=root, store=store, x=x[cut["test"]], y=y[cut["test"]])


def predict(use_case, monkeypatch, capsys, data: str, output: str) -> tuple[int, str]:
    """`itwinai-hpc predict` in this process (the console script's main)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{use_case.store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    capsys.readouterr()
    rc = main(["predict", "--config", str(use_case.root / "inference.yml"), "--data",
               str(use_case.root / data), "--model", "models:/tinyclasses@champion",
               "--output", output])
    out = capsys.readouterr()
    return rc, out.out + out.err


def pyfunc_probabilities(use_case, inputs: np.ndarray) -> np.ndarray:
    mlflow.set_tracking_uri(f"file:{use_case.store}")
    mlflow.set_registry_uri(f"file:{use_case.store}")
    return np.asarray(mlflow.pyfunc.load_model("models:/tinyclasses@champion").predict(inputs))


def inference_runs(use_case) -> list:
    mlflow.set_tracking_uri(f"file:{use_case.store}")
    return mlflow.search_runs(experiment_names=["tinyclasses-inf"], output_format="list",
                              order_by=["attributes.start_time DESC"])


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predictions_csv_holds_pyfuncs_classes_in_sample_order_and_the_logged_accuracy(
        use_case, monkeypatch, capsys):
    out = use_case.root / "out"
    rc, text = predict(use_case, monkeypatch, capsys, "shards", f"{out}/")
    assert rc == 0, text
    rows = read_csv(out / "predictions.csv")
    assert tuple(rows[0]) == COLUMNS and len(rows) == N_TEST
    assert [int(r["index"]) for r in rows] == list(range(N_TEST))
    inputs, targets = read_rows(read_manifest(use_case.root / "shards"), "test", 0, N_TEST)
    np.testing.assert_array_equal(inputs, use_case.x)          # the shards' order is ours
    assert [int(r["label"]) for r in rows] == targets.tolist() == use_case.y.tolist()
    probs = pyfunc_probabilities(use_case, inputs)
    assert probs.shape == (N_TEST, 3)
    assert [int(r["predicted"]) for r in rows] == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose([float(r["probability"]) for r in rows], probs.max(axis=1),
                               atol=2e-6)
    accuracy = float(np.mean(probs.argmax(axis=1) == targets))
    assert f"{N_TEST} predictions -> {out / 'predictions.csv'}, accuracy {accuracy:.4f}" in text
    run = inference_runs(use_case)[0]
    assert run.data.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    loss = -np.mean(np.log(probs[np.arange(N_TEST), targets]))
    assert run.data.metrics["loss"] == pytest.approx(loss, rel=1e-4)
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id,
                                                                    "evaluation/test")}
    assert "evaluation/test/confusion_matrix.json" in logged
    confusion = mlflow.artifacts.load_dict(
        f"{run.info.artifact_uri}/evaluation/test/confusion_matrix.json")["matrix"]
    assert int(np.trace(confusion)) == sum(r["predicted"] == r["label"] for r in rows)


def test_a_split_without_targets_gets_classes_and_probabilities_and_no_accuracy(
        use_case, monkeypatch, capsys):
    out = use_case.root / "unlabelled-out.csv"
    rc, text = predict(use_case, monkeypatch, capsys, "unlabelled", str(out))
    assert rc == 0, text
    rows = read_csv(out)
    assert tuple(rows[0]) == COLUMNS[:3] and len(rows) == N_TEST
    probs = pyfunc_probabilities(use_case, use_case.x)
    assert [int(r["predicted"]) for r in rows] == probs.argmax(axis=1).tolist()
    assert "accuracy" not in text
    run = inference_runs(use_case)[0]
    assert "accuracy" not in run.data.metrics and run.data.params["num_samples"] == str(N_TEST)


@pytest.mark.parametrize("case, words", [
    ("h5 output", ["--output", "written as CSV", "predictions.h5"]),
    ("targets not classes", ["manifest.json", "num_classes", "split 'test' has targets"]),
    ("float64 inputs", ["manifest.json", "arrays.inputs.dtype", "float64", "float32"]),
])
def test_inputs_the_classifier_cannot_take_exit_2_naming_file_and_field_before_any_run(
        use_case, tmp_path, monkeypatch, capsys, case, words):
    x, y = use_case.x, use_case.y
    data, output = tmp_path / "shards", f"{tmp_path / 'out'}/"
    if case == "h5 output":
        data, output = use_case.root / "shards", str(tmp_path / "predictions.h5")
    elif case == "targets not classes":   # class numbers written without num_classes
        write_shards(data, {"test": {"inputs": x, "targets": y}}, dataset="tinyclasses")
    else:
        write_shards(data, {"test": {"inputs": x.astype("float64")}}, dataset="tinyclasses")
    before = len(inference_runs(use_case))
    rc, text = predict(use_case, monkeypatch, capsys, str(data), output)
    assert rc == 2, text
    line = next(ln for ln in text.splitlines() if ln.startswith("error:"))
    assert "Traceback" not in text
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "out").exists() and not (tmp_path / "predictions.h5").exists()
    assert len(inference_runs(use_case)) == before   # no inference run started


def test_a_script_registered_classifier_giving_logits_gets_softmax_probabilities(
        tmp_path, monkeypatch, capsys):
    """job.register(task="classification") of a model returning scores (logits, not
    probabilities): the class is their argmax, the probability their softmax's maximum."""
    import torch

    from itwinai_hpc import job

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ITWINAI_HPC_RUN_DIR", "ITWINAI_HPC_STEP"):
        monkeypatch.delenv(var, raising=False)
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)
    write_shards(tmp_path / "shards", {"test": {"inputs": x, "targets": y}}, dataset="toy",
                 num_classes=3)
    (tmp_path / "inference.yml").write_text("dataset: toy\nbatch_size: 16\n")
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    with mlflow.start_run(experiment_id=mlflow.set_experiment("toy").experiment_id):
        job.register(net, x[:2], metric="val_accuracy", value=0.5, name="toy-cls",
                     task="classification")
    rc = main(["predict", "--config", str(tmp_path / "inference.yml"), "--data",
               str(tmp_path / "shards"), "--model", "models:/toy-cls/1", "--output",
               str(tmp_path / "p.csv")])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "p.csv")
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert [int(r["predicted"]) for r in rows] == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose([float(r["probability"]) for r in rows], probs.max(axis=1),
                               atol=2e-6)
    assert [int(r["label"]) for r in rows] == y.tolist()
