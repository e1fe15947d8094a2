"""`train`, `predict` and `mlflow-ui` on input that used to end in a traceback: a checkpoint of
another model, a damaged or incomplete MLflow store, shards the model does not take, a full
disk, a port out of range, manifests that lie. Each is one `error:` line through the real CLI
(exit 2 for what the user fixes, 1 for a runtime failure), no traceback, nothing half-written.

Real parts throughout: h5py shards written by the project's own shard writer (tiny, synthetic,
so that a manifest can be made to lie), a real MLflow file store with a registered model, torch
on the CPU, a real 1 MiB tmpfs for the full disk.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ml_helpers import REPO, TEST_TRAIN_CONFIG
from tmpfs_mount import tmpfs

from itwinai_hpc.cli import main
from itwinai_hpc.data.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    sha256_file,
    shard_name,
    write_json,
    write_shard,
)

MODEL = "clean-errors-cnn"
SPLITS = ("train", "validation", "test")


# -- helpers ----------------------------------------------------------------------------------

def make_shards(folder: Path, *, shape=(28, 28), arrays_shape=None, sizes=(64, 32, 64),
                num_classes: int = 10, labels_up_to: int | None = None,
                declared_classes: int | None = None, std: float = 0.3081,
                seed: int = 0) -> Path:
    """A shard folder as preprocess writes it (one real HDF5 shard per split, manifest last),
    except where asked to lie: `arrays_shape` (the arrays' image shape; the manifest says
    `shape`), `labels_up_to` (labels drawn from 0..labels_up_to-1, counted as if they were all
    class 0), `declared_classes` (the manifest's num_classes; the counts keep `num_classes`
    entries), `std` (the manifest's normalization std)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    arrays_shape = tuple(arrays_shape or shape)
    splits = {}
    for split, n in zip(SPLITS, sizes):
        images = rng.integers(0, 256, (n, *arrays_shape), dtype=np.uint8)
        labels = rng.integers(0, labels_up_to or num_classes, n).astype(np.int64)
        name = shard_name(split, 0, 1)
        write_shard(folder / name, [images], labels, image_shape=arrays_shape, split=split,
                    compression="none", chunk_rows=32)
        counts = (np.bincount(labels, minlength=num_classes).tolist() if labels_up_to is None
                  else [n] + [0] * (num_classes - 1))
        shard = ShardInfo(file=name, split=split, index=0, num_samples=n, class_counts=counts,
                          sha256=sha256_file(folder / name),
                          num_bytes=(folder / name).stat().st_size)
        splits[split] = SplitInfo(num_samples=n, class_counts=counts, shards=[shard])
    manifest = Manifest(dataset="mnist", source="synthetic", seed=seed, plan_id="test",
                        image_shape=list(shape), num_classes=declared_classes or num_classes,
                        normalization={"mean": 0.1307, "std": std}, compression="none",
                        chunk_rows=32, splits=splits)
    write_json(folder / MANIFEST_NAME, manifest.to_json())
    return folder


def register_untrained(store: Path, image_shape=(28, 28), num_classes: int = 10) -> str:
    """An untrained mnist-cnn behind the served contract, registered as training does it
    (version 1 of MODEL, holding @champion). Returns the store's URI."""
    import torch

    from itwinai_hpc.ml import served, tracking
    from itwinai_hpc.ml.models import build_model
    from itwinai_hpc.ml.registry import Registration, log_and_register

    torch.manual_seed(0)
    classifier = served.PixelClassifier(build_model("mnist-cnn", num_classes), 0.1307,
                                        0.3081).eval()
    uri = tracking.configure(f"file:{store}")
    tracking.start_run("clean-errors-registration")
    try:
        log_and_register(Registration(served.Probabilities(classifier).eval(),
                                      np.zeros((2, *image_shape), np.uint8), name=MODEL,
                                      alias="champion", metric="val_accuracy", value=0.5))
    finally:
        tracking.end_run()
    return uri


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`itwinai-hpc ARGV` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main(list(argv))
    except SystemExit as e:   # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(rc: int, err: str, expected_rc: int, *words: str) -> str:
    """The single `error:` line, after checking the exit code, that there is no traceback and
    that the line holds each of `words`."""
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-3000:]
    assert rc == expected_rc, f"exit {rc}: {err[-3000:]}"
    for word in words:
        assert word in errors[0], f"{word!r} not in: {errors[0]}"
    return errors[0]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "ITWINAI_HPC_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY",
                           "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards") / "s")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    values = copy.deepcopy(TEST_TRAIN_CONFIG)
    values["trainer"].update(epochs=2, eval_batch_size=64)
    values["tracking"]["system_metrics_every_s"] = 0
    path = tmp_path_factory.mktemp("config") / "train.yml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def registered(tmp_path) -> tuple[Path, str]:
    """A store of its own (the tests damage it) with MODEL version 1 @champion."""
    store = tmp_path / "mlruns"
    register_untrained(store)
    return store, f"file:{store}"


