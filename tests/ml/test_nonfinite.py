"""A training whose loss diverges to inf/NaN fails (exit 1, one `error:` line, the MLflow run
FAILED with the reason) and registers nothing: no model version, the champion alias untouched.
A NaN validation metric is never the best epoch, and the registry refuses a non-finite metric.

The divergence is real: SGD with a constant learning rate of 1e20 on real digits makes the
weights overflow in the first step; the loss is NaN from step 2 on, on every run."""

from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from ml_helpers import REPO, TEST_TRAIN_CONFIG, itwinai_hpc, ml_env

MODEL_NAME = TEST_TRAIN_CONFIG["registry"]["model_name"]
EXPERIMENT = TEST_TRAIN_CONFIG["tracking"]["experiment"]
NAN = float("nan")


def diverging_config(folder) -> str:
    values = copy.deepcopy(TEST_TRAIN_CONFIG)
    values["trainer"].update(epochs=1, optimizer="sgd", lr=1e20, lr_schedule="constant",
                             stop_check_every_steps=10)
    values["tracking"]["system_metrics_every_s"] = 0
    path = folder / "diverging.yml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def client_for(store):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"file:{store}", registry_uri=f"file:{store}")


def register_champion(store, accuracy: float) -> None:
    """Version 1 of the test's model name holding @champion with val_accuracy `accuracy`."""
    from itwinai_hpc.ml import tracking
    from itwinai_hpc.ml.registry import Registration, log_and_register

    tracking.configure(f"file:{store}")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    tracking.start_run("earlier")
    try:
        assert log_and_register(Registration(
            model, torch.zeros(2, 1, 2, 2).numpy(), name=MODEL_NAME, alias="champion",
            metric="val_accuracy", value=accuracy)) == ("1", True)
    finally:
        tracking.end_run()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.timeout(600)   # one process, stops at step 10: ~15 s, more on busy cores
def test_a_diverging_training_fails_and_registers_nothing(mnist_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    # A weak earlier champion: a diverged model (predicting one class: ~0.1) would beat it.
    register_champion(store, 0.05)
    ck = tmp_path / "ck"
    p = itwinai_hpc(["train", "--config", diverging_config(tmp_path), "--data",
                     str(mnist_shards), "--checkpoint-dir", str(ck)], ml_env(store))
    out = f"{p.stdout}\n{p.stderr}"
    assert p.returncode == 1, out
    assert "Traceback" not in p.stderr, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1, p.stderr
    error = errors[0]
    assert "non-finite training loss" in error and "nan_patience" in error, error
    assert "step 2 (epoch 1, batch 2 of" in error, error          # where the NaN began
    assert "last finite loss 2.3" in error, error                 # step 1: ln(10) ~ 2.30
    client = client_for(store)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite training loss" in run.data.tags["itwinai_hpc.failed"]
    assert "registered_model" not in run.data.tags
    assert not (ck / "checkpoint.pt").exists()    # stopped mid-epoch: no NaN weights saved


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)   # two processes (gloo), stop at step 10: ~20 s, more on busy cores
def test_both_ranks_of_a_diverging_ddp_training_exit_1_without_hanging(mnist_shards, tmp_path):
    """The two ranks as torchrun starts them (its environment; gloo on the CPU), but launched
    here, so that each one's exit code and output are its own: torchrun would end a rank that
    hangs once the other failed, and report only the first failure."""
    import subprocess
    import sys

    store = tmp_path / "mlruns"
    exe = os.path.join(os.path.dirname(sys.executable), "itwinai-hpc")
    args = [exe, "train", "--config", diverging_config(tmp_path), "--data", str(mnist_shards)]
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = ml_env(store, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank),
                     LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     GROUP_RANK="0", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [1, 1], outs
    (rank0_out, rank0_err), (_, rank1_err) = outs
    assert "Traceback" not in rank0_err + rank1_err, outs
    errors = error_lines(rank0_err)
    assert len(errors) == 1 and "non-finite training loss" in errors[0], rank0_err
    assert "rank" in errors[0], errors[0]
    assert error_lines(rank1_err) == [], rank1_err   # one error line for the whole job
    client = client_for(store)
    assert client.search_model_versions(f"name='{MODEL_NAME}'") == []
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED" and run.data.params["world_size"] == "2"


@pytest.mark.timeout(600)   # one epoch of 94 steps in this process: ~5 s, more on busy cores
def test_an_epoch_shorter_than_the_check_interval_fails_at_its_end(mnist_shards, tmp_path,
                                                                    monkeypatch):
    """No check point inside the epoch: the epoch's end finds the run of NaN losses, before
    the epoch is validated, checkpointed or registered."""
    from itwinai_hpc.ml import distributed as D
    from itwinai_hpc.ml.config import TrainConfig, load_config
    from itwinai_hpc.ml.trainer import TrainingFailed, TrainOptions, train_classifier

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = load_config(TrainConfig, diverging_config(tmp_path),
                         ["trainer.stop_check_every_steps=1000"])
    cpu = D.Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                    backend=None)
    store = tmp_path / "mlruns"
    lines = []
    with pytest.raises(TrainingFailed) as failed:
        train_classifier(config, TrainOptions(
            data=str(mnist_shards), tracking_uri=f"file:{store}",
            checkpoint_dir=str(tmp_path / "ck")), cpu, log=lambda *a, **k: lines.append(a[0]))
    message = str(failed.value)
    assert "from step 2 (epoch 1, batch 2 of 94)" in message, message
    assert "Stopped at step 94 (epoch 1, batch 94 of 94)" in message, message
    assert not [line for line in lines if line.startswith("epoch 1/1")]   # never validated
    assert not (tmp_path / "ck" / "checkpoint.pt").exists()
    client = client_for(store)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["itwinai_hpc.failed"] == message
    assert client.search_registered_models() == []


