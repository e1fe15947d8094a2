"""The stop contract's one rule where exit statuses are read without a scheduler: a job's (or
array task's) exit status 75 is STOPPED, whatever read it; an array with a failed task fails."""

from __future__ import annotations

import pytest

from itwinai_hpc.backends.slurm.exit_status import complete_array, info_from_exit_status
from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.run.exit_status import describe_exit
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.states import FAILED_ITSELF, FINISHED, SUCCEEDED, StepState


def test_an_exit_status_of_75_is_stopped_and_says_how_to_go_on():
    info = info_from_exit_status("12", STOP_EXIT)
    assert (info.state, info.exit_code) == (StepState.STOPPED, 75)
    assert "stopped early, to be resumed (`itwinai-hpc resume`)" in describe_exit(75)
    assert StepState.STOPPED in FINISHED and StepState.STOPPED not in SUCCEEDED
    assert StepState.STOPPED not in FAILED_ITSELF     # `logs` shows failures first, not stops


def test_an_array_is_stopped_by_a_stopped_task_and_failed_by_a_failed_one():
    assert complete_array("9", "0-1", None, {"0": 0, "1": 75}).state == StepState.STOPPED
    failed = complete_array("9", "0-2", None, {"0": 75, "1": 3, "2": 0})
    assert (failed.state, failed.exit_code) == (StepState.FAILED, 3)
    assert complete_array("9", "0-1", None, {"0": 0, "1": 0}).state == StepState.COMPLETED


STOPPING = """
name: stopping
steps:
  - name: work
    command: bash -c
    args: ['exit 75']
  - name: after
    needs: [work]
    command: touch after-ran
"""


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_submitit_records_a_step_that_exits_75_as_stopped_and_skips_its_dependents(
        cluster, request, tmp_path):
    if cluster == "slurm":
        request.getfixturevalue("slurm_cluster")
    from test_submitit_backend import submit

    p, run_dir = submit(tmp_path, STOPPING, cluster)
    assert p.returncode == 1, p.stdout + p.stderr
    manifest = RunManifest.load(run_dir)
    assert [str(s.state) for s in manifest.steps] == ["STOPPED", "CANCELLED"]
    assert manifest.step("work").exit_code == STOP_EXIT
    assert not (tmp_path / "after-ran").exists()
