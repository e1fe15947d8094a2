"""Schedulers that run an already-rendered run folder: SLURM, local, submitit.

A backend only submits, asks about and cancels jobs of a run. Everything it needs is in the run
folder (run.json's plan and the rendered scripts), so any backend can submit any rendered
folder; backends never import workflow/ or render/, nor torch or mlflow.
Run-level logic (resume, wait, status exit codes) lives in ops/operations.py.
"""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.run.manifest import RunManifest, StepRecord

BACKENDS = ("slurm", "local", "submitit")


class SubmitError(Exception):
    """The scheduler refused a job. What was submitted before it has been cancelled. Exit 1."""

    exit_code = 1


class Backend(ABC):
    name: ClassVar[str]

    @abstractmethod
    def submit(self, manifest: RunManifest, steps: list[str]) -> None:
        """Submit `steps` (names, in dependency order) of the rendered run in manifest.run_dir.

        Parents outside `steps` have completed already (resume). Each job id goes into run.json
        (`manifest.updating()`) as soon as it is known. If the scheduler refuses a job, cancel
        what this call submitted, record the refusal in the manifest and raise SubmitError.
        """

    def preflight(self, manifest: RunManifest) -> None:
        """Refuse (UserError) a run this backend cannot start here, before anything is written
        or submitted (the manifest may still be in memory only)."""

    def ask_scheduler(self, manifest: RunManifest,
                      scripts: dict[str, tuple[str, str]]) -> list[str]:
        """Ask the scheduler whether it would start each step's script as written
        ({step: (file name, text)}), before anything is written or queued: a refusal is a
        UserError naming the step. Returns what to show (SLURM: each step's start estimate).
        Default: there is no scheduler to ask."""
        return []

    def dry_run_lines(self, manifest: RunManifest) -> list[str]:
        """What `submit --dry-run` shows this backend would run, one line per script."""
        return [step.local_script + (f"  (after {', '.join(step.needs)})" if step.needs else "")
                for step in manifest.steps]

    def usage(self, manifest: RunManifest) -> tuple[dict[str, dict] | None, str | None]:
        """What each job was given and used, by job id, for `report`, or (None, why not)."""
        return None, (f"a {self.name} run has no scheduler accounting; shown: states and "
                      "elapsed time")

    @abstractmethod
    def refresh(self, manifest: RunManifest) -> None:
        """Update the unfinished steps' state, exit code, elapsed time, nodes and log with ONE
        scheduler query; steps already in a finished state are never asked about again."""

    @abstractmethod
    def cancel(self, manifest: RunManifest) -> list[str]:
        """Cancel every unfinished job of the run; return the names of the steps cancelled."""

    def lingering(self, manifest: RunManifest) -> list[str]:
        """Job ids of the run the scheduler still holds although their steps have ended (SLURM:
        COMPLETING, their processes still being killed, still able to write to the run
        folder). `resume` waits for them. Default: none."""
        return []

    def log_files(self, manifest: RunManifest, step: StepRecord) -> list[Path]:
        """The step's output file(s): one per array task for arrays (step.log is a glob)."""
        if not step.log:
            return []
        path = Path(step.log)
        return sorted(path.parent.glob(path.name)) if "*" in path.name else [path]


def sbatch_works() -> bool:
    """True where sbatch exists and the controller answers (what `--backend auto` asks)."""
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True,
                              timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_backend_name(name: str | None) -> str:
    if name in (None, "auto"):
        return "slurm" if sbatch_works() else "local"
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'; choose one of: auto, {', '.join(BACKENDS)}")
    return name


def get_backend(name: str | None) -> Backend:
    """The backend object for a name ('auto' resolves as `resolve_backend_name` says)."""
    name = resolve_backend_name(name)
    if name == "slurm":
        from itwinai_hpc.backends.slurm.backend import SlurmBackend
        return SlurmBackend()
    if name == "local":
        from itwinai_hpc.backends.local.backend import LocalBackend
        return LocalBackend()
    from itwinai_hpc.backends.submitit.backend import SubmititBackend
    return SubmititBackend()
