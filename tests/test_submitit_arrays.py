"""Job arrays through the submitit backend, on both its clusters: SLURM (the real test cluster)
and submitit's local executor. Each task runs once with its own id from the spec, the %N
throttle holds, a failed task fails the step, and dependents follow afterok / afterany."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from itwinai_hpc.backends.local.procs import job_marker, job_processes
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest

CLUSTERS = [pytest.param("slurm", marks=pytest.mark.slurm), "local"]

# One line per task, written in one write when it ends: "<task> <array job> <start> <end>".
TASKS = """
name: sweep
steps:
  - name: tasks
    array: "{spec}"
    command: bash -c
    args: ['start=$(date +%s.%N); sleep 1;
            echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_JOB_ID $start $(date +%s.%N)" >> tasks.txt;
            echo "this is task $SLURM_ARRAY_TASK_ID"']
"""

# Task 1 fails. `strict` needs the array to succeed; `lenient` needs one task of it to succeed,
# `later` (made an `after` of it below, as a throttled sweep's task is) only waits for its end.
PARTIAL = """
name: partial
steps:
  - name: tasks
    array: "0-2%2"
    command: bash -c
    args: ['sleep 1; echo "task $(date +%s.%N)" >> order.txt; [ "$SLURM_ARRAY_TASK_ID" != 1 ]']
  - name: strict
    needs: [tasks]
    command: bash -c
    args: ['echo "strict $(date +%s.%N)" >> order.txt']
  - name: lenient
    needs: {tasks: any}
    command: bash -c
    args: ['echo "lenient $(date +%s.%N)" >> order.txt']
  - name: later
    command: bash -c
    args: ['echo "later $(date +%s.%N)" >> order.txt']
"""


def cli(folder: Path, cluster: str, *args: str, timeout: float = 120):
    """Run itwinai-hpc; its output (stdout and stderr) in .stdout. A file, not a pipe: submitit's
    local jobs inherit the submitter's stdout, and a pipe would stay open until they end."""
    env = {**os.environ, "ITWINAI_HPC_SUBMITIT_CLUSTER": cluster}
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], cwd=folder,
                           env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        out.seek(0)
        p.stdout = out.read()
    return p


def render(folder: Path, text: str, **plans: dict) -> Path:
    """Render `text` into folder/run; `plans` changes steps' planned fields in run.json."""
    (folder / "wf.yml").write_text(text)
    p = cli(folder, "local", "render", "wf.yml", "-o", str(folder / "run"))
    assert p.returncode == 0, p.stdout
    manifest = RunManifest.load(folder / "run")
    for step in manifest.steps:
        step.plan = dataclasses.replace(step.plan, **plans.get(step.name, {}))
    manifest.save()
    return folder / "run"


def submit(folder: Path, cluster: str, text: str, *flags: str, **plans: dict):
    run = render(folder, text, **plans)
    return cli(folder, cluster, "submit", str(run), "--backend", "submitit", *flags), run


def task_rows(folder: Path) -> list[tuple[int, str, float, float]]:
    return [(int(t), job, float(start), float(end)) for t, job, start, end in
            (line.split() for line in (folder / "tasks.txt").read_text().splitlines())]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one moment (one ending as another starts: apart)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_each_task_of_an_array_runs_once_with_its_own_id_from_the_spec(cluster, run_folder,
                                                                       request):
    p, run = submit(run_folder, cluster, TASKS.format(spec="1,3,5%2"), "--wait")
    assert p.returncode == 0, p.stdout
    step = RunManifest.load(run).step("tasks")
    assert step.state == "COMPLETED" and step.exit_code == 0
    rows = task_rows(run_folder)
    assert sorted(t for t, *_ in rows) == [1, 3, 5]
    assert {job for _, job, *_ in rows} == {step.job_id}        # the array's master id
    assert most_at_once([(s, e) for *_, s, e in rows]) <= 2
    for task in ("1", "3", "5"):
        assert Path(layout.exit_marker(str(run), f"{step.job_id}_{task}")).read_text() == "0\n"
        log = Path(layout.log_file(str(run), "sweep.tasks", step.job_id, task))
        assert f"this is task {task}\n" in log.read_text()
    if cluster == "slurm":                  # SLURM's own task ids are the spec's
        lines = request.getfixturevalue("slurm_cluster").run(
            "scontrol", "show", "job", "-o", step.job_id).splitlines()
        assert sorted(ln.split("ArrayTaskId=")[1].split()[0] for ln in lines) == ["1", "3", "5"]


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_an_array_throttled_to_one_runs_its_tasks_one_after_another(cluster, run_folder):
    p, run = submit(run_folder, cluster, TASKS.format(spec="0-2%1"), "--wait")
    assert p.returncode == 0, p.stdout
    assert RunManifest.load(run).step("tasks").state == "COMPLETED"
    rows = task_rows(run_folder)
    assert sorted(t for t, *_ in rows) == [0, 1, 2]
    assert most_at_once([(s, e) for *_, s, e in rows]) == 1


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_failed_task_fails_the_array_cancels_strict_dependents_and_runs_the_lenient(
        cluster, run_folder):
    p, run = submit(run_folder, cluster, PARTIAL, "--wait", later={"after": ("tasks",)})
    assert p.returncode == 1, p.stdout
    manifest = RunManifest.load(run)
    states = {s.name: s.state for s in manifest.steps}
    assert states == {"tasks": "FAILED", "strict": "CANCELLED", "lenient": "COMPLETED",
                      "later": "COMPLETED"}
    assert manifest.step("tasks").exit_code == 1
    stamps: dict[str, list[float]] = {}
    for line in (run_folder / "order.txt").read_text().splitlines():
        name, when = line.split()
        stamps.setdefault(name, []).append(float(when))
    assert len(stamps["task"]) == 3 and "strict" not in stamps
    for task in ("0", "1", "2"):        # what `lenient` checked: the tasks that succeeded
        assert Path(layout.ok_marker(str(run), "tasks", task)).exists() == (task != "1")
    assert min(stamps["lenient"] + stamps["later"]) >= max(stamps["task"])
    if cluster == "slurm":
        ids = {s.name: s.job_id for s in manifest.steps}
        for name, wanted in (("strict", f"afterok:{ids['tasks']}"),
                             ("lenient", f"afterany:{ids['tasks']}"),
                             ("later", f"afterany:{ids['tasks']}")):
            assert f"--dependency={wanted}\n" in \
                (run / "submitit" / f"{ids[name]}_submission.sh").read_text()


