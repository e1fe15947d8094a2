"""A classifier trains on write_shards' shards whatever numeric dtypes the use case stored:
float64 inputs reach a float32 model in its dtype in validation as in training, and int32 class
numbers reach cross_entropy as the int64 it takes (a lossless widening; the shards keep int32).
Both used to end the training step with a torch RuntimeError traceback."""

from __future__ import annotations

import textwrap

import numpy as np
from ml_helpers import itwinai_hpc, ml_env
from own_package import write_package
from test_predict_classes import CONFIG, NET, fields

from itwinai_hpc.data import write_shards
from itwinai_hpc.data.shards import read_manifest


def test_float64_inputs_and_int32_classes_train_and_register(tmp_path):
    root = write_package(tmp_path)
    (root / "tinyfield" / "classes.py").write_text(textwrap.dedent(NET))
    (root / "train.yml").write_text(textwrap.dedent(CONFIG))
    x, y = fields(240, "float64")
    y = y.astype(np.int32)
    cut = {"train": slice(0, 160), "validation": slice(160, 200), "test": slice(200, 240)}
    write_shards(root / "shards", {s: {"inputs": x[c], "targets": y[c]} for s, c in cut.items()},
                 dataset="tinyclasses", shard_size=32, num_classes=3)
    arrays = read_manifest(root / "shards").arrays
    assert (arrays["inputs"]["dtype"], arrays["targets"]["dtype"]) == ("float64", "int32")
    p = itwinai_hpc(["train", "--config", str(root / "train.yml"), "--data",
                     str(root / "shards")], ml_env(root / "mlruns", PYTHONPATH=str(root)),
                    timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "val_accuracy" in p.stdout and "registered tinyclasses version 1" in p.stdout
