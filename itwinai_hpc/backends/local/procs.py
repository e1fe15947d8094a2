"""Find and stop every process of a local job by reading /proc (no psutil). Linux only.

A local job's processes carry ITWINAI_HPC_LOCAL_JOB=<run id>/<job id>[_<task>] in their
environment (the runner sets it; children inherit it), which finds them even after they left the
job's process group or session (torchrun's workers do) or lost their parent. Never kills by name.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from itwinai_hpc.core import job_env
from itwinai_hpc.run import layout

MARKER = job_env.LOCAL_JOB


def job_marker(run_id: str, job_id: str, task: int | None = None) -> str:
    return f"{run_id}/{layout.task_job_id(job_id, task)}"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(pid: int | None, started: str | None = None) -> bool:
    """pid runs (not a zombie) and, if `started` is given, is the process that started then."""
    if not pid:
        return False
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _marked(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:                     # gone, or another user's process
        return False
    prefix = f"{MARKER}={marker}".encode()
    return any(e == prefix or e.startswith(prefix + b"_") for e in environ.split(b"\0"))


def job_processes(marker: str, leaders: Sequence[int] = ()) -> set[int]:
    """Live processes of the job: marked with `marker` (or a task of it), in the process group
    of a leader, or descended from one."""
    me = os.getpid()
    table = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields and fields[0] not in ("Z", "X"):
            table[pid] = (int(fields[1]), int(fields[2]))
    found = {p for p, (_, pgrp) in table.items() if pgrp in leaders or p in leaders}
    found |= {p for p in table if _marked(p, marker)}
    changed = True
    while changed:                       # add descendants of what was found
        more = {p for p, (ppid, _) in table.items() if ppid in found and p not in found}
        found |= more
        changed = bool(more)
    found.discard(me)
    return found


def _parents(pids) -> dict[int, int]:
    """{pid: parent pid} of those of `pids` that still run."""
    found = {}
    for pid in pids:
        fields = _stat(pid)
        if fields and fields[0] not in ("Z", "X"):
            found[pid] = int(fields[1])
    return found


def _parents_first(parents: dict[int, int]) -> list[int]:
    """The pids of {pid: parent pid}, each after its parent (where the parent is among them)."""
    def depth(pid: int) -> int:
        seen = {pid}
        while parents.get(pid) in parents and parents[pid] not in seen:
            pid = parents[pid]
            seen.add(pid)
        return len(seen)
    return sorted(parents, key=depth)


def _terminate_together(parents: dict[int, int]) -> None:
    """SIGTERM the processes as one, as a cgroup freezer would: all stopped (parents first, so
    that none sees a child stop), then TERM, then continued (children first). Signalled one
    after the other while they ran, a shell whose child died first ran its next command before
    its own TERM arrived: a cancelled array task wrote its result (full test run, 2026-12-07)."""
    order = _parents_first(parents)
    try:
        for pid in order:
            _signal(pid, signal.SIGSTOP)
        for pid in order:
            _signal(pid, signal.SIGTERM)
    finally:
        for pid in reversed(order):
            _signal(pid, signal.SIGCONT)


def kill_job(marker: str, leaders: Sequence[int] = (), grace: float = 5.0) -> int:
    """TERM every process of the job at once (_terminate_together), KILL what is left after
    `grace` seconds. Returns how many processes it signalled."""
    victims = set(job_processes(marker, leaders))
    _terminate_together(_parents(victims))
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not job_processes(marker, leaders):
            return len(victims)
        time.sleep(0.1)
    left = job_processes(marker, leaders)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    return len(victims | left)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def become_subreaper() -> None:
    """Linux's PR_SET_CHILD_SUBREAPER (as init systems and tini use it): a step's process that
    double-forks, leaves its session and drops its job marker comes back to this runner as an
    orphan instead of to init, so it cannot outlive its run."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)         # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass                                # not Linux: markers and process groups only


def stop_orphans(leaders: set[int], grace: float = 2.0) -> None:
    """TERM, then KILL, the runner's children that are no running step's own process: orphans
    left by finished steps. Called when no step runs, so none of them belongs to a live step.
    Reaps them too (a subreaper's orphans become its zombies)."""
    me = os.getpid()
    orphans = [pid for pid in _children(me) if pid not in leaders]
    if not orphans:
        return
    for pid in orphans:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and [p for p in _children(me) if p in orphans]:
        _reap(orphans)
        time.sleep(0.05)
    for pid in _children(me):
        if pid in orphans:
            _signal(pid, signal.SIGKILL)
    time.sleep(0.05)
    _reap(orphans)


def _children(parent: int) -> list[int]:
    """Live (not yet reaped) children of `parent`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def this_machine() -> str:
    """Where a pid means something: host, boot and pid namespace. A runner recorded with another
    value cannot be checked from here (another login node, a container, a reboot)."""
    import socket
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_ns = "?"
    return f"{socket.gethostname()}/{boot}/{pid_ns}"
