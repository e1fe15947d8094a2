"""Input that silently meant something else, or crashed: what the user wrote is what SLURM gets,
and every bad input is exit 2 with one located error, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.render.plan import plan
from itwinai_hpc.workflow.load import load_workflow


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yml"
    path.write_text(text)
    return path


# ---- YAML 1.2: the value written is the value used ------------------------------------------

@pytest.mark.parametrize("written, sbatch_line", [
    ("12:00:00", "#SBATCH --time=12:00:00"),       # YAML 1.1: 43200 -> --time=43200 (30 days)
    ("1:30:00", "#SBATCH --time=1:30:00"),         # YAML 1.1: 5400 -> 90 hours
    ("30", "#SBATCH --time=30"),
])
def test_a_time_limit_reaches_sbatch_as_written(tmp_path, written, sbatch_line):
    wf = write(tmp_path, f"name: t\nsteps:\n  - {{name: a, command: x, "
                         f"resources: {{time: {written}}}}}\n")
    assert sbatch_line + "\n" in render_workflow(wf, run_dir=tmp_path / "r").files["01-a.sbatch"]


@pytest.mark.parametrize("written, expected", [
    ("NO", "NO"), ("yes", "yes"), ("3.10", "3.10"), ("0644", "0644"), ("1e3", "1e3"),
    ("2001-12-14", "2001-12-14"), ("on", "on"), ("true", "true"), ("5", "5")])
def test_args_and_env_keep_the_text_as_written(tmp_path, written, expected):
    wf = write(tmp_path, f"name: t\nsteps:\n  - {{name: a, command: echo, args: [{written}], "
                         f"env: {{V: {written}}}}}\n")
    script = render_workflow(wf, run_dir=tmp_path / "r").files["01-a.sbatch"]
    assert f"echo {expected}\n" in script
    assert f"export V={expected}\n" in script


def test_set_values_follow_the_same_rules(tmp_path):
    wf = write(tmp_path, "name: t\nsteps:\n  - {name: a, command: echo}\n")
    loaded = load_workflow(wf, ["steps.a.resources.time=12:00:00", "steps.a.args=[3.10, NO]"])
    step = plan(loaded.workflow)[0]
    assert step.resources.time == "12:00:00" and step.args == ("3.10", "NO")


# ---- YAML that would exhaust memory, run code or surprise --------------------------------------

BILLION_LAUGHS = """name: lol
vars:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
steps: [{name: a, command: x}]
"""


@pytest.mark.parametrize("text, message", [
    (BILLION_LAUGHS, "YAML aliases (*name) are not supported"),
    ("name: r\nvars: &v {x: *v}\nsteps: [{name: a, command: x}]\n", "YAML aliases"),
    ("name: d\nvars: {x: " + "[" * 200 + "]" * 200 + "}\nsteps: [{name: a, command: x}]\n",
     "nested deeper than"),
    ("name: t\nvars: {x: !!python/object/apply:os.system [touch pwned]}\nsteps: []\n",
     "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not supported"),
    ("name: t\nvars: {x: !!binary aGk=}\nsteps: [{name: a, command: x}]\n", "is not supported"),
    ("name: t\nvars: {x: !custom 1}\nsteps: [{name: a, command: x}]\n", "'!custom'"),
    ("name: t\n? [a, b]\n: 1\nsteps: [{name: a, command: x}]\n", "mapping keys must be plain"),
])
def test_hostile_yaml_is_a_clean_error(tmp_path, capsys, text, message):
    wf = write(tmp_path, text)
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert message in err and f"error: {wf}:" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("item, message", [
    ("steps.a.command\n=x", "may hold letters, digits"),
    ("steps.a;rm=x", "may hold letters, digits"),
    ("steps.b.command=x", "no step named 'b'"),
])
def test_a_bad_set_path_is_a_clean_error_and_writes_nothing(tmp_path, capsys, item, message):
    wf = write(tmp_path, "name: t\nsteps:\n  - {name: a, command: echo}\n")
    assert main(["render", str(wf), "-o", str(tmp_path / "r"), "--set", item]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_1200_step_chain_validates_without_recursion_errors(tmp_path):
    steps = "".join(f"  - {{name: s{i}, command: x{f', needs: [s{i - 1}]' if i else ''}}}\n"
                    for i in range(1200))
    wf = write(tmp_path, "name: long\nsteps:\n" + steps)
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "validate", str(wf)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "1200 step(s)" in p.stdout


# ---- command: the user's shell, but never what a variable brings in ------------------------------

def test_a_variable_inside_command_arrives_as_one_word_not_as_code(tmp_path, monkeypatch):
    folder = tmp_path / "w;touch PWNED;x"
    folder.mkdir()
    monkeypatch.setenv("EVIL", "$(touch PWNED2)")
    wf = folder / "wf.yml"
    wf.write_text("name: q\ndefaults: {container: none}\nsteps:\n"
                  "  - {name: a, command: 'echo ${workflow_dir} ${env:EVIL} ${run_id}'}\n")
    monkeypatch.chdir(tmp_path)
    run = render_workflow(wf, run_dir=tmp_path / "r", run_id="r1")
    run.write()
    p = subprocess.run(["bash", str(tmp_path / "r" / "01-a.sh")], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"{folder} $(touch PWNED2) r1" in p.stdout
    assert not list(tmp_path.rglob("PWNED*"))


def test_validate_warns_about_values_no_cluster_has_but_sbatch_would_take(tmp_path, capsys):
    wf = write(tmp_path, "name: big\nsteps:\n  - name: a\n    command: x\n    resources:\n"
                         "      nodes: 100000\n      time: 99999-0\n      mem: 999999T\n")
    assert main(["validate", str(wf)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {wf}:6: steps[0](a).resources.nodes: 100000 is more than any cluster" in err
    assert f"{wf}:7: steps[0](a).resources.time: '99999-0' is more than a month" in err
    assert f"{wf}:8: steps[0](a).resources.mem: 999999T per node" in err


def _symlink(d: Path) -> Path:
    (d / "link").symlink_to(d / "elsewhere")
    return d / "link"


def _file(d: Path) -> Path:
    (d / "afile").write_text("x")
    return d / "afile"


@pytest.mark.parametrize("make_target, message", [
    (_symlink, "is a symbolic link"), (_file, "already exists and is not empty"),
    (lambda d: d / ("x" * 300), "File name too long"),
])
def test_a_run_folder_that_cannot_be_written_is_a_clean_error(tmp_path, capsys, make_target,
                                                              message):
    wf = write(tmp_path, "name: t\nsteps:\n  - {name: a, command: x}\n")
    target = make_target(tmp_path)
    assert main(["render", str(wf), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob(".*"))                   # no half-written hidden folder


def test_status_of_a_mistyped_absolute_path_is_a_clean_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "/abs/typo"]) == 2
    assert "no run '/abs/typo'" in capsys.readouterr().err


def test_a_bad_local_parallel_setting_is_refused_before_the_run_folder_is_written(
        tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_LOCAL_PARALLEL", "abc")
    wf = write(tmp_path, "name: t\ndefaults: {container: none}\n"
                         "steps:\n  - {name: a, command: x}\n")
    assert main(["submit", str(wf), "--backend", "local", "-o", "r"]) == 2
    assert "ITWINAI_HPC_LOCAL_PARALLEL='abc'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_1500_long_chain_of_variables_resolves(tmp_path):
    lines = ["name: v", "vars:", "  v0: x"] + [f"  v{i}: ${{v{i - 1}}}y" for i in range(1, 1500)]
    wf = write(tmp_path, "\n".join(lines) + "\nsteps:\n  - {name: a, command: echo, "
                         "args: ['${v1499}']}\n")
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "validate", str(wf)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-1500:]
