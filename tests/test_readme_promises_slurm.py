"""README and docs promises about SLURM that no other test held to their word, on the test cluster
(tests/slurm/start-slurm.sh: node1, node2; the main cluster keeps finished jobs in squeue for
5 min, the `dbd` one has slurmdbd). Each test names the page and quotes the sentence it checks."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm.accounting import parse_usage
from itwinai_hpc.cli import main
from itwinai_hpc.ops.report import format_report, usage_rows
from itwinai_hpc.run.manifest import RunManifest

pytestmark = pytest.mark.slurm
VENV_BIN = Path(sys.executable).parent
SLURM_COMMANDS = {"sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel", "salloc", "sacct"}
REAL_SBATCH = shutil.which("sbatch") or "/usr/bin/sbatch"
UNREACHABLE = ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
               "(connect failure)")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def queued_for_run(cluster, job_name: str, run_id: str) -> list[str]:
    """Ids of every job (any state) named `job_name` whose comment tags this run: what the
    controller has queued for this step, whoever else shares the cluster."""
    out = cluster.run("squeue", "-h", "-t", "all", "-n", job_name, "-o", "%i|%k")
    return [line.split("|")[0] for line in out.split()
            if line.split("|")[-1] == f"itwinai-hpc:{run_id}"]


def path_without_slurm(tmp_path: Path) -> str:
    """PATH with /usr/bin's commands except SLURM's (links in a folder), the venv first."""
    bin_dir = tmp_path / "bin-without-slurm"
    bin_dir.mkdir()
    for entry in os.scandir("/usr/bin"):
        if entry.name not in SLURM_COMMANDS:
            (bin_dir / entry.name).symlink_to(entry.path)
    return f"{VENV_BIN}:{bin_dir}"


# ---- docs/concepts.md: "`--backend auto` is slurm where `sbatch` answers, else local." ----------
def test_backend_auto_is_slurm_where_sbatch_answers_and_local_where_there_is_none(
        slurm_cluster, run_folder, monkeypatch):
    wf = write(run_folder / "wf.yml", f"""name: auto
defaults: {{container: none, resources: {{time: 5, mem: 100M}}}}
steps:
  - name: where
    command: bash -c 'echo "$ITWINAI_HPC_BACKEND $SLURMD_NODENAME" > {run_folder}/$0.txt'
    args: ["${{run_id}}"]
""")
    # the cluster answers: no --backend at all (auto is the default)
    assert main(["submit", str(wf), "-o", "on-slurm", "--wait", "--timeout", "120"]) == 0
    on_slurm = RunManifest.load(run_folder / "on-slurm")
    assert on_slurm.backend == "slurm"
    step = on_slurm.step("where")
    assert step.state == "COMPLETED" and step.nodes in slurm_cluster.nodes
    assert queued_for_run(slurm_cluster, "auto.where", on_slurm.run_id) == [step.job_id]
    backend, node = (run_folder / f"{on_slurm.run_id}.txt").read_text().split()
    assert (backend, node) == ("slurm", step.nodes)          # it ran in a SLURM job, there

    # no sbatch on PATH: the same workflow runs on this machine
    monkeypatch.setenv("PATH", path_without_slurm(run_folder))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert shutil.which("sbatch") is None
    assert main(["submit", str(wf), "--backend", "auto", "-o", "local", "--wait",
                 "--timeout", "120"]) == 0
    local = RunManifest.load(run_folder / "local")
    assert local.backend == "local" and local.step("where").state == "COMPLETED"
    assert (run_folder / f"{local.run_id}.txt").read_text().split()[0] == "local"


# ---- docs/concepts.md: "`--no-preflight` skips it" (resume) -------------------------------------
@pytest.mark.timeout(300)
def test_resume_no_preflight_skips_sbatch_test_only_and_sbatch_itself_refuses(
        slurm_cluster, run_folder, monkeypatch, capsys):
    """a -> b -> c, b fails; c's script is then edited to ask for a partition that does not
    exist. With the preflight resume refuses before anything is queued (exit 2); with
    --no-preflight no `sbatch --test-only` runs, b is queued, sbatch refuses c, b is cancelled,
    and run.json says so in a way the next resume can work from."""
    calls = run_folder / "sbatch-calls.log"
    bin_dir = run_folder / "bin"
    bin_dir.mkdir()
    write(bin_dir / "sbatch", f'#!/bin/bash\necho "$*" >> {calls}\nexec {REAL_SBATCH} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    wf = write(run_folder / "wf.yml", f"""name: nopre
