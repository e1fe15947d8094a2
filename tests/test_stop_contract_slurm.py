"""The stop contract on the real cluster: a plain train.py of one's own (test_job_api.TRAIN_PY,
only `itwinai_hpc.job`, torch and mlflow) under torchrun in a requeueable SLURM step. Warned of
its time limit (USR2 to the batch shell, as SLURM's --signal=B:USR2@N), it checkpoints and exits
75 through torchrun's 1; the job is requeued and its next run continues from the checkpoint in
the same MLflow run. A step that exits 75 without a requeue is STOPPED, not FAILED or COMPLETED.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from test_job_api import TRAIN_PY
from test_requeue_on_slurm import submit, wait_for_line, warn_of_time_limit

from itwinai_hpc.cli import main
from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.ops.operations import refresh
from itwinai_hpc.run.manifest import RunManifest

pytestmark = pytest.mark.slurm
BINDIR = Path(sys.executable).parent


@pytest.mark.timeout(600)
def test_own_script_warned_of_its_time_limit_is_requeued_and_resumes_in_its_mlflow_run(
        slurm_cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "train.py").write_text(TRAIN_PY)
    store = f"file:{tmp_path}/mlruns"
    manifest = submit(tmp_path, f"""
name: ownrq
defaults:
  container: none
  resources: {{time: 10, mem: 1G, cpus-per-task: 2}}
  env: {{PATH: "{BINDIR}:/usr/bin:/bin", MLFLOW_TRACKING_URI: "{store}",
         MLFLOW_ALLOW_FILE_STORE: "true", PYTHONWARNINGS: ignore, OMP_NUM_THREADS: 1}}
steps:
  - name: train
    launcher: torchrun
    nproc-per-node: 2
    command: python {tmp_path}/train.py
    args: ["0.05", "0.3"]
    requeue: {{before-limit: 60}}
  - name: after
    needs: [train]
    command: echo after
""")
    train = manifest.step("train")
    wait_for_line(Path(train.log), "mlflow run", timeout=240)     # rank 0 is training
    warn_of_time_limit(slurm_cluster, train.job_id)
    capsys.readouterr()
    rc = main(["status", str(tmp_path / "run"), "--watch", "--interval", "1"])
    m = RunManifest.load(tmp_path / "run")
    log = Path(m.step("train").log).read_text()
    assert rc == 0 and [str(s.state) for s in m.steps] == ["COMPLETED", "COMPLETED"], log[-3000:]
    assert "rank 0 stopped at step" in log and "requeue (restart 1)" in log, log[-3000:]
    # the ranks print to one log: their lines may run together ("...step 5rank 1 stopped...")
    stopped = int(re.search(r"rank 0 stopped at step (\d+)", log).group(1))
    assert 0 < stopped < 40 and f"rank 0 resumed at step {stopped}" in log
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("jobapi").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"          # resumed, not new
    assert sorted(x.step for x in client.get_metric_history(runs[0].info.run_id, "train_loss")) \
        == list(range(1, 41))
    assert str(client.get_model_version_by_alias("jobapi-model", "champion").version) == "1"


def test_a_step_that_exits_with_the_stop_status_is_stopped_and_its_dependents_do_not_run(
        slurm_cluster, tmp_path, capsys):
    manifest = submit(tmp_path, f"""
name: stopped
defaults: {{container: none, resources: {{time: 5, mem: 100M}}}}
steps:
  - name: work
    command: bash -c "exit {STOP_EXIT}"
  - name: after
    needs: [work]
    command: echo after
""")
    capsys.readouterr()
    rc = main(["status", str(tmp_path / "run"), "--watch", "--interval", "0.5"])
    assert rc == 1              # as soon as a step ended without success
    deadline = time.monotonic() + 60
    while not (m := refresh(RunManifest.load(tmp_path / "run"))).step("after").finished:
        assert time.monotonic() < deadline, "SLURM did not cancel the dependent in 60 s"
        time.sleep(0.5)
    assert (m.step("work").state, m.step("work").exit_code) == ("STOPPED", STOP_EXIT)
    assert m.step("after").state == "CANCELLED" and manifest.step("after").job_id
