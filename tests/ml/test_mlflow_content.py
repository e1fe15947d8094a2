"""What a data scientist finds in MLflow after training and after inference, read back from the
store with MlflowClient: evaluation figures and tables, the data and the model as inputs, and
where each run came from (git commit of the workflow's repository, backend, description)."""

from __future__ import annotations

import json

import pytest
from ml_helpers import N_TEST, WORKFLOW_DESCRIPTION, itwinai_hpc, make_run_dir, ml_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # needs the torchrun training fixture

EVALUATION = {"confusion_matrix.png", "confusion_matrix.json", "per_class.json",
              "misclassified.png"}


def artifact_names(client, run_id: str, folder: str) -> set[str]:
    return {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, folder)}


def load_json(client, run_id: str, path: str):
    with open(client.download_artifacts(run_id, path)) as f:
        return json.load(f)


def per_class_rows(client, run_id: str, split: str) -> list[dict]:
    table = load_json(client, run_id, f"evaluation/{split}/per_class.json")
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def dataset_inputs(run) -> dict[str, tuple]:
    """name -> (context, digest, source uri)."""
    out = {}
    for d in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in d.tags}.get("mlflow.data.context")
        out[d.dataset.name] = (context, d.dataset.digest, json.loads(d.dataset.source)["uri"])
    return out


@pytest.fixture(scope="module")
def manifest(trained):
    from itwinai_hpc.data.shards import read_manifest

    return read_manifest(trained.shards)


@pytest.fixture(scope="module")
def inference_run(trained, mlflow_client, tmp_path_factory):
    """`itwinai-hpc predict` as a SLURM job of another workflow run would call it."""
    base = tmp_path_factory.mktemp("inference")
    run_dir = make_run_dir(base / "run", backend="none", step="predict")
    env = ml_env(trained.store, run_dir, ITWINAI_HPC_BACKEND="slurm", ITWINAI_HPC_STEP="predict",
                 ITWINAI_HPC_RUN_ID="infer-run", ITWINAI_HPC_WORKFLOW_FILE=str(trained.workflow),
                 SLURM_JOB_ID="77")
    p = itwinai_hpc(["predict", "--data", str(trained.shards), "--model",
                     f"models:/{trained.model_name}@champion", "--output",
                     str(base / "predictions.csv")], env)
    assert p.returncode == 0, p.stderr[-3000:]
    run_id = p.stdout.split("MLflow run ")[-1].strip(" )\n")
    return mlflow_client.get_run(run_id)


def test_training_run_shows_the_test_evaluation(mlflow_client, training_run):
    run_id = training_run.info.run_id
    assert artifact_names(mlflow_client, run_id, "evaluation/test") == EVALUATION
    matrix = load_json(mlflow_client, run_id, "evaluation/test/confusion_matrix.json")["matrix"]
    assert sum(map(sum, matrix)) == N_TEST
    accuracy = sum(matrix[i][i] for i in range(10)) / N_TEST
    assert training_run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    rows = per_class_rows(mlflow_client, run_id, "test")
    assert [r["class"] for r in rows] == list(range(10))
    for r in rows:
        assert r["samples"] == sum(matrix[r["class"]])
        assert r["accuracy"] == pytest.approx(matrix[r["class"]][r["class"]] / r["samples"],
                                              abs=1e-6)
    assert "test_loss" in training_run.data.metrics


def test_training_run_lists_every_split_as_an_input_with_the_manifest_digest(
        trained, mlflow_client, training_run, manifest):
    found = dataset_inputs(training_run)
    folder = str(trained.shards.resolve())
    assert found == {"mnist-train": ("training", manifest.plan_id[:32], folder),
                     "mnist-validation": ("validation", manifest.plan_id[:32], folder),
                     "mnist-test": ("test", manifest.plan_id[:32], folder)}
    logged = load_json(mlflow_client, training_run.info.run_id, "dataset/manifest.json")
    assert logged["plan_id"] == manifest.plan_id


def test_training_run_names_the_workflow_commit_and_the_local_backend(trained, training_run):
    from itwinai_hpc import __version__

    tags = training_run.data.tags
    assert tags["mlflow.source.git.commit"] == trained.commit   # not the venv's repository
    assert tags["itwinai_hpc.backend"] == "local"               # from run.json
    assert tags["itwinai_hpc.version"] == __version__
    # The local runner's SLURM_JOB_ID=2 is a stand-in: no slurm.* tags, no slurm params.
    assert not [k for k in tags if k.startswith("slurm.")]
    assert training_run.data.params["slurm_job_id"] == ""
    description = tags["mlflow.note.content"]
    assert WORKFLOW_DESCRIPTION in description and str(trained.run_dir) in description


def test_training_run_has_system_metrics(training_run):
    assert any(k.startswith("system/cpu_utilization") for k in training_run.data.metrics)
    assert any(k.startswith("system/system_memory_usage") for k in training_run.data.metrics)


def test_registered_version_states_its_input_and_output(trained, mlflow_client):
    mv = mlflow_client.get_model_version_by_alias(trained.model_name, "champion")
    assert "uint8 pixels 0-255" in mv.description and "probabilities" in mv.description
    from mlflow.models import Model

    folder = mlflow_client.get_logged_model(mv.model_id).artifact_location
    info = Model.load(folder.removeprefix("file://"))
    assert info.metadata["input"].startswith("uint8 pixels 0-255, shape (N, 28, 28)")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"


def test_inference_run_shows_its_evaluation_data_and_model(trained, mlflow_client,
                                                           inference_run, manifest):
    run_id = inference_run.info.run_id
    assert artifact_names(mlflow_client, run_id, "evaluation/test") == EVALUATION
    rows = per_class_rows(mlflow_client, run_id, "test")
    assert sum(r["samples"] for r in rows) == N_TEST
    correct = sum(r["correct"] for r in rows)
    assert inference_run.data.metrics["accuracy"] == pytest.approx(correct / N_TEST)
    assert dataset_inputs(inference_run) == {
        "mnist-test": ("inference", manifest.plan_id[:32], str(trained.shards.resolve()))}
    champion = mlflow_client.get_model_version_by_alias(trained.model_name, "champion")
    assert [m.model_id for m in inference_run.inputs.model_inputs] == [champion.model_id]


def test_inference_run_names_the_workflow_commit_and_the_slurm_job(trained, inference_run):
    tags = inference_run.data.tags
    assert tags["mlflow.source.git.commit"] == trained.commit
    assert tags["itwinai_hpc.backend"] == "slurm" and tags["slurm.job_id"] == "77"
    assert tags["itwinai_hpc.step"] == "predict" and tags["model.model_version"] == "1"
