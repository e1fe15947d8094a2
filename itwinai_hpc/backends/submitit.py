"""submitit backend: each step's rendered script runs as a submitit job, on SLURM or locally.

The submitted callable only runs the step's script (the .sbatch body inside submitit's SLURM
allocation, the .sh locally) and is Checkpointable, so a preempted step is requeued and resumes
from its own checkpoint files. States go into run.json like every backend's. No torch here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import submitit

from .. import layout
from ..errors import UserError
from ..runs import RunManifest, StepRecord
from ..slurm_syntax import time_minutes
from ..states import StepState
from . import Backend, SubmitError, sbatch_works
from .local_procs import MARKER, alive, job_marker, kill_job
from .local_runner import now_iso
from .slurm import SlurmBackend

CLUSTER_ENV = "ITWINAI_HPC_SUBMITIT_CLUSTER"
FOLDER = "submitit"                    # submitit's pickles and its own logs, inside the run
WEEK_MIN = 7 * 24 * 60
SKIPPED = "skipped"


def choose_cluster(environ: dict[str, str] | None = None) -> str:
    """'slurm' where sbatch works, else 'local'; $ITWINAI_HPC_SUBMITIT_CLUSTER overrides."""
    value = (os.environ if environ is None else environ).get(CLUSTER_ENV)
    if value is None:
        return "slurm" if sbatch_works() else "local"
    if value not in ("slurm", "local"):
        raise UserError(f"{CLUSTER_ENV}={value!r}: expected 'slurm' or 'local'")
    return value


def exit_file(run_dir: str, job_id: str) -> Path:
    return Path(layout.exit_marker(run_dir, job_id))


class SubmititStep(submitit.helpers.Checkpointable):
    """A step as submitit runs it: the submitted callable of every step, which runs the step's
    rendered script with bash.

    On preemption or timeout submitit calls checkpoint(), which (inherited) resubmits this same
    callable: the script runs again and the step's code resumes from its checkpoint files."""

    def __init__(self, run_dir: str, workdir: str, run_id: str, step: str, script: str,
                 job_name: str, parents: list[str] = (), grace: float = 60):
        self.run_dir, self.workdir, self.run_id = run_dir, workdir, run_id
        self.step, self.script, self.job_name = step, script, job_name
        self.parents = list(parents)    # local executor only: job ids to wait for
        self.grace = grace              # seconds the step gets to checkpoint when warned
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        job_id = str(submitit.JobEnvironment().job_id)
        broken = self._wait_for_parents()
        if broken:
            exit_file(self.run_dir, job_id).write_text(f"{SKIPPED} {broken}\n")
            return 0
        Path(layout.started_marker(self.run_dir, job_id)).write_text(now_iso() + "\n")
        env = dict(os.environ, ITWINAI_HPC_RUN_DIR=self.run_dir, ITWINAI_HPC_BACKEND="submitit",
                   **{MARKER: job_marker(self.run_id, job_id)})
        env.setdefault("SLURM_JOB_ID", job_id)
        with open(layout.log_file(self.run_dir, self.job_name, job_id), "ab") as log:
            proc = self._proc = subprocess.Popen(["bash", self.script], cwd=self.workdir,
                                                 env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT)
            # poll, not wait(): a blocking wait() holds the Popen's lock, and checkpoint(),
            # run by the signal handler in this same thread, could then never see the exit
            while (rc := proc.poll()) is None:
                time.sleep(0.2)
            self._proc = None
        rc = 128 - rc if rc < 0 else rc
        exit_file(self.run_dir, job_id).write_text(f"{rc}\n")
        if rc:
            raise SystemExit(rc)        # the job's own exit code, so afterok and sacct see it
        return rc

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the time-limit warning or preemption: ask the step's code to
        checkpoint and stop (the same STOP file as the sbatch requeue trap), give it `grace`
        seconds, then resubmit this callable; the step resumes from its checkpoint."""
        Path(layout.stop_file(self.run_dir, self.step)).touch()
        proc, self._proc = getattr(self, "_proc", None), None    # a Popen does not pickle
        if proc is not None:
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        return super().checkpoint(*args, **kwargs)

    def _wait_for_parents(self) -> str | None:
        """Block until every parent job ended; the first one that did not succeed, or None."""
        for parent in self.parents:
            done = exit_file(self.run_dir, parent)
            while not done.exists():
                if not alive(int(parent)):
                    time.sleep(0.5)     # it may have written its file just before ending
                    if not done.exists():
                        return f"job {parent} ended without a result"
                time.sleep(0.5)
            if done.read_text().split()[0] != "0":
                return f"job {parent} did not complete"
        return None


class SubmititBackend(Backend):
    name = "submitit"

    def __init__(self) -> None:
        self.slurm = SlurmBackend()

    # ---- submit -----------------------------------------------------------------------
    def submit(self, manifest: RunManifest, steps: list[str]) -> None:
        cluster = manifest.extra.get("submitit", {}).get("cluster") or choose_cluster()
        jobs = {s.name: s.plan for s in manifest.steps}
        arrays = [n for n in steps if jobs[n].array]
        if arrays:
            raise UserError(f"step(s) {', '.join(arrays)} are job arrays, which the submitit "
                            "backend does not run; use --backend slurm or --backend local")
        folder = Path(manifest.run_dir) / FOLDER
        folder.mkdir(exist_ok=True)
        with manifest.updating() as m:
            m.extra["submitit"] = {"cluster": cluster}
            if cluster == "slurm":
                m.extra.setdefault("accounting", self.slurm._accounting(os.environ.copy()))
                m.extra.setdefault("submitted_since", now_iso())
        job_ids = {s.name: s.job_id for s in manifest.steps if s.job_id}
        submitted: list[submitit.Job] = []
        for step in sorted((manifest.step(n) for n in steps), key=lambda s: s.index):
            job = jobs[step.name]
            parents = [job_ids[n] for n in step.needs if n in steps]
            # seconds between submitit's warning signal and the requeue (60 s of the 90 s
            # default warning, as the sbatch trap's default grace)
            grace = job.requeue.grace if job.requeue else 60
            if cluster == "slurm":
                executor = self._slurm_executor(folder, manifest, job, parents)
                script = str(Path(manifest.run_dir) / step.script)
                callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id,
                                       step.name, script, job.job_name, grace=grace)
            else:
                executor = submitit.LocalExecutor(folder)
                executor.update_parameters(timeout_min=self._local_minutes(jobs, step.name),
                                           tasks_per_node=1)
                script = str(Path(manifest.run_dir) / step.local_script)
                callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id,
                                       step.name, script, job.job_name, parents)
            try:
                sjob = executor.submit(callable_)
            except Exception as exc:    # submitit wraps sbatch's refusal in several types
                for done in submitted:
                    done.cancel(check=False)
                with manifest.updating() as m:
                    m.step(step.name).state = StepState.FAILED
                    m.step(step.name).reason = f"refused by submitit: {exc}"
                raise SubmitError(f"submitit refused step '{step.name}': {exc}") from None
            submitted.append(sjob)
            job_ids[step.name] = str(sjob.job_id)
            with manifest.updating() as m:
                s = m.step(step.name)
                s.job_id, s.state, s.submitted_at = str(sjob.job_id), StepState.PENDING, now_iso()
                s.log, s.reason = m.log_path(s, str(sjob.job_id)), None

    @staticmethod
    def _slurm_executor(folder: Path, manifest: RunManifest, job, parents: list[str]):
        r = job.resources
        extra = {"comment": f"itwinai-hpc:{manifest.run_id}", "chdir": manifest.workdir,
                 # B: the batch shell, where submitit's python runs (use_srun=False) and
                 # handles USR2 by checkpointing and requeueing
                 "signal": f"B:USR2@{job.requeue.before_limit if job.requeue else 90}"}
        if parents:
            extra.update(dependency="afterok:" + ":".join(parents), kill_on_invalid_dep="yes")
        if r.mem:
            extra["mem"] = r.mem        # submitit's own mem= wants gigabytes as a number
        for flag in job.extra_sbatch:
            key, _, value = flag[2:].partition("=")
            extra[key.replace("-", "_")] = value or True
        params = dict(job_name=job.job_name, nodes=r.nodes, ntasks_per_node=r.ntasks_per_node,
                      use_srun=False, additional_parameters=extra,
                      time=time_minutes(r.time) or WEEK_MIN)
        for key in ("cpus_per_task", "gpus_per_node", "partition", "account", "qos",
                    "constraint"):
            value = getattr(r, key)
            if value:
                params[key] = value
        # `exec`: python replaces the batch shell, so the B:USR2 warning reaches submitit's
        # handler (checkpoint + requeue). Sent to a plain bash it would kill the job instead.
        executor = submitit.SlurmExecutor(folder, python="exec " + shlex.quote(sys.executable))
        executor.update_parameters(**params)
        return executor

    @staticmethod
    def _local_minutes(jobs, name: str) -> int:
        """submitit's local limit counts the wait for parents: the step's time plus its
        ancestors' (a week where any is unknown)."""
        chain, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in chain:
                chain.add(n)
                todo.extend(jobs[n].needs)
        minutes = [time_minutes(jobs[n].resources.time) for n in chain]
        return WEEK_MIN if None in minutes else sum(minutes)

    def _cluster(self, manifest: RunManifest) -> str:
        return manifest.extra.get("submitit", {}).get("cluster", "local")

    # ---- status -----------------------------------------------------------------------
    def refresh(self, manifest: RunManifest) -> None:
        if self._cluster(manifest) == "slurm":
            self.slurm.refresh(manifest)          # one sacct/scontrol query for all steps
            return
        with manifest.updating() as m:
            for s in m.steps:
                if s.job_id and not s.finished:
                    self._local_state(m.run_dir, s)

    @staticmethod
    def _local_state(run_dir: str, s: StepRecord) -> None:
        done = exit_file(run_dir, s.job_id)
        started = Path(layout.started_marker(run_dir, s.job_id))
        if done.exists():
            word, *why = done.read_text().split(maxsplit=1)
            if word == SKIPPED:
                s.state, s.reason = StepState.CANCELLED, f"a dependency failed ({' '.join(why).strip()})"
            else:
                s.exit_code = int(word)
                s.state = StepState.COMPLETED if s.exit_code == 0 else StepState.FAILED
            if started.exists():
                s.elapsed = int(done.stat().st_mtime - started.stat().st_mtime)
        elif not alive(int(s.job_id)):
            s.state = StepState.FAILED
            s.reason = "submitit's local job ended without a result; see the run's submitit/ folder"
        elif started.exists():
            s.state = StepState.RUNNING
            s.elapsed = int(time.time() - started.stat().st_mtime)
        else:
            s.state, s.reason = StepState.PENDING, "waiting for its dependencies"

    # ---- cancel -----------------------------------------------------------------------
    def cancel(self, manifest: RunManifest) -> list[str]:
        if self._cluster(manifest) == "slurm":
            return self.slurm.cancel(manifest)
        active = [s for s in manifest.steps if s.job_id and not s.finished]
        for s in active:
            kill_job(job_marker(manifest.run_id, s.job_id), [int(s.job_id)], grace=5)
        with manifest.updating() as m:
            for s in active:
                rec = m.step(s.name)
                if not rec.finished:
                    rec.state, rec.reason = StepState.CANCELLED, "cancelled by the user"
        return [s.name for s in active]

