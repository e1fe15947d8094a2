"""`itwinai-hpc report RUN`: what each job used against what it asked for, with advice, from
sacct on the slurmdbd cluster; elsewhere it says what cannot be known and shows what can."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm.accounting import parse_usage
from itwinai_hpc.cli import main
from itwinai_hpc.core.slurm_syntax import mem_bytes
from itwinai_hpc.ops import operations
from itwinai_hpc.ops.report import Usage, advise
from itwinai_hpc.run.manifest import RunManifest

# A step that keeps its 2 CPUs half busy for ~3 s and holds ~120 MB, having asked for 2 GB;
# and a 2-task array.
WORKFLOW = """name: usage
defaults: {container: none, resources: {time: "02:00:00"}}
steps:
  - name: work
    command: python3 -c
    args: ["import time; b = bytearray(120 * 2**20);
           t = time.time()\\nwhile time.time() - t < 3: pass"]
    resources: {cpus-per-task: 2, mem: 2G}
  - name: tasks
    needs: [work]
    command: "true"
    array: "0-1"
"""

# sacct -n -P -o JobIDRaw,...,ConsumedEnergyRaw on slurmdbd (22.05): an allocation, its batch
# and extern steps, and an array's tasks.
CAPTURED = """41|41|COMPLETED|00:00:04|02:00:00|00:02.950|2||2G|billing=2,cpu=2,mem=2G,node=1|0
41.batch|41.batch|COMPLETED|00:00:04||00:02.948|2|125460K||cpu=2,mem=2G,node=1|0
41.extern|41.extern|COMPLETED|00:00:04||00:00:00|2|0||billing=2,cpu=2,mem=2G,node=1|0
43|42_0|COMPLETED|00:00:01|02:00:00|00:00.010|1||500M|billing=1,cpu=1,gres/gpu=1,mem=500M,node=1|0
43.batch|42_0.batch|COMPLETED|00:00:01||00:00.010|1|1024K||cpu=1,mem=500M,node=1|0
42|42_1|FAILED|00:00:01|02:00:00|00:00.010|1||500M|billing=1,cpu=1,mem=500M,node=1|0
"""


def test_sacct_usage_is_folded_per_job_and_array_task():
    jobs = parse_usage(CAPTURED)
    assert set(jobs) == {"41", "42_0", "42_1"}
    assert jobs["41"]["cpus"] == 2 and jobs["41"]["elapsed"] == 4
    assert jobs["41"]["max_rss"] == 125460 * 1024 and jobs["41"]["req_mem"] == 2 * 2**30
    assert abs(jobs["41"]["cpu_seconds"] - 2.95) < 0.01 and jobs["41"]["limit"] == 7200
    assert jobs["42_0"]["gpus"] == 1 and jobs["42_1"]["state"] == "FAILED"
    assert mem_bytes("4000Mc") == 4000 * 2**20 and mem_bytes("") is None


def test_advice_names_a_request_far_off_what_was_used():
    u = Usage("train", "7", "COMPLETED", elapsed=300, limit=86400, cpus=32, cpu_seconds=600,
              max_rss=3 * 2**30, req_mem=64 * 2**30)
    text = " | ".join(advise(u))
    assert "asked 64.0G of memory, used 3.0G" in text
    assert "used 6% of 32 CPUs" in text and "asked 24:00:00, ran 0:05:00" in text
    fine = Usage("t", "8", "COMPLETED", elapsed=3000, limit=3600, cpus=4, cpu_seconds=11000,
                 max_rss=3 * 2**30, req_mem=4 * 2**30)
    assert advise(fine) == []


def test_report_on_the_slurmdbd_cluster_shows_usage_and_advice(slurm_cluster_dbd, run_folder,
                                                               monkeypatch, capsys):
    slurm_cluster_dbd.activate(monkeypatch)
    (run_folder / "wf.yml").write_text(WORKFLOW)
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait"]) == 0
    deadline = time.monotonic() + 30
    while True:         # slurmdbd records a finished array task a few seconds late
        capsys.readouterr()
        assert main(["report", "run", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        if len([j for j in doc["jobs"] if j["step"] == "tasks"]) == 2 or \
                time.monotonic() > deadline:
            break
        time.sleep(1)
    assert doc["note"] is None
    work = next(j for j in doc["jobs"] if j["step"] == "work")
    assert work["cpus"] == 2 and work["req_mem"] == 2 * 2**30 and work["limit"] == 7200
    assert 100 * 2**20 < work["max_rss"] < 2 * 2**30
    # what sacct measured, folded as the table shows it (the job burns one of its 2 CPUs; how
    # much of it the emulated node gave it depends on the machine's load, so no floor)
    assert work["cpu_seconds"] > 0 and work["elapsed"] > 0
    assert work["cpu_efficiency"] == pytest.approx(
        work["cpu_seconds"] / (work["elapsed"] * work["cpus"])) and work["cpu_efficiency"] <= 1.0
    assert any("asked 2.0G of memory" in a for a in work["advice"])
    tasks = [j for j in doc["jobs"] if j["step"] == "tasks"]
    assert len(tasks) == 2 and {t["state"] for t in tasks} == {"COMPLETED"}
    assert main(["report", "run"]) == 0
    table = capsys.readouterr().out
    assert "CPU EFF" in table and "advice: work" in table


def test_report_without_slurmdbd_says_what_it_cannot_know(slurm_cluster, run_folder, capsys):
    (run_folder / "wf.yml").write_text(WORKFLOW.replace("3: pass", "1: pass"))
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait"]) == 0
    capsys.readouterr()
    assert main(["report", "run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "need slurmdbd accounting (this cluster: jobcomp)" in doc["note"]
    assert [j["state"] for j in doc["jobs"]] == ["COMPLETED", "COMPLETED"]
    assert doc["jobs"][0]["elapsed"] is not None and doc["jobs"][0]["max_rss"] is None


def test_report_of_a_local_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yml").write_text("name: l\ndefaults: {container: none}\n"
                                     "steps:\n  - {name: a, command: 'true'}\n")
    assert main(["submit", "wf.yml", "--backend", "local", "-o", "run", "--wait"]) == 0
    capsys.readouterr()
    assert main(["report", "run"]) == 0
    out = capsys.readouterr().out
    assert "note: a local run has no scheduler accounting" in out and "COMPLETED" in out
    assert RunManifest.load(tmp_path / "run").backend == "local"
    assert operations.exit_code(RunManifest.load(Path(tmp_path / "run"))) == 0
