"""The garbage collector during a step's start-up (core/startup.py): `train` and `predict`, run as
itwinai-hpc's own processes, import torch, torch._dynamo and MLflow with the collector held off,
then let it go before their loop with the libraries frozen out of later collections; a program
that calls cli.main() in its own process keeps its collector as it was. The CPU it saves is
measured by benchmarks/bench_startup.py."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

import pytest
from ml_helpers import REPO, ml_env

from itwinai_hpc.core import startup

pytestmark = pytest.mark.slow

# Runs the console script's entry point (itwinai_hpc.__main__:run) with a watcher that notes the
# collector's state as each library is first imported, and at exit (exit_now runs the atexit
# handlers) whether it collects and how many objects it keeps out of collections.
PROBE = textwrap.dedent("""
    import atexit, gc, json, sys
    state = {}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name in ("torch", "torch._dynamo", "mlflow", "matplotlib") and name not in state:
                state[name] = gc.isenabled()

    sys.meta_path.insert(0, Watch())
    atexit.register(lambda: print("PROBE " + json.dumps(
        {"imported_with_gc": state, "enabled": gc.isenabled(),
         "frozen": gc.get_freeze_count()})))
    sys.argv = ["itwinai-hpc", *sys.argv[1:]]
    from itwinai_hpc.__main__ import run
    run()
""")


def probe(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    return json.loads(line[len("PROBE "):])


def test_train_and_predict_import_their_libraries_with_the_collector_held_then_freeze(
        mnist_shards, train_config_file, tmp_path):
    env = ml_env(tmp_path / "mlruns")
    train = probe(["train", "--config", str(train_config_file), "--data", str(mnist_shards),
                   "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck")], env)
    held = train["imported_with_gc"]
    # torch (the process group), dynamo (the first optimizer) and MLflow (the run) before the
    # loop, held; matplotlib not at all: the test figures are drawn by a process of their own
    # (figure_process.py) while the model is exported.
    assert held == {"torch": False, "torch._dynamo": False, "mlflow": False}, held
    assert train["enabled"] and train["frozen"] > 100_000, train

    predict = probe(["predict", "--data", str(mnist_shards), "--model",
                     "models:/mnist-test-cnn@champion", "--output",
                     str(tmp_path / "predictions.csv")], env)
    assert predict["imported_with_gc"]["torch"] is False
    assert predict["imported_with_gc"]["mlflow"] is False
    assert predict["enabled"] and predict["frozen"] > 100_000, predict
    assert (tmp_path / "predictions.csv").is_file()

    normal = probe(["predict", "--data", str(mnist_shards), "--model",
                    "models:/mnist-test-cnn@champion", "--output", str(tmp_path / "p2.csv")],
                   {**env, "ITWINAI_HPC_GC": "normal"})
    assert set(normal["imported_with_gc"].values()) == {True}, normal
    assert normal["enabled"] and normal["frozen"] == 0, normal


def test_a_program_that_calls_cli_main_keeps_its_collector(monkeypatch):
    """hold/release only where own_process() said the process is ours: cli.main() called from a
    notebook or this test suite leaves gc enabled and freezes nothing."""
    monkeypatch.setattr(startup, "_owned", False)
    frozen = gc.get_freeze_count()
    startup.hold_collector()
    assert gc.isenabled() and not startup.collector_held()
    startup.release_collector()
    assert gc.isenabled() and gc.get_freeze_count() == frozen

    monkeypatch.setenv("ITWINAI_HPC_GC", "normal")
    startup.own_process()
    startup.hold_collector()
    assert gc.isenabled() and not startup.collector_held()
