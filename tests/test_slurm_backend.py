"""The SLURM backend against the real test cluster: submit, status, cancel, resume, refusals.

Every test submits real jobs with the real sbatch (tests/slurm/start-slurm.sh's cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itwinai_hpc.backends.slurm.query import SlurmQueryError, still_queued
from itwinai_hpc.cli import main
from itwinai_hpc.run.folders import find_run
from itwinai_hpc.run.manifest import RunManifest

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
MNIST_TRAIN = ROOT / "use-cases/mnist/training-workflow.yml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def chain_workflow(folder: Path, fail_step: str | None = None, sleep: float = 1) -> Path:
    """3 steps a -> b -> c that append "<step> <start> <end>" to order.txt."""
    def cmd(name):
        code = "exit 3" if name == fail_step else "true"
        return (f'bash -c "s=\\$(date +%s.%N); sleep {sleep}; '
                f'echo {name} \\$s \\$(date +%s.%N) >> {folder}/order.txt; {code}"')
    return write(folder / "chain.yml", f"""
name: chain
defaults:
  resources: {{time: 5, mem: 100M}}
  container: none
steps:
  - {{name: a, command: '{cmd("a")}'}}
  - {{name: b, command: '{cmd("b")}', needs: [a]}}
  - {{name: c, command: '{cmd("c")}', needs: [b]}}
""")


def status_json(capsys, run: str | None = None) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["status", "--json"] + ([run] if run else []))
    return rc, json.loads(capsys.readouterr().out)


def states(doc: dict) -> dict[str, str]:
    return {s["name"]: s["state"] for s in doc["steps"]}


def wait_done(capsys, run: str | None = None, timeout: float = 90) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rc, doc = status_json(capsys, run)
        if rc != 3 or time.monotonic() > deadline:
            return rc, doc
        time.sleep(0.5)


# ---- issue 2: the rendered scripts and the real sbatch --------------------------------------

def test_the_cpu_mnist_training_scripts_are_accepted_by_sbatch_test_only(slurm_cluster, tmp_path):
    out = tmp_path / "run"
    assert main(["render", str(MNIST_TRAIN), "-o", str(out)]) == 0
    for script in ("01-preprocess.sbatch", "02-train.sbatch"):
        p = subprocess.run(["sbatch", "--test-only", script], cwd=out, capture_output=True,
                           text=True, env=slurm_cluster.env())
        assert p.returncode == 0 and "to start at" in p.stderr, p.stderr


# The GPU variants on the real cluster (GRES declared): test_launch_on_slurm.py


def test_submit_sh_by_hand_runs_the_chain_in_order_and_values_stay_literal(
        slurm_cluster, run_folder):
    marker = run_folder / "PWNED"
    wf = write(run_folder / "hand.yml", f"""
name: hand
vars:
  evil: "$(touch {marker}); `touch {marker}`"
defaults:
  resources: {{time: 5, mem: 100M}}
  container: none
  env: {{EVIL: "${{evil}}"}}
steps:
  - {{name: first, command: "printf '%s\\\\n'", args: ["${{evil}}", "a;b"]}}
  - {{name: second, command: printenv EVIL, needs: [first]}}
