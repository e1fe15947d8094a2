"""The stop contract's one rule where exit statuses are read without a scheduler: a job's (or
array task's) exit status 75 is STOPPED, whatever read it; an array with a failed task fails."""

from __future__ import annotations

from itwinai_hpc.backends.slurm.exit_status import complete_array, info_from_exit_status
from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.run.exit_status import describe_exit
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
