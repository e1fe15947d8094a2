"""Atomic writes: a reader sees a file's old content or all of its new content, never half.

The one home of the rule (temporary file in the same folder, fsync, rename, fsync the folder,
temporary removed on any error) for run manifests, shards, checkpoints and predictions. Pure
standard library: orchestration and ML steps may both import it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """`.NAME.HOST.PID.tmp` beside `path`: two processes (array tasks, a requeued job, another
    login node on a shared file system) never share a temporary, and leftovers are findable."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash must not bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to (with any writer: open(),
    torch.save, h5py); on a clean exit fsync it and rename it over `path`, on any error remove
    it. `mode` sets the file's permission bits before the rename."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        # Created here, not by the writer: a link planted at the temporary name is refused
        # (ELOOP) instead of truncating whatever it points to.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666))
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_folder(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically."""
    path = Path(path)
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete temporaries of `path` left by killed processes on this host (never a live one's,
    never another host's: that process may still be writing)."""
    path = Path(path)
    host = socket.gethostname()
    prefix = f".{path.name}.{host}."
    for tmp in path.parent.glob(f"{prefix}*.tmp"):
        pid = tmp.name[len(prefix):-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's
