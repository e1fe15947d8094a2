"""Run folders that lie or environments that fight: a hand-edited run.json with a broken step
graph, a passed-through variable that is empty, a render killed half-way, a closed or ASCII-only
terminal, no home folder, a status loop with a negative interval. Each gets one clean line and
leaves nothing half-done. Local backend, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

NO_PASSWD_UID = 54321          # a uid with no passwd entry (and so no home folder)


@pytest.fixture
def shared_dir():
    """A folder another user can reach (pytest's own tmp folders are root's, 0700)."""
    import shutil
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="itwinai-hpc-shared-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_other_user(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NO_PASSWD_UID}", f"--regid={NO_PASSWD_UID}",
                           "--clear-groups", sys.executable, "-m", "itwinai_hpc.cli", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_RUNS", str(tmp_path / "runs"))
    return tmp_path


def cli(*args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def rendered(folder: Path, steps: str = "  - {name: a, command: 'true'}\n"
                                          "  - {name: b, command: 'true', needs: [a]}\n") -> Path:
    wf = folder / "wf.yml"
    wf.write_text(f"name: lc\ndefaults: {{container: none}}\nsteps:\n{steps}")
    p = cli("render", str(wf), "-o", str(folder / "run"))
    assert p.returncode == 0, p.stderr
    return folder / "run"


def edit_manifest(run: Path, change) -> None:
    data = json.loads((run / "run.json").read_text())
    change(data)
    (run / "run.json").write_text(json.dumps(data))


def one_clean_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr
    for word in words:
        assert word in errors[0], errors[0]


# ---- run.json's recorded graph ---------------------------------------------------------------

def test_a_needs_cycle_written_into_run_json_is_refused_instead_of_waiting_forever(here):
    run = rendered(here)
    edit_manifest(run, lambda d: d["steps"][0]["plan"].update(needs=["b"]))
    p = cli("submit", str(run), "--backend", "local", "--wait", timeout=30)
    assert p.returncode == 2
    one_clean_error(p, "run.json", "cycle", "a", "b")


def test_an_unknown_need_in_run_json_is_refused_before_a_runner_starts(here):
    run = rendered(here)
    edit_manifest(run, lambda d: d["steps"][1]["plan"].update(needs=["ghost"]))
    p = cli("submit", str(run), "--backend", "local", "--wait", timeout=30)
    assert p.returncode == 2
    one_clean_error(p, "run.json", "ghost")
    assert not (run / "logs" / "local-runner.log").exists()


def test_a_step_index_written_as_text_in_run_json_is_refused(here):
    run = rendered(here)
    edit_manifest(run, lambda d: d["steps"][0]["plan"].update(index="1"))
    p = cli("status", str(run))
    assert p.returncode == 2
    one_clean_error(p, "run.json", "index")


# ---- the environment ------------------------------------------------------------------------

def test_a_passed_through_variable_that_is_set_but_empty_is_refused_at_submit(here):
    run = rendered(here, "  - {name: a, command: 'true', env-passthrough: [MY_TOKEN]}\n")
    p = cli("submit", str(run), "--backend", "local", env={**os.environ, "MY_TOKEN": ""})
    assert p.returncode == 2
    one_clean_error(p, "MY_TOKEN", "empty")


def test_a_render_killed_by_sigterm_leaves_no_hidden_folder(here):
    wf = here / "wf.yml"
    wf.write_text("name: k\ndefaults: {container: none}\nsteps:\n  - {name: a, command: 'true'}\n")
    # SIGTERM arrives while the run folder's files are being written (the first file write).
    code = ("import os, signal, pathlib, sys\n"
            "from itwinai_hpc.cli import main\n"
            "real = pathlib.Path.write_text\n"
            "def write(self, *a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(self, *a, **k)\n"
            "pathlib.Path.write_text = write\n"
            f"sys.exit(main(['render', {str(wf)!r}, '-o', {str(here / 'run')!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(x.name for x in here.iterdir()) == ["wf.yml"]


def test_a_non_ascii_path_prints_on_an_ascii_terminal(here):
    folder = here / "Müller"
    folder.mkdir()
    wf = folder / "wf.yml"
    wf.write_text("name: u\ndefaults: {container: none}\nsteps:\n  - {name: a, command: 'true'}\n")
    p = cli("validate", str(wf), env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "M\\xfcller" in p.stdout or "M?ller" in p.stdout


def test_commands_work_without_a_home_folder(shared_dir):
    wf = shared_dir / "wf.yml"
    wf.write_text("name: h\ndefaults: {container: none}\nsteps:\n  - {name: a, command: 'true'}\n")
    wf.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    p = as_other_user("validate", str(wf), env=env)
    assert p.returncode == 0, p.stderr
    p = as_other_user("render", str(wf), "-o", "/dev/null/x", env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr


def test_status_of_another_users_private_run_folder_says_whose_it_is(shared_dir):
    run = rendered(shared_dir)
    p = as_other_user("status", str(run), env={**os.environ, "HOME": str(shared_dir)})
    assert p.returncode == 2
    one_clean_error(p, "root", "permission")


def test_status_watch_with_a_negative_interval_is_a_usage_error(here):
    run = rendered(here)
    p = cli("status", str(run), "--watch", "--interval", "-1")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "interval" in p.stderr


def test_a_newline_in_a_set_value_stays_out_of_the_resolved_workflow_header(here):
    wf = here / "wf.yml"
    wf.write_text("name: n\ndefaults: {container: none}\nvars: {x: a}\n"
                  "steps:\n  - {name: a, command: echo, args: ['${x}']}\n")
    p = cli("render", str(wf), "-o", str(here / "run"), "--set", "vars.x=one\ntwo: 3")
    assert p.returncode == 0, p.stderr
    header = [line for line in (here / "run" / "workflow.yml").read_text().splitlines()
              if line.startswith("#")]
    body = (here / "run" / "workflow.yml").read_text().split("\n", len(header))[-1]
    assert "two: 3" not in "\n".join(line for line in body.splitlines()
                                     if not line.startswith(" ")), body


def test_a_local_run_may_live_in_a_folder_no_sbatch_line_could_name(here):
    """Spaces and umlauts cannot be written on an #SBATCH line; a local run never writes one."""
    folder = here / "Jürgen data"
    folder.mkdir()
    wf = folder / "wf.yml"
    wf.write_text("name: l\ndefaults: {container: none}\nsteps:\n  - {name: a, command: 'true'}\n")
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "submit", str(wf), "--backend",
                        "local", "-o", str(folder / "run"), "--wait"], capture_output=True,
                       text=True, cwd=folder, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "render", str(wf), "-o",
                        str(folder / "run2")], capture_output=True, text=True, cwd=folder,
                       timeout=60)
    assert p.returncode == 2 and "#SBATCH line" in p.stderr and "Traceback" not in p.stderr


