"""Local mode: a run's steps on this machine, detached, in dependency order, with SLURM's
environment; status, logs, cancel and resume as with SLURM. Real processes, no SLURM needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from itwinai_hpc.backends.local.procs import alive
from itwinai_hpc.cli import main
from itwinai_hpc.data.idx import write_idx
from itwinai_hpc.data.mnist import IDX_FILES
from itwinai_hpc.ops import operations
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SLURM_COMMANDS = {"sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel", "salloc", "sacct"}
# The step appends "<step> <start> <end>" (epoch seconds) to order.txt.
STAMP = 'start=$(date +%s.%N); {body}; echo "$ITWINAI_HPC_STEP $start $(date +%s.%N)" >> order.txt'


@pytest.fixture
def no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """PATH with /usr/bin's commands except SLURM's (links in a folder), the venv first."""
    bin_dir = tmp_path / "bin-without-slurm"
    bin_dir.mkdir()
    for entry in os.scandir("/usr/bin"):
        if entry.name not in SLURM_COMMANDS:
            (bin_dir / entry.name).symlink_to(entry.path)
    path = f"{VENV_BIN}:{bin_dir}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert shutil.which("sbatch") is None
    return {**os.environ, "PATH": path}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The test's cwd; at the end, nothing a failed test's steps left behind keeps running."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    yield tmp_path
    for pid in step_processes(None, under=tmp_path):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def write_workflow(folder: Path, text: str) -> Path:
    path = folder / "wf.yml"
    path.write_text(text)
    return path


def submit(workflow: Path, *extra: str, env=None) -> tuple[subprocess.CompletedProcess, Path]:
    p = cli("submit", str(workflow), "--backend", "local", "-o",
            str(workflow.parent / "run"), *extra, env=env)
    return p, workflow.parent / "run"


def wait_for(run_dir: Path, timeout: float = 60) -> RunManifest:
    manifest = RunManifest.load(run_dir)
    rc = operations.wait(manifest, interval=0.2, timeout=timeout)
    assert rc != operations.EXIT_ACTIVE, operations.progress_line(manifest)
    return manifest


def states(manifest: RunManifest) -> dict[str, str]:
    return {s.name: s.state for s in manifest.steps}


def order(folder: Path) -> dict[str, tuple[float, float]]:
    lines = (folder / "order.txt").read_text().split("\n")
    return {n: (float(a), float(b)) for n, a, b in (ln.split() for ln in lines if ln)}


def log_text(manifest: RunManifest, step: str) -> str:
    files = operations.backend_for(manifest).log_files(manifest, manifest.step(step))
    return "".join(f.read_text() for f in files)


def step_processes(run_id: str | None, under: Path | None = None) -> list[int]:
    """Live processes whose environment names the run (the scripts export ITWINAI_HPC_RUN_ID),
    or (under=) any run in that folder."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        mine = (f"ITWINAI_HPC_RUN_ID={run_id}".encode() in environ if under is None else
                any(e.startswith(f"ITWINAI_HPC_RUN_DIR={under}/".encode()) for e in environ))
        if mine and state != "Z":
            found.append(int(pid))
    return found


def make_idx(folder: Path) -> None:
    rng = np.random.default_rng(0)
    data = {"train_images": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, 60).astype(np.uint8),
            "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, 20).astype(np.uint8)}
    folder.mkdir()
    for key, name in IDX_FILES.items():
        write_idx(folder / name, data[key])


