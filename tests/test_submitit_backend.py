"""The submitit backend: step chains through submitit's SLURM executor (on the real test cluster)
and its local executor, dependencies honoured, failures stop dependents, requeue-ready callable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from itwinai_hpc.backends.submitit.backend import choose_cluster
from itwinai_hpc.backends.submitit.step import SubmititStep
from itwinai_hpc.ops import operations
from itwinai_hpc.run.manifest import RunManifest

CHAIN = """
name: chain
steps:
  - name: first
    command: bash -c
    args: ['echo "first $(date +%s.%N)" >> order.txt; sleep 2;
           echo "first-end $(date +%s.%N)" >> order.txt']
  - name: second
    needs: [first]
    command: bash -c
    args: ['echo "second $(date +%s.%N)" >> order.txt; echo "job $SLURM_JOB_ID"']
"""

FAILING = """
name: failing
steps:
  - name: broken
    command: bash -c
    args: ['exit 3']
  - name: after
    needs: [broken]
    command: touch after-ran
"""


def submit(folder: Path, text: str, cluster: str) -> tuple[subprocess.CompletedProcess, Path]:
    (folder / "wf.yml").write_text(text)
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": cluster}
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "submit", "wf.yml", "--backend",
                        "submitit", "-o", str(folder / "run"), "--wait"], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=120)
    return p, folder / "run"


def stamps(folder: Path) -> dict[str, float]:
    return {k: float(v) for k, v in (ln.split() for ln in (folder / "order.txt").read_text()
                                     .splitlines())}


def assert_chain_ran_in_order(p, run_dir: Path, folder: Path) -> RunManifest:
    assert p.returncode == 0, p.stdout + p.stderr
    manifest = RunManifest.load(run_dir)
    assert manifest.backend == "submitit"
    assert [s.state for s in manifest.steps] == ["COMPLETED", "COMPLETED"]
    t = stamps(folder)
    assert t["second"] >= t["first-end"]
    second = manifest.step("second")
    assert f"job {second.job_id}" in Path(second.log).read_text()
    return manifest


@pytest.mark.slurm
def test_chain_runs_in_order_through_submitits_slurm_executor(slurm_cluster, run_folder):
    p, run_dir = submit(run_folder, CHAIN, "slurm")
    manifest = assert_chain_ran_in_order(p, run_dir, run_folder)
    assert manifest.extra["submitit"]["cluster"] == "slurm"
    first, second = manifest.step("first"), manifest.step("second")
    assert slurm_cluster.job_fields(first.job_id).get("JobName") == "chain.first"
    assert f"afterok:{first.job_id}" in (run_dir / "submitit" /
                                         f"{second.job_id}_submission.sh").read_text()


@pytest.mark.slurm
def test_failed_step_on_slurm_records_its_exit_code_and_cancels_dependents(slurm_cluster,
                                                                           run_folder):
    p, run_dir = submit(run_folder, FAILING, "slurm")
    assert p.returncode == 1
    manifest = RunManifest.load(run_dir)
    assert [s.state for s in manifest.steps] == ["FAILED", "CANCELLED"]
    assert manifest.step("broken").exit_code == 3
    assert not (run_folder / "after-ran").exists()


def test_chain_runs_in_order_through_submitits_local_executor(tmp_path):
    p, run_dir = submit(tmp_path, CHAIN, "local")
    manifest = assert_chain_ran_in_order(p, run_dir, tmp_path)
    assert manifest.extra["submitit"]["cluster"] == "local"


def test_failed_step_with_the_local_executor_cancels_dependents(tmp_path):
    p, run_dir = submit(tmp_path, FAILING, "local")
    assert p.returncode == 1
    manifest = RunManifest.load(run_dir)
    assert [s.state for s in manifest.steps] == ["FAILED", "CANCELLED"]
    assert manifest.step("broken").exit_code == 3
    time.sleep(0.5)
    assert not (tmp_path / "after-ran").exists()


def test_step_callable_is_checkpointable_asks_the_step_to_stop_and_resubmits_itself(tmp_path):
    step = SubmititStep(str(tmp_path), "/work", "r", "train", f"{tmp_path}/02-train.sbatch",
                        "wf.train")
    assert isinstance(step, submitit.helpers.Checkpointable)
    again = step.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is step and again.args == () and again.kwargs == {}
    assert (tmp_path / "train.STOP").exists()          # what the step's code polls


def test_cluster_choice_follows_the_environment_override():
    assert choose_cluster({"ITWINAI_HPC_SUBMITIT_CLUSTER": "local"}) == "local"
    assert choose_cluster({"ITWINAI_HPC_SUBMITIT_CLUSTER": "slurm"}) == "slurm"
    with pytest.raises(Exception, match="expected 'slurm' or 'local'"):
        choose_cluster({"ITWINAI_HPC_SUBMITIT_CLUSTER": "pbs"})


def submit_running_on_slurm(cluster, folder: Path, text: str, step: str, **env: str) -> str:
    """Submit `text` through submitit to the test cluster (no --wait); `step`'s job id once
    it runs."""
    (folder / "wf.yml").write_text(text)
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": "slurm", **env}
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "submit", "wf.yml", "--backend",
                        "submitit", "-o", str(folder / "run")], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    job = RunManifest.load(folder / "run").step(step).job_id
    cluster.wait_for_state(job, ["RUNNING"])
    return job


PREEMPTED = """
name: preempted
defaults: {resources: {time: 10}}
steps:
  - name: long
    command: bash -c
    args: ['echo "start $${SLURM_RESTART_COUNT:-0}"; if [[ -e resumed ]]; then exit 0; fi;
            touch resumed;
            for i in $(seq 60); do if [[ -e $ITWINAI_HPC_STOP_FILE ]]; then echo stopped; exit 0;
            fi; sleep 1; done']
"""


@pytest.mark.slow
@pytest.mark.slurm
def test_a_step_warned_of_its_time_limit_is_checkpointed_requeued_and_completes(
        slurm_cluster, run_folder):
    job = submit_running_on_slurm(slurm_cluster, run_folder, PREEMPTED, "long")
    deadline = time.monotonic() + 30
    while not (run_folder / "resumed").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # what slurmctld sends at --signal=B:USR2@90 before the time limit
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", job)
    slurm_cluster.wait_for_jobs([job], timeout=90)
    fields = slurm_cluster.job_fields(job)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1"
    log = Path(RunManifest.load(run_folder / "run").step("long").log).read_text()
    assert [l for l in log.splitlines() if l.startswith("start")] == ["start 0", "start 1"]
    assert "stopped" in log                            # the step saw the STOP file in time


def test_a_local_step_finds_the_installed_itwinai_hpc_first_even_off_path(tmp_path):
    """As under the local backend: a step calling `itwinai-hpc` gets the one that submitted the
    run, even where the submitting shell's PATH lacks its folder."""
    (tmp_path / "wf.yml").write_text("""
name: which
steps:
  - name: which
    command: bash -c
    args: ['command -v itwinai-hpc > which.txt']
""")
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": "local", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "submit", "wf.yml", "--backend",
                        "submitit", "-o", str(tmp_path / "run"), "--wait"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "which.txt").read_text().strip() == \
        str(Path(sys.executable).parent / "itwinai-hpc")


SLOW_STEP = """
name: detached
steps:
  - name: long
    command: bash -c
    args: ['touch started; until test -e release; do sleep 0.1; done; touch ended']
"""


def test_a_local_submission_returns_while_its_job_runs_and_ctrl_c_leaves_the_job_alone(tmp_path):
    """submit through a pipe returns once the job is queued, not once it ended (the job's
    controller held the pipe: `submit | tee` hung); Ctrl-C during `submit --wait` (SIGINT to
    the terminal's process group) stops the waiting, never the job, as with every backend."""
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": "local"}
    for folder in ("piped", "interrupted"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "wf.yml").write_text(SLOW_STEP)
    submit_ = [sys.executable, "-m", "itwinai_hpc.cli", "submit", "wf.yml", "--backend",
               "submitit", "-o", "run"]
    piped, interrupted = tmp_path / "piped", tmp_path / "interrupted"
    waiting = None
    try:
        p = subprocess.run(submit_, cwd=piped, env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        assert not (piped / "ended").exists()         # returned (pipes closed) while it runs
        (piped / "release").touch()

        waiting = subprocess.Popen(submit_ + ["--wait"], cwd=interrupted, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + 60
        while not (interrupted / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (interrupted / "started").exists()
        # The job waits for `release`: however loaded the machine, it is still running when
        # Ctrl-C arrives (it ended on its own once, before the signal, and the wait exited 0).
        os.killpg(waiting.pid, signal.SIGINT)         # what Ctrl-C does: the foreground group
        assert waiting.wait(timeout=30) == 130
        assert not (interrupted / "ended").exists()
    finally:   # a failed assert leaves no job waiting for ever, nor a waiting submit
        for folder in (piped, interrupted):
            (folder / "release").touch()
        if waiting is not None and waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    for folder in (piped, interrupted):
        manifest = RunManifest.load(folder / "run")
        assert operations.wait(manifest, interval=0.2, timeout=60) == 0
        assert RunManifest.load(folder / "run").step("long").state == "COMPLETED"
        assert (folder / "ended").exists()


@pytest.mark.parametrize("value", ["bogus", ""])
def test_a_bad_cluster_choice_is_refused_before_the_run_folder_is_written(tmp_path, value):
    (tmp_path / "wf.yml").write_text(SLOW_STEP)
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": value}
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "submit", "wf.yml", "--backend",
                        "submitit", "-o", "run"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert (p.returncode, "Traceback" in p.stderr) == (2, False), p.stderr
    assert "ITWINAI_HPC_SUBMITIT_CLUSTER" in p.stderr and not (tmp_path / "run").exists()


def test_status_and_logs_leave_submitit_unpatched():
    """Only a local submission makes submitit start its controllers detached; importing the
    backend (status, logs, cancel of a submitit run) changes nothing in submitit."""
    code = ("import subprocess, submitit.local.local as loc\n"
            "import itwinai_hpc.backends.submitit.backend\n"
            "import itwinai_hpc.backends.submitit.on_local as on_local\n"
            "assert loc.subprocess is subprocess, 'patched on import'\n"
            "on_local.detach_controllers()\n"
            "assert loc.subprocess.Popen is on_local._DetachedPopen\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


SHORT = """
name: short
defaults: {resources: {time: 2}}
steps:
  - name: quick
    command: bash -c
    args: ['sleep 3; echo finished']
"""

# Python's start-up held for 6 s in the job's first process (submitit's own, which installs the
# USR2 handler), so that the warning is sure to arrive before the handler exists.
SLOW_START = """
import os, pathlib, time
flag = pathlib.Path(os.environ.get("SLOW_START_FLAG", "/nonexistent/x"))
if os.environ.get("SLURM_JOB_ID") and flag.parent.is_dir() and not flag.exists():
    flag.touch()
    time.sleep(6)
"""


@pytest.mark.slurm
def test_a_warning_that_comes_as_the_job_starts_does_not_kill_it(slurm_cluster, run_folder):
    """A step whose time limit is shorter than submitit's warning (--signal=B:USR2@90) gets
    the warning at SLURM's first check, which can fall before python has installed submitit's
    handler: the signal's default action killed the job (exit 140, no log line). It is ignored
    until the handler is in place, so the step runs and completes."""
    (run_folder / "site").mkdir()
    (run_folder / "site" / "sitecustomize.py").write_text(SLOW_START)
    job = submit_running_on_slurm(slurm_cluster, run_folder, SHORT, "quick",
                                  PYTHONPATH=str(run_folder / "site"),
                                  SLOW_START_FLAG=str(run_folder / "slow"))
    deadline = time.monotonic() + 5
    while not (run_folder / "slow").exists():       # the job's python is starting
        assert time.monotonic() < deadline, "the job's python never started"
        time.sleep(0.05)
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", job)
    slurm_cluster.wait_for_jobs([job], timeout=60)
    assert slurm_cluster.job_state(job) == "COMPLETED", slurm_cluster.job_fields(job)
    step = RunManifest.load(run_folder / "run").step("quick")
    assert "finished" in Path(step.log).read_text()
