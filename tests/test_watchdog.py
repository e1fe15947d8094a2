"""Runs that hang: a rank that stops making progress is stopped by its watchdog, its stacks go to
the log, and `status` shows the step HUNG naming the rank and node that stopped first; on SLURM a
hung step with `requeue` is requeued, and `resume --exclude` keeps a node out. Real processes:
the local backend here, the SLURM test cluster with two nodes below."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm.backend import sbatch_command
from itwinai_hpc.cli import main
from itwinai_hpc.ops import operations
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

BINDIR = Path(sys.executable).parent

# Reports progress a few times, then rank HANG_RANK stops (a collective it never joins, a
# stuck read: here a sleep); the other ranks go on reporting. A requeued run (SLURM_RESTART_COUNT
# > 0) does not hang and ends 0.
SCRIPT = """
import os, sys, time
from itwinai_hpc import job
hang = int(os.environ.get("HANG_RANK", "0"))
again = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
print("rank", job.rank(), "started", flush=True)
for i in range(200 if not again else 3):
    job.progress()
    if i == 3 and job.rank() == hang and not again:
        time.sleep(600)
    time.sleep(0.1)
print("rank", job.rank(), "done", flush=True)
"""


def workflow(folder: Path, launcher: str, resources: str, extra: str = "",
             hang_rank: int = 0) -> Path:
    script = folder / "work.py"
    script.write_text(SCRIPT)
    wf = folder / "wf.yml"
    wf.write_text(f"""name: hang
defaults:
  container: none
  resources: {{time: 3, mem: 500M}}
  env: {{PATH: "{BINDIR}:/usr/bin:/bin", HANG_RANK: "{hang_rank}"}}
steps:
  - name: train
    launcher: {launcher}
    command: {sys.executable} {script}
    resources: {{{resources}}}
    watchdog: {{no-progress: "0:05"}}
{extra}""")
    return wf


def test_a_rank_without_progress_is_stopped_and_the_step_shows_hung(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    wf = workflow(tmp_path, "none", "nodes: 1")
    t0 = time.monotonic()
    assert main(["submit", str(wf), "--backend", "local", "-o", "run", "--wait"]) == 1
    assert time.monotonic() - t0 < 60                       # not the 600 s sleep
    step = RunManifest.load(tmp_path / "run").step("train")
    assert step.state == "HUNG", (step.state, step.reason)
    assert "rank 0" in step.reason and "no progress for 5" in step.reason
    log = Path(step.log).read_text()
    assert "no progress for 5 s" in log
    assert 'File "' in log and "work.py" in log              # the Python stack of the rank
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "status", "run"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "HUNG" in p.stdout


def test_the_watchdog_is_off_where_the_step_has_none_and_the_script_keeps_going():
    code = ("import time\nfrom itwinai_hpc import job\n"
            "for i in range(3):\n    job.progress()\n    time.sleep(1.2)\nprint('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "ITWINAI_HPC_NO_PROGRESS"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**env, "ITWINAI_HPC_NO_PROGRESS": "1"}, timeout=60)
    assert p.returncode == 124 and "no progress for 1 s" in p.stderr


def test_resume_exclude_reaches_sbatch_and_stays_in_run_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = workflow(tmp_path, "none", "nodes: 1")
    assert main(["render", str(wf), "-o", "run"]) == 0
    manifest = RunManifest.load(tmp_path / "run")
    cmd = sbatch_command(manifest.run_dir, manifest.step("train"), {}, ["node2", "node3"])
    assert "--exclude=node2,node3" in cmd and cmd[-1].endswith(".sbatch")


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_a_hung_rank_on_two_nodes_shows_the_step_hung_naming_rank_and_node(slurm_cluster,
                                                                           run_folder):
    wf = workflow(run_folder, "torchrun", "nodes: 2", hang_rank=1)
    assert main(["submit", str(wf), "--backend", "slurm", "--wait", "--timeout", "300"]) == 1
    manifest = RunManifest.load(find_run(None))
    step = manifest.step("train")
    assert step.state == "HUNG", (step.state, step.reason)
    mark = json.loads(next((Path(manifest.run_dir) / "logs").glob(".hung-*-rank1"))
                      .read_text())
    assert mark["rank"] == 1 and mark["node"] in ("node1", "node2")
    assert f"rank 1 on {mark['node']}" in step.reason


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_resume_exclude_keeps_the_node_a_step_hung_on_out(slurm_cluster, run_folder):
    wf = workflow(run_folder, "none", "nodes: 1")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait", "--timeout", "300"]) == 1
    manifest = RunManifest.load(find_run(None))
    assert manifest.step("train").state == "HUNG"
    hung_on = manifest.step("train").nodes
    assert hung_on in ("node1", "node2")
    assert main(["resume", manifest.run_id, "--exclude", hung_on, "--no-preflight"]) == 0
    after = RunManifest.load(manifest.run_dir)
    assert after.extra["exclude"] == [hung_on]
    fields = slurm_cluster.job_fields(after.step("train").job_id)
    assert hung_on in fields.get("ExcNodeList", ""), fields
    operations.wait(after, interval=1, timeout=120)
    assert after.step("train").nodes not in (None, hung_on)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_a_hung_step_with_requeue_is_requeued_and_then_completes(slurm_cluster, run_folder):
    wf = workflow(run_folder, "srun", "nodes: 1, ntasks-per-node: 2",
                  # before-limit under the 3-minute limit: the default 300 s asked the step to
                  # stop as it started whenever SLURM's signal check came early (validate warns)
                  extra="    requeue: {max-requeues: 1, before-limit: 60}\n", hang_rank=1)
    assert main(["submit", str(wf), "--backend", "slurm", "--wait", "--timeout", "400"]) == 0
    manifest = RunManifest.load(find_run(None))
    log = "\n".join(p.read_text() for p in (Path(manifest.run_dir) / "logs").glob("*.out"))
    assert "a rank hung: requeue (restart 1)" in log, log[-3000:]
    assert manifest.step("train").state == "COMPLETED"
    assert operations.exit_code(manifest) == 0


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_a_rank_that_hangs_after_the_time_limit_warning_is_requeued_like_any_hang(
        slurm_cluster, run_folder):
    """The warning came, the step was asked to stop, and then a rank hung: its watchdog ended
    the step (124) within the grace, and the job script took that for a step that had ended on
    its own: HUNG, no requeue. A hang is requeued whenever it comes (up to max-requeues)."""
    wf = workflow(run_folder, "srun", "nodes: 1, ntasks-per-node: 2", hang_rank=1,
                  extra="    requeue: {max-requeues: 1, before-limit: 90, grace: 60}\n")
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = RunManifest.load(find_run(None))
    logs = Path(manifest.run_dir) / "logs"

    def log_text() -> str:
        return "\n".join(p.read_text(errors="replace") for p in logs.glob("*.out"))

    deadline = time.monotonic() + 120
    while "rank 1 started" not in log_text():
        assert time.monotonic() < deadline, "the step's ranks did not start"
        time.sleep(0.2)
    # what slurmctld sends at --signal=B:USR2@90; rank 1 hangs 0.3 s after it started
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", manifest.step("train").job_id)
    assert operations.wait(manifest, interval=1, timeout=300) == 0, manifest.step("train")
    text = log_text()
    assert "asking the step to checkpoint and stop" in text, text[-3000:]
    assert "a rank hung: requeue (restart 1)" in text, text[-3000:]
    assert manifest.step("train").state == "COMPLETED"