""")
    out = run_folder / "run"
    assert main(["render", str(wf), "-o", str(out)]) == 0
    env = {k: v for k, v in slurm_cluster.env().items() if k != "PYTHONPATH"}
    env["PATH"] = "/usr/bin:/bin"                      # by hand: no itwinai-hpc needed
    p = subprocess.run(["bash", str(out / "submit.sh")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    ids = dict(line.split("\t") for line in (out / "jobs.tsv").read_text().splitlines())
    assert list(ids) == ["first", "second"]
    slurm_cluster.wait_for_jobs(ids.values())
    assert {slurm_cluster.job_state(i) for i in ids.values()} == {"COMPLETED"}
    first_job, second_job = (slurm_cluster.job_fields(ids[n]) for n in ("first", "second"))
    assert second_job["StartTime"] >= first_job["EndTime"]          # the order it is named for
    first = (out / "logs" / f"hand.first-{ids['first']}.out").read_text().splitlines()
    second = (out / "logs" / f"hand.second-{ids['second']}.out").read_text().splitlines()
    evil = f"$(touch {marker}); `touch {marker}`"
    assert first[1:] == [evil, "a;b"] and second[1:] == [evil]
    assert not marker.exists()
    # status knows a run submitted by hand (from jobs.tsv)
    assert main(["status", str(out)]) == 0
    assert RunManifest.load(out).step("second").job_id == ids["second"]


def render_by_hand(folder: Path, workflow: Path, *overrides: str) -> Path:
    out = folder / "run"
    assert main(["render", str(workflow), "-o", str(out),
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    return out


def test_submit_sh_cancels_the_jobs_it_queued_when_sbatch_refuses_a_later_step(
        slurm_cluster, run_folder, capsys):
    out = render_by_hand(run_folder, chain_workflow(run_folder), "steps.b.resources.nodes=3")
    p = subprocess.run(["bash", str(out / "submit.sh")], capture_output=True, text=True,
                       env=slurm_cluster.env())
    assert p.returncode != 0 and "Node count specification invalid" in p.stderr, p.stderr
    ids = dict(line.split("\t") for line in (out / "jobs.tsv").read_text().splitlines())
    assert list(ids) == ["a"] and f"cancelling the jobs already submitted: {ids['a']}" in p.stderr
    slurm_cluster.wait_for_jobs([ids["a"]])
    assert slurm_cluster.job_state(ids["a"]) == "CANCELLED"
    assert not (run_folder / "order.txt").exists()                 # a never ran


def test_submit_sh_run_inside_an_allocation_submits_jobs_of_their_own_size(
        slurm_cluster, run_folder):
    wf = write(run_folder / "inner.yml", """
name: inner
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - name: show
    command: 'echo "$SLURM_JOB_NAME $SLURM_NNODES $SLURM_NTASKS $${SLURM_CPUS_PER_TASK:-unset}"'
""")
    out = render_by_hand(run_folder, wf)
    outer = slurm_cluster.sbatch("-N", "2", "--ntasks-per-node=1", "-c", "2", "--mem=100M",
                                 "-o", str(run_folder / "outer.out"), "--wrap",
                                 f"bash {out}/submit.sh")
    slurm_cluster.wait_for_jobs([outer])
    assert slurm_cluster.job_state(outer) == "COMPLETED", (run_folder / "outer.out").read_text()
    inner = (out / "jobs.tsv").read_text().split()[1]
    slurm_cluster.wait_for_jobs([inner])
    log = (out / "logs" / f"inner.show-{inner}.out").read_text().splitlines()
    assert log[-1] == "inner.show 1 1 unset"       # not the outer job's 2 nodes x 2 CPUs per task


def fan_in_workflow(folder: Path, failing: str | None = None) -> Path:
    """a and b (1-2 s each, side by side) -> c, which needs both; each appends to order.txt."""
    def cmd(name, sleep):
        code = "exit 3" if name == failing else "true"
        return (f'bash -c "s=\\$(date +%s.%N); sleep {sleep}; '
                f'echo {name} \\$s \\$(date +%s.%N) >> {folder}/order.txt; {code}"')
    return write(folder / "fan.yml", f"""
name: fan
defaults: {{resources: {{time: 5, mem: 100M}}, container: none}}
steps:
  - {{name: a, command: '{cmd("a", 2)}'}}
  - {{name: b, command: '{cmd("b", 1)}'}}
  - {{name: c, command: '{cmd("c", 0)}', needs: [a, b]}}
