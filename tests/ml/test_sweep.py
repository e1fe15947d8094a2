"""A sweep's task as the ML steps read it from the job script's environment: its MLflow tags, a
clear error for a malformed matrix, and the steady throughput its result file reports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ml_helpers import REPO, make_run_dir, ml_env

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.provenance import Provenance
from itwinai_hpc.ml.sweep import SweepTask, steady_median

TASK_ENV = {"ITWINAI_HPC_SWEEP": "train", "ITWINAI_HPC_SWEEP_ID": "r7.train",
            "ITWINAI_HPC_SWEEP_TASK": "3", "ITWINAI_HPC_RUN_ID": "r7",
            "ITWINAI_HPC_STEP": "train",
            "ITWINAI_HPC_MATRIX": '{"lr": "0.01", "batch-size": "64"}'}


def test_a_sweep_task_is_tagged_with_its_sweep_task_and_matrix_values(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    tags = Provenance.from_env({**TASK_ENV, "ITWINAI_HPC_RUN_DIR": str(run_dir)}).tags()
    assert {k: v for k, v in tags.items() if "sweep" in k or k.startswith("matrix.")} == {
        "itwinai_hpc.sweep_id": "r7.train", "itwinai_hpc.sweep": "train",
        "itwinai_hpc.sweep_task": "3", "matrix.lr": "0.01", "matrix.batch-size": "64"}


def test_the_description_names_the_task_and_its_values_and_finds_the_step_as_written(tmp_path):
    run_dir = make_run_dir(tmp_path / "run")   # its workflow.yml has the step `train`
    env = {**TASK_ENV, "ITWINAI_HPC_RUN_DIR": str(run_dir), "ITWINAI_HPC_STEP": "train-3"}
    text = Provenance.from_env(env).description()
    assert "Task 3 of sweep `r7.train`: lr=0.01, batch-size=64" in text
    assert "the train step of the test" in text


def test_without_sweep_variables_there_are_no_sweep_tags(tmp_path):
    env = {k: v for k, v in TASK_ENV.items() if "SWEEP" not in k and "MATRIX" not in k}
    p = Provenance.from_env(env)
    assert p.sweep is None
    assert not [k for k in p.tags() if "sweep" in k or k.startswith("matrix.")]


def test_numbers_and_booleans_in_the_matrix_are_tagged_as_json_writes_them():
    task = SweepTask.from_env({**TASK_ENV,
                               "ITWINAI_HPC_MATRIX": '{"nodes": 2, "lr": 0.5, "amp": true}'})
    assert task.matrix == {"nodes": "2", "lr": "0.5", "amp": "true"}


def test_the_sweep_id_defaults_to_the_layouts_run_and_sweep():
    env = {k: v for k, v in TASK_ENV.items() if k != "ITWINAI_HPC_SWEEP_ID"}
    assert SweepTask.from_env(env).sweep_id == "r7.train"


@pytest.mark.parametrize("matrix, says", [
    ("lr=0.01", "not JSON"), ('["0.01"]', "expected a JSON object"),
    ('{"lr": ["0.01", "0.02"]}', "lr: expected a string, number or boolean"),
    ('{"lr": null}', "lr: expected a string, number or boolean"),
    ('{"l:r": "1"}', "key 'l:r'")])
def test_a_malformed_matrix_is_an_error_naming_the_variable(matrix, says):
    with pytest.raises(UserError) as e:
        SweepTask.from_env({**TASK_ENV, "ITWINAI_HPC_MATRIX": matrix})
    assert e.value.format().startswith("ITWINAI_HPC_MATRIX: ") and says in e.value.format()


def test_a_task_index_that_is_no_number_is_an_error():
    with pytest.raises(UserError, match="ITWINAI_HPC_SWEEP_TASK: expected the task's index"):
        SweepTask.from_env({**TASK_ENV, "ITWINAI_HPC_SWEEP_TASK": "first"})


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_step_with_a_malformed_matrix_exits_2_with_one_sentence(command, tmp_path):
    (tmp_path / "shards").mkdir()
    env = ml_env(tmp_path / "mlruns", make_run_dir(tmp_path / "run"),
                 **{**TASK_ENV, "ITWINAI_HPC_MATRIX": '{"lr": [1, 2]}'})
    extra = ["--output", str(tmp_path / "p.csv")] if command == "predict" else []
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", command, "--data",
                        str(tmp_path / "shards"), *extra], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env=env)
    assert p.returncode == 2, p.stderr
    assert "ITWINAI_HPC_MATRIX: lr: expected a string, number or boolean" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "mlruns").exists()


def test_steady_throughput_leaves_out_the_first_epoch_from_three_epochs_on():
    assert steady_median([]) is None
    assert steady_median([100.0]) == 100.0
    assert steady_median([100.0, 300.0]) == 200.0          # two epochs: both count
    assert steady_median([10.0, 300.0, 200.0]) == 250.0    # the warm-up epoch is left out
    assert steady_median([10.0, 300.0, 100.0, 200.0]) == 200.0
