"""How an itwinai-hpc process meets its surroundings: before any command runs, a closed or
ASCII-only terminal and SIGTERM (unwound like an error, so nothing half-written stays); after
it, the exit (exit_now)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from itwinai_hpc.core import job_env, startup


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


def run_as_program(main: Callable[[], int]) -> NoReturn:
    """The console script and `python -m itwinai_hpc[.cli]`: main() in a process that is ours
    (core/startup.py: train and predict may hold the garbage collector off while they import),
    then exit_now."""
    startup.own_process()
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with exit status `code` as sys.exit(code) would, less Python's teardown
    of its modules.

    After `train` has imported torch, torch._dynamo, mlflow (with pandas, pyarrow, fastapi) and
    matplotlib, a normal exit spends about 2 s of CPU clearing module dictionaries and freeing
    what they held (2-core VM: `python -c "import torch, torch._dynamo, mlflow, mlflow.pytorch,
    matplotlib.figure"` uses 7.1 s of CPU, 4.9 s when it ends with os._exit). That is paid on
    every rank of every training and prediction job, for nothing. This does what a normal exit
    does that anyone can see, in its order: it waits for the non-daemon threads, runs the atexit
    handlers (MLflow ends its run, logging flushes and closes its files, tempfile removes its
    folders) and flushes stdout and stderr; only then does it skip the rest with os._exit.
    The wait is Python's own (threading._shutdown, as its exit calls it): threading's exit calls
    first, where concurrent.futures tells its idle pool workers to end, then the join. Joining
    the threads by hand waited for ever on the idle workers of a pool that was still alive (found
    with the collector held off, core/startup.py: MLflow's artifact pool, unused but not yet
    collected; tests/test_process_exit.py).

    A normal exit instead where that cannot be promised: a Python without
    atexit._run_exitfuncs or threading._shutdown, ITWINAI_HPC_NORMAL_EXIT=1 (a profiler or
    leak checker that wants the teardown), or a stream that cannot be flushed (Python's exit
    then reports it, as usual)."""
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    shutdown_threads = getattr(threading, "_shutdown", None)
    if (run_exitfuncs is None or shutdown_threads is None
            or os.environ.get(job_env.NORMAL_EXIT) == "1"):
        sys.exit(code)
    shutdown_threads()
    run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)
