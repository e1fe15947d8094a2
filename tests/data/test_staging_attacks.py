"""A hostile or broken manifest cannot make stage-shards (or a reader) write outside --to, or
read a device, a FIFO or more bytes than the manifest states: each is one `error:` line, exit
2, naming the manifest and the shard, before a byte is written under --to."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.shards import read_manifest

# A regression must not fill the disk (reading /dev/zero) or hang the suite (a FIFO).
FILE_LIMIT = 64 << 20


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def _stage(data: Path, to: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "stage-shards", "--data",
                           str(data), "--to", str(to)], capture_output=True, text=True,
                          timeout=30, preexec_fn=_limit_file_size)


def _attack(shards: Path, data: Path, **entry) -> str:
    """Copy the shard folder to `data` and point its first train shard's entry at `entry`;
    the name of the shard attacked."""
    shutil.copytree(shards, data)
    manifest = data / "manifest.json"
    d = json.loads(manifest.read_text())
    shard = d["splits"]["train"]["shards"][0]
    shard.update(entry)
    manifest.write_text(json.dumps(d, indent=2))
    return shard["file"]


def _assert_refused(proc: subprocess.CompletedProcess, data: Path, name: str, to: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert str(data / "manifest.json") in lines[0] and repr(name) in lines[0]
    assert not to.exists() or not [p for p in to.rglob("*") if not p.is_dir()]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_shard_name_that_climbs_out_of_the_folder_is_refused_and_the_target_left_whole(
        shards, tmp_path):
    data, to = tmp_path / "d" / "data", tmp_path / "t" / "to"
    payload = b"written by the manifest's author"
    (tmp_path / "victim.txt").write_bytes(payload)  # what data/../../victim.txt reads
    victim = tmp_path / "t" / "victim.txt"  # what <to>/<staged>/../../victim.txt would write
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    name = _attack(shards, data, file="../../victim.txt", sha256=_sha(payload),
                   num_bytes=len(payload))
    proc = _stage(data, to)
    _assert_refused(proc, data, name, to)
    assert victim.read_bytes() == b"precious"


def test_a_shard_that_is_a_symlink_to_dev_zero_is_refused(shards, tmp_path):
    data, to = tmp_path / "data", tmp_path / "to"
    size = 1 << 20  # the manifest even states /dev/zero's first MiB, checksum and all
    name = _attack(shards, data, file="zero.h5", sha256=_sha(bytes(size)), num_bytes=size)
    (data / name).symlink_to("/dev/zero")
    proc = _stage(data, to)
    _assert_refused(proc, data, name, to)
    assert "symlink" in proc.stderr


def test_a_shard_that_is_a_fifo_is_refused_without_waiting_for_a_writer(shards, tmp_path):
    data, to = tmp_path / "data", tmp_path / "to"
    name = _attack(shards, data, file="fifo.h5")
    os.mkfifo(data / name)
    proc = _stage(data, to)
    _assert_refused(proc, data, name, to)
    assert "not a regular file" in proc.stderr


def test_a_shard_that_is_a_character_device_is_refused(shards, tmp_path):
    data, to = tmp_path / "data", tmp_path / "to"
    size = 1 << 20
    name = _attack(shards, data, file="zero.h5", sha256=_sha(bytes(size)), num_bytes=size)
    try:
        os.mknod(data / name, 0o600 | 0o020000, os.makedev(1, 5))  # S_IFCHR: /dev/zero
    except (PermissionError, OSError) as e:
        pytest.fail(f"cannot create a device node here ({e}); tests/run.sh runs as root")
    proc = _stage(data, to)
    _assert_refused(proc, data, name, to)
    assert "not a regular file" in proc.stderr


def test_a_shard_longer_than_the_manifest_states_is_refused(shards, tmp_path):
    data, to = tmp_path / "data", tmp_path / "to"
    shutil.copytree(shards, tmp_path / "orig")
    first = read_manifest(tmp_path / "orig").splits["train"].shards[0]
    longer = (tmp_path / "orig" / first.file).read_bytes() + bytes(4096)
    # The checksum covers every byte of the longer file: only the stated size tells.
    name = _attack(shards, data, sha256=_sha(longer))
    (data / name).write_bytes(longer)
    proc = _stage(data, to)
    _assert_refused(proc, data, name, to)
    assert f"{first.num_bytes} bytes" in proc.stderr and f"{len(longer)}" in proc.stderr


@pytest.mark.parametrize("name", ["../x.h5", "../../etc/passwd", "/etc/passwd", "a/b.h5", "",
                                  "x\x00.h5", "..", ".", 7, None])
def test_read_manifest_refuses_a_shard_name_that_is_not_a_plain_file_name(shards, name):
    manifest = shards / "manifest.json"
    d = json.loads(manifest.read_text())
    d["splits"]["test"]["shards"][1]["file"] = name
    manifest.write_text(json.dumps(d))
    with pytest.raises(UserError) as e:
        read_manifest(shards)
    assert e.value.file == str(manifest) and repr(name) in e.value.message
    assert "\n" not in e.value.format()


READ_ROWS = textwrap.dedent("""
    import sys
    from itwinai_hpc.core.errors import UserError
    from itwinai_hpc.data.dataset import read_rows
    from itwinai_hpc.data.shards import read_manifest
    try:
        read_rows(read_manifest(sys.argv[1]), "train", 0, 10)
    except UserError as e:
        print(e.format())
        sys.exit(2)
""")


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo"])
def test_the_reader_refuses_a_shard_that_is_not_a_regular_file(shards, tmp_path, kind):
    data = tmp_path / "data"
    name = _attack(shards, data, file="odd.h5")
    if kind == "fifo":
        os.mkfifo(data / name)
    else:
        (data / name).symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-c", READ_ROWS, str(data)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert repr(name) in proc.stdout or str(data / name) in proc.stdout
