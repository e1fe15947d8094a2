"""The watchdog of a running rank: `progress()` says "still advancing"; a rank silent for the
step's `watchdog.no-progress` ($ITWINAI_HPC_NO_PROGRESS, seconds) dumps every thread's Python
stack to its log, leaves a mark in the run folder naming its rank, node and last progress
(layout.hung_marker: what `status` turns into HUNG), and exits HUNG_EXIT. No torch: any
training script can call it, as often as every step (it only stores a number).
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
import time

import itwinai_hpc.run.layout as layout
from itwinai_hpc.core import atomic, job_env

HUNG_EXIT = 124          # as coreutils' timeout: no progress within the time allowed
_watch: _Watchdog | None = None


class _Watchdog:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.monotonic()
        self.last_wall = time.time()
        self.armed = time.monotonic()
        self.stopped = False
        # The fallback that needs no GIL: if a C call holds it, this thread cannot run, but
        # faulthandler's own thread still dumps the stacks and ends the process a minute later.
        faulthandler.dump_traceback_later(seconds + 60, exit=True)
        threading.Thread(target=self._watch, name="itwinai-hpc-watchdog", daemon=True).start()

    def beat(self) -> None:
        self.last, self.last_wall = time.monotonic(), time.time()
        if self.last - self.armed > self.seconds / 4:   # re-arm the fallback now and then
            self.armed = self.last
            faulthandler.dump_traceback_later(self.seconds + 60, exit=True)

    def stop(self) -> None:
        self.stopped = True
        faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        while not self.stopped:
            left = self.seconds - (time.monotonic() - self.last)
            if left > 0:
                time.sleep(min(left, 1.0))
                continue
            if not self.stopped:
                self._hung()

    def _hung(self) -> None:
        rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        print(f"[itwinai-hpc] rank {rank} on {node}: no progress for {self.seconds:g} s "
              f"(watchdog.no-progress); its threads' stacks follow, then it exits {HUNG_EXIT}",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        run_dir, job = os.environ.get(job_env.RUN_DIR), _job_id()
        if run_dir and job:
            record = {"rank": int(rank) if rank.isdigit() else rank, "node": node,
                      "pid": os.getpid(), "no_progress_s": self.seconds,
                      "last_progress": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                     time.localtime(self.last_wall)),
                      "last_progress_epoch": self.last_wall}
            try:
                atomic.write_text(layout.hung_marker(run_dir, job, rank), json.dumps(record))
            except OSError as exc:
                print(f"[itwinai-hpc] could not leave the hung mark: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(HUNG_EXIT)


def _job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return layout.task_job_id(array, task) if array and task else job


def progress(default_seconds: float | None = None) -> None:
    """This rank is still advancing. The first call arms the watchdog: the step's
    `watchdog.no-progress` where it has one, else `default_seconds` (None: no watchdog)."""
    global _watch
    if _watch is not None:
        _watch.beat()
        return
    configured = os.environ.get(job_env.NO_PROGRESS)
    seconds = float(configured) if configured else default_seconds
    if seconds:
        _watch = _Watchdog(seconds)


def progress_done() -> None:
    """The part that reports progress is over (training ended; evaluation and registration
    follow at their own pace): disarm the watchdog."""
    global _watch
    if _watch is not None:
        _watch.stop()
        _watch = None