# ---- unit level -----------------------------------------------------------------------------

def test_finish_refuses_a_training_without_a_finite_best_epoch():
    from itwinai_hpc.ml.finish import finish
    from itwinai_hpc.ml.training_state import Training, TrainingFailed

    config = SimpleNamespace(trainer=SimpleNamespace(epochs=2))
    t = Training(config=config, opts=None, ctx=None, manifest=None, model=None, optimizer=None,
                 scheduler=None, memory_format=None,
                 session=SimpleNamespace(metric="val_accuracy"))
    with pytest.raises(TrainingFailed,
                       match="no epoch of 2 had a finite val_accuracy and val_loss"):
        finish(t)


def test_a_nan_validation_metric_never_becomes_the_best_epoch():
    from itwinai_hpc.ml.training_state import Training

    model = torch.nn.Linear(2, 2)
    config = SimpleNamespace(registry=SimpleNamespace(select_by="val_accuracy", mode="max"))
    t = Training(config=config, opts=None, ctx=None, manifest=None, model=model,
                 optimizer=None, scheduler=None, memory_format=None, session=None)

    def val(accuracy, loss=0.5):
        return SimpleNamespace(accuracy=accuracy, loss=loss)

    assert not t.consider(1, val(NAN))            # the first epoch's NaN: no best at all
    assert t.best.metric is None and t.best.state is None
    assert t.consider(2, val(0.5))
    assert not t.consider(3, val(NAN))            # NaN > 0.5 is False, but so is 0.5 > NaN
    assert not t.consider(4, val(math.inf))
    assert not t.consider(5, val(0.9, loss=NAN))  # NaN logits: accuracy is whatever argmax says
    assert (t.best.metric, t.best.epoch) == (0.5, 2)
    assert t.consider(6, val(0.6)) and (t.best.metric, t.best.epoch) == (0.6, 6)
    assert not t.consider(7, val(0.6))            # a tie keeps the earlier epoch


def watch(patience: int, window: int = 4):
    from itwinai_hpc.ml.step import LossWatch

    return LossWatch(patience, window, torch.device("cpu"))


def feed(w, first_step: int, losses: list[float]) -> None:
    for i, v in enumerate(losses):
        w.add(first_step + i, torch.tensor(v))


def test_loss_watch_counts_consecutive_non_finite_losses_across_check_points():
    w = watch(3)
    feed(w, 1, [2.3, 1.9, NAN, math.inf])
    assert w.poll() is None                      # two in a row so far
    feed(w, 5, [NAN, 2.0, NAN, NAN])
    report = w.poll()
    assert report is not None and report.first_step == 3 and report.count == 3
    assert report.last_finite == pytest.approx(1.9) and report.last_finite_step == 2
    feed(w, 9, [1.0])                            # the first report stays the report
    assert w.poll() is report


def test_loss_watch_forgives_a_short_run_but_not_one_that_training_ends_in():
    w = watch(3)
    feed(w, 1, [2.3, NAN, NAN, 2.1])             # e.g. fp16 overflow, recovered
    assert w.poll() is None
    feed(w, 5, [2.0, NAN])
    assert w.poll() is None
    report = w.poll(end=True)                    # training ends inside a non-finite run
    assert report is not None and report.first_step == 6 and report.count == 1
    assert report.ended and report.last_finite == pytest.approx(2.0)


@pytest.mark.parametrize("patience", [0, 1])
def test_nan_patience_0_and_1_stop_at_the_first_non_finite_loss(patience):
    w = watch(patience)
    feed(w, 1, [NAN])
    report = w.poll()
    assert report is not None and report.first_step == 1 and report.last_finite is None


def test_nan_patience_is_a_trainer_setting_with_a_small_default():
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.ml.config import TrainConfig, make_config

    assert make_config(TrainConfig).trainer.nan_patience == 3
    assert make_config(TrainConfig, {"trainer": {"nan_patience": 0}}).trainer.nan_patience == 0
    with pytest.raises(UserError, match="nan_patience"):
        make_config(TrainConfig, {"trainer": {"nan_patience": -1}})


def test_registry_refuses_a_non_finite_metric_and_a_nan_champion_loses_the_alias(
        tmp_path, monkeypatch):
    from itwinai_hpc.ml import tracking
    from itwinai_hpc.ml.registry import (
        Registration,
        log_and_register,
        log_served_model,
        register_version,
    )

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking.configure(f"file:{tmp_path / 'mlruns'}")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()

    def reg(value):
        return Registration(model, torch.zeros(2, 1, 2, 2).numpy(), name="m", alias="champion",
                            metric="val_accuracy", value=value)

    tracking.start_run("registry-nan")
    try:
        for bad in (NAN, math.inf, None):
            with pytest.raises(ValueError, match="not a finite number"):
                log_and_register(reg(bad))
        from mlflow import MlflowClient

        client = MlflowClient()
        assert client.search_model_versions("name='m'") == []
        # A champion registered before this check, with a NaN metric (e.g. an old run): a
        # finite version takes the alias from it (nothing compares greater than NaN).
        uri = log_served_model(reg(0.5))
        assert register_version(reg(0.5), uri) == ("1", True)
        client.set_model_version_tag("m", "1", "val_accuracy", "nan")
        assert register_version(reg(0.2), uri) == ("2", True)
    finally:
        tracking.end_run()
