"""`itwinai-hpc validate`: good workflows pass; every broken one exits 2 naming file, line,
field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.render.plan import plan
from itwinai_hpc.workflow.load import load_workflow

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((Path(__file__).parent / "bad_workflows").glob("*.yml"))
MNIST = [ROOT / "use-cases/mnist/training-workflow.yml",
         ROOT / "use-cases/mnist/inference-workflow.yml",
         ROOT / "use-cases/mnist/sweep-workflow.yml"]


def expectation(path: Path) -> tuple[str, str]:
    """Each corpus file starts with `# expect: <where> | <message>`."""
    where, message = path.read_text().splitlines()[0].removeprefix("# expect: ").split(" | ")
    return where, message


def test_the_bad_workflow_corpus_has_at_least_20_cases():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_workflow_exits_2_naming_file_line_and_field(path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where, message = expectation(path)
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "Traceback" not in out.err
    line = next(l for l in out.err.splitlines() if message in l)   # the message is there
    assert line.startswith(f"error: {path}"), line                   # ... with the file
    assert where in line, line                                       # ... and the field
    if not where.endswith(".yml"):                                   # a field: a line number too
        assert re.match(rf"error: {re.escape(str(path))}:\d+: ", line), line
    assert list(tmp_path.iterdir()) == []                            # nothing written


def test_bad_input_is_reported_without_traceback_by_the_real_command():
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "validate", str(BAD[0])],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "did you mean 'steps'" in p.stderr


def test_all_problems_of_a_file_are_reported_at_once(tmp_path, capsys):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: demo\nsteps:\n  - name: a\n    command: echo\n    resources:\n"
                  "      nodes: 0\n      tme: 5\n  - name: b\n    command: echo\n    launcher: x\n")
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert f"{wf}:6: steps[0](a).resources.nodes" in err
    assert f"{wf}:7: steps[0](a).resources.tme: unknown key 'tme' (did you mean 'time'?)" in err
    assert f"{wf}:10: steps[1](b).launcher" in err


@pytest.mark.parametrize("path", MNIST, ids=lambda p: p.stem)
def test_the_mnist_workflows_are_valid(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_set_overrides_any_field_and_steps_are_addressed_by_name():
    loaded = load_workflow(MNIST[0], ["steps.train.resources.nodes=4",
                                      "vars.data_dir=/scratch/x", "defaults.container=none"])
    jobs = {j.name: j for j in plan(loaded.workflow)}
    assert jobs["train"].resources.nodes == 4
    assert jobs["preprocess"].resources.nodes == 1
    assert "/scratch/x/shards" in jobs["preprocess"].args
    assert jobs["train"].container is None


def test_a_bad_override_names_the_flag(capsys):
    assert main(["validate", str(MNIST[0]), "--set", "steps.trian.resources.nodes=2"]) == 2
    assert "no step named 'trian' (did you mean 'train'?)" in capsys.readouterr().err
    assert main(["validate", str(MNIST[0]), "--set", "steps.train.resources.nodes=0"]) == 2
    assert "error: --set steps.train.resources.nodes=0: steps[1](train).resources.nodes" in \
        capsys.readouterr().err


def test_a_set_value_is_checked_as_the_same_value_in_the_file_would_be(capsys):
    """A list with an unquoted ${var} is not YAML: it became a string and the error said
    "expected a list (got '[--data, /x/y]')"; a newline was folded into a space by YAML, so a
    two-line command passed where the file's would be refused."""
    flags = ["--set", "steps.train.args=[--data, ${data_dir}/y]"]
    assert main(["validate", str(MNIST[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert "the value is not a YAML list or mapping" in err and "quote items" in err
    flags = ["--set", 'steps.train.args=[--data, "${data_dir}/y"]']
    assert main(["validate", str(MNIST[0]), *flags]) == 0
    capsys.readouterr()
    assert main(["validate", str(MNIST[0]), "--set", "steps.train.command=echo a\necho b"]) == 2
    assert "command must be one line" in capsys.readouterr().err


def test_variables_substitute_with_types_env_defaults_and_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("ITWINAI_HPC_TEST_SCRATCH", "/scratch/me")
    wf = tmp_path / "wf.yml"
    wf.write_text(
        "name: demo\n"
        "vars:\n  n: 3\n  base: ${env:ITWINAI_HPC_TEST_SCRATCH}\n"
        "  out: ${base}/out\n  other: ${env:ITWINAI_HPC_TEST_UNSET_X:-fallback}\n"
        "steps:\n  - name: a\n    command: echo $${HOME}\n    args: ['${out}', '${other}']\n"
        "    resources: {nodes: '${n}'}\n")
    step = load_workflow(wf).workflow.steps[0]
    assert step.resources.nodes == 3                       # a whole-value ${n} keeps its type
    assert step.args == ["/scratch/me/out", "fallback"]
    assert step.command == "echo ${HOME}"                  # $${...} is a literal ${...}


def test_needs_form_a_dag_and_steps_are_ordered_by_dependency(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: dag\nsteps:\n"
                  "  - {name: report, command: echo, needs: [train, evaluate]}\n"
                  "  - {name: evaluate, command: echo, needs: [prep]}\n"
                  "  - {name: train, command: echo, needs: prep}\n"
                  "  - {name: prep, command: echo}\n")
    jobs = plan(load_workflow(wf).workflow)
    assert [j.name for j in jobs] == ["prep", "evaluate", "train", "report"]
    assert [j.script for j in jobs][0] == "01-prep.sbatch"
    assert jobs[-1].needs == ("train", "evaluate")


@pytest.mark.parametrize("time, warned", [(3, True), ("00:05:00", True), ("00:10:00", False)])
def test_a_requeue_warning_at_or_before_the_start_is_a_warning(tmp_path, capsys, time, warned):
    """before-limit 300 s on a 3- or 5-minute step: SLURM's warning signal comes as the step
    starts, and it is asked to checkpoint and stop at once (a test step of 3 minutes met this
    only when SLURM's periodic signal check happened to fall early)."""
    wf = tmp_path / "wf.yml"
    wf.write_text(f"""name: early
defaults:
  container: none
  resources: {{time: "{time}"}}
steps:
  - name: train
    command: "true"
    requeue: {{max-requeues: 1}}
""")
    assert main(["validate", str(wf)]) == 0
    err = capsys.readouterr().err
    expected = (f"warning: {wf}:8: steps[0](train).requeue: before-limit (300 s) is not shorter "
                f"than the time limit ({time}): SLURM asks the step to checkpoint and stop")
    assert (expected in err) is warned, err
