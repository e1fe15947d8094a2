"""The ML commands' CLI: fast help without torch or mlflow, clear errors, the MLflow UI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from ml_helpers import REPO, ml_env

PROBE = """
import contextlib, io, json, sys
from itwinai_hpc.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""
# What the orchestration needs and a step inside a job does not (~40 ms at every start).
ORCHESTRATION = {"itwinai_hpc.backends", "itwinai_hpc.run.manifest", "itwinai_hpc.run.planned"}
# Loaded by a step only once it logs to MLflow (pandas and pyarrow come with it) or draws.
TRACKING_AND_FIGURES = {"mlflow", "pandas", "pyarrow", "matplotlib"}


def modules_loaded_by(argv: list[str], env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh process holds after `itwinai-hpc ARGV` returns or fails."""
    p = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                       cwd=REPO, timeout=120, env=env)
    return set(json.loads(p.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"],
                                  ["mlflow-ui", "--help"]])
def test_help_imports_neither_torch_nor_mlflow(argv):
    assert modules_loaded_by(argv) & {"torch", "mlflow", "h5py"} == set()


def test_train_reaches_its_data_without_the_orchestration_mlflow_or_matplotlib(tmp_path):
    loaded = modules_loaded_by(["train", "--data", str(tmp_path / "missing"), "--epochs", "1"],
                               env=ml_env(tmp_path / "mlruns"))
    assert {"torch", "itwinai_hpc.ml.trainer"} <= loaded     # it got as far as the trainer
    assert loaded & (ORCHESTRATION | TRACKING_AND_FIGURES) == set()


def test_predict_reaches_its_data_without_the_orchestration_torch_or_mlflow(tmp_path):
    loaded = modules_loaded_by(["predict", "--data", str(tmp_path / "missing"), "--model",
                                "models:/m@champion", "--output", str(tmp_path / "p.csv")],
                               env=ml_env(tmp_path / "mlruns"))
    assert "itwinai_hpc.ml.predict" in loaded
    assert loaded & (ORCHESTRATION | TRACKING_AND_FIGURES | {"torch"}) == set()


def test_unknown_config_key_exits_2_naming_file_and_line(tmp_path):
    cfg = tmp_path / "train.yml"
    cfg.write_text("model: mnist-cnn\ntrainer:\n  epochs: 1\n  epoch: 2\n")
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "train", "--config", str(cfg),
                        "--data", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       timeout=60, env=ml_env(tmp_path / "mlruns"))
    assert p.returncode == 2
    assert f"{cfg}:4: trainer.epoch: unknown key 'epoch'" in p.stderr


@pytest.mark.slow   # the MLflow server takes ~5-20 s to start on 2 cores
def test_mlflow_ui_on_port_0_prints_the_free_port_it_serves_on(tmp_path):
    (tmp_path / "mlruns").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "itwinai_hpc.cli", "mlflow-ui", "--path",
                             str(tmp_path / "mlruns"), "--port", "0"], cwd=REPO,
                            env=ml_env(tmp_path / "elsewhere"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        printed = [proc.stdout.readline() for _ in range(3)]
        assert printed[0].startswith("MLflow UI for file:") and "1 worker;" in printed[0]
        assert '"Model training"' in printed[2]            # the GenAI-view banner
        port = int(printed[0].split("http://127.0.0.1:")[1].split()[0])
        assert port != 0
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert body is not None and "OK" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_ui_refuses_a_missing_store(tmp_path):
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "mlflow-ui", "--path",
                        str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert p.returncode == 2 and "no MLflow store" in p.stderr


def test_mnist_use_case_configs_are_valid():
    from itwinai_hpc.ml.config import InferenceConfig, TrainConfig, load_config

    train = load_config(TrainConfig, REPO / "use-cases/mnist/mnist-ai-train.yml")
    assert train.model == "mnist-cnn" and train.registry.alias == "champion"
    infer = load_config(InferenceConfig, REPO / "use-cases/mnist/mnist-ai-inference.yml")
    assert infer.model_uri == "models:/mnist-cnn@champion"


@pytest.mark.parametrize("command, pairs", [
    ("train", [("--data", "--train-dataset"), ("--tracking-uri", "--ml-logs")]),
    ("predict", [("--data", "--input-dataset"), ("--output", "--predictions-location"),
                 ("--tracking-uri", "--ml-logs")]),
])
def test_help_shows_itwinais_flag_names_beside_ours(command, pairs):
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", command, "--help"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    flat = " ".join(p.stdout.split())
    for ours, theirs in pairs:
        assert f"{ours} " in flat and f", {theirs} " in flat, (ours, theirs, p.stdout)


def test_mlflow_ui_on_a_busy_port_exits_2_and_names_a_free_one(tmp_path):
    (tmp_path / "mlruns").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "mlflow-ui", "--path",
                            str(tmp_path / "mlruns"), "--port", str(port)], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in p.stderr
    suggested = int(p.stderr.split("e.g. --port ")[1].split(",")[0])
    assert suggested != port
    assert "MLflow UI" not in p.stdout          # nothing started, nothing announced


def test_stop_file_is_the_job_scripts_or_the_steps_own_in_the_run_folder():
    from itwinai_hpc.ml.cli import stop_file

    assert stop_file({"ITWINAI_HPC_STOP_FILE": "/r/train.STOP", "ITWINAI_HPC_RUN_DIR": "/r",
                      "ITWINAI_HPC_STEP": "x"}) == "/r/train.STOP"
    assert stop_file({"ITWINAI_HPC_RUN_DIR": "/r", "ITWINAI_HPC_STEP": "train"}) == \
        "/r/train.STOP"
    assert stop_file({"ITWINAI_HPC_RUN_DIR": "/r"}) is None


def test_inference_config_errors_read_like_the_train_configs(tmp_path):
    cfg = tmp_path / "inference.yml"
    cfg.write_text("dataset: mnist\nsplit: tset\nbatch_size: 0\n")
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "predict", "--config", str(cfg),
                        "--data", str(tmp_path), "--output", str(tmp_path / "p.csv")],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=ml_env(tmp_path / "mlruns"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"error: {cfg}:2: split: ") and "'test'" in lines[0]
    assert (lines[1].startswith(f"error: {cfg}:3: batch_size: ")
            and "greater than or equal to 1" in lines[1])
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "mlruns").exists()


def test_predictions_location_may_be_a_folder(tmp_path):
    from itwinai_hpc.ml.predict import output_file

    assert output_file(tmp_path) == tmp_path / "predictions.csv"
    assert output_file(f"{tmp_path}/new/") == tmp_path / "new" / "predictions.csv"
    assert output_file(tmp_path / "p.csv") == tmp_path / "p.csv"
