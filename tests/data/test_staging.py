"""Node-local staging: a checked copy of the shards, made once per node even when every rank
asks at the same moment, and the reader pointed at it by $ITWINAI_HPC_STAGE_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data import staging
from itwinai_hpc.data.dataset import ShardedLoader
from itwinai_hpc.data.shards import read_manifest
from itwinai_hpc.data.staging import stage_shards


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_staged_copy_has_every_shard_and_reads_back_the_same_batches(shards, tmp_path):
    result = stage_shards(shards, tmp_path / "local")
    assert result.folder.parent == tmp_path / "local" and result.copied_files == 6
    assert (result.folder / "manifest.json").read_bytes() == (shards / "manifest.json").read_bytes()
    kw = dict(rank=0, world_size=1, return_index=True, seed=2)
    original = list(ShardedLoader(shards, "train", 100, **kw))
    staged = list(ShardedLoader(result.folder, "train", 100, **kw))
    assert all(torch.equal(x, y) for a, b in zip(original, staged) for x, y in zip(a, b))


def test_staging_again_copies_nothing_and_a_removed_copy_is_restored(shards, tmp_path):
    first = stage_shards(shards, tmp_path)
    again = stage_shards(shards, tmp_path)
    assert again.copied_files == 0 and "already staged" in again.describe()
    (first.folder / "test-00001-of-00002.h5").unlink()
    repaired = stage_shards(shards, tmp_path)
    assert repaired.copied_files == 1
    assert ShardedLoader(first.folder, "test", 64, rank=0, world_size=1).total == 301


def test_a_corrupted_shard_is_refused_and_nothing_is_staged(shards, tmp_path):
    victim = shards / "train-00001-of-00003.h5"
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 does not match") as e:
        stage_shards(shards, tmp_path)
    assert e.value.file == str(victim)
    folder = staging.staged_folder(read_manifest(shards), tmp_path)
    assert not (folder / "manifest.json").exists() and not (folder / victim.name).exists()
    assert not list(folder.glob(".*.tmp"))


def test_too_little_space_is_an_error_before_anything_is_copied(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda _: SimpleNamespace(free=1000))
    with pytest.raises(UserError, match=r"staging needs 1\.\d+ MB, only 1\.00 kB free"):
        stage_shards(shards, tmp_path)
    assert not list(staging.staged_folder(read_manifest(shards), tmp_path).glob("*.h5"))


def test_every_rank_of_a_node_may_stage_at_once_and_one_copies(shards, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "itwinai_hpc.cli", "stage-shards", "--data",
                               str(shards), "--to", str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert len({out for out, _ in results}) == 1  # every rank is told the same folder
    assert sum("staged 6 shard(s)" in err for _, err in results) == 1
    assert sum("already staged" in err for _, err in results) == 3
    folder = results[0][0].strip()
    assert read_manifest(folder).splits["train"].num_samples == 1001


def test_stage_shards_without_a_manifest_exits_2_naming_the_folder(tmp_path):
    proc = _cli("stage-shards", "--data", str(tmp_path / "nothing"), "--to", str(tmp_path / "l"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nothing") in proc.stderr
    assert "run `itwinai-hpc preprocess`" in proc.stderr


def test_stage_shards_defaults_to_tmpdir(shards, tmp_path):
    proc = _cli("stage-shards", "--data", str(shards), env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(tmp_path))


def test_the_reader_stages_to_the_folder_in_the_environment_once(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("ITWINAI_HPC_STAGE_DIR", str(tmp_path / "node"))
    monkeypatch.setattr(staging, "_STAGED", {})
    train = ShardedLoader(shards, "train", 64, rank=0, world_size=1)
    validation = ShardedLoader(read_manifest(shards), "validation", 64, rank=0, world_size=1)
    assert train.manifest.path.is_relative_to(tmp_path / "node")
    assert validation.manifest.path == train.manifest.path
    assert "staged 6 shard(s)" in train.describe() and validation.staged is train.staged
