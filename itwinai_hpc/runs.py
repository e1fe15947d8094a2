"""The run folder's manifest (run.json): which steps, which job ids, which states. And finding runs.

Every write is atomic (temporary file + rename) and read-modify-write cycles hold a lock, so a
status refresh and a backend updating job ids never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import UserError
from .plan import local_script_name

MANIFEST = "run.json"
# SLURM's names. Finished states are cached in run.json and never asked for again.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SKIPPED"}
OK_STATES = {"COMPLETED", "SKIPPED"}
UNSUBMITTED = "UNSUBMITTED"


def new_run_id(workflow_name: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return f"{workflow_name}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def default_runs_dir() -> Path:
    return Path(os.environ.get("ITWINAI_HPC_RUNS", "runs"))


@dataclass
class StepRecord:
    name: str
    index: int
    script: str
    needs: list[str]
    array: str | None = None
    job_id: str | None = None
    state: str = UNSUBMITTED
    exit_code: int | None = None
    elapsed: int | None = None          # seconds
    nodes: str | None = None
    reason: str | None = None
    log: str | None = None
    submitted_at: str | None = None
    history: list[str] = field(default_factory=list)   # job ids of earlier attempts (resume)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def local_script(self) -> str:
        return local_script_name(self.script)


@dataclass
class RunManifest:
    run_id: str
    run_dir: str
    workflow_name: str
    workflow_file: str
    workdir: str
    steps: list[StepRecord]
    overrides: list[str] = field(default_factory=list)
    backend: str | None = None
    created: str = ""
    itwinai_hpc: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)   # backend-specific (e.g. local pid)
    format: int = 1

    @classmethod
    def new(cls, *, run_id: str, run_dir: Path, workflow_name: str, workflow_file: str,
            overrides: list[str], backend: str | None, workdir: str, jobs) -> "RunManifest":
        steps = [StepRecord(name=j.name, index=j.index, script=j.script, needs=list(j.needs),
                            array=j.array) for j in jobs]
        return cls(run_id=run_id, run_dir=str(run_dir), workflow_name=workflow_name,
                   workflow_file=workflow_file, workdir=workdir, steps=steps,
                   overrides=overrides, backend=backend,
                   created=dt.datetime.now().astimezone().isoformat(timespec="seconds"))

    # ---- persistence --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "RunManifest":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError("not a run folder (no run.json)", file=str(path.parent)) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"unreadable run manifest: {exc}", file=str(path)) from None
        steps = [StepRecord(**s) for s in data.pop("steps")]
        return cls(steps=steps, **data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path | None = None) -> None:
        path = Path(path) if path else Path(self.run_dir) / MANIFEST
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @contextlib.contextmanager
    def updating(self) -> Iterator["RunManifest"]:
        """Lock, re-read the manifest from disk, let the caller change it, save it, unlock."""
        with lock(Path(self.run_dir)):
            fresh = RunManifest.load(self.run_dir)
            yield fresh
            fresh.save()
        self.__dict__.update(fresh.__dict__)

    # ---- queries ------------------------------------------------------------------------
    def step(self, name: str) -> StepRecord:
        for s in self.steps:
            if s.name == name:
                return s
        raise UserError(f"run {self.run_id} has no step '{name}'; steps: "
                        f"{', '.join(s.name for s in self.steps)}")

    def log_path(self, step: StepRecord, job_id: str) -> str:
        """logs/<workflow>.<step>-<id>.out, where SLURM's %x-%j.out points (arrays: %x-%A_%a,
        so a glob over the tasks' files)."""
        name = f"{self.workflow_name}.{step.name}-{job_id}"
        return str(Path(self.run_dir) / "logs" / (f"{name}_*.out" if step.array else
                                                  f"{name}.out"))

    def dependents(self, names: set[str]) -> set[str]:
        """`names` plus every step that needs one of them, directly or not."""
        out = set(names)
        changed = True
        while changed:
            changed = False
            for s in self.steps:
                if s.name not in out and out & set(s.needs):
                    out.add(s.name)
                    changed = True
        return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_run(ref: str | None, runs_dir: Path | None = None) -> Path:
    """A run folder from a path, a run id under the runs folder, or (None) the newest run."""
    runs_dir = runs_dir or default_runs_dir()
    if ref:
        for candidate in (Path(ref), runs_dir / ref):
            if (candidate / MANIFEST).is_file():
                return candidate
        matches = sorted(p.parent for p in runs_dir.glob(f"{ref}*/{MANIFEST}"))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"'{ref}' matches several runs: "
                            f"{', '.join(m.name for m in matches)}")
        raise UserError(f"no run '{ref}' (looked for a folder with run.json, and under "
                        f"{runs_dir}/)")
    manifests = list(runs_dir.glob(f"*/{MANIFEST}"))
    if not manifests:
        raise UserError(f"no runs under {runs_dir}/ yet; submit one with "
                        "`itwinai-hpc submit WORKFLOW`, or name a run folder")
    created = sorted(manifests, key=lambda p: RunManifest.load(p).created)
    return created[-1].parent
