"""A step that asked for GPUs refuses to train on the CPU (a CUDA image on AMD nodes, a driver
too old for the wheel): one clear line naming what was asked and what torch sees. Runs here, on
a machine with no GPU, exactly as such a node looks to torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def train(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "train", "--config",
                           str(ROOT / "use-cases/mnist/mnist-ai-train.yml"), "--data",
                           str(tmp_path / "no-shards"), "--tracking-uri",
                           f"file:{tmp_path / 'mlruns'}"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


def test_a_gpu_step_that_sees_no_gpu_stops_instead_of_training_on_the_cpu(tmp_path):
    env = {**os.environ, "ITWINAI_HPC_GPUS_PER_NODE": "4", "MLFLOW_ALLOW_FILE_STORE": "true"}
    p = train(tmp_path, env)
    assert p.returncode == 2, p.stdout + p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "asked for 4 GPU(s) per node" in errors[0] and "sees 0" in errors[0]
    assert "gpus-per-node: 0" in errors[0]                  # and how to run on the CPU on purpose
    assert not (tmp_path / "mlruns").exists()               # nothing started


def test_a_cpu_step_is_not_asked_about_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ITWINAI_HPC_GPUS_PER_NODE"}
    p = train(tmp_path, {**env, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert "GPU" not in p.stderr and "no-shards" in p.stderr    # it got as far as the data