""")


def test_a_step_that_needs_two_starts_after_both_have_completed(slurm_cluster, run_folder,
                                                                capsys):
    assert main(["submit", str(fan_in_workflow(run_folder)), "--backend", "slurm",
                 "--wait"]) == 0
    rows = {r[0]: (float(r[1]), float(r[2])) for r in
            (line.split() for line in (run_folder / "order.txt").read_text().splitlines())}
    assert rows["c"][0] >= max(rows["a"][1], rows["b"][1])
    assert rows["a"][0] < rows["b"][1]                    # a and b ran side by side


def test_a_step_that_needs_two_is_cancelled_when_one_of_them_fails(slurm_cluster, run_folder,
                                                                   capsys):
    assert main(["submit", str(fan_in_workflow(run_folder, failing="b")), "--backend", "slurm",
                 "--wait"]) == 1
    rc, doc = status_json(capsys)
    assert states(doc) == {"a": "COMPLETED", "b": "FAILED", "c": "CANCELLED"}
    ran = [line.split()[0] for line in (run_folder / "order.txt").read_text().splitlines()]
    assert sorted(ran) == ["a", "b"]


# ---- issue 3: submit, status, cancel, resume -------------------------------------------------

def test_a_three_step_workflow_runs_in_order_and_ends_completed(slurm_cluster, run_folder,
                                                                capsys):
    wf = chain_workflow(run_folder)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    out = capsys.readouterr().out
    manifest = RunManifest.load(find_run(None))
    assert manifest.run_id in out and manifest.run_dir in out
    assert all(s.job_id for s in manifest.steps)          # ids recorded at submit time
    rc, doc = wait_done(capsys)
    assert rc == 0 and set(states(doc).values()) == {"COMPLETED"}
    assert [s["exit_code"] for s in doc["steps"]] == [0, 0, 0]
    rows = [line.split() for line in (run_folder / "order.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert float(rows[1][1]) >= float(rows[0][2]) and float(rows[2][1]) >= float(rows[1][2])
    capsys.readouterr()
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "STEP" in table and "COMPLETED" in table and "logs/chain.a-" in table
    print(table)


def test_a_failed_step_shows_exit_code_3_and_its_dependents_are_cancelled(
        slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder, fail_step="b")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 1
    err = capsys.readouterr().err
    assert "step 'b' FAILED (exit code 3)" in err and "log:" in err
    rc, doc = status_json(capsys)
    assert rc == 1
    assert states(doc) == {"a": "COMPLETED", "b": "FAILED", "c": "CANCELLED"}
    assert doc["steps"][1]["exit_code"] == 3
    ran = [line.split()[0] for line in (run_folder / "order.txt").read_text().splitlines()]
    assert ran == ["a", "b"]                              # c never ran


def test_submit_wait_with_a_timeout_gives_up_with_exit_3_and_the_jobs_go_on(
        slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder, sleep=60)
    assert main(["submit", str(wf), "--backend", "slurm", "--wait", "--timeout", "1"]) == 3
    assert "gave up waiting after --timeout 1 s" in capsys.readouterr().err
    manifest = RunManifest.load(find_run(None))
    ids = [s.job_id for s in manifest.steps]
    try:
        assert slurm_cluster.active_jobs(ids) == set(ids)
    finally:
        slurm_cluster.run("scancel", *ids)


def test_cancel_during_a_running_step_leaves_nothing_of_the_run_queued(
        slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder, sleep=60)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = RunManifest.load(find_run(None))
    ids = [s.job_id for s in manifest.steps]
    slurm_cluster.wait_for_state(ids[0], ["RUNNING"])
    # RUNNING comes before the batch shell has set its traps: wait for the line it prints after
    log = Path(manifest.run_dir) / "logs" / f"chain.a-{ids[0]}.out"
    deadline = time.monotonic() + 60
    while not log.exists() or "step a of run" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "step a did not start"
        time.sleep(0.1)
    assert main(["cancel", manifest.run_id]) == 0
    assert slurm_cluster.active_jobs(ids) == set()
    rc, doc = status_json(capsys)
    assert rc == 1 and set(states(doc).values()) == {"CANCELLED"}
    # the running step was killed by SIGTERM: 143, as its own exit status file says (was 0);
    # its shell writes that file as it dies, which may come after squeue lets the job go
    marker = Path(manifest.run_dir) / "logs" / f".exit-{ids[0]}"
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the cancelled step left no exit status file"
        time.sleep(0.1)
    left = marker.read_text().strip()
    assert doc["steps"][0]["exit_code"] == int(left) == 143


def test_still_queued_names_the_jobs_slurm_has_not_let_go(slurm_cluster, run_folder):
    # A user's own squeue defaults (read from the environment) must not hide our jobs or
    # list ended ones: the explicit -t and a runner without SQUEUE_* win over them. (Only in
    # the runner's environment: the test's own squeue calls must see every job.)
    from itwinai_hpc.backends.slurm.backend import _squeue_runner

    run = _squeue_runner({**os.environ, "SQUEUE_USERS": "nobody", "SQUEUE_STATES": "all"})
    wf = chain_workflow(run_folder, sleep=60)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    ids = [s.job_id for s in RunManifest.load(find_run(None)).steps]
    try:
        slurm_cluster.wait_for_state(ids[0], ["RUNNING"])
        assert still_queued(ids, run) == set(ids)            # one running, two pending
        assert still_queued([ids[0], "999999"], run) == {ids[0]}
    finally:
        slurm_cluster.run("scancel", *ids)
    slurm_cluster.wait_for_jobs(ids)
    # Cancelled, still known to the controller (MinJobAge): not queued, whatever
    # SQUEUE_STATES says.
    assert still_queued(ids, run) == set(), slurm_cluster.run(
        "squeue", "-h", "-t", "all", "-o", "%F %T %r", check=False)
    assert still_queued(["999999"], run) == set()           # "Invalid job id specified", exit 1


def test_still_queued_reads_squeues_refusals():
    def answer(code, err):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, code, "", err)

    assert still_queued(["5"], answer(1, "slurm_load_jobs error: Invalid job id specified\n")) \
        == set()
    with pytest.raises(SlurmQueryError, match="Unable to contact slurm controller"):
        still_queued(["5"], answer(1, "slurm_load_jobs error: Unable to contact slurm "
                                      "controller (connect failure)"))


def lag_squeue(monkeypatch, asks: int | None):
    """Hold squeue's answer back: the run's first job is reported queued for `asks` more asks
    than SLURM says (None: for ever). The test cluster keeps a job COMPLETING for well under a
    second, so a longer hold (an epilog, processes outliving SIGTERM) is made here."""
    from itwinai_hpc.backends.slurm import backend as slurm_backend

    asked: list[set[str]] = []
    lag = {"left": asks}

    def lagging(ids, run=subprocess.run):
        queued = still_queued(ids, run)
        if ids and (lag["left"] is None or lag["left"] > 0):
            if lag["left"] is not None:
                lag["left"] -= 1
            queued |= {sorted(ids, key=int)[0]}
        asked.append(queued)
        return queued

    monkeypatch.setattr(slurm_backend, "still_queued", lagging)
    return asked


def test_cancel_waits_until_slurm_has_let_the_jobs_go(slurm_cluster, run_folder, capsys,
                                                      monkeypatch):
    """The race of a full run (four workers): the running step's exit status file was written
    (its state final) while SLURM still listed its job COMPLETING, and `cancel` returned."""
    asked = lag_squeue(monkeypatch, 3)
    wf = chain_workflow(run_folder, sleep=60)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = RunManifest.load(find_run(None))
    ids = [s.job_id for s in manifest.steps]
    slurm_cluster.wait_for_state(ids[0], ["RUNNING"])
    assert main(["cancel", manifest.run_id]) == 0
    assert len(asked) >= 4 and asked[-1] == set(), asked
    assert slurm_cluster.active_jobs(ids) == set()
    rc, doc = status_json(capsys)
    assert set(states(doc).values()) == {"CANCELLED"}


def test_resume_waits_for_a_job_slurm_still_holds(slurm_cluster, run_folder, capsys,
                                                  monkeypatch):
    """cancel waits 15 s at most; a job held longer (KillWait, an epilog) is named, and
    `resume` refuses (exit 1) until SLURM lets it go, instead of racing its processes."""
    lag_squeue(monkeypatch, None)
    wf = chain_workflow(run_folder, sleep=60)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    manifest = RunManifest.load(find_run(None))
    ids = [s.job_id for s in manifest.steps]
    slurm_cluster.wait_for_state(ids[0], ["RUNNING"])
    capsys.readouterr()
    assert main(["cancel", manifest.run_id]) == 0
    assert f"SLURM still holds job(s) {ids[0]}" in capsys.readouterr().err
    assert main(["resume", manifest.run_id]) == 1
    err = capsys.readouterr().err
    assert f"SLURM still holds job(s) {ids[0]} of it" in err and "resume when" in err
    assert slurm_cluster.active_jobs(ids) == set()          # nothing was queued again
    from itwinai_hpc.backends.slurm import backend as slurm_backend

    monkeypatch.setattr(slurm_backend, "still_queued", still_queued)   # SLURM let go
    assert main(["resume", manifest.run_id]) == 0
    resumed = [s.job_id for s in RunManifest.load(find_run(None)).steps]
    assert set(resumed).isdisjoint(ids)
    slurm_cluster.run("scancel", *resumed)
    slurm_cluster.wait_for_jobs(resumed)


@pytest.mark.slurm
def test_resume_asks_slurm_first_and_a_refusal_queues_nothing_and_changes_nothing(
        slurm_cluster, run_folder, capsys):
    """A script edited since (here: a partition that does not exist) made resume queue b,
    then cancel it when c was refused; now `sbatch --test-only` refuses first, exit 2."""
    wf = chain_workflow(run_folder, fail_step="b")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 1
    manifest = RunManifest.load(find_run(None))
    script = Path(manifest.run_dir) / manifest.step("c").script
    script.write_text(script.read_text().replace("#SBATCH --job-name",
                                                 "#SBATCH --partition=nope\n#SBATCH --job-name"))
    before = (Path(manifest.run_dir) / "run.json").read_bytes()
    capsys.readouterr()
    assert main(["resume", manifest.run_id]) == 2
    err = capsys.readouterr().err
    assert "SLURM refuses step 'c'" in err and "nothing was queued" in err
    assert (Path(manifest.run_dir) / "run.json").read_bytes() == before
    assert slurm_cluster.active_jobs([s.job_id for s in manifest.steps]) == set()


@pytest.mark.slow
def test_resume_after_a_failure_reruns_only_the_failed_step_and_its_dependents(
        slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder, fail_step="b")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 1
    manifest = RunManifest.load(find_run(None))
    first_ids = {s.name: s.job_id for s in manifest.steps}
    # fix the cause: b now succeeds (the scripts read order.txt's folder; edit the script)
    script = Path(manifest.run_dir) / manifest.step("b").script
    script.write_text(script.read_text().replace("exit 3", "true"))
    assert main(["resume", manifest.run_id, "--wait"]) == 0
    after = RunManifest.load(manifest.run_dir)
    assert after.step("a").job_id == first_ids["a"]               # not re-run
    assert after.step("b").job_id != first_ids["b"] and after.step("b").history == [first_ids["b"]]
    assert [s.state for s in after.steps] == ["COMPLETED"] * 3
    ran = [line.split()[0] for line in (run_folder / "order.txt").read_text().splitlines()]
    assert ran == ["a", "b", "b", "c"]


def test_one_status_refresh_makes_exactly_one_scheduler_call(slurm_cluster, run_folder,
                                                            monkeypatch, capsys):
    calls = run_folder / "calls.log"
    wrappers = run_folder / "bin"
    wrappers.mkdir()
    for tool in ("sacct", "squeue", "scontrol", "sinfo", "sbatch", "scancel"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        w = wrappers / tool
        w.write_text(f'#!/bin/bash\necho "{tool} $*" >> {calls}\nexec {real} "$@"\n')
        w.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    wf = chain_workflow(run_folder, sleep=20)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    calls.write_text("")
    assert main(["status"]) == 3
    assert len(calls.read_text().splitlines()) == 1, calls.read_text()
    main(["cancel", RunManifest.load(find_run(None)).run_id])
    calls.write_text("")
    assert main(["status"]) == 1                      # all finished: cached, no query at all
    assert calls.read_text() == ""


def test_more_nodes_than_the_cluster_has_is_refused_and_nothing_stays_queued(
        slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder)
    # past the preflight (test_preflight.py), as when the cluster changes between the two
    rc = main(["submit", str(wf), "--backend", "slurm", "--no-preflight",
               "--set", "steps.b.resources.nodes=3"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "sbatch refused step 'b'" in err and "Node count specification invalid" in err, err
    manifest = RunManifest.load(find_run(None))
    a = manifest.step("a")
    assert slurm_cluster.active_jobs([a.job_id]) == set()
    assert a.state == "CANCELLED" and manifest.step("b").state == "FAILED"
    assert "refused by sbatch" in manifest.step("b").reason
    assert manifest.extra["submit_error"]["step"] == "b"
    assert manifest.step("c").job_id is None


def test_leaked_slurm_variables_of_an_enclosing_job_do_not_change_what_is_submitted(
        slurm_cluster, run_folder, monkeypatch, capsys):
    for k, v in {"SLURM_JOB_ID": "999", "SLURM_NNODES": "2", "SLURM_NTASKS": "8",
                 "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "999999",
                 "SLURM_JOB_NAME": "outer", "SLURM_EXPORT_ENV": "NONE"}.items():
        monkeypatch.setenv(k, v)
    wf = write(run_folder / "env.yml", """
