"""`from itwinai_hpc import job`: a plain train.py of one's own (written here, using only `job`,
torch and mlflow) under real torchrun with 2 gloo processes, run by the local backend: asked to
stop by the stop file it checkpoints and exits with the stop status (75, through torchrun's 1);
the step is STOPPED, not COMPLETED, its dependent does not run; `resume` continues it from its
checkpoint in the same MLflow run to bitwise the weights of an uninterrupted run; it registers
by the champion rule (lower is better) and its sweep result makes `status` show it reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from itwinai_hpc.cli import main
from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.states import StepState, from_exit, from_exits

BINDIR = Path(sys.executable).parent

TRAIN_PY = '''
"""A plain training script of one's own: only `itwinai_hpc.job`, torch and mlflow."""
import hashlib
import sys
import time

import mlflow
import torch
import torch.distributed as dist

from itwinai_hpc import job

job.watch_stop()
dist.init_process_group("gloo")
device = job.device()
lr = float(sys.argv[1])
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0     # seconds per step
torch.manual_seed(0)
model = torch.nn.Linear(4, 1).to(device)
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=lr)
g = torch.Generator().manual_seed(1)
x = torch.randn(256, 4, generator=g)
y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
start = 0
state = job.load_checkpoint()
if state is not None:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["step"]
    print(f"rank {job.rank()} resumed at step {start}", flush=True)
run = job.mlflow_run("jobapi", params={"lr": lr}) if job.run_dir() else None
if run is not None:
    print(f"mlflow run {run.info.run_id}", flush=True)
steps = 40
for step in range(start, steps):
    xb, yb = x[job.rank()::job.world_size()], y[job.rank()::job.world_size()]
    loss = ((ddp(xb) - yb) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(pause)
    done = step + 1
    if run is not None:     # steps from 1: the registered model is logged at step 0
        mlflow.log_metric("train_loss", loss.item(), step=done)
    if done % 5 == 0 and done < steps and job.should_stop():   # collective: every rank
        job.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "step": done})
        print(f"rank {job.rank()} stopped at step {done}", flush=True)
        job.exit_stopped()
weights = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
print(f"rank {job.rank()} weights {hashlib.sha256(weights).hexdigest()}", flush=True)
if run is not None:
    with torch.no_grad():
        val_mse = float(((model(x) - y) ** 2).mean())
    mlflow.log_metric("val_mse", val_mse, step=steps)
    print("registered", job.register(model, x[:2].numpy(), metric="val_mse", mode="min",
                                     name="jobapi-model"), flush=True)
dist.destroy_process_group()
'''


def test_one_rule_reads_every_exit_status():
    assert STOP_EXIT == 75
    assert [from_exit(c) for c in (0, 75, 1, 143)] == [StepState.COMPLETED, StepState.STOPPED,
                                                        StepState.FAILED, StepState.FAILED]
    assert from_exits([0, 75, 0]) == (StepState.STOPPED, 75)     # a sweep task stopped
    assert from_exits([75, 3]) == (StepState.FAILED, 3)          # a failure wins
    assert from_exits([0, 0]) == (StepState.COMPLETED, 0)


def weights(log: str) -> set[str]:
    return {line.split()[-1] for line in log.splitlines() if " weights " in line}


@pytest.mark.timeout(900)
def test_own_script_stops_is_stopped_resumes_exactly_registers_and_reports(run_folder, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (run_folder / "train.py").write_text(TRAIN_PY)
    env = {"PATH": f"{BINDIR}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MLFLOW_TRACKING_URI": f"file:{run_folder}/mlruns", "MLFLOW_ALLOW_FILE_STORE": "true"}
    # The same script uninterrupted, by hand (no run folder: no MLflow), alongside.
    (run_folder / "straight").mkdir()
    straight = subprocess.Popen(
        [str(BINDIR / "torchrun"), "--standalone", "--nproc-per-node=2",
         str(run_folder / "train.py"), "0.05"], cwd=run_folder / "straight",
        env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (run_folder / "wf.yml").write_text(textwrap.dedent(f"""
        name: jobapi
        defaults:
          container: none
          env: {env!r}
        steps:
          - name: train
            launcher: torchrun
            nproc-per-node: 2
            matrix: {{lr: [0.05]}}
            command: python {run_folder}/train.py
            args: ["${{matrix.lr}}"]
          - name: after
            needs: [train]
            command: echo after
        """))
    assert main(["render", str(run_folder / "wf.yml"), "-o", "run"]) == 0
    (run_folder / "run" / "train.STOP").touch()      # what SLURM's warning or a user does
    assert main(["submit", "run", "--backend", "local", "--wait"]) == 1
    m = RunManifest.load(run_folder / "run")
    train, after = m.step("train"), m.step("after")
    log = Path(train.log.replace("*", "0")).read_text()            # task 0's log
    assert "rank 0 stopped at step 5" in log and "rank 1 stopped at step 5" in log, log[-3000:]
    assert (train.state, train.exit_code) == ("STOPPED", STOP_EXIT)      # never COMPLETED
    assert after.state == "CANCELLED" and "'train' did not complete (STOPPED)" in after.reason
    assert not (run_folder / "run" / "train.STOP").exists()             # served
    capsys.readouterr()
    main(["status", "run"])
    assert "STOPPED" in capsys.readouterr().out

    assert main(["resume", "run", "--wait"]) == 0
    m = RunManifest.load(run_folder / "run")
    assert [str(s.state) for s in m.steps] == ["COMPLETED", "COMPLETED"]
    log = Path(m.step("train").log.replace("*", "0")).read_text()
    assert "rank 0 resumed at step 5" in log and "rank 1 resumed at step 5" in log, log[-3000:]
    straight_log = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, straight_log[-3000:]
    assert len(weights(log)) == 1 and weights(log) == weights(straight_log)   # bitwise

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"],
                          registry_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("jobapi").experiment_id])
    assert len(runs) == 1                                     # the same run, resumed
    run = runs[0]
    assert run.info.status == "FINISHED" and "itwinai_hpc.stopped" not in run.data.tags
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) \
        == list(range(1, 41))                                # every step once
    tags = run.data.tags
    assert (tags["itwinai_hpc.kind"], tags["itwinai_hpc.world_size"], tags["itwinai_hpc.nnodes"],
            tags["itwinai_hpc.sweep"], tags["matrix.lr"]) == ("train", "2", "1", "train", "0.05")
    assert str(client.get_model_version_by_alias("jobapi-model", "champion").version) == "1"

    capsys.readouterr()
    main(["status", "run"])
    out = capsys.readouterr().out
    assert "sweep train: 1 of 1 task(s) reported" in out and "val_mse=" in out, out

    # The champion rule, lower is better: a worse (higher) val_mse does not take the alias.
    import torch

    from itwinai_hpc import job

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(experiment_id=run.info.experiment_id):
        worse = job.register(torch.nn.Linear(4, 1), torch.zeros(2, 4).numpy(), metric="val_mse",
                             mode="min", value=float(run.data.metrics["val_mse"]) + 1,
                             name="jobapi-model")
    assert worse == ("2", False)
    assert str(client.get_model_version_by_alias("jobapi-model", "champion").version) == "1"
