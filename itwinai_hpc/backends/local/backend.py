"""Local backend: run a rendered run's NN-step.sh scripts on this machine, without SLURM.

`submit` starts a detached runner (runner.py) and returns; the runner writes states into
run.json, so `status`, `logs`, `cancel` and `resume` work as with SLURM. Never imports torch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from itwinai_hpc.backends import Backend, SubmitError
from itwinai_hpc.backends.local.procs import (
    alive,
    job_marker,
    job_processes,
    kill_job,
    start_time,
    this_machine,
)
from itwinai_hpc.backends.local.runner import CANCEL_GRACE_S
from itwinai_hpc.core import job_env
from itwinai_hpc.core.clock import now_iso
from itwinai_hpc.core.errors import RunStateError, UserError
from itwinai_hpc.run import guard, layout
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.states import StepState, from_exit

PARALLEL_ENV = job_env.LOCAL_PARALLEL
RUNNER_LOG = "logs/local-runner.log"


def parallel_limit(environ: dict[str, str] | None = None) -> int:
    """How many steps (or array tasks) run at once: $ITWINAI_HPC_LOCAL_PARALLEL, default 2."""
    value = (os.environ if environ is None else environ).get(PARALLEL_ENV, "2")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{PARALLEL_ENV}={value!r}: expected a whole number of at least 1")
    return n


def check_container_runtimes(steps) -> None:
    """A step with a container needs its runtime here; say so before anything runs. `steps`
    are PlannedSteps."""
    missing: dict[str, list[str]] = {}
    for job in steps:
        if job.container and job.container.wraps_srun:
            raise UserError(f"step {job.name} runs in a {job.container.runtime} container, "
                            "which is an option of SLURM's srun: submit with --backend slurm, "
                            "or run here without containers: --set defaults.container=none")
        if job.container and not shutil.which(job.container.runtime):
            missing.setdefault(job.container.runtime, []).append(job.name)
    if missing:
        runtime, names = next(iter(missing.items()))
        raise UserError(f"step(s) {', '.join(names)} run in a container, but '{runtime}' is not "
                        f"on PATH here; install {runtime} (or load its module), or run without "
                        "containers: --set defaults.container=none")


class LocalBackend(Backend):
    name = "local"

    def preflight(self, manifest: RunManifest) -> None:
        from itwinai_hpc.run.paths import check_bindable

        parallel_limit()                # a bad value is an error before anything is written
        # the folder may have been moved since render, to a path no bind option can name
        check_bindable(manifest.run_dir, [s.plan for s in manifest.steps])
        check_container_runtimes(s.plan for s in manifest.steps)

    # ---- submit -----------------------------------------------------------------------
    def submit(self, manifest: RunManifest, steps: list[str]) -> None:
        parallel = parallel_limit()
        missing = [s for s in steps
                   if not (Path(manifest.run_dir) / manifest.step(s).local_script).is_file()]
        if missing:
            raise UserError(f"run {manifest.run_id} has no local script for step(s) "
                            f"{', '.join(missing)}; render the workflow again",
                            file=manifest.run_dir)
        check_container_runtimes(manifest.step(n).plan for n in steps)
        order = [s.name for s in sorted(manifest.steps, key=lambda s: s.index) if s.name in steps]
        with manifest.updating() as m:
            local = m.extra.setdefault("local", {})
            local["cancel"] = False
            for name in order:
                s = m.step(name)
                local["next_id"] = local.get("next_id", 0) + 1
                s.job_id = str(local["next_id"])
                s.state, s.submitted_at, s.reason = StepState.PENDING, now_iso(), None
                s.log = m.log_path(s, s.job_id)
            failed: str | None
            try:
                log = guard.open_nofollow(Path(m.run_dir) / RUNNER_LOG,
                                          os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                with open(log, "ab") as out:
                    # A new session, no terminal and no shared pipes: the run goes on after
                    # this command (and its terminal) ended.
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "itwinai_hpc.backends.local.runner", m.run_dir,
                         str(parallel), *order],
                        cwd=m.workdir, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            except OSError as exc:
                failed = f"could not start the local runner: {exc}"
                for name in order:
                    m.step(name).state, m.step(name).reason = StepState.FAILED, failed
            else:
                failed = None
                local.update(runner_pid=proc.pid, runner_started=start_time(proc.pid),
                             runner_machine=this_machine(), runner_host=socket.gethostname())
        if failed:                      # raised after run.json recorded it
            raise SubmitError(failed)

    # ---- status -----------------------------------------------------------------------
    def refresh(self, manifest: RunManifest) -> None:
        """run.json is the runner's record; here only: is the runner still there? Never
        signals a process: a status must not do harm."""
        elsewhere = self._elsewhere(manifest)
        if elsewhere:
            manifest.note = elsewhere
            return
        with manifest.updating() as m:
            local = m.extra.get("local", {})
            if alive(local.get("runner_pid"), local.get("runner_started")):
                return
            for s in (s for s in m.steps if s.job_id and not s.finished):
                self._orphan(m, s, local.get("runner_pid"))

    @staticmethod
    def _orphan(m: RunManifest, s, runner_pid) -> None:
        """A step whose runner died: believe the exit status its script left, else see whether
        it still runs (it may have started just before the runner died, before run.json said
        so), else it ended without one or never started."""
        # Processes first, then the marker: a step writes its marker before it exits, so once
        # no process is left the marker is final (the other order races with the step's end).
        if job_processes(job_marker(m.run_id, s.job_id)):
            s.state = StepState.RUNNING
            s.reason = (f"the local runner (pid {runner_pid}) died; the step still runs but "
                        "nothing will start its dependents: `itwinai-hpc cancel`, then "
                        "`itwinai-hpc resume`")
            return
        marker = Path(layout.exit_marker(m.run_dir, s.job_id))
        code = marker.read_text().strip() if marker.is_file() else ""
        if code.isdigit():
            s.exit_code = int(code)
            s.state = from_exit(s.exit_code)
            s.reason = "from the exit status the step left in the run folder (runner gone)"
        elif s.state == StepState.RUNNING:
            s.state = StepState.FAILED
            s.reason = (f"the local runner (pid {runner_pid}) died and the step ended without "
                        f"an exit status; see {RUNNER_LOG}")
        else:
            s.state = StepState.CANCELLED
            s.reason = f"the local runner (pid {runner_pid}) died before it started this step"

    @staticmethod
    def _elsewhere(manifest: RunManifest) -> str | None:
        """Why this machine cannot check the run's runner (None when it can)."""
        local = manifest.extra.get("local", {})
        recorded = local.get("runner_machine")
        if not recorded or recorded == this_machine():
            return None
        return (f"its local runner runs on host {local.get('runner_host', '?')} (another "
                "machine, container or boot): cannot check from here, states as last recorded")

    # ---- cancel -----------------------------------------------------------------------
    def cancel(self, manifest: RunManifest) -> list[str]:
        elsewhere = self._elsewhere(manifest)
        if elsewhere:
            raise RunStateError(f"run {manifest.run_id}: {elsewhere}; cancel it on that host")
        with manifest.updating() as m:
            # Under the lock: the runner starts nothing after this, and what it started
            # before is in run.json as RUNNING.
            m.extra.setdefault("local", {})["cancel"] = True
            active = [s.name for s in m.steps if s.job_id and not s.finished]
            running = [(s.name, s.job_id) for s in m.steps
                       if s.state == StepState.RUNNING and s.job_id]
        for _, job_id in running:
            kill_job(job_marker(manifest.run_id, job_id), [], CANCEL_GRACE_S)
        local = manifest.extra.get("local", {})
        deadline = time.monotonic() + CANCEL_GRACE_S + 5
        while alive(local.get("runner_pid"), local.get("runner_started")) and \
                time.monotonic() < deadline:
            time.sleep(0.1)          # let the runner record exit codes and stop
        with manifest.updating() as m:
            for name in active:
                s = m.step(name)
                if not s.finished:
                    s.state, s.reason = StepState.CANCELLED, "cancelled by the user"
        return active
