"""predict with the model that training registered: one row per test image, the logged accuracy
is the file's, and a bad model URI exits 2 with nothing written."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from ml_helpers import N_TEST, REPO, ml_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # needs the torchrun training fixture


def test_champion_predictions_have_one_row_per_test_image_and_logged_accuracy(
        trained, mlflow_client, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from itwinai_hpc.ml.config import InferenceConfig, make_config
    from itwinai_hpc.ml.predict import COLUMNS, predict

    config = make_config(InferenceConfig, {"tracking": {"experiment": "inference-test"}})
    out = tmp_path / "predictions.csv"
    result = predict(config, str(trained.shards), f"models:/{trained.model_name}@champion", out,
                     tracking_uri=f"file:{trained.store}")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == N_TEST and sorted(int(r["index"]) for r in rows) == list(range(N_TEST))
    from_file = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    run = mlflow_client.get_run(result.run_id)
    assert run.data.metrics["accuracy"] == pytest.approx(from_file, abs=1e-12)
    assert from_file > 0.8 and result.model_version == "1"
    assert "predictions.csv" in [a.path for a in mlflow_client.list_artifacts(result.run_id)]


@pytest.mark.parametrize("uri", ["models:/no-such-model@champion", "s3://bucket/model"])
def test_bad_model_uri_exits_2_with_a_message_and_writes_nothing(trained, tmp_path, uri):
    out = tmp_path / "p.csv"
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "predict", "--data",
                        str(trained.shards), "--model", uri.format(name=trained.model_name),
                        "--output", str(out)], env=ml_env(trained.store), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "error: --model:" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("uri", ["models:/{name}/99", "models:/{name}@no-such-alias",
                                 "models:/{name}", "runs:/0123456789abcdef/model",
                                 "best:no-such-experiment:val_accuracy"])
def test_missing_model_is_a_user_error_naming_the_uri(trained, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.ml import registry, tracking

    tracking.configure(f"file:{trained.store}")
    uri = uri.format(name=trained.model_name)
    with pytest.raises(UserError) as err:
        registry.resolve_model_uri(uri)
    assert uri in str(err.value)


def test_best_run_by_metric_resolves_to_the_registered_run(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from itwinai_hpc.ml import registry, tracking

    tracking.configure(f"file:{trained.store}")
    uri, about = registry.resolve_model_uri(f"best:{trained.experiment}:val_accuracy")
    champion, champ_about = registry.resolve_model_uri(f"models:/{trained.model_name}@champion")
    assert about["run_id"] == champ_about["run_id"] and uri.startswith("models:/m-")
    assert about["model_id"] == champ_about["model_id"]


def test_an_alias_is_read_only_between_registrations_and_pinned_to_the_version_it_named(
        trained, monkeypatch):
    """MLflow's file store rewrites an alias in place: a predict resolving @champion while a
    sweep task moves it must wait for the registration, then load that very version (not look
    the alias up a second time when loading)."""
    import threading
    import time

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    from itwinai_hpc.ml import registry, registry_lock, tracking

    tracking.configure(f"file:{trained.store}")
    version = MlflowClient().get_model_version_by_alias(trained.model_name, "champion").version
    done: dict[str, object] = {}

    def resolve():
        done["uri"] = registry.resolve_model_uri(f"models:/{trained.model_name}@champion")[0]
        done["at"] = time.monotonic()

    with registry_lock.registry_lock(f"file:{trained.store}"):       # a registration in progress
        reader = threading.Thread(target=resolve)
        reader.start()
        time.sleep(3)
        released = time.monotonic()
    reader.join(60)
    assert done["at"] > released                                 # it waited for the writer
    assert done["uri"] == f"models:/{trained.model_name}/{version}"