def predict(capsys, data: Path, model: str, store: str, output: Path):
    return cli(capsys, "predict", "--data", str(data), "--model", model, "--output",
               str(output), "--tracking-uri", store)


# -- 1. resuming from a checkpoint of another model --------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(shards, config_file, tmp_path_factory) -> Path:
    """The checkpoint of an mnist-cnn on `shards` (10 classes), after epoch 1 of 2."""
    import _pytest.monkeypatch

    folder = tmp_path_factory.mktemp("ck")
    with _pytest.monkeypatch.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        rc = main(["train", "--config", str(config_file), "--data", str(shards),
                   "--checkpoint-dir", str(folder / "ck"), "--tracking-uri",
                   f"file:{folder / 'mlruns'}", "--stop-after-epochs", "1"])
    assert rc == 0 and (folder / "ck" / "checkpoint.pt").is_file()
    return folder / "ck"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("change", ["model", "class-count"])
def test_resuming_a_checkpoint_of_another_model_names_it_and_asks_for_a_new_folder(
        change, checkpoint, shards, config_file, tmp_path, capsys):
    import torch

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    before = (ck / "checkpoint.pt").read_bytes()
    args = ["train", "--config", str(config_file), "--checkpoint-dir", str(ck),
            "--tracking-uri", f"file:{tmp_path / 'mlruns'}"]
    if change == "model":
        args += ["--data", str(shards), "--set", "model=mnist-cnn-wide"]
        words = ["'mnist-cnn'", "'mnist-cnn-wide'"]
    else:   # the same model name, shards with 5 classes: another output layer
        args += ["--data", str(make_shards(tmp_path / "five", num_classes=5))]
        words = ["10x128", "5x128"]
    rc, _, err = cli(capsys, *args)
    line = one_error(rc, err, 2, str(ck / "checkpoint.pt"), "--checkpoint-dir", *words)
    assert "checkpoint is for" in line
    assert (ck / "checkpoint.pt").read_bytes() == before          # left as it was
    assert torch.load(ck / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "mlruns").exists()                     # refused before MLflow


# -- 2. predict with a damaged or incomplete store, or shards the model does not take ----------

def _logged_model_folders(store: Path) -> list[Path]:
    return [p for p in store.glob("*/models/m-*") if p.is_dir()]


def _training_run_folder(store: Path) -> Path:
    (run,) = [p for p in store.glob("*/*") if (p / "meta.yaml").is_file()
              and len(p.name) == 32]
    return run


def damage_artifacts_deleted(store: Path) -> tuple[str, list[str]]:
    for folder in _logged_model_folders(store):
        shutil.rmtree(folder / "artifacts")
    return f"models:/{MODEL}@champion", ["missing"]


def damage_registered_model_meta(store: Path) -> tuple[str, list[str]]:
    meta = store / "models" / MODEL / "meta.yaml"
    meta.write_text(meta.read_text()[:40])      # truncated mid-file: no longer YAML
    return f"models:/{MODEL}@champion", [str(meta), "damaged"]


def damage_version_meta(store: Path) -> tuple[str, list[str]]:
    meta = store / "models" / MODEL / "version-1" / "meta.yaml"
    meta.write_text("")
    return f"models:/{MODEL}/1", [f"{meta}: --model:", "damaged", "empty"]


def damage_run_meta(store: Path) -> tuple[str, list[str]]:
    run = _training_run_folder(store)
    meta = run / "meta.yaml"
    meta.write_text(meta.read_text()[:30])
    return f"runs:/{run.name}/model", [f"{meta}: --model:", "damaged", "experiment_id"]


def damage_weights(store: Path) -> tuple[str, list[str]]:
    for folder in _logged_model_folders(store):
        for f in (folder / "artifacts" / "data").iterdir():
            f.write_bytes(f.read_bytes()[:100])
    return f"models:/{MODEL}@champion", ["damaged"]


def damage_dangling_alias(store: Path) -> tuple[str, list[str]]:
    """The alias still names version 1, whose folder is gone."""
    shutil.rmtree(store / "models" / MODEL / "version-1")
    return f"models:/{MODEL}@champion", ["alias 'champion'", "version 1", "no longer exists"]


DAMAGE = {"artifacts-deleted": damage_artifacts_deleted,
          "registered-model-meta-truncated": damage_registered_model_meta,
          "version-meta-empty": damage_version_meta,
          "run-meta-truncated": damage_run_meta,
          "weights-truncated": damage_weights,
          "dangling-alias": damage_dangling_alias}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_predict_from_a_damaged_store_is_one_error_naming_the_model(damage, registered, shards,
                                                                     tmp_path, capsys):
    store, uri = registered
    model, words = DAMAGE[damage](store)
    out = tmp_path / "out" / "predictions.csv"
    rc, _, err = predict(capsys, shards, model, uri, out)
    one_error(rc, err, 2, repr(model), *words)
    assert not out.exists() and not out.parent.exists()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["16x16-images", "5-classes"])