defaults: {{container: none, resources: {{time: 5, mem: 100M}}}}
steps:
  - {{name: a, command: 'true'}}
  - {{name: b, needs: [a], command: 'test -e {run_folder}/fixed'}}
  - {{name: c, needs: [b], command: 'true'}}
""")
    assert main(["submit", str(wf), "--backend", "slurm", "-o", "run", "--wait",
                 "--timeout", "120"]) == 1
    run = run_folder / "run"
    first = RunManifest.load(run)
    assert [s.state for s in first.steps] == ["COMPLETED", "FAILED", "CANCELLED"]
    script = run / first.step("c").script
    original = script.read_text()
    script.write_text(original.replace("#SBATCH --job-name",
                                       "#SBATCH --partition=nosuchpart\n#SBATCH --job-name"))

    # with the preflight: refused before anything is queued, run.json untouched
    before = (run / "run.json").read_bytes()
    calls.write_text("")
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "SLURM refuses step 'c'" in err and "nothing was queued" in err
    assert "--test-only" in calls.read_text()
    assert all("--test-only" in line for line in calls.read_text().splitlines())
    assert (run / "run.json").read_bytes() == before
    assert queued_for_run(slurm_cluster, "nopre.b", first.run_id) == [first.step("b").job_id]

    # --no-preflight: no --test-only at all; sbatch refuses c at submission
    calls.write_text("")
    capsys.readouterr()
    assert main(["resume", str(run), "--no-preflight"]) == 1
    err = capsys.readouterr().err
    assert "--test-only" not in calls.read_text()
    assert len(calls.read_text().splitlines()) >= 2             # b queued, c refused
    assert "sbatch refused step 'c'" in err and "Invalid partition name" in err
    after = RunManifest.load(run)
    b, c = after.step("b"), after.step("c")
    assert b.history == [first.step("b").job_id] and b.job_id not in (None, first.step("b").job_id)
    assert f"cancelled the jobs already submitted ({b.job_id})" in err
    assert b.state == "CANCELLED" and "sbatch refused step 'c'" in (b.reason or "")
    assert c.state == "FAILED" and "Invalid partition name" in (c.reason or "")
    assert after.step("a").job_id == first.step("a").job_id and after.step("a").state == \
        "COMPLETED"
    slurm_cluster.wait_for_jobs([b.job_id], timeout=30)        # scancel'ed: nothing left queued
    capsys.readouterr()
    assert main(["status", "--json", str(run)]) == 1
    shown = {s["name"]: s["state"] for s in json.loads(capsys.readouterr().out)["steps"]}
    assert shown == {"a": "COMPLETED", "b": "CANCELLED", "c": "FAILED"}

    # consistent enough to resume from: fix both causes, and the run completes
    script.write_text(original)
    (run_folder / "fixed").touch()
    assert main(["resume", str(run), "--wait", "--timeout", "120"]) == 0
    done = RunManifest.load(run)
    assert [s.state for s in done.steps] == ["COMPLETED"] * 3
    assert done.step("a").job_id == first.step("a").job_id
    assert done.step("b").history == [first.step("b").job_id, b.job_id]


# ---- docs/concepts.md: "Transient scheduler errors (... `Unable to contact slurm controller` ...)
#      are retried with backoff; ... so no step is queued twice." ---------------------------------
def _flaky_sbatch(folder: Path, *, test_only_too: bool) -> Path:
    """sbatch that answers UNREACHABLE on its first 2 calls (of real submissions, or of every
    call with test_only_too), counted in a file, then is the real one."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    counted = "true" if test_only_too else '[[ " $* " != *" --test-only "* ]]'
    write(bin_dir / "sbatch", f"""#!/bin/bash
if {counted}; then
  n=$(( $(cat {folder}/sbatch-count 2>/dev/null || echo 0) + 1 ))
  echo "$n" > {folder}/sbatch-count
  if (( n <= 2 )); then
    echo "{UNREACHABLE}" >&2
    exit 1
  fi
fi
exec {REAL_SBATCH} "$@"
""")
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir


