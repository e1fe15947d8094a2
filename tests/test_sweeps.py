"""Sweeps (`matrix:`): one task per combination, as one job array where only args/env vary and
one job per combination where resources do; `max-parallel`; `needs: {step: any}`; the sweep's
tasks and best in `status`. Rendered scripts run for real (bash), locally and on the real test
SLURM cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.ops import operations
from itwinai_hpc.render.folder import render_workflow
from itwinai_hpc.run import layout
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

# Each task appends "<task> <lr> <bs> <LR env> <start> <end>" to tasks.txt, and leaves a result
# as the trainer does (layout.sweep_result: the file `status` reads the sweep's best from).
TASK = r"""
s=$(date +%s.%N); sleep {sleep}
echo "$ITWINAI_HPC_SWEEP_TASK $1 $2 $LR $s $(date +%s.%N)" >> {folder}/tasks.txt
mkdir -p "$ITWINAI_HPC_RUN_DIR/sweeps/$ITWINAI_HPC_SWEEP"
printf '{{"task": %s, "matrix": %s, "metric": "score", "value": %s, '\
'"model_name": "m", "model_version": "%s"}}' \
  "$ITWINAI_HPC_SWEEP_TASK" "$ITWINAI_HPC_MATRIX" "$3" "$ITWINAI_HPC_SWEEP_TASK" \
  > "$ITWINAI_HPC_RUN_DIR/sweeps/$ITWINAI_HPC_SWEEP/$ITWINAI_HPC_SWEEP_TASK.json"
[[ $1 != {fail} ]]
"""


# Test steps: no container, small and short.
DEFAULTS = "defaults:\n  container: none\n  resources: {time: 5, mem: 100M}\n"


def sweep_workflow(folder: Path, *, fail: str = "none", needs: str = "{train: any}",
                   sleep: float = 1, parallel: int = 1) -> Path:
    (folder / "task.sh").write_text(TASK.format(folder=folder, sleep=sleep, fail=fail))
    path = folder / "sweep.yml"
    path.write_text(f"""
name: sw
{DEFAULTS}steps:
  - name: train
    matrix: {{lr: [0.1, 0.2, 0.3], bs: [8]}}
    max-parallel: {parallel}
    command: bash {folder}/task.sh
    args: ["${{matrix.lr}}", "${{matrix.bs}}", "${{matrix.lr}}"]
    env: {{LR: "lr=${{matrix.lr}}"}}
  - name: predict
    needs: {needs}
    command: bash -c 'echo predicted >> {folder}/predict.txt'
