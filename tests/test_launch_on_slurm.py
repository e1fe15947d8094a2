"""Launch lines that hold on real clusters (issue 10), proven on the RENDERED scripts.

On the real test cluster (task/affinity core binding, GPUs as GRES, <node>i host names; see
tests/slurm/README.md): each task gets its cpus-per-task cores, a GPU variant of the MNIST
training workflow is scheduled in both GPU forms, `launcher: srun` runs DDP with gloo, and a
torchrun rendezvous over rewritten host names completes. Without a cluster: the launch lines
survive a node list of 5,000 names under `set -euo pipefail`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

ROOT = Path(__file__).resolve().parent.parent
MNIST_TRAIN = ROOT / "use-cases/mnist/training-workflow.yml"
BINDIR = Path(sys.executable).parent            # the venv's python, torchrun, itwinai-hpc

# Written by every task/rank: where it ran and what it got (no torch import: fast).
PROBE = """
import json, os, sys
rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURMD_NODENAME",
        "CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "MASTER_ADDR")
record = {"cpus": sorted(os.sched_getaffinity(0)), **{k: os.environ.get(k) for k in keys}}
path = os.path.join(sys.argv[1], f"rank-{rank}.json")
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)
"""

# torch.distributed from env:// (what torchrun and the srun launcher must provide), gloo.
DDP_PROBE = """
import json, os, sys
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([dist.get_rank()])
dist.all_reduce(total)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
        "SLURMD_NODENAME")
record = {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": int(total.item()),
          **{k: os.environ.get(k) for k in keys}}
dist.destroy_process_group()
path = os.path.join(sys.argv[1], f"rank-{record['rank']}.json")
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def records(folder: Path) -> list[dict]:
    """The probes' records, by rank."""
    found = sorted(folder.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text()) for p in found]


def submit_and_wait(workflow: Path) -> RunManifest:
    """`itwinai-hpc submit WORKFLOW --backend slurm --wait`; the step's log in the message if
    it fails."""
    rc = main(["submit", str(workflow), "--backend", "slurm", "--wait"])
    manifest = RunManifest.load(find_run(None))
    logs = "\n".join(f"--- {s.name}\n" + Path(s.log).read_text()[-3000:]
                     for s in manifest.steps if s.log and Path(s.log).exists())
    assert rc == 0, logs
    return manifest


def run_probe_step(folder: Path, probe: str, launcher: str, resources: str,
                   launch: str | None = None) -> list[dict]:
    """Submit a one-step workflow whose tasks run `probe` (a Python script that writes
    folder/out/rank-N.json), wait for it, return the records. No container; the venv first on
    PATH; a 2-minute limit, so a rendezvous that never forms fails the test, not hangs it."""
    script = write(folder / "probe.py", probe)
    out = folder / "out"
    out.mkdir()
    wf = write(folder / "wf.yml", f"""
name: launch
defaults:
  container: none
  resources: {{time: 2, mem: 500M}}
  env: {{PATH: "{BINDIR}:/usr/bin:/bin"}}
steps:
  - name: probe
    launcher: {launcher}
    command: {sys.executable} {script} {out}
    resources: {{{resources}}}
""" + (f"    launch: {{{launch}}}\n" if launch else ""))
    submit_and_wait(wf)
    return records(out)


# ---- bug 1: srun inside the batch job must restate cpus-per-task ------------------------------

@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_every_task_and_rank_is_bound_to_its_cpus_per_task_cores(slurm_cluster, run_folder,
                                                                 launcher):
    ranks = run_probe_step(run_folder, PROBE, launcher, "nodes: 2, cpus-per-task: 2")
    assert [r.get("RANK") or r["SLURM_PROCID"] for r in ranks] == ["0", "1"]
    assert {r["SLURMD_NODENAME"] for r in ranks} == {"node1", "node2"}
    # SLURM 22.05-23.02 would bind each task (a torchrun agent with all its workers) to 1 core
    assert [len(r["cpus"]) for r in ranks] == [2, 2], ranks


@pytest.mark.slurm
def test_two_tasks_on_a_node_are_bound_to_different_cores(slurm_cluster, run_folder):
    ranks = run_probe_step(run_folder, PROBE, "srun",
                           "nodes: 2, ntasks-per-node: 2, cpus-per-task: 1")
    assert len(ranks) == 4
    for node in ("node1", "node2"):
        cpus = [r["cpus"] for r in ranks if r["SLURMD_NODENAME"] == node]
        assert len(cpus) == 2 and all(len(c) == 1 for c in cpus) and cpus[0] != cpus[1], ranks


# ---- GPU variants: accepted and scheduled by the real sbatch -----------------------------------

