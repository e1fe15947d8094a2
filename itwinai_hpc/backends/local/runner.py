"""The detached process that runs a local run's steps in dependency order and writes run.json.

`python -m itwinai_hpc.backends.local.runner RUN_DIR PARALLEL STEP...`, started by LocalBackend.
It only runs the rendered NN-step.sh scripts; deciding what to run (resume) is ops/operations.py's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from itwinai_hpc.backends.local.procs import (
    MARKER,
    become_subreaper,
    job_marker,
    kill_job,
    stop_orphans,
)
from itwinai_hpc.core import job_env
from itwinai_hpc.core.clock import now_iso  # noqa: F401  (the local backends record times with it)
from itwinai_hpc.core.slurm_syntax import parse_array
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.states import SUCCEEDED, StepState, from_exits
from itwinai_hpc.run.submit_env import submit_environment

TICK_S = 0.2
LEFTOVER_GRACE_S = 2.0       # a finished step's background processes, like SLURM's cgroup kill
CANCEL_GRACE_S = 5.0


def installed_first(env: dict[str, str]) -> dict[str, str]:
    """`env` with the folder of this Python's scripts first on PATH: steps call `itwinai-hpc`,
    `torchrun`, `python`, and on this machine the ones installed beside the itwinai-hpc that
    submitted the run must be the ones they get (as, on a cluster, the image's)."""
    venv_bin = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if venv_bin in path.split(os.pathsep):
        return env
    return {**env, "PATH": os.pathsep.join(p for p in (venv_bin, path) if p)}


@dataclass
class RunningStep:
    """A step as running under the local runner: its tasks (a single task None for a plain
    step), the processes of those started, and the exit codes of those done."""

    name: str
    todo: list[int | None]
    limit: int | None
    running: dict[int | None, subprocess.Popen] = field(default_factory=dict)
    exit_codes: list[int] = field(default_factory=list)
    started: float | None = None
    cut: bool = False               # tasks were dropped by a cancel: never COMPLETED


class Runner:
    def __init__(self, run_dir: str, names: list[str], parallel: int):
        self.manifest = RunManifest.load(run_dir)
        self.parallel = max(1, parallel)
        self.host = socket.gethostname()
        self.stop = False           # SIGTERM: stop like a cancel
        self.steps: dict[str, RunningStep] = {}
        for name in names:
            rec = self.manifest.step(name)
            if rec.array:
                spec = parse_array(rec.array)
                self.steps[name] = RunningStep(name, list(spec.ids), spec.limit)
            else:
                self.steps[name] = RunningStep(name, [None], None)
        # The caller's env minus its own job's SLURM_*; the run folder is where run.json was
        # found (a copy of a rendered folder runs in the copy).
        self.base_env = dict(submit_environment(), **{job_env.RUN_DIR: self.manifest.run_dir,
                                job_env.BACKEND: "local"})
        self.base_env = installed_first(self.base_env)
        # The folder itself, open: if it is renamed while the run goes on, /proc says where it
        # went, and run.json, the logs and the steps not yet started follow it.
        self.folder_fd = os.open(self.manifest.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        become_subreaper()

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        while True:
            self._sweep_finished()
            self._follow_folder()
            with self.manifest.updating() as m:
                cancelling = self.stop or m.extra.get("local", {}).get("cancel", False)
                self._record_finished(m, cancelling)
                if cancelling:
                    self._cancel_unstarted(m, "cancelled before it started")
                else:
                    self._cancel_dependents_of_failures(m)
                    self._launch_ready(m)
                busy = any(s.running for s in self.steps.values())
                waiting = any(not m.step(n).finished for n in self.steps)
            if cancelling and busy:
                self._kill_running()
            if not busy:
                stop_orphans(self._leaders())
            if not busy and not waiting:
                return
            time.sleep(TICK_S)

    def _leaders(self) -> set[int]:
        return {proc.pid for s in self.steps.values() for proc in s.running.values()}

    def _follow_folder(self) -> None:
        """The run folder was renamed (moved within its file system) while the run goes on:
        keep working where it is now. Steps running then keep their open logs; those started
        later get the new path as ITWINAI_HPC_RUN_DIR."""
        try:
            now = os.readlink(f"/proc/self/fd/{self.folder_fd}")
        except OSError:
            return
        if now == self.manifest.run_dir or now.endswith(" (deleted)"):
            return
        print(f"[itwinai-hpc] {now_iso()} the run folder moved from {self.manifest.run_dir} to "
              f"{now}; following it", flush=True)
        self.manifest.run_dir = now
        self.base_env[job_env.RUN_DIR] = now

    def _on_term(self, signum, frame) -> None:
        self.stop = True

    def _kill_running(self) -> None:
        for s in self.steps.values():
            for task, proc in list(s.running.items()):
                kill_job(self._marker(s.name, task), [proc.pid], CANCEL_GRACE_S)

    def _marker(self, name: str, task: int | None) -> str:
        rec = self.manifest.step(name)
        return job_marker(self.manifest.run_id, rec.job_id or "?", task)

    # ---- finished tasks -----------------------------------------------------------------
    def _sweep_finished(self) -> None:
        """A step that ended leaves no processes behind (SLURM ends a job's leftovers too)."""
        for s in self.steps.values():
            for task, proc in s.running.items():
                if proc.poll() is not None:
                    kill_job(self._marker(s.name, task), [proc.pid], LEFTOVER_GRACE_S)

    def _record_finished(self, m: RunManifest, cancelling: bool) -> None:
        for s in self.steps.values():
            for task, proc in list(s.running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del s.running[task]
                s.exit_codes.append(128 - rc if rc < 0 else rc)   # killed by signal N: 128+N
            rec = m.step(s.name)
            if s.running or s.todo and not cancelling or rec.finished or not s.exit_codes:
                continue
            state, rec.exit_code = from_exits(s.exit_codes)   # 75 (STOP_EXIT): STOPPED
            if s.todo or s.cut or state != StepState.COMPLETED and cancelling:
                rec.state = StepState.CANCELLED
            else:
                rec.state = state
            rec.elapsed = int(time.time() - (s.started or time.time()))
            if rec.state == StepState.CANCELLED:
                rec.reason = "cancelled while running"
            elif rec.state == StepState.STOPPED:
                rec.reason = "stopped early on request: `itwinai-hpc resume` continues it"

    # ---- scheduling ---------------------------------------------------------------------
    def _cancel_dependents_of_failures(self, m: RunManifest) -> None:
        failed = {s.name for s in m.steps if s.finished and s.state not in SUCCEEDED}
        for s in self.steps.values():
            rec = m.step(s.name)
            if rec.finished or s.running or s.exit_codes:
                continue
            broken = [n for n in rec.plan.needs_ok if n in failed]
            if broken:
                rec.state = StepState.CANCELLED
                rec.reason = (f"dependency '{broken[0]}' did not complete "
                              f"({m.step(broken[0]).state})")
                s.todo = []

    def _cancel_unstarted(self, m: RunManifest, reason: str) -> None:
        for s in self.steps.values():
            rec = m.step(s.name)
            if not rec.finished and not s.running and not s.exit_codes:
                rec.state, rec.reason = StepState.CANCELLED, reason
            s.cut = s.cut or bool(s.todo)
            s.todo = []

    def _launch_ready(self, m: RunManifest) -> None:
        free = self.parallel - sum(len(s.running) for s in self.steps.values())
        for s in self.steps.values():           # manifest order: dependency order
            rec = m.step(s.name)
            if free <= 0:
                return
            if rec.finished or not s.todo:
                continue
            # needs that must succeed; needs with `any` (and a sweep's throttle) only end
            if not all(m.step(n).state in SUCCEEDED for n in rec.plan.needs_ok) or \
                    not all(m.step(n).finished for n in rec.plan.waits_for):
                continue
            while s.todo and free > 0 and (s.limit is None or len(s.running) < s.limit):
                task = s.todo.pop(0)
                try:
                    s.running[task] = self._start(rec, task)
                except OSError as exc:
                    # This step fails, with the reason; the other steps' states (a parent's
                    # COMPLETED) are recorded in the same update and stand.
                    self._launch_failed(s, rec, exc)
                    break
                free -= 1
                if s.started is None:
                    s.started = time.time()
                    rec.state, rec.nodes, rec.reason = StepState.RUNNING, self.host, None

    def _launch_failed(self, s: RunningStep, rec: StepRecord, exc: OSError) -> None:
        for task, proc in list(s.running.items()):       # an array's tasks already started
            kill_job(self._marker(s.name, task), [proc.pid], CANCEL_GRACE_S)
        s.running.clear()
        s.todo, s.cut = [], True
        rec.state, rec.exit_code = StepState.FAILED, None
        rec.reason = f"could not be started: {exc}"
        print(f"[itwinai-hpc] {now_iso()} step {s.name}: could not be started: {exc}",
              flush=True)

    def _start(self, rec: StepRecord, task: int | None) -> subprocess.Popen:
        env = dict(self.base_env, SLURM_JOB_ID=rec.job_id or "0",
                   **{MARKER: self._marker(rec.name, task)})
        log = layout.log_file(self.manifest.run_dir, rec.plan.job_name, rec.job_id or "0",
                              None if task is None else str(task))
        if task is not None:
            env.update(SLURM_ARRAY_JOB_ID=rec.job_id or "0", SLURM_ARRAY_TASK_ID=str(task))
        # O_NOFOLLOW: a symlink planted at the log's name must not redirect the output into
        # another file the owner can write.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with open(fd, "ab") as out:
            # Its own session: cancel can signal its process group without touching ours.
            return subprocess.Popen(["bash", str(Path(self.manifest.run_dir) /
                                                 rec.local_script)],
                                    cwd=self.manifest.workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m itwinai_hpc.backends.local.runner RUN_DIR PARALLEL STEP...",
              file=sys.stderr)
        return 2
    run_dir, parallel, names = argv[0], int(argv[1]), argv[2:]
    print(f"[itwinai-hpc] {now_iso()} local runner {os.getpid()} for {run_dir}: "
          f"{' '.join(names)} (at most {parallel} at once)", flush=True)
    Runner(run_dir, names, parallel).run()
    print(f"[itwinai-hpc] {now_iso()} local runner {os.getpid()} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