# ---- the whole run ---------------------------------------------------------------------------
def test_auto_without_slurm_runs_the_chain_locally_in_dependency_order(workdir, no_slurm):
    make_idx(workdir / "idx")
    (workdir / "prep.yml").write_text("validation_size: 10\nshards: 1\n")
    # one write() per line: the two ranks share the log, and print() may write in pieces
    (workdir / "rank.py").write_text("import os\nos.write(1, f\"rank {os.environ['RANK']} of "
                                     "{os.environ['WORLD_SIZE']}\\n\".encode())\n")
    show_env = ('echo "env $SLURM_JOB_ID $SLURM_JOB_NAME $SLURM_NNODES $SLURM_JOB_NODELIST '
                '$SLURM_NTASKS $SLURM_CPUS_PER_TASK $SLURM_SUBMIT_DIR"')
    workflow = write_workflow(workdir, f"""
name: chain
steps:
  - name: preprocess
    command: itwinai-hpc preprocess
    args: [--source, {workdir}/idx, --output, {workdir}/shards, --config, {workdir}/prep.yml]
  - name: ddp
    needs: [preprocess]
    launcher: torchrun
    nproc-per-node: 2
    command: python {workdir}/rank.py
  - name: tasks
    needs: [preprocess]
    launcher: srun
    resources: {{ntasks-per-node: 2, cpus-per-task: 1}}
    command: bash -c
    args: ['echo "task $SLURM_PROCID"; {show_env}']
  - name: shards
    needs: [preprocess]
    array: "0-4:2%1"
    command: bash -c
    args: ['echo "array $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID"']
  - name: report
    needs: [ddp, tasks, shards]
    command: bash -c
    args: ['{STAMP.format(body="ls shards")}']
""")
    run_dir = workdir / "run"
    p = cli("submit", str(workflow), "--wait", "-o", str(run_dir),
            env={**no_slurm, "ITWINAI_HPC_LOCAL_PARALLEL": "2"})
    assert p.returncode == 0, p.stderr
    manifest = RunManifest.load(run_dir)
    assert manifest.backend == "local"            # what auto picked without sbatch
    assert set(states(manifest).values()) == {"COMPLETED"}
    ends = {s.name: s for s in manifest.steps}
    assert any((workdir / "shards").iterdir())
    assert "rank 0 of 2" in log_text(manifest, "ddp") and "rank 1 of 2" in log_text(manifest, "ddp")
    tasks = log_text(manifest, "tasks")
    assert "task 0" in tasks and "task 1" in tasks
    job_id = ends["tasks"].job_id
    assert (f"env {job_id} chain.tasks 1 {os.uname().nodename} 2 1 {workdir}" in tasks)
    array = log_text(manifest, "shards")
    assert [ln.split()[2] for ln in array.splitlines() if ln.startswith("array")] == \
        ["0", "2", "4"]
    assert len({s.job_id for s in manifest.steps}) == len(manifest.steps)
    # report started after every step it needs had ended (their logs' mtimes)
    report_start = order(workdir)["report"][0]
    for need in ("ddp", "tasks", "shards"):
        for log in operations.backend_for(manifest).log_files(manifest, ends[need]):
            assert log.stat().st_mtime <= report_start + 0.01
    assert cli("status", str(run_dir), env=no_slurm).returncode == 0


