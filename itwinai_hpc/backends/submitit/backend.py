"""submitit backend: each step's rendered script runs as a submitit job, on SLURM or locally.

The submitted callable (SubmititStep, step.py) only runs the step's script (the .sbatch body inside
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
(on_local.detach_controllers), as the local backend's runner: the job goes on after `submit`
returns or is interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from itwinai_hpc.backends import Backend, SubmitError, sbatch_works
from itwinai_hpc.backends.local.backend import parallel_limit
from itwinai_hpc.backends.local.procs import job_marker, kill_job
from itwinai_hpc.backends.slurm.backend import SlurmBackend
from itwinai_hpc.backends.submitit.on_local import local_state, submit_locally
from itwinai_hpc.backends.submitit.on_slurm import submit_to_slurm
from itwinai_hpc.core import job_env
from itwinai_hpc.core.clock import now_iso
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.paths import dependency_option
from itwinai_hpc.run.states import StepState

if TYPE_CHECKING:
    import submitit

CLUSTER_ENV = job_env.SUBMITIT_CLUSTER
FOLDER = "submitit"                    # submitit's pickles and its own logs, inside the run


def choose_cluster(environ: dict[str, str] | None = None) -> str:
    """'slurm' where sbatch works, else 'local'; $ITWINAI_HPC_SUBMITIT_CLUSTER overrides."""
    value = (os.environ if environ is None else environ).get(CLUSTER_ENV)
    if value is None:
        return "slurm" if sbatch_works() else "local"
    if value not in ("slurm", "local"):
        raise UserError(f"{CLUSTER_ENV}={value!r}: expected 'slurm' or 'local'")
    return value


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
        from itwinai_hpc.run.paths import check_run_folder, check_sbatch_paths
        if "%" in manifest.run_dir:
            raise UserError(f"the run folder {manifest.run_dir!r} contains '%', which submitit "
                            "reads in its job folder as a job id pattern (%j, %A, %a, %t); "
                            "use --backend slurm, or a path without '%'", file=manifest.run_dir)
        check_run_folder(manifest.run_dir, [s.plan for s in manifest.steps])
        # a bad $ITWINAI_HPC_SUBMITIT_CLUSTER is refused here, before anything is written
        if (manifest.extra.get("submitit", {}).get("cluster") or choose_cluster()) == "slurm":
            check_sbatch_paths(manifest.run_dir, manifest.workdir)

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
                    sjob = submit_to_slurm(folder, manifest, step,
                                                 dependency_option(ok, anyway))
                else:
                    sjob = submit_locally(folder, manifest, step, jobs, ok, anyway)
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

    def ask_scheduler(self, manifest: RunManifest,
                      scripts: dict[str, tuple[str, str]]) -> list[str]:
        """On SLURM, the same `sbatch --test-only` as the slurm backend (submitit asks for the
        resources the rendered scripts ask for); the local cluster has nobody to ask."""
        cluster = manifest.extra.get("submitit", {}).get("cluster") or choose_cluster()
        return self.slurm.ask_scheduler(manifest, scripts) if cluster == "slurm" else []

    def usage(self, manifest: RunManifest) -> tuple[dict[str, dict] | None, str | None]:
        if self._cluster(manifest) == "slurm":
            return self.slurm.usage(manifest)
        return super().usage(manifest)

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
                    local_state(m.run_dir, s)

    # ---- cancel -----------------------------------------------------------------------
    def lingering(self, manifest: RunManifest) -> list[str]:
        return self.slurm.lingering(manifest) if self._cluster(manifest) == "slurm" else []

    def cancel(self, manifest: RunManifest) -> list[str]:
        if self._cluster(manifest) == "slurm":
            return self.slurm.cancel(manifest)
        active = [s for s in manifest.steps if s.job_id and not s.finished]
        for s in active:
            assert s.job_id is not None
            # the job, its tasks (their markers start with the job's) and their children
            kill_job(job_marker(manifest.run_id, s.job_id), [int(s.job_id)], grace=5)
        with manifest.updating() as m:
            for s in active:
                rec = m.step(s.name)
                if not rec.finished:
                    rec.state, rec.reason = StepState.CANCELLED, "cancelled by the user"
        return [s.name for s in active]


