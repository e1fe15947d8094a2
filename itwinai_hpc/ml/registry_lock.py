"""The registry lock of an MLflow store: one writer at a time moves an alias (and logs shard
datasets), whatever process or node it runs on, and readers of an alias never see it half
moved. A flock on a file inside a file store's folder or beside a sqlite database.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from itwinai_hpc.core import locks

REGISTRY_LOCK = ".itwinai-hpc-registry.lock"
LOCK_WAIT_S = 600.0


def registry_lock_file(uri: str) -> Path | None:
    """The lock file of the store at `uri`: inside a file store's folder (file: URI or plain
    path), beside a sqlite database file; None for a tracking server (http:, https:,
    databricks...) or an in-memory database, which no file lock can guard."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db; sqlite:// alone is in memory.
        db = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
        return Path(db).parent / REGISTRY_LOCK if db and db != ":memory:" else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)) / REGISTRY_LOCK
    if "://" not in uri and len(parsed.scheme) <= 1:   # a plain path (C: on Windows)
        return Path(uri) / REGISTRY_LOCK
    return None


@contextlib.contextmanager
def registry_lock(uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the registry lock of store `uri` (an exclusive flock, across processes and, on a
    shared file system with working flock, across nodes); yields the lock file, or None where
    there is none: a tracking server (last writer wins there), or a file system without
    flock, which gets a warning on stderr. Waiting longer than `wait_s` is a RuntimeError."""
    path = registry_lock_file(uri)
    if path is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        locked = None
        try:
            f = stack.enter_context(open(path, "a"))
            locks.acquire(f, wait_s=wait_s, what=f"the registry lock {path}")
            locked = path
        except OSError as e:   # ENOLCK, ENOSYS, EOPNOTSUPP: e.g. Lustre mounted without flock
            print(f"warning: cannot lock {path} ({e.strerror or e}); registering without the "
                  "lock: tasks finishing at the same moment may leave a worse version holding "
                  "the alias", file=sys.stderr, flush=True)
        try:
            yield locked
        finally:
            if locked is not None:
                locks.release(f)


@contextlib.contextmanager
def registry_read_lock(uri: str, wait_s: float = LOCK_WAIT_S) -> Iterator[Path | None]:
    """Hold the registry lock shared while reading an alias, so that a registration that is
    moving it (MLflow's file store rewrites the alias file in place) is never read half done.
    Only where the lock file exists and can be opened: a reader of a read-only store, or of
    one no registration has locked yet, reads without it (as MLflow alone would)."""
    path = registry_lock_file(uri)
    try:
        f = open(path) if path is not None else None
    except OSError:
        f = None
    if f is None:
        yield None
        return
    with f:
        try:
            locks.acquire(f, shared=True, wait_s=wait_s, what=f"the registry lock {path}")
            locked = path
        except OSError:        # no flock on this file system: read as MLflow alone would
            locked = None
        try:
            yield locked
        finally:
            if locked is not None:
                locks.release(f)