""")
    return path


def tasks(folder: Path) -> dict[int, list[str]]:
    lines = (folder / "tasks.txt").read_text().splitlines()
    return {int(line.split()[0]): line.split()[1:] for line in lines}


def assert_one_at_a_time(found: dict[int, list[str]]) -> None:
    spans = sorted((float(v[3]), float(v[4])) for v in found.values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"max-parallel 1, yet tasks overlapped: {spans}"


# ---- rendering ------------------------------------------------------------------------------
def test_an_args_only_matrix_is_one_throttled_array_whose_tasks_get_their_own_values(tmp_path):
    wf = sweep_workflow(tmp_path, parallel=2)
    run = render_workflow(wf, run_dir=tmp_path / "run")
    train = next(j for j in run.plan if j.name == "train")
    assert train.array == "0-2%2"
    assert "#SBATCH --array=0-2%2" in run.files[train.script]
    run.write()
    for task in (2, 0):     # the script itself, by hand, as a task of the array would run it
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "7",
               "SLURM_JOB_ID": "8", "ITWINAI_HPC_RUN_DIR": str(tmp_path / "run")}
        subprocess.run(["bash", str(tmp_path / "run" / train.local_script)], env=env, check=True,
                       capture_output=True, timeout=60)
    assert {t: v[:3] for t, v in tasks(tmp_path).items()} == {2: ["0.3", "8", "lr=0.3"],
                                                             0: ["0.1", "8", "lr=0.1"]}
    result = json.loads(Path(layout.sweep_result(str(tmp_path / "run"), "train", "2")).read_text())
    assert result["matrix"] == {"lr": "0.3", "bs": "8"}
    # an id outside the array: a clear refusal, not a task with empty values
    env["SLURM_ARRAY_TASK_ID"] = "3"
    p = subprocess.run(["bash", str(tmp_path / "run" / train.local_script)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "has tasks 0-2" in p.stderr


def test_values_reach_the_command_line_as_one_word_each_and_never_as_code(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: q
defaults: {container: none}
steps:
  - name: a
    matrix: {x: ["two words", "$(touch pwned)", "it's", "-n"]}
    command: printf '<%s>\\n'
    args: ["${matrix.x}", "pre-${matrix.x}-post"]
""")
    run = render_workflow(wf, run_dir=tmp_path / "run")
    run.write()
    seen = []
    for task in range(4):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "1",
               "SLURM_JOB_ID": "1", "ITWINAI_HPC_RUN_DIR": str(tmp_path / "run")}
        p = subprocess.run(["bash", str(tmp_path / "run" / run.plan[0].local_script)], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
        seen.append([line for line in p.stdout.splitlines() if line.startswith("<")])
    values = ["two words", "$(touch pwned)", "it's", "-n"]
    assert seen == [[f"<{v}>", f"<pre-{v}-post>"] for v in values]
    assert not (tmp_path / "pwned").exists()


def test_a_resource_matrix_is_one_job_per_combination_and_dependents_need_them_all(tmp_path):
    wf = tmp_path / "scale.yml"
    wf.write_text("""
name: scale
defaults: {container: none}
steps:
  - name: prep
    command: echo
  - name: train
    needs: [prep]
    matrix: {nodes: [1, 2, 4]}
    max-parallel: 1
    command: echo
    args: ["${matrix.nodes}"]
    resources: {nodes: "${matrix.nodes}"}
  - name: report
    needs: [train]
    command: echo
""")
    run = render_workflow(wf, run_dir=tmp_path / "run")
    by_name = {j.name: j for j in run.plan}
    assert [n for n in by_name] == ["prep", "train-0", "train-1", "train-2", "report"]
    assert [by_name[f"train-{i}"].resources.nodes for i in range(3)] == [1, 2, 4]
    assert [by_name[f"train-{i}"].args for i in range(3)] == [("1",), ("2",), ("4",)]
    assert by_name["report"].needs == ("train-0", "train-1", "train-2")
    # max-parallel 1 across separate jobs: each task after the one before it, whatever its end
    submit = run.files["submit.sh"]
    assert '--dependency=afterok:"$job_1",afterany:"$job_2" 03-train-1.sbatch' in submit
    assert '--dependency=afterok:"$job_1",afterany:"$job_3" 04-train-2.sbatch' in submit
    assert "#SBATCH --nodes=4" in run.files[by_name["train-2"].script]
    assert "export ITWINAI_HPC_SWEEP_TASK=2" in run.files[by_name["train-2"].script]


def test_status_skips_junk_in_the_sweeps_folder_and_shows_each_task_on_one_line(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: j
defaults: {container: none}
steps:
  - name: a
    matrix: {x: ["two\\nlines", "\\e[2Jclear"]}
    command: echo
    args: ["${matrix.x}"]
""")
    run = render_workflow(wf, run_dir=tmp_path / "run")
    run.write()
    folder = tmp_path / "run" / layout.SWEEPS / "a"
    folder.mkdir(parents=True)
    junk = ['[1, 2]', '"text"', '{"value": 0.9, "matrix": [1]}', '{"value": "NaN"}',
            '{"value": 1e999}', '{"value": 0.8, "task": NaN}']
    for i, text in enumerate(junk):
        (folder / f"{i}.json").write_text(text)
    os.mkfifo(folder / "fifo.json")                 # reading it would block for good
    (folder / "zero.json").symlink_to("/dev/zero")   # reading it would never end
    (folder / "dir.json").mkdir()
    (folder / "ok.json").write_text('{"value": 0.5, "task": 1, "matrix": {"x": "y"}}')
    status = [sys.executable, "-m", "itwinai_hpc.cli", "status", str(tmp_path / "run")]
    p = subprocess.run(status, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr
    assert "best so far: task 1 (x=y)" in p.stdout
    assert "[0] x=two\\nlines" in p.stdout and "[1] x=\\x1b[2Jclear" in p.stdout
    p = subprocess.run(status + ["--json"], capture_output=True, text=True, timeout=60)
    doc = json.loads(p.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert doc["sweeps"]["a"]["results"] == [{"value": 0.5, "task": 1, "matrix": {"x": "y"}}]


# ---- local backend --------------------------------------------------------------------------
def local_submit(wf: Path, tmp_path: Path, monkeypatch) -> RunManifest:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITWINAI_HPC_LOCAL_PARALLEL", "3")
    assert main(["submit", str(wf), "--backend", "local", "-o", str(tmp_path / "run")]) == 0
    manifest = RunManifest.load(tmp_path / "run")
    rc = operations.wait(manifest, interval=0.2, timeout=120)
    assert rc != operations.EXIT_ACTIVE, operations.progress_line(manifest)
    return RunManifest.load(tmp_path / "run")


def test_local_a_failed_task_fails_the_sweep_and_an_any_dependent_still_runs(
        tmp_path, monkeypatch, capsys):
    wf = sweep_workflow(tmp_path, fail="0.2", sleep=0.5, parallel=1)
    manifest = local_submit(wf, tmp_path, monkeypatch)
    assert {s.name: s.state for s in manifest.steps} == {"train": "FAILED",
                                                        "predict": "COMPLETED"}
    found = tasks(tmp_path)
    assert sorted(found) == [0, 1, 2]
    assert_one_at_a_time(found)
    assert (tmp_path / "predict.txt").read_text() == "predicted\n"
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 1       # a failed step: exit 1
    out = capsys.readouterr().out
    assert "[1] lr=0.2 bs=8" in out and "FAILED" in out.split("[1] lr=0.2 bs=8")[1].split("\n")[0]
    assert "COMPLETED" in out.split("[2] lr=0.3 bs=8")[1].split("\n")[0]
    # the best: the highest value, from the tasks' result files (task 1 failed after writing)
    assert "sweep train: 3 of 3 task(s) reported; best so far: task 2 (lr=0.3 bs=8) " \
        "score=0.3000, model m version 2" in out


def test_status_json_has_a_row_per_task_of_a_sweep_with_its_state_exit_code_and_log(
        tmp_path, monkeypatch, capsys):
    wf = sweep_workflow(tmp_path, fail="0.2", sleep=0, parallel=3)
    local_submit(wf, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run"), "--json"]) == 1
    train = json.loads(capsys.readouterr().out)["sweeps"]["train"]
    assert train["tasks"] == 3 and len(train["results"]) == 3       # as before
    rows = train["task_states"]
    assert [(r["task"], r["matrix"], r["state"], r["exit_code"]) for r in rows] == [
        (0, {"lr": "0.1", "bs": "8"}, "COMPLETED", 0),
        (1, {"lr": "0.2", "bs": "8"}, "FAILED", 1),
        (2, {"lr": "0.3", "bs": "8"}, "COMPLETED", 0)]
    for r in rows:      # each task's own log, in the run folder
        assert Path(r["log"]).is_relative_to(tmp_path / "run") and Path(r["log"]).is_file()
    assert len({r["log"] for r in rows}) == 3


def test_status_table_shortens_long_matrix_values_but_json_keeps_them_whole(tmp_path, capsys):
    long = "x" * 4000
    wf = tmp_path / "wf.yml"
    wf.write_text(f"""
name: long
defaults: {{container: none}}
steps:
  - name: a
    matrix: {{v: ["{long}", short]}}
    command: echo
    args: ["${{matrix.v}}"]
""")
    render_workflow(wf, run_dir=tmp_path / "run").write()
    capsys.readouterr()
    main(["status", str(tmp_path / "run")])
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) < 200, "table far wider than a screen"
    assert "[0] v=xxxxxxxx" in table and "x... " in table and "[1] v=short" in table
    main(["status", str(tmp_path / "run"), "--json"])
    rows = json.loads(capsys.readouterr().out)["sweeps"]["a"]["task_states"]
    assert [r["matrix"] for r in rows] == [{"v": long}, {"v": "short"}]
    assert [r["state"] for r in rows] == ["PENDING", "PENDING"]


def test_local_an_any_dependent_fails_clearly_when_no_task_succeeded(tmp_path, monkeypatch):
    wf = sweep_workflow(tmp_path, fail="0.*", sleep=0, parallel=3)     # every lr matches
    manifest = local_submit(wf, tmp_path, monkeypatch)
    assert manifest.step("predict").state == "FAILED"
    assert not (tmp_path / "predict.txt").exists()
    log = operations.backend_for(manifest).log_files(manifest, manifest.step("predict"))
    assert "no task of 'train' succeeded: 'predict' does not run" in log[0].read_text()


def test_local_an_any_dependent_finds_the_marks_of_a_folder_moved_under_glob_characters(
        tmp_path, monkeypatch):
    """A rendered folder may be moved before it is submitted; the `any` check must read the
    folder's path as it is, not as a pattern ("run[1]" would look for "run1")."""
    wf = sweep_workflow(tmp_path, fail="0.2", sleep=0, parallel=3)
    monkeypatch.chdir(tmp_path)
    assert main(["render", str(wf), "-o", str(tmp_path / "run")]) == 0
    moved = tmp_path / "moved[1] *"
    (tmp_path / "run").rename(moved)
    (tmp_path / "moved1 x").mkdir()    # what the pattern would match instead
    assert main(["submit", str(moved), "--backend", "local"]) == 0
    rc = operations.wait(RunManifest.load(moved), interval=0.2, timeout=120)
    assert rc != operations.EXIT_ACTIVE
    manifest = RunManifest.load(moved)
    assert {s.name: s.state for s in manifest.steps} == {"train": "FAILED",
                                                        "predict": "COMPLETED"}
    assert (tmp_path / "predict.txt").read_text() == "predicted\n"


def test_local_a_plain_need_on_a_sweep_waits_for_every_task_to_succeed(tmp_path, monkeypatch):
    wf = sweep_workflow(tmp_path, fail="0.3", sleep=0, parallel=3, needs="[train]")
    manifest = local_submit(wf, tmp_path, monkeypatch)
    assert manifest.step("predict").state == "CANCELLED"
    assert not (tmp_path / "predict.txt").exists()


# ---- the real SLURM test cluster ------------------------------------------------------------
def wait_slurm(run_dir: Path, timeout: float = 150) -> RunManifest:
    manifest = RunManifest.load(run_dir)
    rc = operations.wait(manifest, interval=0.5, timeout=timeout)
    assert rc != operations.EXIT_ACTIVE, operations.progress_line(manifest)
    return RunManifest.load(run_dir)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_a_throttled_array_sweep_runs_one_task_at_a_time_and_any_runs_after_a_failure(
        slurm_cluster, run_folder, capsys):
    wf = sweep_workflow(run_folder, fail="0.1", sleep=2, parallel=1)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = wait_slurm(Path(find_run(None)))
    assert {s.name: s.state for s in manifest.steps} == {"train": "FAILED",
                                                        "predict": "COMPLETED"}
    found = tasks(run_folder)
    assert {t: v[:3] for t, v in found.items()} == {0: ["0.1", "8", "lr=0.1"],
                                                   1: ["0.2", "8", "lr=0.2"],
                                                   2: ["0.3", "8", "lr=0.3"]}
    assert_one_at_a_time(found)
    assert (run_folder / "predict.txt").read_text() == "predicted\n"
    capsys.readouterr()
    main(["status", "--json", manifest.run_id])
    doc = json.loads(capsys.readouterr().out)
    best = doc["sweeps"]["train"]["results"][0]
    assert (best["task"], best["matrix"]) == (2, {"lr": "0.3", "bs": "8"})


@pytest.mark.slurm
def test_slurm_a_resource_sweep_runs_each_task_on_its_own_node_count(slurm_cluster, run_folder):
    wf = run_folder / "nodes.yml"
    wf.write_text(f"""
name: nodes
{DEFAULTS}steps:
  - name: size
    matrix: {{nodes: [1, 2]}}
    launcher: srun
    command: bash -c 'echo "$ITWINAI_HPC_SWEEP_TASK $SLURM_NNODES $SLURM_PROCID"
      >> {run_folder}/sizes.txt'
    resources: {{nodes: "${{matrix.nodes}}"}}
  - name: after
    needs: [size]
    command: bash -c 'echo done >> {run_folder}/after.txt'
""")
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = wait_slurm(Path(find_run(None)))
    assert {s.name: s.state for s in manifest.steps} == {
        "size-0": "COMPLETED", "size-1": "COMPLETED", "after": "COMPLETED"}
    lines = sorted((run_folder / "sizes.txt").read_text().splitlines())
    assert lines == ["0 1 0", "1 2 0", "1 2 1"]      # task 1: 2 nodes, one task on each
    assert (run_folder / "after.txt").read_text() == "done\n"


# ---- itwinai-hpc scaling: bad input (the study itself runs in test_scaling.py) ---------------
def scaling_refusal(tmp_path: Path, step: str, capsys, *flags: str) -> str:
    wf = tmp_path / "wf.yml"
    wf.write_text(f"""
name: s
defaults: {{container: none, env: {{MLFLOW_TRACKING_URI: {tmp_path}/mlruns}}}}
steps:
  - name: prep
    command: echo
{step}""")
    capsys.readouterr()
    rc = main(["scaling", str(wf), "--step", "train", "--nodes", "1,2", "--backend", "local",
               "-o", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("needs", ["[[prep]]", "5"])
def test_scaling_a_step_with_malformed_needs_is_a_located_error(tmp_path, capsys, needs):
    err = scaling_refusal(tmp_path, f"""  - name: train
    launcher: torchrun
    command: echo
    needs: {needs}
""", capsys)
    assert "wf.yml:10: steps[0](train-0).needs: Input should be a valid dictionary" in err


def test_scaling_refuses_a_step_that_torchrun_does_not_launch(tmp_path, capsys):
    err = scaling_refusal(tmp_path, """  - name: train
    needs: [prep]
    command: echo
""", capsys)
    assert "step 'train' has launcher 'none', which does not spread one training" in err


def test_scaling_an_error_in_a_set_value_names_that_flag_after_steps_are_dropped(
        tmp_path, capsys):
    err = scaling_refusal(tmp_path, """  - name: train
    launcher: torchrun
    command: echo
""", capsys, "--set", "steps.train.resources.mem=lots", "--set",
        "steps.prep.resources.mem=alot")
    assert "error: --set steps.train.resources.mem=lots: steps[0](train).resources.mem" in err


def test_a_mistake_in_a_resource_sweep_is_reported_once_not_once_per_task(tmp_path, capsys):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: once
steps:
  - name: a
    matrix: {nodes: [1, 2, 3, 4]}
    launcher: bogus
    command: echo
    resources: {nodes: "${matrix.nodes}"}
""")
    assert main(["validate", str(wf)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{wf}:6:" in errors[0] and "launcher" in errors[0], errors


def test_needing_one_task_of_a_sweep_with_any_checks_that_task_alone(tmp_path):
    wf = tmp_path / "wf.yml"
    wf.write_text("""
name: one
defaults: {container: none}
steps:
  - name: a
    matrix: {nodes: [1, 2]}
    command: echo
    resources: {nodes: "${matrix.nodes}"}
  - name: b
    needs: {a-1: any}
    command: echo
  - name: c
    needs: {a: any}
    command: echo
""")
    run = render_workflow(wf, run_dir=tmp_path / "run")
    scripts = {j.name: run.files[j.script] for j in run.plan}
    assert 'for mark in "$ITWINAI_HPC_RUN_DIR/logs/.ok-a.1"; do' in scripts["b"]
    assert ".ok-a\".*" not in scripts["b"]
    assert 'for mark in "$ITWINAI_HPC_RUN_DIR/logs/.ok-a".*; do' in scripts["c"]
    # and task 1 leaves exactly the mark b looks for
    mark = '"$ITWINAI_HPC_RUN_DIR/logs/.ok-a.1'
    assert f': >{mark}.$$" && mv -f {mark}.$$" {mark}"' in scripts["a-1"]
