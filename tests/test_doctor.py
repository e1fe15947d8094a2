"""`itwinai-hpc doctor`: a failing check on the local backend (real torchrun, gloo, MLflow file
store), its smoke job planned as the training step is, bad input, and the verdicts on NCCL logs
that only GPU clusters write (NCCL INFO lines as NCCL 2.18-2.21 prints them). Passing runs: in
the container stand-in and on the 2-node SLURM cluster (test_doctor_jobs.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.commands.doctor_checks import Expected, check_ranks, expand_hostlist
from itwinai_hpc.commands.doctor_network import bus_bandwidth, check_allreduce, transport

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "use-cases" / "mnist" / "training-workflow.yml"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cwd, with the venv's python3 first on PATH (the job runs `python3 -m ...`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ITWINAI_HPC_RUNS", raising=False)
    return tmp_path


def doctor(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["doctor", "--backend", "local", "--json", *args])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.slow
def test_a_failing_check_exits_1_and_says_what_to_do(here, capsys):
    # Asking for a GPU on this CPU machine: the rank sees none (torch's own answer, no stub);
    # an MLflow store under a regular file cannot be written, not even by root. Two nodes on
    # the local backend are this machine once, and said so.
    (here / "blocker").write_text("a file, not a folder\n")
    rc, report = doctor(capsys, "--gpus-per-node", "1", "--allreduce-mb", "1", "--nodes", "2",
                        "--data", str(here / "nowhere"),
                        "--set", f"defaults.env.MLFLOW_TRACKING_URI=file:{here}/blocker/mlruns")
    checks = by_name(report)
    assert rc == 1 and report["exit_code"] == 1 and report["failed"] == 2
    assert checks["gpus"]["status"] == "fail"
    assert "rank 0 on" in checks["gpus"]["summary"] and "sees 0 GPU(s)" in \
        checks["gpus"]["summary"] and "asked 1 per node" in checks["gpus"]["summary"]
    assert any("vendor" in a for a in checks["gpus"]["advice"])
    assert checks["mlflow"]["status"] == "fail" and "blocker" in checks["mlflow"]["summary"]
    assert any("writable from the compute nodes" in a for a in checks["mlflow"]["advice"])
    assert checks["backend"]["status"] == "warn" and "asks for 2 nodes; the local backend " \
        "runs it on this machine alone" in checks["backend"]["summary"]
    assert checks["ranks"]["status"] == "pass" and "1 of 1 ranks" in checks["ranks"]["summary"]
    assert checks["data"]["status"] == "warn" and "does not exist yet" in \
        checks["data"]["summary"]
    # the text report: one line per check, advice under it
    capsys.readouterr()
    from itwinai_hpc.commands.doctor import format_report
    text = format_report(report)
    assert "  FAIL  gpus" in text and "advice: " in text and "2 failed" in text


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes: 0 is not a whole number of at least 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node: -1 is not a whole number of at least 0"),
    (["--allreduce-mb", "0"], "--allreduce-mb: 0 is not a number above 0"),
    (["--time", "soon"], "--time: 'soon' is not a SLURM time"),
    ([str(MNIST), "--step", "trian"], "--step trian: the workflow has no such step"),
    (["missing.yml"], "missing.yml: file not found"),
    (["--set", "steps.train.resources.nodes=many"], "nodes"),
])
def test_bad_input_exits_2_and_queues_nothing(here, capsys, args, message):
    rc = main(["doctor", "--backend", "local", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (here / "runs").exists()


def test_a_step_started_by_srun_is_refused_with_its_field(here, capsys):
    wf = here / "wf.yml"
    wf.write_text("name: s\nsteps:\n  - {name: train, launcher: srun, command: x}\n")
    assert main(["doctor", str(wf), "--backend", "local"]) == 2
    assert "steps.train.launcher" in capsys.readouterr().err


def test_the_smoke_job_gets_the_training_steps_resources_container_and_launch_lines(here):
    # Rendered through the same path: its #SBATCH lines, environment, container and torchrun
    # lines are the training step's; only the command, the time limit and what belongs to a
    # chain (needs, requeue) differ.
    from types import SimpleNamespace

    from itwinai_hpc.commands.doctor_plan import render_doctor
    from itwinai_hpc.render.folder import render_workflow
    sets = ["steps.train.resources.nodes=2", "steps.train.resources.gpus-per-node=4",
            "vars.image=/images/x.sif"]
    real = render_workflow(MNIST, sets, run_id="RUNID", run_dir=here / "r1")
    args = SimpleNamespace(workflow=str(MNIST), workflow_file=None, overrides=sets,
                           step=None, nodes=None, gpus_per_node=None, data=None,
                           allreduce_mb=64.0, time="00:05:00", output=str(here / "r1"),
                           runs_dir=None, templates=None, profile=None)
    dr = render_doctor(args, "slurm")
    train = next(j for j in real.plan if j.name == "train")
    job = dr.run.plan[0]
    assert (dr.step, job.name, job.resources.nodes, job.resources.gpus_per_node) == \
        ("train", "train", 2, 4)
    assert job.container == train.container and job.container.gpu == "nvidia"
    assert job.env == train.env and job.launch == train.launch
    assert job.args == ("--allreduce-mb", "64.0", "--data", str(here / "data/mnist/shards"))
    assert dr.data == str(here / "data/mnist/shards")

    def lines(text: str, run_id: str) -> list[str]:
        text = text.replace(run_id, "RUNID").replace("mnist-training-doctor", "mnist-training")
        return [line for line in text.splitlines()
                if not line.startswith("#") or line.startswith("#SBATCH")]
    ours = lines(dr.run.files[job.script], dr.run.run_id)
    theirs = lines(real.files[train.script], "RUNID")
    command = ("    --no-python python3 -m itwinai_hpc.ml.doctor --allreduce-mb 64.0 --data "
               f"{here}/data/mnist/shards")
    launch = ('srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$(declare -f '
              'torchrun_agent); torchrun_agent"')
    assert [line for line in ours if line not in theirs] == \
        ["#SBATCH --time=00:05:00", command, launch]
    gone = {"#SBATCH --time=00:30:00", "#SBATCH --signal=B:USR2@300", "#SBATCH --requeue",
            "#SBATCH --open-mode=append"}
    assert [line for line in ours if line.startswith("#SBATCH")] == \
        [line if line not in gone else "#SBATCH --time=00:05:00"
         for line in theirs if line.startswith("#SBATCH") and line not in gone - {
             "#SBATCH --time=00:30:00"}]
    assert any("exec apptainer exec --nv" in line and "/images/x.sif" in line
               for line in ours)


# --- verdicts on what GPU clusters write -----------------------------------------------------

IB_LOG = """\
jwb01:812:813 [0] NCCL INFO NET/Plugin: Using internal network plugin.
jwb01:812:813 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.13.0.1<0>
jwb01:812:813 [0] NCCL INFO Using network IB
jwb01:812:813 [0] NCCL INFO Channel 00/0 : 0[0] -> 4[0] [send] via NET/IB/0/GDRDMA
jwb01:812:813 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via P2P/IPC
"""
SOCKET_NO_VERBS_LOG = """\
vglogin:5511:5590 [0] NCCL INFO NET/Plugin: No plugin found (libnccl-net.so)
vglogin:5511:5590 [0] NCCL INFO Failed to open libibverbs.so[.1]
vglogin:5511:5590 [0] NCCL INFO NET/Socket : Using [0]ib0:10.20.0.5<0>
vglogin:5511:5590 [0] NCCL INFO Using network Socket
vglogin:5511:5590 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [receive] via NET/Socket/0
"""
OFI_LOG = """\
nid001:77:90 [0] NCCL INFO NET/OFI Initializing aws-ofi-nccl 1.9.2-aws
nid001:77:90 [0] NCCL INFO NET/OFI Selected Provider is cxi (found 4 nics)
nid001:77:90 [0] NCCL INFO Using network AWS Libfabric
nid001:77:90 [0] NCCL INFO Channel 00/0 : 0[0] -> 4[0] [send] via NET/AWS Libfabric/0/GDRDMA
"""
SLINGSHOT_NO_PLUGIN_LOG = """\
nid002:12:30 [0] NCCL INFO NET/Plugin: Plugin load returned 2 : libnccl-net.so: cannot open \
shared object file: No such file or directory : when loading libnccl-net.so
nid002:12:30 [0] NCCL INFO NET/IB : No device found.
nid002:12:30 [0] NCCL INFO NET/Socket : Using [0]hsn0:10.100.0.2<0> [1]hsn1:10.100.0.3<0>
nid002:12:30 [0] NCCL INFO Using network Socket
"""


def facts(nodes: int, per_node: int, backend: str = "nccl", seconds: float = 0.02,
          env: dict | None = None) -> dict:
    ranks = [{"rank": n * per_node + i, "local_rank": i, "node": f"nid{n:03d}",
              "hostname": f"nid{n:03d}", "cpus": 8, "joined_s": 1.0, "env": env or {},
              "gpus": {"asked": per_node, "seen": per_node, "own": True, "names": ["H100"],
                       "build": "CUDA 12.4"}}
             for n in range(nodes) for i in range(per_node)]
    world = nodes * per_node
    return {"ranks": ranks, "nodelist": f"nid[000-{nodes - 1:03d}]", "world_size": world,
            "versions": {"torch": "2.5.1", "nccl": "2.21.5"}, "backend": "slurm",
            "allreduce": {"backend": backend, "bytes": 256 * 2**20, "iterations": 5,
                          "world_size": world, "seconds": seconds, "correct": True,
                          "error": None}}


def want(nodes: int, per_node: int) -> Expected:
    return Expected(nodes=nodes, processes_per_node=per_node, gpus_per_node=per_node)


def test_bus_bandwidth_is_the_nccl_tests_formula():
    alg, bus = bus_bandwidth(10**9, 0.1, 8)
    assert alg == pytest.approx(10.0) and bus == pytest.approx(10.0 * 2 * 7 / 8)
    assert bus_bandwidth(10**9, 1.0, 2) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("log, net, status, advice", [
    (IB_LOG, "IB", "pass", None),
    (OFI_LOG, "OFI", "pass", None),
    (SOCKET_NO_VERBS_LOG, "Socket", "warn", "the image lacks libibverbs"),
    (SLINGSHOT_NO_PLUGIN_LOG, "Socket", "warn", "load nccl-plugin"),
])
def test_the_transport_between_nodes_is_read_from_ncclss_log(log, net, status, advice):
    check = check_allreduce(facts(2, 4), want(2, 4), [log])
    assert check.details["transport"] == net and check.status == status, check
    assert "bus bandwidth" in check.summary and f"NET/{net}" in check.summary
    if advice:
        assert any(advice in a for a in check.advice), check.advice
    else:
        assert check.advice == []
    assert check.details["busbw_gb_s"] == pytest.approx(
        256 * 2**20 / 0.02 / 1e9 * 2 * 7 / 8)


def test_sockets_forced_by_the_environment_are_named():
    t = transport(["x NCCL INFO NCCL_IB_DISABLE set by environment to 1.\n"
                   "x NCCL INFO Using network Socket\n"], {"NCCL_NET": "Socket"})
    assert t.net == "Socket" and t.causes == ["disabled", "forced"]
    check = check_allreduce(facts(2, 1, env={"NCCL_IB_DISABLE": "1"}), want(2, 1),
                            ["x NCCL INFO Using network Socket\n"])
    assert check.status == "warn" and any("NCCL_IB_DISABLE=1" in a for a in check.advice)


def test_inside_one_node_sockets_do_not_matter_and_a_failed_all_reduce_fails():
    assert check_allreduce(facts(1, 4), want(1, 4), [IB_LOG]).status == "pass"
    broken = facts(2, 4)
    broken["allreduce"].update(seconds=None, correct=False,
                               error="DistBackendError: NCCL error: remote process exited")
    check = check_allreduce(broken, want(2, 4), [SOCKET_NO_VERBS_LOG])
    assert check.status == "fail" and "remote process exited" in check.summary
    assert any("libibverbs" in a for a in check.advice)


def test_hostlists_expand_as_slurm_writes_them():
    assert expand_hostlist("node[1-2]") == ["node1", "node2"]
    assert expand_hostlist("nid[001234-001236,001240],login1") == [
        "nid001234", "nid001235", "nid001236", "nid001240", "login1"]
    assert expand_hostlist("r[1-2]n[01-02]-ib") == ["r1n01-ib", "r1n02-ib", "r2n01-ib",
                                                    "r2n02-ib"]


def test_a_node_of_the_allocation_without_ranks_fails_the_ranks_check():
    f = facts(2, 2)
    f["ranks"] = [r for r in f["ranks"] if r["node"] == "nid000"]
    check = check_ranks(f, want(2, 2))
    assert check.status == "fail"
    assert "2 of 4 ranks started" in check.summary and "no rank on nid001" in check.summary


def test_a_job_that_dies_before_its_checks_fails_with_its_log_and_the_likely_cause(
        here, capsys):
    # python3 where the step runs is one without itwinai-hpc: a setup line (a module load, a
    # conda activate) put the system's first
    wf = here / "wf.yml"
    wf.write_text("name: bare\nsteps:\n  - {name: train, command: itwinai-hpc train,\n"
                  "     setup: ['export PATH=/usr/bin:$PATH']}\n")
    rc, report = doctor(capsys, str(wf))
    (check,) = report["checks"]
    assert rc == 1 and report["job_state"] == "FAILED"
    assert (check["name"], check["status"]) == ("job", "fail")
    assert "before its checks wrote their facts" in check["summary"]
    assert "No module named" in check["details"]["log_tail"]
    assert any("lacks itwinai-hpc or torch" in a for a in check["advice"])


def test_a_job_still_running_at_the_timeout_is_cancelled_and_fails(here, capsys):
    wf = here / "wf.yml"
    wf.write_text("name: slow\nsteps:\n  - name: train\n    command: x\n"
                  "    setup: [sleep 60]\n")
    rc, report = doctor(capsys, str(wf), "--timeout", "3")
    (check,) = report["checks"]
    assert rc == 1 and check["status"] == "fail"
    assert check["summary"].startswith("the smoke job had not ended after --timeout 3 s")
    assert report["job_state"] == "CANCELLED"


def test_a_step_without_torchrun_is_one_rank_and_idle_nodes_are_a_warning():
    f = facts(2, 1)
    f["ranks"] = f["ranks"][:1]
    alone = Expected(nodes=2, processes_per_node=1, gpus_per_node=0, alone=True)
    check = check_ranks(f, alone)
    assert check.status == "warn" and "1 of 1 ranks started" in check.summary
    assert "1 allocated node(s) stay idle" in check.summary



def test_gpus_beyond_the_request_warn_and_gloo_on_a_gpu_step_is_named():
    from itwinai_hpc.commands.doctor_checks import check_gpus
    f = facts(2, 4)
    for r in f["ranks"]:
        r["gpus"]["seen"] = 8                  # CUDA_VISIBLE_DEVICES not set by SLURM
    check = check_gpus(f, want(2, 4))
    assert check.status == "warn" and "seen per node: nid000 8, nid001 8" in check.summary
    gloo = check_allreduce(facts(2, 4, backend="gloo"), want(2, 4), [])
    assert gloo.status == "warn" and "NCCL was not used" in gloo.summary


def test_a_job_that_timed_out_points_at_the_rendezvous_and_the_interfaces():
    from itwinai_hpc.commands.doctor import _failure_advice
    advice = _failure_advice("[itwinai-hpc] job 7 on node[1-2]\n", "TIMEOUT", False)
    assert any("GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME" in a for a in advice)
    assert not any("GLOO_SOCKET_IFNAME" in a for a in _failure_advice("", "FAILED", False))