name: leak
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - {name: show, command: 'echo "$SLURM_JOB_NAME $SLURM_NNODES $SLURM_CPUS_ON_NODE"'}
""")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 0
    manifest = RunManifest.load(find_run(None))
    log = Path(manifest.step("show").log).read_text().splitlines()
    assert log[-1] == "leak.show 1 1"


@pytest.mark.slow
def test_a_two_node_step_sees_both_nodes_and_its_torchrun_rendezvous_resolves(
        slurm_cluster, run_folder, capsys):
    probe = write(run_folder / "probe.py", """
import os, socket, torch.distributed as dist
dist.init_process_group("gloo")
host = os.environ["MASTER_ADDR"]
print("RANK", dist.get_rank(), dist.get_world_size(), os.environ["SLURM_NNODES"],
      os.environ["SLURMD_NODENAME"], host, socket.gethostbyname(host), flush=True)
dist.barrier()
dist.destroy_process_group()
""")
    import sys
    bindir = Path(sys.executable).parent
    wf = write(run_folder / "ddp.yml", f"""
name: ddp
defaults: {{container: none, resources: {{time: 5, mem: 500M}},
           env: {{PATH: "{bindir}:/usr/bin:/bin"}}}}
steps:
  - name: nodes
    command: 'echo "$SLURM_NNODES $(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr "\\n" " ")"'
    resources: {{nodes: 2}}
  - name: ddp
    launcher: torchrun
    command: {sys.executable} {probe}
    resources: {{nodes: 2}}
