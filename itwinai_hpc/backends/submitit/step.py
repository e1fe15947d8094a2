"""The callable every submitit job runs: a step's rendered script (a local array: once per task,
%N at once), after the jobs it depends on (local cluster; SLURM's --dependency does it there),
leaving each exit status in the run folder; Checkpointable, so a preempted or timed-out step
is resubmitted and resumes from its checkpoint. See submitit.py for the backend around it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import submitit

from itwinai_hpc.backends.local.procs import MARKER, alive, job_marker
from itwinai_hpc.backends.local.runner import installed_first
from itwinai_hpc.core.clock import now_iso
from itwinai_hpc.run import layout
from itwinai_hpc.run.submit_env import submit_environment

SKIPPED = "skipped"
CANCELLED_RC = 128 + signal.SIGTERM    # an array cancelled before all its tasks ran


def exit_file(run_dir: str, job_id: str) -> Path:
    return Path(layout.exit_marker(run_dir, job_id))


class SubmititStep(submitit.helpers.Checkpointable):
    """A step as submitit runs it: the submitted callable of every step, which runs the step's
    rendered script with bash (a local array: once per task).

    On preemption or timeout submitit calls checkpoint(), which (inherited) resubmits this same
    callable: the script runs again and the step's code resumes from its checkpoint files."""

    def __init__(self, run_dir: str, workdir: str, run_id: str, step: str, script: str,
                 job_name: str, parents: Sequence[str] = (), grace: float = 60,
                 waits: Sequence[str] = (), tasks: tuple[int, ...] | None = None, limit: int = 1):
        self.run_dir, self.workdir, self.run_id = run_dir, workdir, run_id
        self.step, self.script, self.job_name = step, script, job_name
        # local executor only (SLURM's --dependency does it there): job ids to wait for
        self.parents = list(parents)    # ... that must have succeeded, or the step is skipped
        self.waits = list(waits)        # ... that must only have ended
        self.grace = grace              # seconds the step gets to checkpoint when warned
        self.tasks = tasks              # local array: its task ids, `limit` at once
        self.limit = limit
        self._procs: dict[int | None, subprocess.Popen] = {}
        self._stopping = False

    def __call__(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        where = submitit.JobEnvironment()
        job_id = str(where.job_id)      # a SLURM array task: ARRAYID_TASK
        broken = self._wait_for_parents()
        if broken:
            exit_file(self.run_dir, job_id).write_text(f"{SKIPPED} {broken}\n")
            return 0
        Path(layout.started_marker(self.run_dir, job_id)).write_text(now_iso() + "\n")
        tasks: list[int | None] = [None] if self.tasks is None else list(self.tasks)
        codes = self._run_tasks(job_id, tasks, local=where.cluster == "local")
        # the job's own status (a local array's: its first failed task's), or a cancel's when
        # a task never ran
        rc = next((c for c in codes.values() if c), 0 if len(codes) == len(tasks)
                  else CANCELLED_RC)
        exit_file(self.run_dir, job_id).write_text(f"{rc}\n")
        if rc:
            raise SystemExit(rc)        # the job's own exit code, so afterok and sacct see it
        return rc

    def _on_term(self, signum, frame) -> None:
        self._stopping = True           # a cancel: start nothing more, let the running end

    def _run_tasks(self, job_id: str, tasks: list[int | None],
                   local: bool) -> dict[int | None, int]:
        """Run the script once per task (one task, None, for a plain step or a SLURM array's
        task), `limit` at once, none after a cancel; leave each one's exit status.
        {task: exit status} of those that ran."""
        # SLURM's environment in a SLURM job; locally the submitter's, less the SLURM_* of a
        # job it may have run in (an array task's id must not reach the steps it submitted)
        env = dict(installed_first(submit_environment()) if local else os.environ,
                   ITWINAI_HPC_RUN_DIR=self.run_dir, ITWINAI_HPC_BACKEND="submitit")
        env.setdefault("SLURM_JOB_ID", job_id)
        todo = list(tasks)
        codes: dict[int | None, int] = {}
        while (todo and not self._stopping) or self._procs:
            while todo and not self._stopping and len(self._procs) < self.limit:
                task = todo.pop(0)
                self._procs[task] = self._start(job_id, task, env)
            # poll, not wait(): a blocking wait() holds the Popen's lock, and checkpoint(),
            # run by the signal handler in this same thread, could then never see the exit
            for task, proc in list(self._procs.items()):
                if (rc := proc.poll()) is not None:
                    del self._procs[task]
                    codes[task] = 128 - rc if rc < 0 else rc
                    exit_file(self.run_dir, layout.task_job_id(job_id, task)).write_text(
                        f"{codes[task]}\n")
            time.sleep(0.2)
        return codes

    def _start(self, job_id: str, task: int | None, env: dict[str, str]) -> subprocess.Popen:
        env = dict(env, **{MARKER: job_marker(self.run_id, job_id, task)})
        if task is not None:
            env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(task))
        log = layout.log_file(self.run_dir, self.job_name, layout.task_job_id(job_id, task))
        with open(log, "ab") as out:
            return subprocess.Popen(["bash", self.script], cwd=self.workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the time-limit warning or preemption: ask the step's code to
        checkpoint and stop (the same STOP file as the sbatch requeue trap), give it `grace`
        seconds, then resubmit this callable; the step resumes from its checkpoint."""
        Path(layout.stop_file(self.run_dir, self.step)).touch()
        procs, self._procs = getattr(self, "_procs", {}), {}   # a Popen does not pickle
        deadline = time.monotonic() + self.grace
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return super().checkpoint(*args, **kwargs)

    def _wait_for_parents(self) -> str | None:
        """Block until every parent and waited-for job ended; why the step must not run (a
        parent did not succeed, a cancel came), or None."""
        for job in self.parents + self.waits:
            done = exit_file(self.run_dir, job)
            while not done.exists():
                if self._stopping:
                    return "cancelled before it started"
                if not alive(int(job)):
                    time.sleep(0.5)     # it may have written its file just before ending
                    break
                time.sleep(0.5)
        for parent in self.parents:
            done = exit_file(self.run_dir, parent)
            if not done.exists():
                return f"a dependency (job {parent}) ended without a result"
            if done.read_text().split()[0] != "0":
                return f"a dependency (job {parent}) did not complete"
        return None
