"""A real full disk for the tests that need one: a tmpfs of a given size (root and mount(8), as
tests/run.sh has them; elsewhere the test fails, saying why: it never skips)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: int | str) -> Iterator[Path]:
    """A tmpfs of `size` (bytes, or mount's own form such as "1m") mounted at `path`."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.fail("a full-disk test mounts a tmpfs: it needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
