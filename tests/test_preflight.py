"""A preflight that queues nothing bad, and submission that survives a scheduler that times out
after queuing: on the real test cluster (nodes with 2 CPUs and 4 GPUs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from itwinai_hpc.cli import main
from itwinai_hpc.run.manifest import RunManifest

CHAIN = """name: pre
defaults: {container: none, resources: {time: "00:05:00"}}
steps:
  - {name: a, command: "true"}
  - {name: b, needs: [a], command: "true"}
"""
# b asks for more GPUs than a node has
REFUSED = CHAIN[:-2] + ', resources: {gpus-per-node: 5}}\n'


def jobs_named(cluster, name: str, run_folder: Path) -> list[str]:
    """Ids of the jobs named `name` whose comment tags a run in `run_folder` (others' runs on
    the shared cluster share the name)."""
    out = cluster.run("squeue", "-h", "-t", "all", "-n", name, "-o", "%i|%k")
    ids = [m.run_id for m in (RunManifest.load(p.parent) for p in run_folder.glob("*/run.json"))]
    return [line.split("|")[0] for line in out.split()
            if line.split("|")[-1] in {f"itwinai-hpc:{i}" for i in ids} or not ids]


def test_a_refused_step_queues_nothing_and_names_the_step(slurm_cluster, run_folder, capsys):
    (run_folder / "wf.yml").write_text(REFUSED)
    before = set(slurm_cluster.run("squeue", "-h", "-t", "all", "-n", "pre.a", "-o", "%i").split())
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run"]) == 2
    err = capsys.readouterr().err
    assert "SLURM refuses step 'b' (02-b.sbatch)" in err and "nothing was queued" in err
    assert "Requested node configuration is not available" in err       # SLURM's own words
    assert not (run_folder / "run").exists()                            # nothing written
    after = set(slurm_cluster.run("squeue", "-h", "-t", "all", "-n", "pre.a", "-o", "%i").split())
    assert after <= before                                              # a was not queued


def test_an_accepted_chain_shows_each_steps_estimated_start(slurm_cluster, run_folder, capsys):
    (run_folder / "wf.yml").write_text(CHAIN)
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait"]) == 0
    err = capsys.readouterr().err
    assert "preflight a: " in err and "preflight b: " in err and "to start at" in err


def test_submit_sh_preflight_refuses_by_hand_too(slurm_cluster, run_folder):
    (run_folder / "wf.yml").write_text(REFUSED)
    assert main(["render", "wf.yml", "-o", "run"]) == 0
    p = subprocess.run(["bash", "run/submit.sh", "--preflight"], capture_output=True, text=True,
                       env=slurm_cluster.env(), timeout=60)
    assert p.returncode == 2 and "SLURM refuses 02-b.sbatch: nothing queued" in p.stderr
    assert jobs_named(slurm_cluster, "pre.a", run_folder) == []
    assert not (run_folder / "run" / "jobs.tsv").exists()


def test_sbatch_timing_out_after_queuing_leaves_exactly_one_job(slurm_cluster, run_folder,
                                                                 monkeypatch):
    """The controller queued the job, but sbatch's answer was lost (Socket timed out): the
    retry finds the job by its name and comment instead of queuing it a second time."""
    real = subprocess.run(["bash", "-c", "command -v sbatch"], capture_output=True,
                          text=True).stdout.strip()
    bin_dir = run_folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(f"""#!/bin/bash
# The first real submission of step a is queued, then reported as a timeout.
if [[ " $* " != *" --test-only "* && " $* " == *01-a.sbatch* && ! -e {run_folder}/timed-out ]]; then
  {real} "$@" > /dev/null
  touch {run_folder}/timed-out
  echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
  exit 1
fi
exec {real} "$@"
""")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (run_folder / "wf.yml").write_text(CHAIN)
    assert main(["submit", "wf.yml", "--backend", "slurm", "-o", "run", "--wait"]) == 0
    assert (run_folder / "timed-out").exists()
    assert len(jobs_named(slurm_cluster, "pre.a", run_folder)) == 1
    manifest = RunManifest.load(Path(run_folder / "run"))
    assert [s.state for s in manifest.steps] == ["COMPLETED", "COMPLETED"]
