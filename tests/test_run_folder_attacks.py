"""A run folder cannot be turned against its owner: a group member cannot swap a script the owner
will run, a planted symlink never redirects a write, a copy of a live run cannot cancel the
original, a run moved while it runs keeps a true state, and a workflow cannot set the variables
itwinai-hpc owns. Each test is an attack that succeeded before the fix. Local backend, real
processes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itwinai_hpc.ops import operations
from itwinai_hpc.run.manifest import RunManifest

NOBODY = 65534


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    yield tmp_path
    for pid in _processes_under(tmp_path):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _processes_under(folder: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(f"ITWINAI_HPC_RUN_DIR={folder}".encode()) for e in environ):
            found.append(int(pid))
    return found


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def workflow(folder: Path, steps: str, name: str = "atk") -> Path:
    path = folder / "wf.yml"
    path.write_text(f"name: {name}\ndefaults: {{container: none}}\nsteps:\n{steps}")
    return path


def render(folder: Path, wf: Path, *extra: str, out: str = "run") -> Path:
    p = cli("render", str(wf), "-o", str(folder / out), *extra)
    assert p.returncode == 0, p.stderr
    return folder / out


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# ---- --group-share: the group may write where jobs write, never the scripts --------------------

def test_a_group_shared_run_folder_lets_the_group_write_only_where_jobs_write(here):
    wf = workflow(here, "  - {name: a, command: 'true'}\n")
    old = os.umask(0o002)
    try:
        run = render(here, wf, "--group-share")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(run.stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IXGRP
    assert not mode & stat.S_IWGRP, oct(mode)          # nobody but the owner adds or swaps files
    assert stat.S_IMODE((run / "logs").stat().st_mode) & stat.S_IWGRP
    for path in run.iterdir():
        if path.is_file():
            assert not stat.S_IMODE(path.stat().st_mode) & (stat.S_IWGRP | stat.S_IWOTH), path


def test_submit_refuses_a_script_swapped_by_someone_else(here):
    wf = workflow(here, "  - {name: a, command: 'touch ran'}\n")
    run = render(here, wf)
    script = next(run.glob("01-a.sh"))
    text = script.read_text().replace("touch ran", "touch pwned")
    script.unlink()
    script.write_text(text)
    os.chown(script, NOBODY, NOBODY)                  # a group member's file in its place
    p = cli("submit", str(run), "--backend", "local")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "01-a.sh" in p.stderr and "nobody" in p.stderr and "Traceback" not in p.stderr
    time.sleep(1)
    assert not (here / "pwned").exists() and not (here / "ran").exists()


def test_submit_refuses_a_script_made_writable_by_the_group(here):
    wf = workflow(here, "  - {name: a, command: 'true'}\n")
    run = render(here, wf)
    script = run / "01-a.sh"
    script.chmod(0o775)
    p = cli("submit", str(run), "--backend", "local")
    assert p.returncode == 2 and "01-a.sh" in p.stderr and "writable" in p.stderr, p.stderr


def test_the_owner_may_still_edit_a_script_and_resume(here):
    """Fixing a step by editing its script, then resuming, stays a way to work (the owner's
    own edit, same owner and mode): it is named, not refused."""
    wf = workflow(here, "  - {name: a, command: 'exit 3'}\n")
    run = render(here, wf)
    assert cli("submit", str(run), "--backend", "local", "--wait").returncode == 1
    script = run / "01-a.sh"
    script.write_text(script.read_text().replace("exit 3", "true"))
    p = cli("resume", str(run), "--wait")
    assert p.returncode == 0, p.stderr
    assert "01-a.sh" in p.stderr and "edited since render" in p.stderr


# ---- symlinks planted in a run folder -------------------------------------------------------

@pytest.mark.parametrize("name", [".operation.lock", ".lock"])
def test_a_symlink_planted_at_a_lock_is_refused_and_its_target_left_whole(here, name):
    wf = workflow(here, "  - {name: a, command: 'true'}\n")
    run = render(here, wf)
    victim = here / "precious.txt"
    victim.write_text("do not truncate\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    p = cli("submit", str(run), "--backend", "local", "--wait")
    assert p.returncode == 2, p.stdout + p.stderr
    assert name in p.stderr and "symbolic link" in p.stderr and "Traceback" not in p.stderr
    assert victim.read_text() == "do not truncate\n"


def test_a_symlinked_logs_folder_is_refused_before_anything_runs(here):
    wf = workflow(here, "  - {name: a, command: 'touch ran'}\n")
    run = render(here, wf)
    elsewhere = here / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run / "logs")
    (run / "logs").symlink_to(elsewhere)
    p = cli("submit", str(run), "--backend", "local", "--wait")
    assert p.returncode == 2 and "logs" in p.stderr and "symbolic link" in p.stderr, p.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (here / "ran").exists()


def test_a_symlink_planted_at_an_exit_status_file_is_replaced_not_written_through(here):
    wf = workflow(here, "  - {name: a, command: 'true'}\n")
    run = render(here, wf)
    victim = here / "precious.txt"
    victim.write_text("do not truncate\n")
    (run / "logs" / ".exit-1").symlink_to(victim)      # the local backend's first job id
    p = cli("submit", str(run), "--backend", "local", "--wait")
    assert p.returncode == 0, p.stdout + p.stderr
    assert victim.read_text() == "do not truncate\n"
    marker = run / "logs" / ".exit-1"
    assert not marker.is_symlink() and marker.read_text() == "0\n"


# ---- copies and moves of a live run ------------------------------------------------------------

def test_cancel_of_a_copied_live_run_leaves_the_original_running(here):
    wf = workflow(here, "  - {name: a, command: 'sleep 30'}\n")
    run = render(here, wf)
    assert cli("submit", str(run), "--backend", "local").returncode == 0
    wait_until(lambda: RunManifest.load(run).step("a").state == "RUNNING")
    copy = here / "copy"
    shutil.copytree(run, copy, symlinks=True)
    p = cli("cancel", str(copy))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "copy" in p.stderr and str(run) in p.stderr
    time.sleep(1)
    assert RunManifest.load(run).step("a").state == "RUNNING"
    assert _processes_under(run)                     # the original's step is untouched
    assert cli("cancel", str(run)).returncode == 0    # its owner folder still can
    wait_until(lambda: not _processes_under(run))


def test_a_run_folder_moved_while_it_runs_finishes_with_a_true_state(here):
    wf = workflow(here, "  - {name: a, command: 'sleep 3'}\n"
                        "  - {name: b, command: 'echo b ran', needs: [a]}\n")
    run = render(here, wf)
    assert cli("submit", str(run), "--backend", "local").returncode == 0
    wait_until(lambda: RunManifest.load(run).step("a").state == "RUNNING")
    moved = here / "moved"
    os.rename(run, moved)
    manifest = RunManifest.load(moved)
    assert operations.wait(manifest, interval=0.2, timeout=60) == 0, \
        [(s.name, s.state, s.reason) for s in manifest.steps]
    assert [s.state for s in manifest.steps] == ["COMPLETED", "COMPLETED"]
    logs = list((moved / "logs").glob("atk.b-*.out"))
    assert logs and "b ran" in logs[0].read_text()


# ---- variables itwinai-hpc owns ----------------------------------------------------------------

@pytest.mark.parametrize("field", [
    "env: {ITWINAI_HPC_RUN_DIR: /tmp/elsewhere}",
    "runtime-env: {ITWINAI_HPC_STOP_FILE: /tmp/x}",
    "env-passthrough: [ITWINAI_HPC_SWEEP_ID]",
    "env: {ITWINAI_HPC_TYPO: 1}",
])
def test_a_workflow_may_not_set_the_variables_itwinai_hpc_owns(here, field):
    wf = workflow(here, f"  - name: a\n    command: 'true'\n    {field}\n")
    p = cli("validate", str(wf))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "wf.yml:6" in p.stderr and "ITWINAI_HPC_" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("setting", ["ITWINAI_HPC_DATA_MODE: stream",
                                     "ITWINAI_HPC_NORMAL_EXIT: 1"])
def test_the_settings_a_user_may_set_stay_allowed(here, setting):
    wf = workflow(here, "  - name: a\n    command: 'true'\n"
                        f"    env: {{{setting}}}\n")
    assert cli("validate", str(wf)).returncode == 0


def test_variables_itwinai_hpc_owns_do_not_leak_from_the_submitting_shell(here):
    """A run submitted from inside a step (or a shell that set them) must not inherit that
    step's run folder or watchdog: the runner's environment leaves them out."""
    (here / "step.py").write_text(
        "import os, time\nfrom itwinai_hpc import job\njob.progress()\ntime.sleep(2.5)\n"
        "job.progress()\nopen('seen', 'w').write(os.environ['ITWINAI_HPC_RUN_DIR'])\n")
    wf = workflow(here, f"  - {{name: a, command: {sys.executable} {here / 'step.py'}}}\n")
    run = render(here, wf)
    env = {**os.environ, "ITWINAI_HPC_RUN_DIR": "/tmp/elsewhere", "ITWINAI_HPC_NO_PROGRESS": "1"}
    p = cli("submit", str(run), "--backend", "local", "--wait", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (here / "seen").read_text().strip() == str(run)


# ---- a closed stdout ---------------------------------------------------------------------------

def test_with_stdout_closed_render_does_its_work_and_exits_0(here):
    wf = workflow(here, "  - {name: a, command: 'true'}\n")
    p = subprocess.run(f"{sys.executable} -m itwinai_hpc.cli render {wf} -o {here}/run >&-",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (here / "run" / "run.json").is_file()
