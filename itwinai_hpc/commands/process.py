"""How an itwinai-hpc process meets its surroundings before any command runs: a closed or
ASCII-only terminal, and SIGTERM (unwound like an error, so nothing half-written stays)."""

from __future__ import annotations

import os
import signal
import sys


def usable_streams() -> None:
    """Started with stdout closed (`>&-`): write nowhere. On an ASCII-only terminal a path
    with an umlaut prints escaped, instead of ending the command half-way."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w"))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def terminated(signum, frame) -> None:
    """SIGTERM (a job's time limit, `kill`): unwind, so half-written folders are removed."""
    raise SystemExit(128 + signal.SIGTERM)