def test_predict_on_shards_the_model_does_not_take_names_the_shards_and_the_model(
        kind, registered, tmp_path, capsys):
    _, uri = registered
    if kind == "16x16-images":
        data = make_shards(tmp_path / "s16", shape=(16, 16))
        words = ["image_shape", "16x16", "28x28"]
    else:
        data = make_shards(tmp_path / "s5", num_classes=5)
        words = ["num_classes", "5", "10"]
    out = tmp_path / "out" / "predictions.csv"
    model = f"models:/{MODEL}@champion"
    rc, _, err = predict(capsys, data, model, uri, out)
    one_error(rc, err, 2, str(data / MANIFEST_NAME), repr(model), *words)
    assert not out.parent.exists()


@pytest.mark.timeout(600)
def test_training_a_model_on_images_it_cannot_take_is_refused_before_training(
        config_file, tmp_path, capsys):
    """mnist-cnn is built for 28x28 digits: 16x16 shards used to crash in its first step."""
    data = make_shards(tmp_path / "s16", shape=(16, 16))
    rc, _, err = cli(capsys, "train", "--config", str(config_file), "--data", str(data),
                     "--tracking-uri", f"file:{tmp_path / 'mlruns'}")
    one_error(rc, err, 2, str(data / MANIFEST_NAME), "image_shape", "'mnist-cnn'", "16x16")
    assert not (tmp_path / "mlruns").exists()


# -- 3. predictions onto a full disk ------------------------------------------------------------

@pytest.mark.timeout(600)
def test_predictions_onto_a_full_disk_fail_cleanly_and_leave_no_partial_file(
        registered, tmp_path, capsys):
    """3000 predictions are ~40 KiB of CSV; the 1 MiB tmpfs has 8 KiB left: the write starts,
    then fails. The earlier predictions file there is kept whole; nothing else is left."""
    _, uri = registered
    data = make_shards(tmp_path / "big", sizes=(64, 32, 3000))
    with tmpfs(tmp_path / "full", "1m") as disk:
        old = disk / "predictions.csv"
        old.write_text("index,predicted,probability,label\n0,1,0.5,1\n")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (free - 8192))
        rc, _, err = predict(capsys, data, f"models:/{MODEL}@champion", uri, disk)
        one_error(rc, err, 1, "No space left on device", str(old), "--output")
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "predictions.csv"]
        assert old.read_text() == "index,predicted,probability,label\n0,1,0.5,1\n"


# -- 4. mlflow-ui with a port out of range ------------------------------------------------------

@pytest.mark.parametrize("port", ["70000", "65536", "-1", "http"])
def test_mlflow_ui_refuses_a_port_out_of_range_at_the_command_line(port, tmp_path):
    (tmp_path / "mlruns").mkdir()
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "mlflow-ui", "--path",
                        str(tmp_path / "mlruns"), "--port", port], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    one_error(p.returncode, p.stderr, 2, "--port", repr(port), "0-65535")
    assert "MLflow UI" not in p.stdout


# -- 5. manifests that lie ----------------------------------------------------------------------

LIES = {
    # field named ({split}: the split the command reads first), what make_shards is asked for
    "std-0": ("normalization.std", {"std": 0.0}),
    "num-classes-vs-counts": ("num_classes", {"declared_classes": 5}),
    "labels-beyond-num-classes": ("num_classes", {"num_classes": 5, "labels_up_to": 10}),
    "class-counts-vs-labels": ("splits.{split}.class_counts", {"labels_up_to": 10}),
    "image-shape-vs-arrays": ("image_shape", {"arrays_shape": (16, 16)}),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lie", list(LIES))
def test_train_refuses_a_lying_manifest_before_training(lie, config_file, tmp_path, capsys):
    field, kw = LIES[lie]
    data = make_shards(tmp_path / "s", **kw)
    ck = tmp_path / "ck"
    rc, _, err = cli(capsys, "train", "--config", str(config_file), "--data", str(data),
                     "--checkpoint-dir", str(ck), "--tracking-uri",
                     f"file:{tmp_path / 'mlruns'}")
    one_error(rc, err, 2, str(data / MANIFEST_NAME), f": {field.format(split='train')}:")
    assert not ck.exists() and not (tmp_path / "mlruns").exists()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One store for the predict tests that do not damage it."""
    return register_untrained(tmp_path_factory.mktemp("store") / "mlruns")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lie", list(LIES))
def test_predict_refuses_a_lying_manifest(lie, shared_store, tmp_path, capsys):
    field, kw = LIES[lie]
    data = make_shards(tmp_path / "s", **kw)
    out = tmp_path / "out" / "predictions.csv"
    rc, _, err = predict(capsys, data, f"models:/{MODEL}@champion", shared_store, out)
    one_error(rc, err, 2, str(data / MANIFEST_NAME), f": {field.format(split='test')}:")
    assert not out.parent.exists()