def test_cancel_stops_a_local_arrays_running_task_and_starts_no_more(run_folder):
    text = TASKS.format(spec="0-3%1").replace("sleep 1", "echo $SLURM_ARRAY_TASK_ID >> "
                                                         "started.txt; sleep 600")
    p, run = submit(run_folder, "local", text)
    assert p.returncode == 0, p.stdout
    step = RunManifest.load(run).step("tasks")
    deadline = time.monotonic() + 30
    while not (run_folder / "started.txt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    started = time.monotonic()
    p = cli(run_folder, "local", "cancel", str(run))
    assert p.returncode == 0, p.stdout
    assert time.monotonic() - started < 300       # it stopped the task, never waited for it
    assert not job_processes(job_marker(RunManifest.load(run).run_id, step.job_id))
    time.sleep(1)
    assert (run_folder / "started.txt").read_text() == "0\n"
    assert not (run_folder / "tasks.txt").exists()
    assert RunManifest.load(run).step("tasks").state == "CANCELLED"


@pytest.mark.slurm
def test_an_array_with_ids_from_its_spec_completes_under_full_accounting(
        slurm_cluster_dbd, run_folder, monkeypatch):
    # slurmdbd records each task by its SLURM id: these must be the spec's, or status would wait
    # for tasks 3 and 5 forever (submitit's map_array would number them 0, 1, 2)
    slurm_cluster_dbd.activate(monkeypatch)
    p, run = submit(run_folder, "slurm", TASKS.format(spec="1,3,5"), "--wait")
    assert p.returncode == 0, p.stdout
    assert RunManifest.load(run).step("tasks").state == "COMPLETED"
    assert sorted(t for t, *_ in task_rows(run_folder)) == [1, 3, 5]


def test_a_local_step_sees_its_own_job_not_the_slurm_job_it_was_submitted_from(run_folder,
                                                                               monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")             # as inside task 9 of array job 7
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    text = """
name: plain
steps:
  - name: one
    command: bash -c
    args: ['echo "$SLURM_JOB_ID $${SLURM_ARRAY_TASK_ID:-none}" > seen.txt']
"""
    p, run = submit(run_folder, "local", text, "--wait")
    assert p.returncode == 0, p.stdout
    job_id = RunManifest.load(run).step("one").job_id
    assert (run_folder / "seen.txt").read_text() == f"{job_id} none\n"


SWEEPS = """
name: sweeps
steps:
  # Only args vary: one job array, task N with combination N.
  - name: train
    matrix: {lr: [0.1, 0.2, 0.3]}
    max-parallel: 2
    command: bash -c
    args: ['echo "$SLURM_ARRAY_TASK_ID ${matrix.lr}" >> grid.txt']
  # The time limit varies: one job per combination, each after the one max-parallel before it.
  # (5+ minutes: submitit's USR2 warning, 90 s before the limit and up to 60 s early, must not
  # come while its python starts; with 1 and 2 minutes it killed a task now and then, exit 140)
  - name: fit
    matrix: {minutes: [5, 6, 7]}
    max-parallel: 1
    resources: {time: "${matrix.minutes}"}
    command: bash -c
    args: ['start=$(date +%s.%N); sleep 1;
           echo "${matrix.minutes} $start $(date +%s.%N)" >> fit.txt']
"""


@pytest.fixture(scope="module", params=CLUSTERS)
def swept(request, tmp_path_factory) -> tuple[Path, RunManifest]:
    """SWEEPS submitted through each cluster and waited for: (the folder, the run)."""
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
    folder = tmp_path_factory.mktemp(f"sweeps-{request.param}")
    p, run = submit(folder, request.param, SWEEPS, "--wait")
    assert p.returncode == 0, p.stdout
    return folder, RunManifest.load(run)


def test_a_matrix_runs_each_combination_once_as_the_task_of_its_index(swept):
    folder, run = swept
    assert run.step("train").state == "COMPLETED"
    assert sorted((folder / "grid.txt").read_text().splitlines()) == ["0 0.1", "1 0.2", "2 0.3"]


def test_a_matrix_of_jobs_throttled_to_one_runs_them_one_after_another(swept):
    folder, run = swept
    assert [run.step(f"fit-{i}").state for i in range(3)] == ["COMPLETED"] * 3
    rows = [line.split() for line in (folder / "fit.txt").read_text().splitlines()]
    assert sorted(r[0] for r in rows) == ["5", "6", "7"]
    assert most_at_once([(float(s), float(e)) for _, s, e in rows]) == 1