RETRY_WF = """name: flaky
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - {name: one, command: 'echo "$SLURMD_NODENAME" > ran-on.txt'}
"""


def test_submit_retries_an_unreachable_controller_and_queues_the_step_once(
        slurm_cluster, run_folder, monkeypatch):
    monkeypatch.setenv("PATH", f"{_flaky_sbatch(run_folder, test_only_too=False)}:"
                               f"{os.environ['PATH']}")
    write(run_folder / "wf.yml", RETRY_WF)
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait",
                 "--timeout", "120"]) == 0
    assert (run_folder / "sbatch-count").read_text().strip() == "3"    # 2 refused, then queued
    manifest = RunManifest.load(run_folder / "run")
    step = manifest.step("one")
    assert step.state == "COMPLETED" and step.nodes in slurm_cluster.nodes
    assert (run_folder / "ran-on.txt").read_text().strip() == step.nodes
    assert queued_for_run(slurm_cluster, "flaky.one", manifest.run_id) == [step.job_id]


def test_submit_retries_an_unreachable_controller_during_the_preflight_too(
        slurm_cluster, run_folder, monkeypatch, capsys):
    """The controller is unreachable for the first two sbatch calls of `submit`, which are
    the preflight's. A transient error is not SLURM refusing the step."""
    monkeypatch.setenv("PATH", f"{_flaky_sbatch(run_folder, test_only_too=True)}:"
                               f"{os.environ['PATH']}")
    write(run_folder / "wf.yml", RETRY_WF)
    rc = main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait",
               "--timeout", "120"])
    assert "SLURM refuses step 'one'" not in capsys.readouterr().err
    assert rc == 0
    manifest = RunManifest.load(run_folder / "run")
    assert queued_for_run(slurm_cluster, "flaky.one", manifest.run_id) == \
        [manifest.step("one").job_id]


# ---- docs/concepts.md: "`itwinai-hpc report RUN` shows ... GPUs and energy, from `sacct` where
#      slurmdbd runs" -----------------------------------------------------------------------------
def test_report_energy_column_shows_what_sacct_has_and_never_a_made_up_number(
        slurm_cluster_dbd, run_folder, monkeypatch, capsys):
    """The emulated nodes have no energy plugin (AcctGatherEnergyType is none: sacct's
    ConsumedEnergyRaw is empty), so the ENERGY column must be there and show '-', JSON null;
    sacct lines that do carry energy are shown in joules."""
    slurm_cluster_dbd.activate(monkeypatch)
    write(run_folder / "wf.yml", """name: energy
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - {name: burn, command: python3 -c, args: ["sum(range(3_000_000))"],
     resources: {gpus-per-node: 1}}
""")
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait",
                 "--timeout", "120"]) == 0
    manifest = RunManifest.load(run_folder / "run")
    job_id = manifest.step("burn").job_id
    raw = slurm_cluster_dbd.run("sacct", "-n", "-P", "-X", "-j", job_id, "-o",
                                "JobIDRaw,ConsumedEnergyRaw").split()
    assert raw and all(line.split("|")[1] in ("", "0") for line in raw), raw
    capsys.readouterr()
    assert main(["report", "run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["note"] is None                                    # slurmdbd: full accounting
    (job,) = doc["jobs"]
    assert job["job_id"] == job_id and job["gpus"] == 1 and job["energy_j"] is None
    assert main(["report", "run"]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.split()[-1] == "ENERGY" and row.split()[-1] == "-"
    assert row.split()[-2] == "1"                                 # GPUS, from AllocTRES

    # where the site measures energy, sacct's joules are what the column shows
    measured = raw[0].split("|")[0] + "|" + raw[0].split("|")[0] + \
        "|COMPLETED|00:00:02|00:05:00|00:01.500|1||100M|cpu=1,gres/gpu=1,mem=100M,node=1|5400\n"
    rows = usage_rows(manifest, parse_usage(measured))
    assert rows[0].energy_j == 5400
    assert format_report(manifest, rows, None).splitlines()[2].split()[-2:] == ["5400", "J"]
