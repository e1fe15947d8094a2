"""The inference workflow's `prepare` step is the training workflow's `preprocess` step: same
source, config and shard folder, so after training it verifies the shards and writes nothing,
and `predict` reads the split that training held out (the test digits)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from ml_helpers import REPO, itwinai_hpc, ml_env

USE_CASE = REPO / "use-cases/mnist"


def resolved_args(workflow: str, step: str, workdir: Path) -> list[str]:
    """The step's args with the workflow's ${vars} (and workdir/workflow_dir) filled in."""
    doc = yaml.safe_load((USE_CASE / workflow).read_text())
    values = {"workdir": str(workdir), "workflow_dir": str(USE_CASE), "run_dir": "RUN",
              **{k: str(v) for k, v in doc["vars"].items()}}

    def fill(text: str) -> str:
        for _ in range(10):
            text = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
        return text

    (found,) = [s for s in doc["steps"] if s["name"] == step]
    return [fill(a) for a in found["args"]]


def test_prepare_is_the_training_preprocess_and_predict_reads_its_test_split(tmp_path):
    preprocess = resolved_args("training-workflow.yml", "preprocess", tmp_path)
    prepare = resolved_args("inference-workflow.yml", "prepare", tmp_path)
    assert prepare == preprocess
    predict = resolved_args("inference-workflow.yml", "predict", tmp_path)
    shards = preprocess[preprocess.index("--output") + 1]
    assert predict[predict.index("--data") + 1] == shards
    config = yaml.safe_load((USE_CASE / "mnist-ai-inference.yml").read_text())
    assert config["split"] == "test"   # training selects on validation, never on test


def mtimes(shards: Path) -> dict[str, int]:
    """Shards and their sidecars (the manifest may be rewritten, with the same bytes)."""
    return {p.name: p.stat().st_mtime_ns for p in shards.glob("*.h5*")}


def test_prepare_after_training_writes_no_shard(tmp_path):
    env = ml_env(tmp_path / "mlruns")
    first = itwinai_hpc(["preprocess", *resolved_args("training-workflow.yml", "preprocess",
                                                      tmp_path)], env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    args = resolved_args("training-workflow.yml", "preprocess", tmp_path)
    shards = Path(args[args.index("--output") + 1])
    before, manifest = mtimes(shards), (shards / "manifest.json").read_bytes()
    again = itwinai_hpc(["preprocess", *resolved_args("inference-workflow.yml", "prepare",
                                                      tmp_path)], env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "shards written: 0" in again.stdout
    assert mtimes(shards) == before and len(before) == 12     # 6 shards + 6 sidecars
    assert (shards / "manifest.json").read_bytes() == manifest