""")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 0, capsys.readouterr()
    manifest = RunManifest.load(find_run(None))
    nodes_log = Path(manifest.step("nodes").log).read_text().splitlines()
    assert nodes_log[-1].split() == ["2", "node1", "node2"]
    ranks = sorted(l.split() for l in Path(manifest.step("ddp").log).read_text().splitlines()
                   if l.startswith("RANK"))
    assert [r[1:4] for r in ranks] == [["0", "2", "2"], ["1", "2", "2"]]
    assert {r[4] for r in ranks} == {"node1", "node2"}            # one rank per node
    assert all(r[6] == "127.0.0.1" for r in ranks)                 # MASTER_ADDR resolves


# status after the controller forgot the jobs, per accounting mode: test_slurm_purged.py


# ---- logs, dry run, watch ---------------------------------------------------------------------

def test_logs_prints_a_steps_output_and_follows_it_until_the_step_ends(
        slurm_cluster, run_folder, capsys):
    wf = write(run_folder / "talk.yml", """
name: talk
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - {name: talk, command: 'for i in 1 2 3; do echo "line $i"; sleep 1; done'}
  - {name: quiet, command: 'true', needs: [talk]}
""")
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    run_id = RunManifest.load(find_run(None)).run_id
    capsys.readouterr()
    assert main(["logs", run_id, "talk", "-f"]) == 0       # returns once the step has ended
    followed = capsys.readouterr().out
    assert [l for l in followed.splitlines() if l.startswith("line")] == ["line 1", "line 2",
                                                                         "line 3"]
    assert main(["logs", run_id, "talk"]) == 0
    assert capsys.readouterr().out == followed
    assert main(["logs", run_id, "nosuch"]) == 2
    assert "has no step 'nosuch'" in capsys.readouterr().err


def test_dry_run_renders_the_run_folder_and_submits_nothing(slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder)
    assert main(["submit", str(wf), "--backend", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing submitted" in out and "02-b.sbatch  (after a)" in out
    manifest = RunManifest.load(find_run(None))
    assert all(s.job_id is None for s in manifest.steps)
    # no job of this run in the queue (the cluster is shared: other tests' jobs come and go)
    queued = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%k").split()
    assert f"itwinai-hpc:{manifest.run_id}" not in queued


def test_status_watch_refreshes_until_the_run_is_done(slurm_cluster, run_folder, capsys):
    wf = chain_workflow(run_folder, sleep=0.5)
    assert main(["submit", str(wf), "--backend", "slurm"]) == 0
    run_dir = RunManifest.load(find_run(None)).run_dir
    capsys.readouterr()
    assert main(["status", run_dir, "--watch", "--interval", "0.5"]) == 0   # a folder works too
    tables = capsys.readouterr().out.split("run chain-")
    assert len(tables) >= 3 and "COMPLETED" in tables[-1] and "PENDING" in tables[1]


def test_srun_and_array_steps_run_their_tasks_and_report_as_one_step(slurm_cluster, run_folder,
                                                                     capsys):
    wf = write(run_folder / "tasks.yml", """
