"""Run folders and working directories whose paths hold characters that sbatch's filename
patterns (`%`, a backslash) or a container runtime's --bind syntax (`:`, `,`) read specially."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm.backend import sbatch_command
from itwinai_hpc.cli import main
from itwinai_hpc.run.manifest import RunManifest

TWO_STEPS = """
name: pct
defaults:
  resources: {time: 5, mem: 100M}
  container: none
steps:
  - {name: a, command: echo, args: [hello-a]}
  - {name: b, command: echo, args: [hello-b], needs: [a]}
"""

CONTAINER = """
name: binds
defaults:
  container: {image: img.sif}
steps:
  - {name: a, command: echo}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def submit_moved(run_folder: Path, capsys, workflow: str, name: str, backend: str):
    """Render `workflow`, move the run folder to `name`, submit it: refused (exit 2) with
    run.json unchanged and nothing queued. Returns the moved folder and the error text."""
    wf = write(run_folder / "wf.yml", workflow)
    out = run_folder / "plain"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    moved = run_folder / name
    shutil.move(out, moved)
    before = (moved / "run.json").read_text()
    capsys.readouterr()
    assert main(["submit", str(moved), "--backend", backend, "--no-preflight"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and (moved / "run.json").read_text() == before
    assert not (moved / "submitit").exists() and not (moved / "jobs.tsv").exists()
    return moved, err


def test_a_percent_in_the_run_folder_is_escaped_in_every_sbatch_filename_pattern(run_folder):
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    out = run_folder / "runs" / "sl%j"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    manifest = RunManifest.load(out)
    step = manifest.steps[0]
    cmd = sbatch_command(manifest.run_dir, step, {})
    escaped = str(out).replace("%", "%%")
    assert f"--output={escaped}/logs/" in cmd[2]
    script = (out / step.script).read_text()
    assert f"#SBATCH --output={escaped}/logs/" in script
    # submit.sh builds --output from the folder it runs in: escaped there too
    submit = subprocess.run(["bash", "-c", 'source <(sed -n "/^escape_pct()/,/^}/p" submit.sh); '
                             'escape_pct "$PWD"'], cwd=out, capture_output=True, text=True)
    assert submit.stdout.strip() == escaped, submit.stderr


@pytest.mark.slurm
def test_a_run_folder_named_with_percent_j_runs_on_slurm_and_its_logs_are_found(
        slurm_cluster, run_folder, capsys):
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    out = run_folder / "runs" / "sl%j"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    assert main(["submit", str(out), "--backend", "slurm", "--wait"]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["status", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {s["name"]: s["state"] for s in doc["steps"]} == {"a": "COMPLETED",
                                                               "b": "COMPLETED"}
    assert main(["logs", str(out), "b"]) == 0
    assert "hello-b" in capsys.readouterr().out
    assert sorted(p.name.split("-")[0] for p in (out / "logs").glob("*.out")) == \
        ["pct.a", "pct.b"]


@pytest.mark.slurm
def test_submit_sh_by_hand_in_a_percent_folder_writes_the_logs_into_it(slurm_cluster,
                                                                        run_folder):
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    out = run_folder / "runs" / "sh%j"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    p = subprocess.run(["bash", "submit.sh"], cwd=out, capture_output=True, text=True,
                       env=slurm_cluster.env())
    assert p.returncode == 0, p.stderr
    ids = [line.split()[1] for line in p.stdout.splitlines()]
    slurm_cluster.wait_for_jobs(ids)
    assert (out / "logs" / f"pct.b-{ids[1]}.out").read_text().strip().endswith("hello-b")


def test_render_refuses_a_run_folder_with_a_backslash(run_folder, capsys):
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    out = run_folder / "runs" / "bs\\x"
    assert main(["render", str(wf), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bs\\\\x" in err or "bs\\x" in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("backend", ["slurm", "submitit"])
def test_submit_refuses_a_run_folder_moved_to_a_path_with_a_backslash(run_folder, capsys,
                                                                      backend):
    moved, err = submit_moved(run_folder, capsys, TWO_STEPS, "bs\\x", backend)
    assert "backslash" in err and "bs\\x" in err


def test_submitit_refuses_a_percent_in_the_run_folder(run_folder, capsys):
    # submitit reads %j/%t/%A/%a in its own folder as the job's ids
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    out = run_folder / "runs" / "sl%j"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    before = (out / "run.json").read_text()
    capsys.readouterr()
    assert main(["submit", str(out), "--backend", "submitit"]) == 2
    err = capsys.readouterr().err
    assert "%" in err and "Traceback" not in err
    assert (out / "run.json").read_text() == before


# ---- Bug B: ':' and ',' cannot be bound --------------------------------------------------

@pytest.mark.parametrize("name", ["x-b:c", "x-d,e"])
def test_render_refuses_a_container_bind_of_a_path_with_colon_or_comma(tmp_path, monkeypatch,
                                                                       capsys, name):
    workdir = tmp_path / name
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    wf = write(workdir / "wf.yml", CONTAINER)
    assert main(["render", str(wf), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert name in err and "bind" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["r:c", "r,e"])
def test_render_refuses_a_run_folder_with_colon_or_comma_when_a_container_binds_it(
        run_folder, capsys, name):
    wf = write(run_folder / "wf.yml", CONTAINER)
    out = run_folder / name
    assert main(["render", str(wf), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert name in err and "bind" in err and "Traceback" not in err
    assert not out.exists()


def test_a_colon_in_the_run_folder_is_fine_without_a_container(run_folder):
    wf = write(run_folder / "wf.yml", TWO_STEPS)
    assert main(["render", str(wf), "-o", str(run_folder / "r:c")]) == 0


def test_render_refuses_a_bind_whose_substituted_path_holds_a_colon(tmp_path, monkeypatch,
                                                                    capsys):
    workdir = tmp_path / "w:x"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    wf = write(tmp_path / "wf.yml", CONTAINER.replace(
        "{image: img.sif}", "{image: img.sif, binds: ['${workdir}/data']}"))
    assert main(["render", str(wf), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "w:x/data" in err and "Traceback" not in err


@pytest.mark.parametrize("backend", ["slurm", "submitit", "local"])
def test_submit_refuses_a_container_run_folder_moved_to_a_path_with_a_colon(run_folder, capsys,
                                                                           backend):
    moved, err = submit_moved(run_folder, capsys, CONTAINER, "m:v", backend)
    assert "m:v" in err and "bind" in err


@pytest.mark.parametrize("workflow, name, says", [(CONTAINER, "m:v", "m:v"),
                                                    (TWO_STEPS, "bs\\x", "backslash")])
def test_submit_sh_refuses_a_run_folder_moved_where_it_cannot_work(run_folder, workflow, name,
                                                                    says):
    wf = write(run_folder / "wf.yml", workflow)
    out = run_folder / "plain"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    moved = run_folder / name
    shutil.move(out, moved)
    p = subprocess.run(["bash", "submit.sh"], cwd=moved, capture_output=True, text=True)
    assert p.returncode == 2 and says in p.stderr and not (moved / "jobs.tsv").exists()