def test_failed_step_cancels_its_dependents_and_submit_wait_exits_1(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: failing
steps:
  - name: broken
    command: bash -c
    args: ['echo about to fail; exit 3']
  - name: after
    needs: [broken]
    command: touch after-ran
  - name: later
    needs: [after]
    command: touch later-ran
  - name: independent
    command: touch independent-ran
""")
    p, run_dir = submit(workflow, "--wait", env=no_slurm)
    assert p.returncode == 1
    manifest = RunManifest.load(run_dir)
    assert states(manifest) == {"broken": "FAILED", "after": "CANCELLED", "later": "CANCELLED",
                                "independent": "COMPLETED"}
    assert manifest.step("broken").exit_code == 3
    assert "dependency 'broken'" in manifest.step("after").reason
    assert not (workdir / "after-ran").exists() and not (workdir / "later-ran").exists()
    assert "about to fail" in p.stderr                 # the failure report shows the log tail
    status = cli("status", str(run_dir), env=no_slurm)
    assert status.returncode == 1 and "FAILED" in status.stdout


def test_submit_returns_at_once_and_status_follows_the_run(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: slow
steps:
  - name: first
    command: sleep 3
  - name: second
    needs: [first]
    command: "true"
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 0, p.stderr
    # back while the 3 s step still runs (how fast: benchmarks/bench_render.py, not a test)
    status = cli("status", str(run_dir), "--json", env=no_slurm)
    assert status.returncode == 3
    assert [s["state"] for s in json.loads(status.stdout)["steps"]][1] == "PENDING"
    manifest = wait_for(run_dir)
    assert states(manifest) == {"first": "COMPLETED", "second": "COMPLETED"}
    assert manifest.step("first").elapsed >= 3
    runner = manifest.extra["local"]["runner_pid"]
    deadline = time.monotonic() + 10           # it writes the last state, then exits
    while alive(runner) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(runner)


def test_cancel_stops_the_running_steps_process_tree_and_what_was_to_come(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: stoppable
steps:
  - name: long
    command: bash -c
    args: ['sleep 300 & sleep 300; wait']
  - name: next
    needs: [long]
    command: touch next-ran
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 0, p.stderr
    manifest = RunManifest.load(run_dir)
    deadline = time.monotonic() + 20
    while len(step_processes(manifest.run_id)) < 3:    # bash + its two sleeps
        assert time.monotonic() < deadline, "the step never started its sleeps"
        time.sleep(0.1)
    c = cli("cancel", str(run_dir), env=no_slurm)
    assert c.returncode == 0, c.stderr
    assert "long" in c.stdout and "next" in c.stdout
    assert step_processes(manifest.run_id) == []
    manifest = RunManifest.load(run_dir)
    assert states(manifest) == {"long": "CANCELLED", "next": "CANCELLED"}
    runner = manifest.extra["local"]["runner_pid"]
    deadline = time.monotonic() + 10           # it writes the last state, then exits
    while alive(runner) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(runner)
    assert not (workdir / "next-ran").exists()
    assert cli("status", str(run_dir), env=no_slurm).returncode == 1


def test_cancel_also_stops_torchrun_workers_in_their_own_sessions(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: ddpcancel
steps:
  - name: ddp
    launcher: torchrun
    nproc-per-node: 2
    command: python -c
    args: ["import time; time.sleep(300)"]
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 0, p.stderr
    run_id = RunManifest.load(run_dir).run_id
    deadline = time.monotonic() + 30
    while len(step_processes(run_id)) < 3:             # torchrun (bash exec'd it), 2 workers
        assert time.monotonic() < deadline, "torchrun never started its workers"
        time.sleep(0.2)
    assert cli("cancel", str(run_dir), env=no_slurm).returncode == 0
    assert step_processes(run_id) == []
    assert RunManifest.load(run_dir).step("ddp").state == "CANCELLED"


def test_resume_reruns_only_the_failed_step_and_its_dependents(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: resumable
steps:
  - name: good
    command: bash -c
    args: ['echo good >> ran.txt']
  - name: flaky
    needs: [good]
    command: bash -c
    args: ['echo flaky >> ran.txt; test -e fixed']
  - name: last
    needs: [flaky]
    command: bash -c
    args: ['echo last >> ran.txt']
""")
    p, run_dir = submit(workflow, "--wait", env=no_slurm)
    assert p.returncode == 1
    first_flaky = RunManifest.load(run_dir).step("flaky").job_id
    (workdir / "fixed").touch()
    r = cli("resume", str(run_dir), "--wait", env=no_slurm)
    assert r.returncode == 0, r.stderr
    manifest = RunManifest.load(run_dir)
    assert set(states(manifest).values()) == {"COMPLETED"}
    assert (workdir / "ran.txt").read_text().split() == ["good", "flaky", "flaky", "last"]
    assert manifest.step("flaky").history == [first_flaky]
    assert manifest.step("flaky").job_id != first_flaky


def test_a_dead_runner_ends_the_run_but_status_never_kills_a_step_that_still_runs(workdir,
                                                                                 no_slurm):
    workflow = write_workflow(workdir, """
name: orphaned
steps:
  - name: long
    command: sleep 300
  - name: next
    needs: [long]
    command: "true"
""")
    p, run_dir = submit(workflow, env=no_slurm)
    manifest = RunManifest.load(run_dir)
    deadline = time.monotonic() + 20
    while not step_processes(manifest.run_id):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(manifest.extra["local"]["runner_pid"], 9)
    time.sleep(0.3)
    status = cli("status", str(run_dir), "--json", env=no_slurm)
    assert status.returncode == 1                       # the run cannot succeed any more
    steps = {s["name"]: s for s in json.loads(status.stdout)["steps"]}
    assert steps["long"]["state"] == "RUNNING" and "runner" in steps["long"]["reason"]
    assert "itwinai-hpc cancel" in steps["long"]["reason"]
    assert steps["next"]["state"] == "CANCELLED"
    assert step_processes(manifest.run_id)              # a status signals nothing
    c = cli("cancel", str(run_dir), env=no_slurm)
    assert c.returncode == 0, c.stderr
    assert step_processes(manifest.run_id) == []
    assert states(RunManifest.load(run_dir))["long"] == "CANCELLED"


