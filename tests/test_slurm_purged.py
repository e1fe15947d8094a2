"""`status` after the controller has forgotten a run's jobs, in each accounting mode.

One run per mode (dbd: full sacct; jobcomp_short: `sacct -c` only; none_short: nothing but the
exit status the jobs leave in the run folder), all submitted at once and purged together
(MinJobAge=5), so the whole module waits for one purge. Each test refreshes its own copy of a run
folder (a copy acts on itself), so the tests do not see each other's cached states.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.states import FINISHED

pytestmark = pytest.mark.slurm
MODES = ("dbd", "jobcomp_short", "none_short")

WORKFLOW = """
name: purge
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - {name: a, command: 'true'}
  - {name: b, command: 'exit 3', needs: [a]}
  - {name: c, command: 'true', needs: [b]}
  - {name: shards, array: 0-3, command: 'exit $((SLURM_ARRAY_TASK_ID == 2 ? 5 : 0))'}
  - {name: killed, command: 'sleep 300'}
"""


@dataclass
class PurgedRun:
    cluster: object
    run_dir: Path          # never refreshed by status: copy it, then refresh the copy
    before: dict           # `status --json` of a copy taken while the controller knew the jobs


def status_json(run_dir: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["status", "--json", str(run_dir)])
    return rc, json.loads(capsys.readouterr().out)


def step(doc: dict, name: str) -> dict:
    return next(s for s in doc["steps"] if s["name"] == name)


def copy_of(run: PurgedRun, folder: Path) -> Path:
    return Path(shutil.copytree(run.run_dir, folder / "run"))


def refresh_until_every_step_finished(run_dir: Path, timeout: float = 30) -> dict:
    """run.json once status has a final state for every step (slurmdbd records an array's
    tasks a moment after they end; status exits 1 as soon as one step failed)."""
    deadline = time.monotonic() + timeout
    while True:
        main(["status", "--json", str(run_dir)])
        doc = json.loads((run_dir / "run.json").read_text())
        if all(s["state"] in FINISHED for s in doc["steps"]) or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


@pytest.fixture(scope="module")
def purged(slurm_cluster_factory, tmp_path_factory) -> dict[str, PurgedRun]:
    """{mode: PurgedRun}: each cluster ran a -> b (exit 3) -> c, a 4-task array whose task 2
    exits 5, and a `sleep 300` job cancelled from outside with plain scancel."""
    clusters = {m: slurm_cluster_factory(m) for m in MODES}
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        for mode, cluster in clusters.items():
            folder = tmp_path_factory.mktemp(f"purge-{mode}")
            (folder / "wf.yml").write_text(WORKFLOW)
            mp.setenv("SLURM_CONF", cluster.conf)
            assert main(["submit", str(folder / "wf.yml"), "--backend", "slurm",
                         "-o", str(folder / "run")]) == 0
            runs[mode] = folder / "run"
    manifests = {m: RunManifest.load(d) for m, d in runs.items()}
    for mode, m in manifests.items():
        killed = m.step("killed")
        log = Path(killed.log)
        deadline = time.monotonic() + 60        # its script has started (and set its traps)
        while not (log.is_file() and "step killed of run" in log.read_text()):
            assert time.monotonic() < deadline, f"{mode}: the job to cancel never started"
            time.sleep(0.2)
        clusters[mode].run("scancel", killed.job_id)
    before = {}
    for mode, m in manifests.items():
        clusters[mode].wait_for_jobs([s.job_id for s in m.steps])
        snapshot = Path(shutil.copytree(runs[mode], runs[mode].parent / "before"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", clusters[mode].conf)
            before[mode] = refresh_until_every_step_finished(snapshot)
    deadline = time.monotonic() + 120
    for mode, m in manifests.items():
        while any(clusters[mode].job_state(s.job_id) for s in m.steps):
            assert time.monotonic() < deadline, f"{mode}: jobs not purged in 120 s"
            time.sleep(1)
    return {m: PurgedRun(clusters[m], runs[m], before[m]) for m in MODES}


@pytest.fixture(params=MODES)
def mode(request, purged, monkeypatch) -> str:
    purged[request.param].cluster.activate(monkeypatch)
    return request.param


@pytest.mark.slow
def test_an_array_step_with_a_failed_task_is_failed_before_the_purge(purged, mode):
    shards = step(purged[mode].before, "shards")
    assert (shards["state"], shards["exit_code"]) == ("FAILED", 5)


def test_an_array_step_with_a_failed_task_is_failed_after_the_purge(purged, mode, tmp_path,
                                                                    capsys):
    rc, doc = status_json(copy_of(purged[mode], tmp_path), capsys)
    assert rc == 1
    assert (step(doc, "shards")["state"], step(doc, "shards")["exit_code"]) == ("FAILED", 5)


def test_a_failed_chain_reads_completed_failed_cancelled_after_the_purge(purged, mode, tmp_path,
                                                                         capsys):
    rc, doc = status_json(copy_of(purged[mode], tmp_path), capsys)
    assert rc == 1
    assert [step(doc, n)["state"] for n in "abc"] == ["COMPLETED", "FAILED", "CANCELLED"]
    assert step(doc, "b")["exit_code"] == 3


@pytest.mark.parametrize("mode", ["dbd", "jobcomp_short"], indirect=True)
def test_accounting_alone_tells_how_purged_jobs_ended(purged, mode, tmp_path, capsys):
    run_dir = copy_of(purged[mode], tmp_path)
    for marker in (run_dir / "logs").glob(".exit-*"):
        marker.unlink()                        # only accounting can know now
    rc, doc = status_json(run_dir, capsys)
    assert [step(doc, n)["state"] for n in "abc"] == ["COMPLETED", "FAILED", "CANCELLED"]
    assert step(doc, "b")["exit_code"] == 3 and step(doc, "a")["nodes"] in ("node1", "node2")


def test_a_job_cancelled_from_outside_is_never_reported_completed(purged, mode, tmp_path,
                                                                  capsys):
    # Without accounting only the job's exit status can tell: the script's trap must record
    # the SIGTERM it died of (bash would report the status of its last command, 0).
    rc, doc = status_json(copy_of(purged[mode], tmp_path), capsys)
    killed = step(doc, "killed")
    assert killed["state"] in ("CANCELLED", "FAILED")
    if killed["state"] == "FAILED":
        assert killed["exit_code"] == 143 and "SIGTERM" in killed["reason"]


def test_one_status_refresh_after_the_purge_makes_one_scheduler_call(purged, mode, tmp_path,
                                                                     monkeypatch, capsys):
    run_dir = copy_of(purged[mode], tmp_path)
    calls = tmp_path / "calls.log"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    for tool in ("sacct", "squeue", "scontrol", "sinfo", "sbatch", "scancel"):
        real = shutil.which(tool)
        (wrappers / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> {calls}\n'
                                     f'exec {real} "$@"\n')
        (wrappers / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    rc, doc = status_json(run_dir, capsys)
    assert len(calls.read_text().splitlines()) == 1, calls.read_text()
    assert rc == 1 and step(doc, "shards")["state"] == "FAILED"


@pytest.mark.parametrize("mode", ["none_short"], indirect=True)
def test_a_job_that_started_and_left_no_exit_status_is_not_pending_forever(purged, mode,
                                                                          tmp_path, capsys):
    run_dir = copy_of(purged[mode], tmp_path)
    job = RunManifest.load(run_dir).step("killed").job_id
    (run_dir / "logs" / f".exit-{job}").unlink()      # as if killed before its trap was set
    rc, doc = status_json(run_dir, capsys)
    killed = step(doc, "killed")
    assert killed["state"] == "CANCELLED" and "without an exit status" in killed["reason"]