name: tasks
defaults: {container: none, resources: {time: 5, mem: 100M}}
steps:
  - name: ranks
    launcher: srun
    resources: {ntasks-per-node: 2}
    command: 'bash -c "echo rank \\$SLURM_PROCID of \\$SLURM_NTASKS"'
  - name: shards
    needs: [ranks]
    array: 0-2
    command: 'echo "shard $SLURM_ARRAY_TASK_ID"'
""")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 0
    manifest = RunManifest.load(find_run(None))
    ranks = Path(manifest.step("ranks").log).read_text()
    assert sorted(l for l in ranks.splitlines() if l.startswith("rank")) == \
        ["rank 0 of 2", "rank 1 of 2"]
    assert manifest.step("shards").state == "COMPLETED"
    capsys.readouterr()
    assert main(["logs", manifest.run_id, "shards"]) == 0
    shards = [l for l in capsys.readouterr().out.splitlines() if l.startswith("shard")]
    assert sorted(shards) == ["shard 0", "shard 1", "shard 2"]


WORK_SH = """
# 40 one-second steps, progress in count.txt; honours $ITWINAI_HPC_STOP_FILE as a trainer does
# (checkpointed in count.txt, exits 75)
n=$(cat count.txt 2>/dev/null || echo 0)
echo "start at $n, restart ${SLURM_RESTART_COUNT:-0}"
while ((n < 40)); do
  sleep 1
  n=$((n + 1))
  echo "$n" >>steps.log
  echo "$n" >count.txt
  if [[ -e $ITWINAI_HPC_STOP_FILE ]]; then exit 75; fi   # the stop contract: resume me
