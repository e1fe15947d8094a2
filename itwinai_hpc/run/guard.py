"""What a run folder must look like before itwinai-hpc acts in it as its owner: no symlink
planted where it reads or writes, scripts that nobody but the owner could have changed since
render (their digests and modes are in run.json), and the folder the jobs were submitted from,
not a copy of it (a copy lists the same job ids, and must not cancel the original's jobs).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import Any

from itwinai_hpc.core.errors import RunStateError, UserError
from itwinai_hpc.run import layout

SCRIPTS = "scripts"          # run.json extra: {file name: {"sha256": ...}}
FOLDER = "folder"            # run.json extra: {"id": "dev:inode", "path": ...} at submit
# Folders the jobs write into: a link there would send their output (and the exit statuses
# itwinai-hpc believes) elsewhere.
JOB_FOLDERS = (layout.LOGS, layout.CHECKPOINTS, layout.SWEEPS, "submitit")


def _planted(path: Path) -> UserError:
    return UserError("is a symbolic link; itwinai-hpc does not follow links inside a run folder "
                     "(someone may have planted it to redirect a write): remove it",
                     file=str(path))


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """os.open(path) that refuses (UserError) a symlink at the last component instead of
    writing through it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _planted(Path(path)) from None
        raise


def check_no_links(run_dir: str | os.PathLike) -> None:
    """The folders jobs write into, and run.json, are what they say, not links elsewhere."""
    folder = Path(run_dir)
    for name in (*JOB_FOLDERS, layout.MANIFEST, layout.LOCK, layout.OPERATION_LOCK):
        if (folder / name).is_symlink():
            raise _planted(folder / name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def script_records(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """What render wrote: each script's digest, for run.json."""
    return {name: {"sha256": sha256(folder / name)} for name in names}


def check_scripts(run_dir: str, records: dict[str, dict[str, Any]], warn=None) -> None:
    """Refuse scripts that someone else could have swapped or changed since render: a link, a
    file another user owns, a file or folder the group or others may write (render writes
    neither). The owner's own edit (another digest) is named,
    not refused: fixing a step's script and resuming is a way to work."""
    folder = Path(run_dir)
    me = os.getuid()
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(f"the run folder is writable by {_who(mode)} (mode {mode:o}): anyone "
                        "there could swap the scripts that run as you; `chmod go-w` it, or "
                        "render the workflow again", file=str(folder))
    for name, record in records.items():
        path = folder / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue                      # the backends say which script is missing
        if stat.S_ISLNK(st.st_mode):
            raise _planted(path)
        if st.st_uid != me:
            raise UserError(f"belongs to {user_name(st.st_uid)}, not to you: it was replaced since "
                            "render, and would run as you; render the workflow again",
                            file=str(path))
        bits = stat.S_IMODE(st.st_mode)
        if bits & (stat.S_IWGRP | stat.S_IWOTH):
            raise UserError(f"is writable by {_who(bits)} (mode {bits:o}): anyone there could "
                            "change what runs as you; `chmod go-w` it, or render again",
                            file=str(path))
        if record.get("sha256") and sha256(path) != record["sha256"]:
            print(f"note: {path} was edited since render (its digest differs from run.json's); "
                  "running it as it is now", file=warn or sys.stderr)


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                        if mode & bit)


def user_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def folder_id(run_dir: str | os.PathLike) -> str:
    """What only this folder has: its device and inode (a rename keeps them, a copy does not)."""
    st = os.stat(run_dir)
    return f"{st.st_dev}:{st.st_ino}"


def folder_record(run_dir: str) -> dict[str, str]:
    return {"id": folder_id(run_dir), "path": str(run_dir)}


def check_not_a_copy(run_dir: str, record: dict[str, str] | None, what: str) -> None:
    """A copy of a submitted run lists the original's job ids and process markers: acting on
    them from the copy would hit the original's jobs. RunStateError (exit 1)."""
    if record and record.get("id") != folder_id(run_dir):
        raise RunStateError(f"{run_dir} is a copy of the run folder {record.get('path')} made "
                            f"after it was submitted: its jobs belong to that folder; {what} "
                            "them there (to run the copy afresh, render the workflow again)")