def test_a_step_that_finished_while_its_runner_died_keeps_its_success(workdir, no_slurm):
    """kill -9 of the runner (OOM, logout) between a step's end and its record: the exit
    status the step's script left wins, and resume does not run the step again."""
    workflow = write_workflow(workdir, """
name: orphaned
steps:
  - name: a
    command: echo a >> ran.txt; kill -9 $PPID
  - name: b
    needs: [a]
    command: echo b >> ran.txt
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 0, p.stderr
    manifest = wait_for(run_dir)
    assert states(manifest) == {"a": "COMPLETED", "b": "CANCELLED"}
    assert manifest.step("a").exit_code == 0
    r = cli("resume", str(run_dir), env=no_slurm)
    assert r.returncode == 0, r.stderr
    assert "  b " in r.stdout and "  a " not in r.stdout
    assert states(wait_for(run_dir)) == {"a": "COMPLETED", "b": "COMPLETED"}
    assert (workdir / "ran.txt").read_text().split() == ["a", "b"]


def test_missing_container_runtime_is_an_exit_2_error_before_anything_is_written(workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: boxed
defaults:
  container: {image: my.sif}
steps:
  - name: step
    command: touch step-ran
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 2
    assert "'apptainer' is not on PATH" in p.stderr
    assert "--set defaults.container=none" in p.stderr and "Traceback" not in p.stderr
    assert not run_dir.exists()                        # nothing written either
    time.sleep(0.5)
    assert not (workdir / "step-ran").exists()


# ---- pieces ----------------------------------------------------------------------------------
def test_rendered_local_scripts_pass_shellcheck(tmp_path):
    workflow = write_workflow(tmp_path, """
name: lint
defaults:
  container: {image: "my image.sif", binds: [/data]}
  env: {A: "x y"}
steps:
  - {name: plain, command: echo, args: ["a b", "x;y"]}
  - {name: tasks, launcher: srun, command: echo, args: [hi], array: "0-3%2",
     resources: {ntasks-per-node: 2, nodes: 2}}
  - {name: ddp, launcher: torchrun, nproc-per-node: 2, command: python -c, args: ["print(1)"],
     container: none}
""")
    for case in (workflow, ROOT / "use-cases/mnist/training-workflow.yml",
                 ROOT / "use-cases/mnist/inference-workflow.yml"):
        out = tmp_path / f"run-{case.stem}"
        run = render_workflow(case, run_dir=out, run_id="r", workdir=tmp_path)
        run.write()
        scripts = sorted(str(p) for p in out.glob("*.sh") if p.name != "submit.sh")
        assert len(scripts) == len(run.plan)
        for script in scripts:
            assert subprocess.run(["bash", "-n", script]).returncode == 0
        p = subprocess.run(["shellcheck", "--severity=style", *scripts], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stdout


def test_a_failing_srun_task_fails_the_step_with_its_exit_code_and_stops_the_others(
        workdir, no_slurm):
    workflow = write_workflow(workdir, """
name: tasks
defaults: {container: none}
steps:
  - name: pair
    launcher: srun
    resources: {ntasks-per-node: 2}
    command: bash -c
    args: ['if [[ $SLURM_PROCID == 1 ]]; then until test -s t0.pid; do sleep 0.1; done; exit 3;
            fi; echo $$ > t0.pid; sleep 30; touch survived']
""")
    p, run_dir = submit(workflow, "--wait", env=no_slurm)
    assert p.returncode == 1, p.stderr
    manifest = RunManifest.load(run_dir)
    assert manifest.step("pair").state == "FAILED" and manifest.step("pair").exit_code == 3
    assert not alive(int((workdir / "t0.pid").read_text()))   # task 0 stopped in its sleep,
    assert not (workdir / "survived").exists()                # not left to finish it


def test_a_step_that_cannot_be_started_fails_alone_and_its_parent_stays_completed(workdir,
                                                                                  no_slurm):
    """Before: the exception of starting b discarded a's COMPLETED (both in one update)."""
    workflow = write_workflow(workdir, """
name: unstartable
steps:
  - name: a
    command: ln -s /etc/passwd "$ITWINAI_HPC_RUN_DIR/logs/unstartable.b-2.out"
  - name: b
    needs: [a]
    command: echo b
""")
    p, run_dir = submit(workflow, env=no_slurm)
    assert p.returncode == 0, p.stderr
    manifest = wait_for(run_dir)
    assert states(manifest) == {"a": "COMPLETED", "b": "FAILED"}
    assert "could not be started" in manifest.step("b").reason
    assert "Too many levels of symbolic links" in manifest.step("b").reason   # O_NOFOLLOW
    assert "echo b" not in Path("/etc/passwd").read_text()


def test_a_finished_run_moved_elsewhere_still_shows_and_prints_its_logs(tmp_path, monkeypatch,
                                                                        capsys):
    """run.json records where each log went; after `mv runs/odd runs/oddB` the logs are in
    oddB/logs, and status, `logs` and the failure summary must find them there."""
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / "wf.yml"
    workflow.write_text("""\
name: moved
defaults: {container: none, resources: {time: "00:05:00"}}
steps:
  - name: a
    command: echo
    args: [hello from a]
  - name: b
    needs: {a: any}
    command: bash -c 'echo b was here; exit 3'
""")
    old = tmp_path / "runs" / "odd"
    assert main(["submit", str(workflow), "--backend", "local", "-o", str(old), "--wait"]) == 1
    new = tmp_path / "runs" / "oddB"
    old.rename(new)
    capsys.readouterr()

    assert main(["status", str(new)]) == 1
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert rows["a"][-1].startswith("logs/") and rows["b"][-1].startswith("logs/"), table
    assert main(["status", str(new), "--json"]) == 1
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert all(Path(s["log"]).is_relative_to(new) and Path(s["log"]).exists() for s in steps)

    assert main(["logs", str(new), "a"]) == 0
    assert capsys.readouterr().out.endswith("\nhello from a\n")
    assert main(["logs", str(new)]) == 0          # the failed step
    assert "b was here" in capsys.readouterr().out
    [failed] = operations.failures(RunManifest.load(new))
    assert failed.log and failed.log.is_relative_to(new) and "b was here" in failed.tail


def test_wait_sees_a_short_run_end_at_once_and_polls_a_long_one_once_per_interval(
        workdir, no_slurm, monkeypatch):
    """`submit --wait` polled every 2 s from the start, so a run of a few seconds was reported
    up to 2 s after it ended; the pauses now grow from 0.2 s to the interval, and a --timeout
    is kept to (never slept past)."""
    p, run = submit(write_workflow(workdir, "name: w\nsteps:\n  - {name: a, command: sleep 4}\n"))
    assert p.returncode == 0, p.stderr
    manifest = RunManifest.load(run)
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    # wait's own pauses only (time.sleep itself is shared with every thread of this process)
    monkeypatch.setattr(operations, "time", SimpleNamespace(sleep=sleep,
                                                            monotonic=time.monotonic))
    timed_out = operations.wait(manifest, interval=1.0, timeout=0.7)
    waited_for_timeout = list(pauses)
    pauses.clear()
    done = operations.wait(manifest, interval=1.0, timeout=60)
    assert timed_out == operations.EXIT_ACTIVE and sum(waited_for_timeout) <= 0.7
    assert done == 0 and manifest.step("a").state == "COMPLETED"
    assert pauses[0] <= 0.2 and pauses == sorted(pauses) and max(pauses) == 1.0
    assert len(pauses) <= 12        # ~3 s at 1 s a poll, not 15 polls at the first pause


def test_a_cancelled_jobs_shell_never_runs_its_next_command_whatever_order_the_signals_land(
        tmp_path, monkeypatch):
    """kill_job TERMed the job's processes one after the other. On a loaded machine the shell
    whose child (`sleep`) was signalled first ran its next command before its own TERM arrived:
    a cancelled array task wrote its result (a full test run). Forced here: the child comes
    first and every signal is followed by a pause in which the woken shell can run."""
    from itwinai_hpc.backends.local import procs

    marker = "attack/1"
    out = tmp_path / "after-cancel.txt"
    shell = subprocess.Popen(["bash", "-c", f"sleep 600; echo ran > {out}"],
                             env={**os.environ, procs.MARKER: marker})
    deadline = time.monotonic() + 10
    while len(procs.job_processes(marker)) < 2:          # bash and its sleep
        assert time.monotonic() < deadline, "the job's sleep never started"
        time.sleep(0.05)
    real_processes, real_signal = procs.job_processes, procs._signal

    def children_first(marker, leaders=()):
        return sorted(real_processes(marker, leaders), key=lambda pid: pid == shell.pid)

    def slow_signal(pid, sig):
        real_signal(pid, sig)
        time.sleep(0.3)          # the scheduler runs whoever woke up before the next signal

    monkeypatch.setattr(procs, "job_processes", children_first)
    monkeypatch.setattr(procs, "_signal", slow_signal)
    assert procs.kill_job(marker, [], grace=5) == 2
    assert shell.wait(timeout=10) == -15                 # ended by the TERM, not by a KILL
    assert not procs.job_processes(marker)
    assert not out.exists(), "the cancelled shell ran the command after its sleep"
