"""Run folders on disk: naming a new one, finding one (path, id, id prefix, newest of yours),
the locks around run.json and around a whole submit/resume/cancel, and whose it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

from itwinai_hpc.core import job_env, locks
from itwinai_hpc.core.errors import RunStateError, UserError
from itwinai_hpc.run import guard, layout


def new_run_id(workflow_name: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return f"{workflow_name}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def default_runs_dir() -> Path:
    """$ITWINAI_HPC_RUNS, or ./runs where it is unset or empty (an empty one is not `./`)."""
    return Path(os.environ.get(job_env.RUNS) or "runs")


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Held around every read-modify-write of run.json."""
    fd = guard.open_nofollow(Path(run_dir) / layout.LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with open(fd, "a") as f, locks.held(f):
        yield


@contextlib.contextmanager
def operation_lock(run_dir: str | Path, what: str) -> Iterator[None]:
    """Held for the whole of a submit, resume or cancel: the check of what is active and the
    change that follows cannot interleave with another command's. A second command fails at
    once (RunStateError, exit 1) naming the one at work."""
    path = Path(run_dir) / layout.OPERATION_LOCK
    with open(guard.open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+") as f:
        try:
            locks.acquire(f, wait_s=0)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another command"
            raise RunStateError(f"{holder} is working on run {Path(run_dir).name} right now; "
                                "try again when it is done") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"itwinai-hpc {what} (pid {os.getpid()} on {socket.gethostname()})\n")
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            locks.release(f)


def find_run(ref: str | None, runs_dir: Path | None = None) -> Path:
    """A run folder from a path, a run id under the runs folder, or (None) the newest run."""
    runs_dir = runs_dir or default_runs_dir()
    if ref:
        for candidate in (Path(ref), runs_dir / ref):
            try:
                if (candidate / layout.MANIFEST).is_file():
                    return candidate
            except PermissionError:
                raise not_yours_to_read(candidate) from None
        plain = "/" not in ref and not any(c in ref for c in "*?[")
        matches = sorted(p.parent for p in runs_dir.glob(f"{ref}*/{layout.MANIFEST}")) \
            if plain else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"'{ref}' matches several runs: "
                            f"{', '.join(m.name for m in matches)}")
        raise UserError(f"no run '{ref}' (looked for a folder with run.json, and under "
                        f"{runs_dir}/)")
    # Newest by the file's own time, among this user's runs: a planted run.json cannot pass for
    # the newest run by what it says, and another user's run is not yours to act on.
    mine = [p for p in runs_dir.glob(f"*/{layout.MANIFEST}") if _owned(p)]
    if not mine:
        raise UserError(f"no runs of yours under {runs_dir}/ yet; submit one with "
                        "`itwinai-hpc submit WORKFLOW`, or name a run folder")
    return max(mine, key=lambda p: p.stat().st_mtime).parent


def not_yours_to_read(folder: Path) -> UserError:
    """The error for a run folder (or its run.json) this user may not read."""
    try:
        st = folder.stat()
        whose = f"belongs to {guard.user_name(st.st_uid)} (mode {st.st_mode & 0o777:o})"
    except OSError:
        whose = "is not readable by you"
    return UserError(f"permission denied: this run folder {whose}; its owner can show it, or "
                     "share it with `itwinai-hpc render --group-share`", file=str(folder))



def check_owner(manifest) -> None:
    """Refuse to act on (submit, resume, cancel) a run folder that belongs to someone else: its
    scripts would run as you, with whatever they put there."""
    folder = Path(manifest.run_dir)
    for path in (folder, folder / layout.MANIFEST):     # the first one that is not yours
        owner = path.stat().st_uid
        if owner != os.getuid():
            what = "run folder" if path == folder else "run folder's run.json"
            raise UserError(f"this {what} belongs to {guard.user_name(owner)}, not to you: "
                            "itwinai-hpc only submits, resumes and cancels your own runs "
                            "(status works on any)", file=str(path))


def _owned(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid() and path.parent.stat().st_uid == os.getuid()
    except OSError:
        return False
