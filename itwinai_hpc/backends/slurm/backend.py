"""SLURM backend: sbatch the rendered scripts as an afterok chain; ask sacct/scontrol for states.

The queries themselves (commands and parsing) live in query.py; this module decides what to
submit, with which dependencies and environment, and what to write into run.json.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

from itwinai_hpc.backends import Backend, SubmitError
from itwinai_hpc.backends.slurm.exit_status import (
    KILLED_WITHOUT_STATUS,
    array_task_ids,
    complete_array,
    describe_exit,
    read_exit_status,
    read_task_exit_statuses,
    until_recorded_in_full,
)
from itwinai_hpc.backends.slurm.query import (
    SlurmQueryError,
    detect_accounting,
    query_jobs,
    still_queued,
)
from itwinai_hpc.backends.slurm.sbatch import submit_with_retry
from itwinai_hpc.core.clock import now_iso
from itwinai_hpc.core.job_env import STOP_EXIT
from itwinai_hpc.run import layout
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.paths import dependency_option
from itwinai_hpc.run.states import SUCCEEDED, StepState, from_exit
from itwinai_hpc.run.submit_env import submit_environment


def sbatch_command(run_dir: str, step: StepRecord, job_ids: dict[str, str],
                   exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The sbatch line for one step, exactly as submit.sh writes it: the log goes to the run
    folder the job is submitted from (which may be a copy of the one it was rendered in); it
    runs after the jobs in `job_ids` (step -> job id) that it needs."""
    from itwinai_hpc.run.paths import sbatch_folder
    folder = sbatch_folder(run_dir)       # % doubled: sbatch reads it as a pattern there
    cmd = ["sbatch", "--parsable", f"--output={folder}/{layout.LOGS}/{step.plan.log_pattern}"]
    cmd += dependency_option([job_ids[n] for n in step.plan.needs_ok if n in job_ids],
                             [job_ids[n] for n in step.plan.waits_for if n in job_ids])
    if step.tasks:          # a resumed sweep: only its tasks that did not succeed
        cmd.append(f"--array={step.tasks}")
    if exclude:             # resume --exclude: nodes a step hung or failed on
        cmd.append(f"--exclude={','.join(exclude)}")
    return cmd + [step.script]


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, poll_after_cancel_s: float = 15.0):
        self.poll_after_cancel_s = poll_after_cancel_s

    def preflight(self, manifest: RunManifest) -> None:
        """The run folder's current path (it may have been moved since render) must be
        writable in sbatch's log file names and bindable into the steps' containers."""
        from itwinai_hpc.run.paths import check_run_folder, check_sbatch_paths
        check_run_folder(manifest.run_dir, [s.plan for s in manifest.steps])
        check_sbatch_paths(manifest.run_dir, manifest.workdir)

    # ---- submit -----------------------------------------------------------------------
    def ask_scheduler(self, manifest: RunManifest,
                      scripts: dict[str, tuple[str, str]]) -> list[str]:
        """`sbatch --test-only` of every script: a partition gone, a limit passed, an account
        refused are refusals before anything is queued."""
        from itwinai_hpc.backends.slurm.sbatch import preflight
        return [f"preflight {check.step}: {check.estimate}"
                for check in preflight(scripts, submit_environment())]

    def dry_run_lines(self, manifest: RunManifest) -> list[str]:
        lines = [step.script + (f"  (after {', '.join(step.needs)})" if step.needs else "")
                 for step in manifest.steps]
        return lines + [f"i.e. bash {Path(manifest.run_dir) / layout.SUBMIT_SCRIPT}"]

    def usage(self, manifest: RunManifest) -> tuple[dict[str, dict] | None, str | None]:
        from itwinai_hpc.backends.slurm.accounting import usage
        return usage(manifest)

    def submit(self, manifest: RunManifest, steps: list[str]) -> None:
        env = dict(submit_environment(), ITWINAI_HPC_RUN_DIR=manifest.run_dir,
                   ITWINAI_HPC_BACKEND=self.name)
        with manifest.updating() as m:
            if "accounting" not in m.extra:
                m.extra["accounting"] = self._accounting(env)
            m.extra.setdefault("submitted_since", now_iso())
        job_ids = {s.name: s.job_id for s in manifest.steps if s.job_id}
        submitted: list[tuple[str, str]] = []
        order = sorted((manifest.step(n) for n in steps), key=lambda s: s.index)
        for step in order:
            cmd = sbatch_command(manifest.run_dir, step,
                                 {n: j for n, j in job_ids.items() if n in steps},
                                 manifest.extra.get("exclude") or ())
            try:
                # transient errors retried; a job queued before a lost answer is found again
                p = submit_with_retry(cmd, cwd=manifest.run_dir, env=env,
                                      job_name=step.plan.job_name,
                                      comment=f"itwinai-hpc:{manifest.run_id}")
            except FileNotFoundError:
                raise SubmitError("sbatch not found: is this a SLURM login node? "
                                  "(--backend local runs on this machine)") from None
            if p.returncode != 0:
                self._refused(manifest, step, p.stderr.strip() or p.stdout.strip(), submitted,
                              env)
            job_id = p.stdout.strip().split(";")[0]
            job_ids[step.name] = job_id
            submitted.append((step.name, job_id))
            with manifest.updating() as m:
                s = m.step(step.name)
                s.job_id, s.state, s.submitted_at = job_id, StepState.PENDING, now_iso()
                s.log = m.log_path(s, job_id)

    def _refused(self, manifest: RunManifest, step: StepRecord, message: str,
                 submitted: list[tuple[str, str]], env: dict[str, str]) -> None:
        """Cancel what this submission queued, say so in run.json, raise."""
        if submitted:
            subprocess.run(["scancel", *(j for _, j in submitted)], env=env,
                           capture_output=True, timeout=60)
        with manifest.updating() as m:
            s = m.step(step.name)
            s.state, s.reason = StepState.FAILED, f"refused by sbatch: {message}"
            for name, _ in submitted:
                m.step(name).state = StepState.CANCELLED
                m.step(name).reason = f"cancelled because sbatch refused step '{step.name}'"
            m.extra["submit_error"] = {"step": step.name, "message": message}
        cancelled = ("; cancelled the jobs already submitted "
                     f"({', '.join(j for _, j in submitted)})") if submitted else ""
        raise SubmitError(f"sbatch refused step '{step.name}': {message}{cancelled}")

    @staticmethod
    def _accounting(env: dict[str, str]) -> str:
        try:
            return detect_accounting(lambda cmd, **kw: subprocess.run(cmd, env=env, **kw))
        except SlurmQueryError:
            return "none"

    # ---- status -----------------------------------------------------------------------
    def refresh(self, manifest: RunManifest) -> None:
        active = [s for s in manifest.steps if s.job_id and not s.finished]
        if not active:
            return
        env = submit_environment()
        mode = manifest.extra.get("accounting", "none")
        left = {} if mode == "dbd" else _exit_statuses(manifest, active)
        infos = query_jobs([s.job_id for s in active if s.job_id],
                           manifest.extra.get("submitted_since") or manifest.created, mode,
                           run=lambda cmd, **kw: subprocess.run(cmd, env=env, **kw),
                           ended=_ended(manifest, left))
        with manifest.updating() as m:
            for s in m.steps:
                if s.finished or not s.job_id:
                    continue
                info = infos.get(s.job_id)
                if s.array:
                    info = until_recorded_in_full(s.array, info) if mode == "dbd" else \
                        complete_array(s.job_id, s.array, info, left.get(s.name) or {})
                if info is None:
                    self._gone(m, s, left.get(s.name), mode)
                    continue
                s.state = info.state
                # Killed by a signal (scontrol's ExitCode 0:15 after scancel): 128 + N, as the
                # shell and the job's exit status file say it. The job completion log records
                # a cancelled job as 0:0; then the status the script left is the one to show.
                code = 128 + info.signal if info.signal else info.exit_code
                own = None if s.array else left.get(s.name)
                if not code and isinstance(own, int) and info.state not in SUCCEEDED:
                    code = own
                s.exit_code = code
                if s.state == StepState.FAILED and code == STOP_EXIT:
                    s.state = StepState.STOPPED     # stopped early to be resumed (job_env)
                s.elapsed = info.elapsed
                s.nodes = info.nodes or s.nodes
                s.reason = info.reason or None

    @staticmethod
    def _gone(manifest: RunManifest, step: StepRecord, code, mode: str) -> None:
        """SLURM does not know the job (purged, and no accounting that remembers it; with
        slurmdbd: not recorded yet): take the exit status the script left behind, else see
        whether it started (SLURM opens its log then) or a step it needs failed."""
        if isinstance(code, int):
            step.exit_code = code
            step.state = from_exit(code)
            step.reason = describe_exit(code)
            return
        if mode != "dbd" and step.log and Path(step.log).is_file():
            step.state, step.reason = StepState.CANCELLED, KILLED_WITHOUT_STATUS
            return
        parents = [manifest.step(n) for n in step.plan.needs_ok]
        if any(p.finished and p.state not in SUCCEEDED for p in parents):
            step.state = StepState.CANCELLED
            step.reason = "its dependency did not complete (the job has left the queue)"

    # ---- cancel -----------------------------------------------------------------------
    def cancel(self, manifest: RunManifest) -> list[str]:
        active = [s for s in manifest.steps if s.job_id and not s.finished]
        if not active:
            return []
        env = submit_environment()
        p = subprocess.run(["scancel", *(s.job_id for s in active if s.job_id)], env=env,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise SubmitError(f"scancel failed: {p.stderr.strip()}")
        # Let SLURM say what became of them, and let them go: a job whose state is final (its
        # exit status file written) can still be COMPLETING, its processes being killed and
        # still able to write to the run folder, which a `resume` typed at once would race.
        ids = [s.job_id for s in active if s.job_id]
        deadline = time.monotonic() + self.poll_after_cancel_s
        while time.monotonic() < deadline:
            self.refresh(manifest)
            if all(manifest.step(s.name).finished for s in active):
                break
            time.sleep(0.5)
        squeue = _squeue_runner(env)
        left = still_queued(ids, squeue)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = still_queued(ids, squeue)
        if left:    # e.g. an epilog, or processes that outlive SIGTERM until KillWait
            print(f"cancel: SLURM still holds job(s) {', '.join(sorted(left))} (their "
                  "processes are still being killed); `resume` waits until squeue no longer "
                  "lists them", file=sys.stderr)
        return [s.name for s in active]

    def lingering(self, manifest: RunManifest) -> list[str]:
        ended = [s.job_id for s in manifest.steps if s.job_id and s.finished]
        return sorted(still_queued(ended, _squeue_runner(submit_environment())))


def _squeue_runner(env: dict[str, str]):
    """subprocess.run for squeue with `env` less SQUEUE_STATES, SQUEUE_USERS, SQUEUE_ACCOUNT,
    ... (squeue reads them as options): a user's own defaults must not hide our jobs or show
    ended ones."""
    return functools.partial(subprocess.run,
                             env={k: v for k, v in env.items() if not k.startswith("SQUEUE_")})


def _exit_statuses(manifest: RunManifest, steps: list[StepRecord]) -> dict:
    """{step name: the exit status its job left (an array: {task: status}) or None}."""
    return {s.name: read_task_exit_statuses(manifest.run_dir, s.job_id) if s.array
            else read_exit_status(manifest.run_dir, s.job_id) for s in steps if s.job_id}


def _ended(manifest: RunManifest, left: dict) -> set[str]:
    """Job ids that have certainly ended, so a job completion log knows them: their script left
    an exit status (an array: every task), or a step they need ended without success (SLURM
    cancels them: --kill-on-invalid-dep). A hint for query_jobs, which checks it."""
    ended: set[str] = set()
    unsuccessful = {s.name for s in manifest.steps if s.finished and s.state not in SUCCEEDED}
    for s in sorted(manifest.steps, key=lambda s: s.index):
        if s.finished or not s.job_id or s.name not in left:
            continue
        status = left[s.name]
        if s.array:
            done = status.keys() >= array_task_ids(s.array)
            bad = any(status.values())
        else:
            done, bad = status is not None, bool(status)
        if done or unsuccessful & set(s.plan.needs_ok):
            ended.add(s.job_id)
            if bad or not done:
                unsuccessful.add(s.name)
    return ended

