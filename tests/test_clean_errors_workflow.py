"""Bad workflow input that used to slip through or end in a traceback: each is one located
`error:` line from the real command, exit 2, and nothing written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command in a process of its own (a RecursionError or a hang shows there as it
    would for a user)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error(stderr: str) -> str:
    """The only `error:` line of stderr (and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def write(tmp_path: Path, text: str, name: str = "wf.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- 1. a command of only whitespace -------------------------------------------------------------

@pytest.mark.parametrize("command", ['"   "', "\"\\t \\t\"", "' '"])
def test_a_whitespace_only_command_is_refused_where_it_is_written(tmp_path, capsys, command,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = write(tmp_path, f"name: w\nsteps:\n  - name: a\n    command: {command}\n")
    assert main(["validate", str(wf)]) == 2
    out = capsys.readouterr()
    line = one_error(out.err)
    assert line.startswith(f"error: {wf}:4: steps[0](a).command: "), line
    assert "empty" in line and "e.g." in line, line
    assert out.out == "" and list(tmp_path.iterdir()) == [wf]


def test_a_whitespace_only_command_is_refused_by_render_before_anything_is_written(tmp_path):
    wf = write(tmp_path, "name: w\nsteps:\n  - name: a\n    command: '  '\n")
    p = cli("render", str(wf), "-o", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2
    assert f"{wf}:4: steps[0](a).command" in one_error(p.stderr)
    assert sorted(tmp_path.iterdir()) == [wf]


# ---- 2. abbreviated long options in extra-sbatch -------------------------------------------------

@pytest.mark.parametrize("flag, owned", [
    ("--outp=x", "--output"),
    ("--dep=afterok:1", "--dependency"),
    ("--chd=/x", "--chdir"),
    ("--job=x", "--job-name"),
    ("--parti=gpu", "--partition"),
    ("--expo=NONE", "--export"),          # would dodge the check of --export's value
    ("--gre=gpu:2", "--gres"),            # would dodge the gres/gpus-per-node check
    ("--sig=B:USR1@60", "--signal"),
    ("--test", "--test-only"),
    ("--ou=x", "--output"),               # shorter than 3 letters, still unique for sbatch
    ("--ch=/x", "--chdir"),
])
def test_an_abbreviated_owned_sbatch_option_is_refused_naming_what_it_abbreviates(
        tmp_path, capsys, flag, owned):
    wf = write(tmp_path, "name: w\nsteps:\n  - name: a\n    command: echo\n    resources:\n"
                         f"      extra-sbatch: [\"--exclusive\", \"{flag}\"]\n")
    assert main(["validate", str(wf)]) == 2
    line = one_error(capsys.readouterr().err)
    name = flag.split("=")[0]
    assert line.startswith(f"error: {wf}:6: steps[0](a).resources.extra-sbatch: '{name}'"), line
    assert f"'{owned}'" in line, line


def test_an_abbreviation_through_the_real_command_writes_no_run_folder(tmp_path):
    wf = write(tmp_path, "name: w\ndefaults:\n  resources:\n    extra-sbatch: [--outp=x]\n"
                         "steps:\n  - {name: a, command: echo}\n")
    p = cli("render", str(wf), "-o", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2
    line = one_error(p.stderr)
    assert f"{wf}:4: defaults.resources.extra-sbatch: '--outp'" in line and "'--output'" in line
    assert sorted(tmp_path.iterdir()) == [wf]


@pytest.mark.parametrize("flag", [
    "--exclusive", "--mail-type=END", "--gpus=4", "--mem-per-cpu=2G", "--time-min=10",
    "--gres-flags=enforce-binding", "--export=ALL,X=1", "--nodelist=n1", "--no-kill",
    "--reservation=r1", "--ntasks-per-gpu=1", "--hint=nomultithread"])
def test_full_options_that_itwinai_hpc_does_not_own_still_pass(tmp_path, capsys, flag):
    wf = write(tmp_path, "name: w\nsteps:\n  - name: a\n    command: echo\n    resources:\n"
                         f"      extra-sbatch: [\"{flag}\"]\n")
    assert main(["validate", str(wf)]) == 0, capsys.readouterr().err


# ---- 5. deep nesting inside the YAML parser -----------------------------------------------------

@pytest.mark.timeout(120)
def test_5000_nested_flow_lists_are_refused_as_too_deep(tmp_path):
    wf = write(tmp_path, "name: d\nvars:\n  x: " + "[" * 5000 + "]" * 5000 +
               "\nsteps: [{name: a, command: x}]\n")
    p = cli("validate", str(wf), cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr[-3000:]
    line = one_error(p.stderr)
    assert re.match(rf"error: {re.escape(str(wf))}:3: nested deeper than \d+ levels", line), line


@pytest.mark.timeout(120)
def test_hundreds_of_nested_block_mappings_are_refused_as_too_deep(tmp_path):
    text = "name: d\nvars:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(800)) + \
        "  " * 801 + "v: 1\nsteps: [{name: a, command: x}]\n"
    wf = write(tmp_path, text)
    p = cli("validate", str(wf), cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr[-3000:]
    line = one_error(p.stderr)
    assert re.match(rf"error: {re.escape(str(wf))}:\d+: nested deeper than \d+ levels", line), \
        line


@pytest.mark.timeout(120)
def test_thousands_of_nested_block_lists_are_refused_as_too_deep(tmp_path):
    text = "name: d\nvars:\n  x:\n" + "".join("  " * (i + 2) + "-\n" for i in range(3000)) + \
        "  " * 3002 + "1\nsteps: [{name: a, command: x}]\n"
    wf = write(tmp_path, text)
    p = cli("validate", str(wf), cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "nested deeper than" in one_error(p.stderr)


@pytest.mark.timeout(120)
def test_a_set_value_of_5000_nested_lists_is_refused_as_too_deep(tmp_path):
    wf = write(tmp_path, "name: d\nsteps: [{name: a, command: x}]\n")
    p = cli("render", str(wf), "-o", str(tmp_path / "run"),
            "--set", "vars.x=" + "[" * 5000 + "]" * 5000, cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr[-3000:]
    line = one_error(p.stderr)
    assert line.startswith("error: --set") and "nested deeper than" in line, line
    assert sorted(tmp_path.iterdir()) == [wf]
