"""Helpers of the ML step tests (a module of its own: two test folders each have a conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_VALIDATION, N_TEST = 4000, 1000, 1000   # train keeps N_TRAIN - N_VALIDATION
TEST_TRAIN_CONFIG = {
    "dataset": "mnist", "model": "mnist-cnn",
    "trainer": {"epochs": 2, "batch_size": 32, "eval_batch_size": 500, "seed": 3},
    "tracking": {"experiment": "mnist-test", "log_every_steps": 20},
    "registry": {"model_name": "mnist-test-cnn"},
}


def make_run_dir(folder: Path) -> Path:
    """A rendered run folder as the train step sees it (scripts only; nothing runs them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "02-train.sbatch").write_text("#!/bin/bash\n#SBATCH --job-name=t.train\n")
    (folder / "submit.sh").write_text("#!/bin/bash\n")
    (folder / "workflow.yml").write_text("name: t\n")
    (folder / "run.json").write_text("{}\n")
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


def final_weight_hashes(stdout: str) -> dict[int, str]:
    hashes = {}
    for line in stdout.splitlines():
        if "final weights sha256" in line:
            rank = int(line.split("]")[0].split()[-1])
            hashes[rank] = line.split()[-1]
    return hashes
