"""Stopping and resuming inside an epoch, in this process (world size 1): the stop file, the
signals, and the checks that refuse a checkpoint that cannot be resumed exactly."""

from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
from ml_helpers import TEST_TRAIN_CONFIG, make_run_dir

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml import distributed as D
from itwinai_hpc.ml.config import TrainConfig, make_config
from itwinai_hpc.ml.trainer import TrainOptions, train_classifier


def solo(world_size: int = 1) -> D.Context:
    return D.Context(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"),
                     backend=None)


@pytest.fixture
def config():
    values = copy.deepcopy(TEST_TRAIN_CONFIG)
    values["trainer"].update(epochs=1, stop_check_every_steps=10)
    values["tracking"]["system_metrics_every_s"] = 0
    return make_config(TrainConfig, values)


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


@pytest.mark.timeout(600)   # three 1-epoch trainings: ~5 s each variant, ~40 s on busy cores
@pytest.mark.parametrize("trainer", [
    {},                                                 # fp32, batches built inline
    {"precision": "bf16", "prefetch_batches": 2},       # autocast, batches from a thread
], ids=["fp32", "bf16-prefetched"])
def test_stop_file_stops_mid_epoch_and_resume_matches_an_uninterrupted_run(
        config, tracked, mnist_shards, tmp_path, trainer):
    for key, value in trainer.items():
        setattr(config.trainer, key, value)
    run_dir = make_run_dir(tmp_path / "run")
    ck = tmp_path / "ck"
    opts = TrainOptions(data=str(mnist_shards), checkpoint_dir=str(ck), run_dir=str(run_dir),
                        tracking_uri=tracked, stop_file=str(run_dir / "train.STOP"))
    (run_dir / "train.STOP").touch()
    stopped = train_classifier(config, opts, solo(), log=lambda *a, **k: None)
    assert stopped.status == "stopped"
    state = torch.load(ck / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (0, 10)
    assert not (run_dir / "train.STOP").exists()      # consumed: the job script then requeues
    import mlflow  # the stopped run says why it stopped (read before the file is consumed)
    tags = mlflow.MlflowClient(tracked, tracked).get_run(stopped.run_id).data.tags
    assert tags["itwinai_hpc.stopped"] == f"{run_dir / 'train.STOP'} exists"

    resumed = train_classifier(config, opts, solo(), log=lambda *a, **k: None)
    assert resumed.status == "finished" and resumed.run_id == stopped.run_id

    straight = train_classifier(config, TrainOptions(
        data=str(mnist_shards), checkpoint_dir=str(tmp_path / "ck2"),
        tracking_uri=f"file:{tmp_path / 'mlruns2'}"), solo(), log=lambda *a, **k: None)
    assert resumed.weights_sha256 == straight.weights_sha256


def test_checkpoint_from_another_world_size_is_refused(config, tracked, mnist_shards, tmp_path):
    ck = tmp_path / "ck"
    opts = TrainOptions(data=str(mnist_shards), checkpoint_dir=str(ck), tracking_uri=tracked,
                        run_dir=str(make_run_dir(tmp_path / "run")),
                        stop_file=str(tmp_path / "run" / "train.STOP"))
    (tmp_path / "run" / "train.STOP").touch()
    train_classifier(config, opts, solo(), log=lambda *a, **k: None)
    with pytest.raises(UserError, match="written by 1 processes, this run has 2"):
        train_classifier(config, opts, solo(world_size=2), log=lambda *a, **k: None)


def test_sigterm_and_sigusr2_become_a_stop_request(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        stop = D.StopRequest(solo(), tmp_path / "train.STOP")
        try:
            assert not stop.agreed()
            os.kill(os.getpid(), sig)
            assert stop.agreed() and stop.reason() == sig.name
        finally:
            stop.restore()
