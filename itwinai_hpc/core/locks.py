"""File locks (flock) held around a read-modify-write: one helper for the run folder's locks, the
registry's and node-local staging's, so waiting, giving up and unlocking follow one rule."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from typing import IO


def acquire(f: IO, *, shared: bool = False, wait_s: float | None = None,
            what: str = "the lock") -> None:
    """flock the open file `f`. wait_s None: wait as long as it takes; 0: BlockingIOError at once
    when someone holds it; else poll until wait_s seconds have passed, then RuntimeError naming
    `what`. OSError where the file system has no flock (ENOLCK, EOPNOTSUPP)."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if wait_s is None:
        fcntl.flock(f, mode)
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if wait_s == 0:
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"waited {wait_s:.0f} s for {what}; the process holding it "
                                   "is stuck (a hung file system?)") from None
            time.sleep(0.05)


def release(f: IO) -> None:
    fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def held(f: IO, *, shared: bool = False, wait_s: float | None = None,
         what: str = "the lock") -> Iterator[None]:
    """acquire() for the block, released however it ends."""
    acquire(f, shared=shared, wait_s=wait_s, what=what)
    try:
        yield
    finally:
        release(f)
