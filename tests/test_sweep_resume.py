"""Resuming a sweep re-runs only its tasks that did not succeed (on the same input), keeps the
throttle, and the dependents that were waiting run after them; locally and on the real test
SLURM cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run.manifest import RunManifest

# task.sh appends "<task> <lr>" to ran.txt; lr 0.2 fails while the file `broken` exists.
TASK = """echo "$ITWINAI_HPC_SWEEP_TASK $1" >> {folder}/ran.txt
[[ $1 != 0.2 || ! -e {folder}/broken ]]
"""


def workflow(folder: Path) -> Path:
    (folder / "task.sh").write_text(TASK.format(folder=folder))
    (folder / "broken").touch()
    path = folder / "sweep.yml"
    path.write_text(f"""
name: re
defaults:
  container: none
  resources: {{time: 5, mem: 100M}}
steps:
  - name: prep
    command: bash -c 'echo prep >> {folder}/ran.txt'
  - name: train
    needs: [prep]
    matrix: {{lr: [0.1, 0.2, 0.3, 0.4]}}
    max-parallel: 2
    command: bash {folder}/task.sh
    args: ["${{matrix.lr}}"]
  - name: predict
    needs: [train]
    command: bash -c 'echo predict >> {folder}/ran.txt'
""")
    return path


def ran(folder: Path) -> list[str]:
    return (folder / "ran.txt").read_text().splitlines()


def run_and_resume(folder: Path, backend: str, capsys) -> RunManifest:
    run_dir = folder / "run"
    assert main(["submit", str(workflow(folder)), "--backend", backend, "-o", str(run_dir),
                 "--wait", "--timeout", "150"]) == 1
    first = RunManifest.load(run_dir)
    assert (first.step("train").state, first.step("predict").state) == ("FAILED", "CANCELLED")
    assert sorted(ran(folder)) == ["0 0.1", "1 0.2", "2 0.3", "3 0.4", "prep"]
    (folder / "broken").unlink()
    (folder / "ran.txt").unlink()
    assert main(["resume", str(run_dir), "--wait", "--timeout", "150"]) == 0
    # only the failed task again (prep and the other tasks kept), then what waited for it
    assert ran(folder) == ["1 0.2", "predict"]
    manifest = RunManifest.load(run_dir)
    assert manifest.step("train").tasks == "1%2"
    capsys.readouterr()
    assert main(["status", "--json", str(run_dir)]) == 0
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("[")]
    assert [(r[0], r[2]) for r in rows] == [("[0]", "COMPLETED"), ("[1]", "COMPLETED"),
                                            ("[2]", "COMPLETED"), ("[3]", "COMPLETED")]
    assert json.loads(out.split("\nrun ")[0])["steps"][1]["state"] == "COMPLETED"
    return manifest


def test_local_resume_of_a_sweep_reruns_only_the_failed_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_and_resume(tmp_path, "local", capsys)


@pytest.mark.slurm
def test_slurm_resume_of_a_sweep_reruns_only_the_failed_task(slurm_cluster, run_folder, capsys):
    manifest = run_and_resume(run_folder, "slurm", capsys)
    assert len(manifest.step("train").history) == 1


def test_a_sweep_whose_input_is_rerun_runs_every_task_again(tmp_path, monkeypatch):
    """prep fails the first time: resume re-runs prep, and so every task on the new input."""
    monkeypatch.chdir(tmp_path)
    wf = workflow(tmp_path)
    (tmp_path / "broken").unlink()
    wf.write_text(wf.read_text().replace("command: bash -c 'echo prep",
                                         "command: bash -c 'test -e ok && echo prep"))
    run_dir = tmp_path / "run"
    assert main(["submit", str(wf), "--backend", "local", "-o", str(run_dir), "--wait",
                 "--timeout", "150"]) == 1
    (tmp_path / "ok").touch()
    assert main(["resume", str(run_dir), "--wait", "--timeout", "150"]) == 0
    assert sorted(ran(tmp_path)) == ["0 0.1", "1 0.2", "2 0.3", "3 0.4", "predict", "prep"]
    assert RunManifest.load(run_dir).step("train").tasks is None


def test_submitit_resume_of_a_sweep_reruns_only_the_failed_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_SUBMITIT_CLUSTER", "local")
    run_and_resume(tmp_path, "submitit", capsys)