def test_a_run_folder_you_may_only_read_gives_clean_answers(shared_dir):
    """Another user's finished run, readable but not writable by you: status, report and logs
    show it, cancel and resume refuse it naming its owner; never a traceback."""
    run = rendered(shared_dir)
    p = cli("submit", str(run), "--backend", "local", "--wait")
    assert p.returncode == 0, p.stderr
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(run)], check=True)
    env = {**os.environ, "HOME": str(shared_dir)}
    for command, code in (("status", 0), ("report", 0), ("logs", 0), ("cancel", 2),
                          ("resume", 2)):
        p = as_other_user(command, str(run), env=env)
        assert p.returncode == code and "Traceback" not in p.stderr, (command, p.stderr)
        if code == 2:
            one_clean_error(p, "belongs to root")


def test_the_ownership_refusal_names_the_owner_of_the_file_that_is_not_yours(here):
    """The folder is yours, its run.json someone else's: the refusal names run.json and its
    owner (it named the folder's owner: you)."""
    run = rendered(here)
    os.chown(run / "run.json", NO_PASSWD_UID, NO_PASSWD_UID)
    p = cli("submit", str(run), "--backend", "local")
    assert p.returncode == 2
    one_clean_error(p, "run.json", f"uid {NO_PASSWD_UID}")


def test_submit_wait_onto_a_full_disk_ends_in_one_line(here):
    """The run folder's file system fills up while `submit --wait` follows the run: run.json
    can no longer be rewritten. One line, exit 1, no traceback."""
    from tmpfs_mount import tmpfs
    with tmpfs(here / "disk", "256k") as disk:
        wf = here / "wf.yml"
        wf.write_text("name: full\ndefaults: {container: none}\nsteps:\n"
                      "  - {name: a, command: 'head -c 400000 /dev/zero"
                      " > \"$ITWINAI_HPC_RUN_DIR/fill\" || true; sleep 1'}\n"
                      "  - {name: b, command: 'true', needs: [a]}\n")
        p = cli("submit", str(wf), "--backend", "local", "-o", str(disk / "run"), "--wait",
                timeout=120)
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode == 1, p.stdout + p.stderr
        assert any(line.startswith("error:") and "No space left" in line
                   for line in p.stderr.splitlines()), p.stderr