@pytest.mark.slurm
@pytest.mark.parametrize("form, line", [("gpus-per-node", "#SBATCH --gpus-per-node=2"),
                                        ("gres", "#SBATCH --gres=gpu:2")])
def test_a_gpu_variant_of_the_mnist_training_is_accepted_and_scheduled_by_sbatch(
        slurm_cluster, run_folder, form, line):
    probe = write(run_folder / "probe.py", PROBE)
    out = run_folder / "out"
    out.mkdir()
    sets = ["steps.train.resources.gpus-per-node=2", f"steps.train.resources.gpu-flag={form}",
            "steps.train.resources.nodes=2", "defaults.container=none",
            # the training replaced by the probe: this is about the job, not about MNIST
            f"steps.train.command={sys.executable} {probe}", f"steps.train.args=[{out}]"]
    folder = run_folder / "run"
    assert main(["render", str(MNIST_TRAIN), "-o", str(folder),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    script = (folder / "02-train.sbatch").read_text()
    assert line in script and script.count("#SBATCH --g") == 1, script
    env = {**slurm_cluster.env(), "PATH": f"{BINDIR}{os.pathsep}{os.environ['PATH']}"}

    test_only = subprocess.run(["sbatch", "--test-only", "02-train.sbatch"], cwd=folder,
                               capture_output=True, text=True, env=env)
    assert test_only.returncode == 0 and "to start at" in test_only.stderr, test_only.stderr

    job = subprocess.run(["sbatch", "--parsable", "02-train.sbatch"], cwd=folder,
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    slurm_cluster.wait_for_jobs([job], timeout=180)   # queued behind other workers' jobs
    fields = slurm_cluster.job_fields(job)
    log = next((folder / "logs").glob(f"*-{job}.out")).read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert fields["TresPerNode"] == "gres:gpu:2" and fields["NumNodes"] == "2"
    ranks = records(out)
    assert len(ranks) == 4                             # nproc-per-node follows the GPUs
    assert {r["SLURMD_NODENAME"] for r in ranks} == {"node1", "node2"}
    # SLURM gave each node 2 of its 4 GPUs (which 2 depends on what other jobs hold), and
    # every rank of a node sees that node's pair
    by_node: dict[str, set[str]] = {}
    for r in ranks:
        by_node.setdefault(r["SLURMD_NODENAME"], set()).add(r["CUDA_VISIBLE_DEVICES"])
    assert all(len(seen) == 1 for seen in by_node.values()), by_node
    pairs = [next(iter(seen)).split(",") for seen in by_node.values()]
    assert all(len(p) == 2 and set(p) <= {"0", "1", "2", "3"} for p in pairs), by_node


# ---- bug 6: launcher srun is a DDP launcher ------------------------------------------------------

@pytest.mark.slurm
def test_srun_launches_ddp_with_gloo_on_two_nodes_times_two_tasks(slurm_cluster, run_folder):
    ranks = run_probe_step(run_folder, DDP_PROBE, "srun", "nodes: 2, ntasks-per-node: 2")
    assert [r["RANK"] for r in ranks] == ["0", "1", "2", "3"]
    assert [r["RANK"] for r in ranks] == [r["SLURM_PROCID"] for r in ranks]
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and {r["world"] for r in ranks} == {4}
    for node in ("node1", "node2"):
        assert sorted(r["LOCAL_RANK"] for r in ranks if r["SLURMD_NODENAME"] == node) == ["0", "1"]
    assert {r["sum"] for r in ranks} == {0 + 1 + 2 + 3}
    assert len({(r["MASTER_ADDR"], r["MASTER_PORT"]) for r in ranks}) == 1


# ---- the rendezvous hook: torchrun over other host names -----------------------------------------

@pytest.mark.slow
@pytest.mark.slurm
def test_torchrun_rendezvous_over_rewritten_host_names_completes_on_two_nodes(slurm_cluster,
                                                                             run_folder):
    ranks = run_probe_step(run_folder, DDP_PROBE, "torchrun", "nodes: 2",
                           launch='rdzv-host: "{node}i"')
    assert [r["rank"] for r in ranks] == [0, 1] and {r["sum"] for r in ranks} == {1}
    assert {r["SLURMD_NODENAME"] for r in ranks} == {"node1", "node2"}
    # the workers' address is the agent's --local-addr: the rewritten name, not node1/node2
    masters = {r["MASTER_ADDR"] for r in ranks}
    assert len(masters) == 1 and masters <= {"node1i", "node2i"}, ranks


# ---- bug 3: 5,000 node names under set -euo pipefail ---------------------------------------------

FIRST, LAST = "n00001", "n05000"
STUBS = {
    # one write per name, as a slow writer would: a reader that stops after the first line
    # leaves the rest of the names to a closed pipe (SIGPIPE, 141 under pipefail)
    "scontrol": """#!/bin/bash
if [[ $1 == show && $2 == hostnames ]]; then
  for ((i = 1; i <= 5000; i++)); do printf 'n%05d\\n' "$i"; done
fi
""",
    # runs the `bash -c CODE` it is given as the first and the last node of the list would
    "srun": f"""#!/bin/bash
printf '%s\\n' "$@" >"$STUB_LOG/srun.args"
while (($#)) && [[ $1 != bash || ${{2:-}} != -c ]]; do shift; done
[[ $# -ge 3 ]] || {{ echo "srun stub: no 'bash -c CODE' among its arguments" >&2; exit 99; }}
id=0
for node in {FIRST} {LAST}; do
  SLURMD_NODENAME=$node SLURM_NODEID=$id SLURM_PROCID=$id SLURM_LOCALID=0 bash -c "$3" || exit
  id=$((id + 1))
done
""",
    "torchrun": """#!/bin/bash
printf '%s\\n' "$@" >"$STUB_LOG/torchrun-$SLURMD_NODENAME.args"
""",
    # the step's command, where the launcher execs it directly (srun)
    "launched": """#!/bin/bash
echo "$MASTER_ADDR" >"$STUB_LOG/launched-$SLURMD_NODENAME"
""",
}


def stub_cluster(folder: Path) -> dict[str, str]:
    """The stubs in folder/bin and the environment of a 5,000-node batch job that uses them."""
    bindir = folder / "bin"
    bindir.mkdir()
    for name, text in STUBS.items():
        write(bindir / name, text).chmod(0o755)
    log = folder / "log"
    log.mkdir()
    return {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(folder), "STUB_LOG": str(log),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[00001-05000]",
            "SLURM_NNODES": "5000", "SLURM_JOB_NUM_NODES": "5000", "SLURM_NTASKS": "5000",
            "SLURM_NTASKS_PER_NODE": "1", "SLURM_SUBMIT_DIR": str(folder)}


def torchrun_args(path: Path) -> dict[str, str]:
    """--name=value and --name value arguments of a recorded torchrun call."""
    words, args = path.read_text().splitlines(), {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            args[name.replace("_", "-")] = value if eq else (words[i + 1] if i + 1 < len(words)
                                                              else "")
    return args


def render_big(folder: Path, launcher: str) -> Path:
    """The sbatch script of a 2-node step of that launcher, rendered (run folder: folder/run)."""
    wf = write(folder / "big.yml", f"""
name: big
defaults: {{container: none}}
steps:
  - {{name: step, launcher: {launcher}, command: launched, resources: {{nodes: 2}}}}
""")
    assert main(["render", str(wf), "-o", str(folder / "run")]) == 0
    return folder / "run" / "01-step.sbatch"


def run_big(script: Path, env: dict[str, str], times: int) -> list[int]:
    """Exit statuses of `times` runs of the batch script under the stubs."""
    statuses = []
    for _ in range(times):
        p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                           timeout=30)
        statuses.append(p.returncode)
        assert p.returncode in (0, 141), p.stderr
    return statuses


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_the_launch_survives_5000_node_names_under_pipefail(tmp_path, launcher):
    script = render_big(tmp_path, launcher)
    assert "set -euo pipefail" in script.read_text()
    env = stub_cluster(tmp_path)
    statuses = run_big(script, env, times=200)
    assert statuses.count(141) == 0, f"{statuses.count(141)} of 200 runs died of SIGPIPE"
    assert set(statuses) == {0}
    log = tmp_path / "log"
    if launcher == "torchrun":
        first, last = (torchrun_args(log / f"torchrun-{n}.args") for n in (FIRST, LAST))
        for args in (first, last):
            assert args["--rdzv-endpoint"].rsplit(":", 1)[0] == FIRST     # HEAD = first name
            assert args["--nnodes"] == "5000"
        assert first["--rdzv-conf"] == "is_host=1" and last["--rdzv-conf"] == "is_host=0"
    else:
        for node in (FIRST, LAST):
            assert (log / f"launched-{node}").read_text().strip() == FIRST  # MASTER_ADDR


def test_the_5000_name_harness_catches_a_head_that_closes_the_pipe_early(tmp_path):
    """The harness above is sensitive: `| head -n 1` (the launch line before issue 10) dies."""
    script = render_big(tmp_path, "torchrun")
    lines = script.read_text().splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("HEAD=$(")]
    assert len(at) == 1, "the rendered torchrun launch no longer sets HEAD=$(...)"
    lines[at[0]] = 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    write(script, "\n".join(lines) + "\n")
    statuses = run_big(script, stub_cluster(tmp_path), times=20)
    assert statuses.count(141) >= 10, statuses
