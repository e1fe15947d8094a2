"""The commands of itwinai's MNIST use case, typed verbatim with `itwinai-hpc` for `itwinai`:
train with `--train-dataset --ml-logs --config`, predict with `--input-dataset
--predictions-location --ml-logs --config`, no run id copied by hand (the registry alias)."""

from __future__ import annotations

import csv

import pytest
from ml_helpers import N_TEST, REPO, itwinai_hpc, ml_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # a real (small) training, ~20 s


def test_itwinais_train_and_predict_commands_work_verbatim(mnist_shards, tmp_path):
    env = ml_env(tmp_path / "unused")
    del env["MLFLOW_TRACKING_URI"]               # the store comes from --ml-logs only
    ml_logs = tmp_path / "ml-logs"
    predictions = tmp_path / "predictions"
    predictions.mkdir()

    train = itwinai_hpc(["train", "--train-dataset", str(mnist_shards),
                         "--ml-logs", f"file:{ml_logs}",
                         "--config", str(REPO / "use-cases/mnist/mnist-ai-train.yml")],
                        env, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "registered mnist-cnn version 1 as @champion" in train.stdout

    predict = itwinai_hpc(["predict", "--input-dataset", str(mnist_shards),
                           "--predictions-location", str(predictions),
                           "--ml-logs", str(ml_logs),
                           "--config", str(REPO / "use-cases/mnist/mnist-ai-inference.yml")],
                          env, cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    with open(predictions / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert f"accuracy {accuracy:.4f}" in predict.stdout and "version 1" in predict.stdout
    assert not (tmp_path / "mlruns").exists()    # nothing went to the default store
