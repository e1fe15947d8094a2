"""The test cluster has what real sites have (tests/slurm/README.md): core binding that shows
SLURM 22.05's srun losing --cpus-per-task, GPUs as GRES, and <node>i names on other addresses.
If these fail, the tests of the launch lines (tests/test_launch_on_slurm.py) prove nothing."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from slurm_nodes import usable_nodes

pytestmark = pytest.mark.slurm

# Each task prints "NODE TASK_ID CPU,CPU..." (the CPUs it may run on).
AFFINITY = """echo "$SLURMD_NODENAME $SLURM_PROCID $(python3 -c 'import os
print(*sorted(os.sched_getaffinity(0)), sep=",")')"
"""


def run_job(cluster, folder: Path, options: list[str], body: str) -> str:
    """sbatch a script (options as #SBATCH lines) whose srun tasks run folder/affinity.sh;
    wait for it (the cluster may be busy with other sessions' jobs); return its output."""
    (folder / "affinity.sh").write_text(AFFINITY)
    script = folder / "job.sh"
    script.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {o}\n" for o in options)
                      + f"#SBATCH --output={folder}/job.out\nAFFINITY={folder}/affinity.sh\n"
                      + body)
    job = cluster.sbatch(str(script))
    cluster.wait_for_jobs([job], timeout=300)
    assert cluster.job_state(job) == "COMPLETED", (folder / "job.out").read_text()
    return (folder / "job.out").read_text()


def cpus_by_task(output: str) -> dict[tuple[str, str], str]:
    """{(node, task id): "0,1"} from the AFFINITY lines of a job's output."""
    rows = [line.split() for line in output.splitlines() if line.startswith("node")]
    return {(node, task): cpus for node, task, cpus in rows}


def test_the_tasks_on_a_node_are_bound_to_different_cores(slurm_cluster, tmp_path: Path):
    out = run_job(slurm_cluster, tmp_path, ["--nodes=2", "--ntasks-per-node=2"],
                  'srun bash "$AFFINITY"\n')
    assert cpus_by_task(out) == {("node1", "0"): "0", ("node1", "1"): "1",
                                 ("node2", "2"): "0", ("node2", "3"): "1"}


def test_srun_inside_a_job_forgets_cpus_per_task_unless_it_is_restated(slurm_cluster,
                                                                       tmp_path: Path):
    """SLURM 22.05-23.02 as on real sites: one core per task, unless srun is told again."""
    out = run_job(slurm_cluster, tmp_path,
                  ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2"],
                  'srun bash "$AFFINITY"\necho restated\n'
                  'SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK srun bash "$AFFINITY"\n')
    plain, restated = out.split("restated")
    assert cpus_by_task(plain) == {("node1", "0"): "0", ("node2", "1"): "0"}
    assert cpus_by_task(restated) == {("node1", "0"): "0,1", ("node2", "1"): "0,1"}


def test_every_node_has_4_gpus_for_both_request_forms(slurm_cluster):
    assert slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N %G").split() == \
        ["node1", "gpu:4", "node2", "gpu:4"]

    def test_only(flag: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sbatch", "--test-only", "-N2", flag, "--wrap", "true"],
                              capture_output=True, text=True, env=slurm_cluster.env())

    for flag in ("--gpus-per-node=4", "--gres=gpu:4"):
        p = test_only(flag)
        assert p.returncode == 0 and "to start at" in p.stderr, p.stderr
    p = test_only("--gpus-per-node=5")
    assert p.returncode != 0 and "Requested node configuration is not available" in p.stderr


def test_the_nodes_fast_network_names_resolve_to_addresses_of_their_own(slurm_cluster):
    assert socket.gethostbyname("node1") == socket.gethostbyname("node2") == "127.0.0.1"
    assert socket.gethostbyname("node1i") == "127.0.2.1"
    assert socket.gethostbyname("node2i") == "127.0.2.2"


def test_the_start_script_counts_cores_whatever_omp_num_threads_says(slurm_cluster):
    """GNU nproc reports OMP_NUM_THREADS instead of the cores: a developer's
    `export OMP_NUM_THREADS=1` made the start script refuse 2 bound CPUs per node."""
    script = Path(__file__).parent / "start-slurm.sh"
    env = {**slurm_cluster.env(), "SLURM_CI_DIR": slurm_cluster.directory,
           **slurm_cluster.env_overrides, "OMP_NUM_THREADS": "1", "OMP_THREAD_LIMIT": "1"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "already running" in done.stderr, done.stderr


def node_state(cluster, node: str) -> str:
    return cluster.run("sinfo", "-h", "-n", node, "-N", "-o", "%T").strip()


def test_a_node_whose_job_is_ending_does_not_make_a_second_start_restart_the_cluster(
        slurm_cluster):
    """A cancelled job leaves its node "completing" until KillWait (5 s here). The start script,
    which every pytest worker and tests/run.sh runs against the shared cluster, took that for a
    broken node and restarted the cluster, killing every other test's jobs (seen in a full run:
    a requeue test's job CANCELLED, a 2-node job pending until its timeout)."""
    script = Path(__file__).parent / "start-slurm.sh"
    env = {**slurm_cluster.env(), "SLURM_CI_DIR": slurm_cluster.directory,
           **slurm_cluster.env_overrides}
    controller = Path(slurm_cluster.directory, "slurmctld.pid").read_text().strip()
    for _ in range(3):   # until the node was "completing" before and after the start script
        # alone on its node, so the node's state is this job's; it ignores SIGTERM (children
        # inherit that), so only the SIGKILL after KillWait ends it
        job = slurm_cluster.sbatch("-N1", "--exclusive", "--output=/dev/null", "--wrap",
                                   "trap '' TERM; sleep 120")
        slurm_cluster.wait_for_state(job, ["RUNNING"], timeout=120)
        node = slurm_cluster.job_fields(job)["NodeList"]
        slurm_cluster.run("scancel", job)
        deadline = time.monotonic() + 10
        while node_state(slurm_cluster, node) != "completing" and time.monotonic() < deadline:
            time.sleep(0.05)
        before = node_state(slurm_cluster, node)
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                              timeout=600)
        nodes = usable_nodes(slurm_cluster.conf)
        after = node_state(slurm_cluster, node)
        assert done.returncode == 0 and "already running" in done.stderr, done.stderr
        assert nodes == slurm_cluster.nodes, "the pytest fixture would call the cluster broken"
        assert Path(slurm_cluster.directory, "slurmctld.pid").read_text().strip() == controller
        slurm_cluster.wait_for_jobs([job], timeout=60)
        if before == after == "completing":
            return
    pytest.fail(f"could not hold a node in 'completing' across the start script ({before}, "
                f"{after})")