done
"""


@pytest.mark.slow
def test_a_step_near_its_time_limit_checkpoints_is_requeued_and_resumes_to_the_end(
        slurm_cluster, run_folder, capsys):
    write(run_folder / "work.sh", WORK_SH)
    wf = write(run_folder / "long.yml", f"""
name: long
defaults: {{container: none}}
steps:
  - name: work
    command: bash {run_folder}/work.sh
    requeue: {{before-limit: 50, grace: 15}}
    resources: {{time: 1, mem: 100M}}
""")
    assert main(["submit", str(wf), "--backend", "slurm", "--wait"]) == 0
    manifest = RunManifest.load(find_run(None))
    job = manifest.step("work").job_id
    assert int(slurm_cluster.job_fields(job)["Restarts"]) >= 1
    steps = (run_folder / "steps.log").read_text().split()
    assert steps == [str(i) for i in range(1, 41)]            # every step once, in order
    log = Path(manifest.step("work").log).read_text()
    assert "requeue (restart 1)" in log and "start at 0, restart 0" in log


@pytest.mark.slurm
def test_without_the_slurm_commands_every_command_says_so_without_a_traceback(
        slurm_cluster, run_folder):
    """On a machine or PATH without SLURM's commands (a compute node's container, a laptop)
    status, cancel and submit print one error line; a refused submit changes nothing."""
    (run_folder / "wf.yml").write_text("name: noslurm\ndefaults: {container: none}\nsteps:\n"
                                       "  - name: a\n    command: sleep 30\n")
    cli = [sys.executable, "-m", "itwinai_hpc.cli"]
    env = dict(os.environ)
    p = subprocess.run(cli + ["submit", "wf.yml", "--backend", "slurm", "-o", "run"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bare = {**env, "PATH": str(Path(sys.executable).parent) + ":/usr/bin/nonexistent"}
    try:
        for command, code in ((["status", "run"], 1), (["cancel", "run"], 1)):
            p = subprocess.run(cli + command, env=bare, capture_output=True, text=True,
                               timeout=120)
            assert (p.returncode, "Traceback" in p.stderr) == (code, False), p.stderr
            assert "error: cannot ask SLURM about the run's jobs:" in p.stderr
            assert "not found: is this a SLURM cluster?" in p.stderr
        p = subprocess.run(cli + ["submit", "wf.yml", "--backend", "slurm", "-o", "run2"],
                           env=bare, capture_output=True, text=True, timeout=120)
        assert (p.returncode, "Traceback" in p.stderr) == (2, False), p.stderr
        assert "sbatch is not on PATH" in p.stderr and not (run_folder / "run2").exists()
        p = subprocess.run(cli + ["render", "wf.yml", "-o", "run3"], env=bare,
                           capture_output=True, text=True, timeout=120)
        before = (run_folder / "run3" / "run.json").read_bytes()
        p = subprocess.run(cli + ["submit", "run3", "--backend", "slurm", "--no-preflight"],
                           env=bare, capture_output=True, text=True, timeout=120)
        assert (p.returncode, "Traceback" in p.stderr) == (1, False), p.stderr
        assert (run_folder / "run3" / "run.json").read_bytes() == before   # submittable again
    finally:
        subprocess.run(cli + ["cancel", "run"], env=env, capture_output=True, timeout=120)


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`itwinai-hpc status | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    (tmp_path / "wf.yml").write_text("name: piped\nsteps:\n" + "".join(
        f"  - name: s{i}\n    command: echo\n" for i in range(300)))
    cli = [sys.executable, "-m", "itwinai_hpc.cli"]
    assert subprocess.run(cli + ["render", "wf.yml", "-o", "run"], cwd=tmp_path,
                          capture_output=True, timeout=120).returncode == 0
    p = subprocess.Popen(cli + ["status", "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()                              # what `head` does once it has its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and "Traceback" not in err and "Broken" not in err, err
