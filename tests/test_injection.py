"""Values from a workflow reach the job as literal text, or validation rejects them.

Each test renders a workflow full of shell metacharacters, runs the rendered script with bash
(SLURM's variables faked: the script's own logic is what is under test), and checks that the
marker file never appears and the values arrive unchanged.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.render.folder import render_workflow

EVIL = ["$(touch {marker})", "`touch {marker}`", "a; touch {marker}", "it's \"quoted\"",
        "two\nlines; touch {marker}", "${{HOME}} $HOME", "x' ; touch {marker} ; echo '"]


def evil_values(marker: Path) -> list[str]:
    return [v.format(marker=marker) for v in EVIL]


def yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_workflow(tmp_path: Path, marker: Path, container: str = "none") -> Path:
    values = evil_values(marker)
    wf = tmp_path / "inject.yml"
    args = ", ".join(yaml_str(v.replace("${", "$${")) for v in values)
    wf.write_text(
        "name: inject\n"
        "description: "
        f"{yaml_str('desc; touch ' + str(marker) + chr(10) + 'touch ' + str(marker))}\n"
        f"vars:\n  evil: {yaml_str(values[0])}\n"
        f"defaults:\n  container: {container}\n"
        f"  env: {{EVIL: {yaml_str(values[2])}, EVIL2: '${{evil}}'}}\n"
        "steps:\n"
        f"  - name: show\n    description: {yaml_str('a' + chr(10) + 'touch ' + str(marker))}\n"
        "    command: printf '%s\\n'\n"
        f"    args: [{args}, '${{evil}}']\n"
        "  - name: env\n    command: printenv EVIL EVIL2\n    needs: [show]\n")
    return wf


def run_script(script: Path, cwd: Path, path_prefix: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "localhost"}
    if path_prefix:
        env["PATH"] = path_prefix + os.pathsep + env["PATH"]
    return subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30)


def rendered(tmp_path: Path, wf: Path) -> Path:
    out = tmp_path / "run"
    render_workflow(wf, run_dir=out, run_id="inject-1", workdir=tmp_path).write()
    return out


def test_args_env_vars_and_descriptions_reach_the_job_as_literal_text(tmp_path):
    marker = tmp_path / "PWNED"
    out = rendered(tmp_path, write_workflow(tmp_path, marker))
    show = run_script(out / "01-show.sbatch", tmp_path)
    assert show.returncode == 0, show.stderr
    printed = show.stdout.split("\n", 1)[1]          # after the [itwinai-hpc] start line
    assert printed == "\n".join(evil_values(marker) + [evil_values(marker)[0]]) + "\n"
    env = run_script(out / "02-env.sbatch", tmp_path)
    assert env.stdout.splitlines()[1:] == [evil_values(marker)[2], evil_values(marker)[0]]
    assert not marker.exists()


def test_container_binds_env_and_image_are_quoted_too(tmp_path):
    marker = tmp_path / "PWNED"
    fake = tmp_path / "bin"
    fake.mkdir()
    # Apptainer cannot be installed here: a stand-in prints the words it was given, one a line.
    (fake / "apptainer").write_text("#!/bin/bash\nprintf '<%s>\\n' \"$@\"\n"
                                    "printf 'ENV<%s>\\n' \"$APPTAINERENV_K\"\n")
    (fake / "apptainer").chmod(0o755)
    bind = str(tmp_path / "data; touch PWNED")
    container = ("{image: " + yaml_str(f"img $(touch {marker}).sif") + ", binds: ["
                 + yaml_str(bind) + "], env: {K: " + yaml_str(f"v`touch {marker}`") + "}}")
    out = rendered(tmp_path, write_workflow(tmp_path, marker, container))
    p = run_script(out / "01-show.sbatch", tmp_path, str(fake))
    assert p.returncode == 0, p.stderr
    words = [w[1:-1] for w in p.stdout.splitlines() if w.startswith("<")]
    assert words[0] == "exec" and words[words.index(str(out)) - 1] == "--bind"
    assert words[words.index(bind) - 1] == "--bind"
    assert f"img $(touch {marker}).sif" in words
    # the container's env goes in as APPTAINERENV_K (not on the command line), literally
    assert f"ENV<v`touch {marker}`>" in p.stdout.splitlines()
    assert not any("touch" in w and w.startswith("K=") for w in words)
    assert Path(bind).is_dir()                       # bind sources are created, literally
    assert not marker.exists()


@pytest.mark.parametrize("field,value", [
    ("name", "x$(touch M)"), ("steps.show.name", "a;b"),
    ("defaults.resources.partition", "p`touch M`"), ("steps.show.resources.account", "a b"),
    ("steps.show.resources.qos", "q\nq"), ("steps.show.resources.constraint", "c;touch M"),
    ("steps.show.array", '"1-2\\n#SBATCH --x"'), ("steps.show.env", "{'A B': 1}"),
])
def test_values_that_would_land_on_sbatch_lines_are_rejected(tmp_path, capsys, field, value):
    wf = write_workflow(tmp_path, tmp_path / "M")
    assert main(["render", str(wf), "-o", str(tmp_path / "out"), "--set",
                 f"{field}={value}"]) == 2
    assert "error: --set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "M").exists()
