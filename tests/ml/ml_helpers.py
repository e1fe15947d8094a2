"""Helpers of the ML step tests (a module of its own: two test folders each have a conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_VALIDATION, N_TEST = 4000, 1000, 1000   # train keeps N_TRAIN - N_VALIDATION
TEST_TRAIN_CONFIG = {
    "dataset": "mnist", "model": "mnist-cnn",
    "trainer": {"epochs": 2, "batch_size": 32, "eval_batch_size": 500, "seed": 3},
    "tracking": {"experiment": "mnist-test", "log_every_steps": 20, "system_metrics_every_s": 1},
    "registry": {"model_name": "mnist-test-cnn"},
}
WORKFLOW_DESCRIPTION = "Train a CNN on real MNIST digits (test workflow)."


def git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def workflow_repo(folder: Path) -> tuple[Path, str]:
    """A git repository holding a workflow file, committed: (workflow file, commit)."""
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q", "-b", "main")
    workflow = folder / "training-workflow.yml"
    workflow.write_text(f"name: t\ndescription: {WORKFLOW_DESCRIPTION}\nsteps: []\n")
    git(folder, "add", workflow.name)
    git(folder, "commit", "-q", "-m", "workflow")
    return workflow, git(folder, "rev-parse", "HEAD")


def make_run_dir(folder: Path, *, backend: str = "local", workflow_file: Path | None = None,
                 step: str = "train") -> Path:
    """A rendered run folder as a step sees it (scripts only; nothing runs them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "02-train.sbatch").write_text("#!/bin/bash\n#SBATCH --job-name=t.train\n")
    (folder / "submit.sh").write_text("#!/bin/bash\n")
    (folder / "workflow.yml").write_text(
        f"name: t\ndescription: {WORKFLOW_DESCRIPTION}\nsteps:\n"
        f"  - name: {step}\n    description: the {step} step of the test\n")
    (folder / "run.json").write_text(json.dumps(
        {"run_id": folder.name, "backend": backend,
         "workflow_file": str(workflow_file) if workflow_file else None}) + "\n")
    return folder


def ml_env(store: Path, run_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ITWINAI_HPC_", "MLFLOW_"))}
    env.update({"MLFLOW_TRACKING_URI": f"file:{store}", "MLFLOW_ALLOW_FILE_STORE": "true",
                "PYTHONWARNINGS": "ignore"})
    if run_dir is not None:
        env["ITWINAI_HPC_RUN_DIR"] = str(run_dir)
    env.update(extra)
    return env


def torchrun_train(args: list[str], env: dict[str, str], nproc: int = 2,
                   timeout: int = 240) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=N -m itwinai_hpc.cli train ARGS`."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", "-m",
           "itwinai_hpc.cli", "train", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


def itwinai_hpc(args: list[str], env: dict[str, str], timeout: int = 240,
                cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`itwinai-hpc ARGS` as a user types it (the venv's console script)."""
    exe = Path(sys.executable).with_name("itwinai-hpc")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def final_weight_hashes(stdout: str) -> dict[int, str]:
    hashes = {}
    for line in stdout.splitlines():
        if "final weights sha256" in line:
            rank = int(line.split("]")[0].split()[-1])
            hashes[rank] = line.split()[-1]
    return hashes
