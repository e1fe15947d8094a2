"""train under real torchrun (2 CPU processes, gloo) on real MNIST digits, tracked in a real
MLflow file store: what a user finds in MLflow and the registry afterwards."""

from __future__ import annotations

import pytest
import torch
from ml_helpers import final_weight_hashes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # three torchrun launches, ~45 s


def test_first_epoch_reaches_far_above_chance_accuracy(trained, mlflow_client, training_run):
    history = mlflow_client.get_metric_history(training_run.info.run_id, "val_accuracy")
    first_epoch = [m.value for m in history if m.step == 1]
    assert first_epoch and first_epoch[0] > 0.8
    assert "epoch 1/2" in trained.first and "stopped after epoch 1" in trained.first


def test_one_run_holds_params_and_each_epoch_metric_once(trained, mlflow_client, training_run):
    params = training_run.data.params
    assert params["world_size"] == "2" and params["trainer.epochs"] == "2"
    assert params["model"] == "mnist-cnn" and params["backend"] == "gloo"
    for key in ("train_loss", "val_loss", "val_accuracy", "epoch_time_s", "samples_per_s"):
        steps = [m.step for m in mlflow_client.get_metric_history(training_run.info.run_id, key)]
        assert steps == [1, 2], f"{key} logged at steps {steps}"
    step_losses = mlflow_client.get_metric_history(training_run.info.run_id, "train_loss_step")
    assert [m.step for m in step_losses] == sorted({m.step for m in step_losses})
    assert all(m.step % 20 == 0 for m in step_losses)
    assert training_run.info.status == "FINISHED"


def test_resumed_run_continues_in_the_same_mlflow_run(trained, training_run):
    run_id = training_run.info.run_id
    assert "resuming at epoch 2 batch 0" in trained.second and run_id in trained.second
    assert "itwinai_hpc.stopped" not in training_run.data.tags
    assert trained.checkpoints_after_first == ["checkpoint.pt"]


def test_resumed_weights_equal_an_uninterrupted_run(trained):
    resumed, straight = final_weight_hashes(trained.second), final_weight_hashes(trained.straight)
    assert resumed[0] == straight[0]


def test_ranks_end_with_identical_weights(trained, training_run):
    tags = training_run.data.tags
    assert tags["weights_sha256.rank0"] == tags["weights_sha256.rank1"]
    for out in (trained.second, trained.straight):
        hashes = final_weight_hashes(out)
        assert set(hashes) == {0, 1} and hashes[0] == hashes[1], out


def test_registry_holds_champion_with_the_logged_val_accuracy(trained, mlflow_client,
                                                              training_run):
    mv = mlflow_client.get_model_version_by_alias(trained.model_name, "champion")
    assert mv.run_id == training_run.info.run_id
    logged = max(m.value for m in mlflow_client.get_metric_history(mv.run_id, "val_accuracy"))
    assert float(mv.tags["val_accuracy"]) == pytest.approx(logged, abs=0)
    assert float(mv.tags["test_accuracy"]) > 0.8


def test_run_scripts_readable_in_the_ui_and_checkpoint_are_artifacts(trained, mlflow_client,
                                                                     training_run):
    run_id = training_run.info.run_id
    scripts = {a.path.split("/")[-1] for a in mlflow_client.list_artifacts(run_id, "run_scripts")}
    # MLflow previews neither .sh nor .sbatch: each has a .txt twin with the same text.
    assert scripts == {"02-train.sbatch", "02-train.sbatch.txt", "submit.sh", "submit.sh.txt",
                       "workflow.yml"}
    folder = mlflow_client.download_artifacts(run_id, "run_scripts")
    assert (trained.run_dir / "02-train.sbatch").read_text() == \
        open(f"{folder}/02-train.sbatch.txt").read()
    ckpts = {a.path.split("/")[-1] for a in mlflow_client.list_artifacts(run_id, "checkpoints")}
    assert ckpts == {"checkpoint.pt"}
    final = torch.load(trained.run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert final["finished"] and final["mlflow_run_id"] == run_id and final["epoch"] == 2


def test_rerun_after_finishing_registers_nothing_new(trained, mlflow_client, train_config_file):
    from ml_helpers import ml_env, torchrun_train

    out = torchrun_train(["--config", str(train_config_file), "--data", str(trained.shards)],
                         ml_env(trained.store, trained.run_dir), nproc=1)
    assert "already finished" in out.stdout
    versions = mlflow_client.search_model_versions(f"name='{trained.model_name}'")
    assert len(versions) == 1


def test_a_training_outside_a_sweep_has_no_sweep_tags_and_leaves_no_result(trained,
                                                                           training_run):
    assert not [k for k in training_run.data.tags if "sweep" in k or k.startswith("matrix.")]
    assert training_run.info.run_name == "run"      # the itwinai-hpc run id, as before
    assert not (trained.run_dir / "sweeps").exists()
