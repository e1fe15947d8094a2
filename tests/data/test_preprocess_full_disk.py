"""preprocess on a full disk (a real, tiny tmpfs) or past a file-size limit: one `error:` line,
no traceback, no crash (HDF5 used to segfault, exit 139, when a write failed), and no half-written
file left: complete shards keep their sidecars, temporaries are gone, no manifest."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from data_helpers import make_idx_folder
from tmpfs_mount import tmpfs

from itwinai_hpc.data.shards import sha256_file

N_TRAIN, VALIDATION = 6000, 1000
TRAIN_BYTES = (N_TRAIN - VALIDATION) * (28 * 28 + 8)  # pixels + int64 labels of the train shard
PAGE = 4096


def _preprocess(raw: Path, out: Path, config: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "preprocess", "--source",
                           str(raw), "--output", str(out), "--config", str(config)],
                          capture_output=True, text=True, timeout=120, **kw)


def _config(tmp_path: Path, compression: str) -> Path:
    path = tmp_path / "pre.yml"
    path.write_text(json.dumps({"validation_size": VALIDATION, "shards": 1,
                                "compression": compression}))
    return path


def _assert_clean_failure(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode in (1, 2), f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert not list(out.glob(".*.tmp")), "a temporary was left behind"
    assert not (out / "manifest.json").exists()
    for shard in out.glob("*.h5"):  # whatever is left is complete and vouched for
        sidecar = json.loads(shard.with_name(shard.name + ".json").read_text())
        assert sha256_file(shard) == sidecar["sha256"]
    assert {p.suffix for p in out.iterdir()} <= {".h5", ".json"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    make_idx_folder(folder, n_train=N_TRAIN, n_test=100, gz=False)  # random: incompressible
    return folder


@pytest.fixture(scope="module")
def written(raw, tmp_path_factory) -> dict[str, int]:
    """Sizes of the files a complete run writes (pages are what a tmpfs counts)."""
    out = tmp_path_factory.mktemp("complete")
    config = _config(out, "none")
    assert _preprocess(raw, out / "o", config).returncode == 0
    return {p.name: p.stat().st_size for p in (out / "o").iterdir()}


def _pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


SIZES = {
    # far too small: refused before HDF5 writes a byte
    "none-1MiB": ("none", lambda w: 1 << 20),
    # the compressed size is unknown in advance: HDF5 hits ENOSPC mid-shard
    "gzip-1MiB": ("gzip", lambda w: 1 << 20),
    # the train shard's pixels and labels fit, HDF5's own metadata does not
    "none-just-the-pixels": ("none", lambda w: _pages(TRAIN_BYTES)),
    # the train shard and its sidecar fit; the validation shard's pixels do, its metadata not
    "none-one-shard-fits": ("none", lambda w: _pages(w["train-00000-of-00001.h5"])
                            + _pages(w["train-00000-of-00001.h5.json"])
                            + _pages(VALIDATION * (28 * 28 + 8))),
    # the train shard fits to the page, its sidecar does not: the shard goes too
    "none-no-room-for-the-sidecar": ("none", lambda w: _pages(w["train-00000-of-00001.h5"])),
}


@pytest.mark.parametrize("case", list(SIZES))
def test_preprocess_onto_a_full_tmpfs_fails_cleanly(raw, written, tmp_path, case):
    compression, size = SIZES[case]
    with tmpfs(tmp_path / "full", size(written)) as out:
        proc = _preprocess(raw, out, _config(tmp_path, compression))
        _assert_clean_failure(proc, out)
        assert "No space left on device" in proc.stderr or "free" in proc.stderr
        assert str(out) in proc.stderr
        if case == "none-one-shard-fits":
            assert [p.name for p in out.glob("*.h5")] == ["train-00000-of-00001.h5"]
        if case == "none-no-room-for-the-sidecar":
            assert "train-00000-of-00001.h5.json" in proc.stderr and not list(out.iterdir())


def test_preprocess_past_a_file_size_limit_fails_cleanly(raw, tmp_path):
    """No root needed: RLIMIT_FSIZE makes the kernel fail HDF5's writes (EFBIG) the way a full
    disk or an exhausted quota does."""
    out = tmp_path / "out"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = _preprocess(raw, out, _config(tmp_path, "none"), preexec_fn=limit)
    _assert_clean_failure(proc, out)
    assert "File too large" in proc.stderr
