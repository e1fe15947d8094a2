"""submitit backend: each step's rendered script runs as a submitit job, on SLURM or locally.

The submitted callable (SubmititStep, submitit_step.py) only runs the step's script (the .sbatch body inside
submitit's SLURM allocation, the .sh locally) and is Checkpointable, so a preempted step is
requeued and resumes from its own checkpoint files. States go into run.json like every
backend's. No torch here.

Job arrays (`array:`, or a `matrix:` step) run the same tasks on both clusters:
- SLURM: one sbatch with --array=<the spec as written>, %N throttle included, so SLURM's task ids
  are the spec's: task 3 of "1,3,5" is job A_3 in squeue, sacct and scancel, sees
  SLURM_ARRAY_TASK_ID=3, and leaves its exit status and log as A_3, where the slurm backend's
  refresh reads them. submitit's map_array numbers tasks 0..N-1 whatever the spec, so the array
  is one submitit submission instead, its pickle copied to each task's name (A_3_submitted.pkl:
  where submitit's runtime looks for a task's callable, waiting up to 60 s for it).
- local: one submitit local job per array runs the tasks, at most %N and
  $ITWINAI_HPC_LOCAL_PARALLEL at once, each with SLURM_ARRAY_JOB_ID=<the job> and
  SLURM_ARRAY_TASK_ID=<its id>, its own log and exit status (<job>_<task>); the job's own exit
  status, left once every task ended, is what its dependents wait for. A cancel TERMs the job and
  every task (they carry its process marker); the job then starts no more tasks.
Dependencies: the needs that must succeed are afterok, needs `any` and `after` afterany (locally:
waited for, and only a failed afterok parent skips the step).
A local job's controller starts in a session of its own, with no terminal and no shared pipes
(_DetachedPopen), as the local backend's runner: the job goes on after `submit` returns or is
interrupted.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import submitit
import submitit.local.local
from submitit.core.utils import JobPaths

from .. import atomic, layout
from ..errors import UserError
from ..planned import PlannedStep
from ..runs import RunManifest, StepRecord
from ..slurm_syntax import parse_array, time_minutes
from ..states import StepState
from . import Backend, SubmitError, sbatch_works
from .local import parallel_limit
from .local_procs import alive, job_marker, kill_job
from .local_runner import now_iso
from .sbatch import dependency_option
from .slurm import SlurmBackend
from .slurm_exit_status import complete_array, read_task_exit_statuses
from .submitit_step import SKIPPED, SubmititStep, exit_file

CLUSTER_ENV = "ITWINAI_HPC_SUBMITIT_CLUSTER"
FOLDER = "submitit"                    # submitit's pickles and its own logs, inside the run
WEEK_MIN = 7 * 24 * 60
CONTROLLER_LOG = "local-controllers.log"   # in FOLDER: what local controllers print themselves


class _DetachedPopen(subprocess.Popen):
    """How submitit's local executor starts a job's controller, detached. submitit uses a
    plain Popen, so the controller kept this process's stdout, stderr and process group:
    `submit --backend submitit | tee` waited for the jobs to end, and Ctrl-C during `--wait`
    killed them. Its last argument is the executor's folder (submitit.local.start_controller)."""

    def __init__(self, args, *rest, **kwargs):
        folder = Path(shlex.split(args)[-1] if isinstance(args, str) else args[-1])
        with open(folder / CONTROLLER_LOG, "ab") as log:
            kwargs.update(stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
            super().__init__(args, *rest, **kwargs)


# submitit.local.local's view of subprocess (only start_controller calls Popen in this process;
# the controller's own Popens run in the controller).
_local_subprocess = types.ModuleType("subprocess")
_local_subprocess.__dict__.update(vars(subprocess))
_local_subprocess.Popen = _DetachedPopen
submitit.local.local.subprocess = _local_subprocess


def choose_cluster(environ: dict[str, str] | None = None) -> str:
    """'slurm' where sbatch works, else 'local'; $ITWINAI_HPC_SUBMITIT_CLUSTER overrides."""
    value = (os.environ if environ is None else environ).get(CLUSTER_ENV)
    if value is None:
        return "slurm" if sbatch_works() else "local"
    if value not in ("slurm", "local"):
        raise UserError(f"{CLUSTER_ENV}={value!r}: expected 'slurm' or 'local'")
    return value


def local_tasks_at_once(array: str) -> int:
    """How many tasks of an array the local cluster runs at once: its %N, at most
    $ITWINAI_HPC_LOCAL_PARALLEL (as the local backend)."""
    spec = parse_array(array)
    return min(spec.limit or len(spec.ids), parallel_limit())


class SubmititBackend(Backend):
    name = "submitit"

    def __init__(self) -> None:
        self.slurm = SlurmBackend()

    # ---- submit -----------------------------------------------------------------------
    def preflight(self, manifest: RunManifest) -> None:
        """The run folder's current path (it may have been moved since render): submitit
        reads %j, %t, %A and %a in its folder (run folder/submitit) as the job's ids, and hands
        it to sbatch as a log file name pattern, so a '%' cannot be written there; and it must
        be bindable into the steps' containers (render.check_run_folder)."""
        from .sbatch import check_run_folder
        if "%" in manifest.run_dir:
            raise UserError(f"the run folder {manifest.run_dir!r} contains '%', which submitit "
                            "reads in its job folder as a job id pattern (%j, %A, %a, %t); "
                            "use --backend slurm, or a path without '%'", file=manifest.run_dir)
        check_run_folder(manifest.run_dir, [s.plan for s in manifest.steps])
        if not manifest.extra.get("submitit", {}).get("cluster"):
            choose_cluster()            # a bad $ITWINAI_HPC_SUBMITIT_CLUSTER: before writing

    def submit(self, manifest: RunManifest, steps: list[str]) -> None:
        cluster = manifest.extra.get("submitit", {}).get("cluster") or choose_cluster()
        jobs = {s.name: s.plan for s in manifest.steps}
        if cluster == "local" and any(jobs[n].array for n in steps):
            parallel_limit()            # a bad value is an error before anything is submitted
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
            ok = [job_ids[n] for n in job.needs_ok if n in steps]
            anyway = [job_ids[n] for n in job.waits_for if n in steps]
            try:
                if cluster == "slurm":
                    sjob = self._submit_to_slurm(folder, manifest, step,
                                                 dependency_option(ok, anyway))
                else:
                    sjob = self._submit_locally(folder, manifest, step, jobs, ok, anyway)
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

    def _submit_to_slurm(self, folder: Path, manifest: RunManifest, step: StepRecord,
                         depends: list[str]) -> submitit.Job:
        job = step.plan
        executor = self._slurm_executor(folder, manifest, job, depends, step.array)
        # seconds between submitit's warning signal and the requeue (60 s of the 90 s default
        # warning, as the sbatch trap's default grace)
        callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id, step.name,
                                 str(Path(manifest.run_dir) / step.script), job.job_name,
                                 grace=job.requeue.grace if job.requeue else 60)
        sjob = executor.submit(callable_)
        if step.array:
            try:
                share_with_tasks(sjob, parse_array(step.array).ids)
            except BaseException:
                sjob.cancel(check=False)
                raise
        return sjob

    def _submit_locally(self, folder: Path, manifest: RunManifest, step: StepRecord,
                        jobs: dict[str, PlannedStep], ok: list[str],
                        anyway: list[str]) -> submitit.Job:
        job = step.plan
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=self._local_minutes(jobs, step.name),
                                   tasks_per_node=1)
        tasks = parse_array(step.array).ids if step.array else None
        callable_ = SubmititStep(manifest.run_dir, manifest.workdir, manifest.run_id, step.name,
                                 str(Path(manifest.run_dir) / step.local_script), job.job_name,
                                 ok, waits=anyway, tasks=tasks,
                                 limit=local_tasks_at_once(step.array) if step.array else 1)
        return executor.submit(callable_)

    @staticmethod
    def _slurm_executor(folder: Path, manifest: RunManifest, job: PlannedStep,
                        depends: list[str], array: str | None):
        """`depends`: sbatch's dependency options (sbatch.dependency_option); `array`: the
        tasks to submit (the plan's, or a resumed sweep's unfinished ones)."""
        r = job.resources
        extra = {"comment": f"itwinai-hpc:{manifest.run_id}", "chdir": manifest.workdir,
                 # B: the batch shell, where submitit's python runs (use_srun=False) and
                 # handles USR2 by checkpointing and requeueing
                 "signal": f"B:USR2@{job.requeue.before_limit if job.requeue else 90}"}
        if array:
            # submitit's own logs per task, named as its map_array names them
            logs = JobPaths(folder)
            extra.update(array=array,
                         output=str(logs.stdout).replace("%j", "%A_%a").replace("%t", "0"),
                         error=str(logs.stderr).replace("%j", "%A_%a").replace("%t", "0"))
        if r.mem:
            extra["mem"] = r.mem        # submitit's own mem= wants gigabytes as a number
        for flag in (*depends, *job.extra_sbatch):
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
    def _local_minutes(jobs: dict[str, PlannedStep], name: str) -> int:
        """submitit's local limit counts the wait for parents: the step's time plus its
        ancestors' (an array's once per round of tasks; a week where any is unknown)."""
        chain, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in chain:
                chain.add(n)
                todo.extend(jobs[n].needs + jobs[n].after)
        minutes = []
        for n in chain:
            job = jobs[n]
            rounds = math.ceil(len(parse_array(job.array).ids) /
                               local_tasks_at_once(job.array)) if job.array else 1
            step_min = time_minutes(job.resources.time)
            minutes.append(None if step_min is None else step_min * rounds)
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
        # alive first: a job leaves its exit status before it ends, so a job found ended and
        # without one afterwards never left one
        running = alive(int(s.job_id))
        done = exit_file(run_dir, s.job_id)
        started = Path(layout.started_marker(run_dir, s.job_id))
        word, _, why = (done.read_text() if done.exists() else "").strip().partition(" ")
        if word == SKIPPED:
            s.state, s.reason = StepState.CANCELLED, why
            return
        if not word and running:
            if started.exists():
                s.state = StepState.RUNNING
                s.elapsed = int(time.time() - started.stat().st_mtime)
            else:
                s.state, s.reason = StepState.PENDING, "waiting for its dependencies"
            return
        if s.array:     # every task's own status; a task that left none never ran to its end
            info = complete_array(s.job_id, s.array, None,
                                  read_task_exit_statuses(run_dir, s.job_id))
            code = None if info is None else info.exit_code
            state = None if info is None else info.state
        else:
            code = int(word) if word.isdigit() else None
            state = None if code is None else \
                StepState.COMPLETED if code == 0 else StepState.FAILED
        if state is None:
            s.state = StepState.FAILED
            s.reason = "submitit's local job ended without a result; see the run's submitit/ folder"
            return
        s.state, s.exit_code = state, code
        if started.exists():
            s.elapsed = int((done.stat().st_mtime if done.exists() else time.time())
                            - started.stat().st_mtime)

    # ---- cancel -----------------------------------------------------------------------
    def cancel(self, manifest: RunManifest) -> list[str]:
        if self._cluster(manifest) == "slurm":
            return self.slurm.cancel(manifest)
        active = [s for s in manifest.steps if s.job_id and not s.finished]
        for s in active:
            # the job, its tasks (their markers start with the job's) and their children
            kill_job(job_marker(manifest.run_id, s.job_id), [int(s.job_id)], grace=5)
        with manifest.updating() as m:
            for s in active:
                rec = m.step(s.name)
                if not rec.finished:
                    rec.state, rec.reason = StepState.CANCELLED, "cancelled by the user"
        return [s.name for s in active]


def share_with_tasks(job: submitit.Job, tasks: tuple[int, ...]) -> None:
    """Give every task of a SLURM array the array's callable: a copy of the submitted pickle
    under each task's name, where submitit's runtime looks (each its own: a requeued task
    rewrites its pickle with its checkpointed state)."""
    for task in tasks:
        task_id = layout.task_job_id(str(job.job_id), task)
        target = JobPaths(job.paths.folder, job_id=task_id).submitted_pickle
        tmp = atomic.temporary_name(target)     # renamed: a task never reads half a pickle
        shutil.copyfile(job.paths.submitted_pickle, tmp)
        os.replace(tmp, target)
