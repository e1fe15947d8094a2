"""The run folder's manifest (run.json): the plan of every step, its job ids and states
(finding run folders and their locks: folders.py).

run.json is the whole request a backend needs (TorchX's dry-run object, on disk): the planned
steps (planned.py) plus what became of them. Every write is atomic and read-modify-write cycles
hold a lock, so a status refresh and a backend updating job ids never lose each other's changes.
Imports nothing from workflow/ or render/ (tests/test_layers.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itwinai_hpc.core import atomic
from itwinai_hpc.core.clock import now_iso
from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.version import __version__
from itwinai_hpc.run import layout
from itwinai_hpc.run.folders import lock, not_yours_to_read
from itwinai_hpc.run.planned import PlannedStep
from itwinai_hpc.run.states import FINISHED, StepState

# run.json's format: a reader accepts its own major format and ignores fields it does not know
# (a newer minor version may add some); a newer major format asks for an upgrade.
FORMAT = 1
# Only the owner writes run.json, whatever the umask (group-shared folders included).
MODE = 0o644


# What the fields of a step's record in run.json hold (besides null).
_RECORD_TYPES = {"name": (str,), "job_id": (str,), "exit_code": (int,), "elapsed": (int,),
                 "nodes": (str,), "reason": (str,), "log": (str,), "submitted_at": (str,),
                 "tasks": (str,)}


@dataclass
class StepRecord:
    """A step as recorded in run.json: its plan (fixed at render time) and what became of its
    latest submission (job id, state, ...), with the job ids of earlier attempts."""

    name: str
    plan: PlannedStep
    job_id: str | None = None
    state: str = StepState.UNSUBMITTED
    exit_code: int | None = None
    elapsed: int | None = None          # seconds
    nodes: str | None = None
    reason: str | None = None
    log: str | None = None
    submitted_at: str | None = None
    history: list[str] = field(default_factory=list)   # job ids of earlier attempts (resume)
    # The array tasks of the latest submission where not the plan's all: a resumed sweep
    # re-runs only its tasks that did not succeed (e.g. "1,4%2").
    tasks: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def needs(self) -> tuple[str, ...]:
        return self.plan.needs

    @property
    def array(self) -> str | None:
        """The array spec of the latest submission: its tasks, else the plan's."""
        return self.tasks or self.plan.array

    @property
    def script(self) -> str:
        return self.plan.script

    @property
    def local_script(self) -> str:
        return self.plan.local_script

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["plan"] = self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key, types in _RECORD_TYPES.items():    # a hand-edited run.json fails here, named
            value = values.get(key)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise TypeError(f"step {d.get('name')!r}: {key} is {value!r}, expected "
                                f"{' or '.join(t.__name__ for t in types)} or null")
        if not all(isinstance(j, str) for j in values.get("history") or []):
            raise TypeError(f"step {d.get('name')!r}: history must list job ids as text")
        values["plan"] = PlannedStep.from_dict(d["plan"])
        values["state"] = StepState.parse(values.get("state", StepState.UNSUBMITTED))
        return cls(**values)


@dataclass
class RunManifest:
    """A rendered run: where it lives, how it was made, and its steps in run order."""

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
    format: int = FORMAT
    # What the last refresh could not find out (e.g. a local runner on another host); shown by
    # `status`, never saved.
    note: str | None = field(default=None, compare=False)

    @classmethod
    def new(cls, *, run_id: str, run_dir: Path, workflow_name: str, workflow_file: str,
            overrides: list[str], workdir: str, plan: list[PlannedStep]) -> RunManifest:
        return cls(run_id=run_id, run_dir=str(run_dir), workflow_name=workflow_name,
                   workflow_file=workflow_file, workdir=workdir,
                   steps=[StepRecord(name=p.name, plan=p) for p in plan], overrides=overrides,
                   created=now_iso())

    # ---- persistence --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> RunManifest:
        """Read run.json (or the run.json of a folder). The folder it was found in is the run's
        folder from then on, whatever the file says: a copied or moved run acts on itself."""
        path = Path(path)
        if path.is_dir():
            path = path / layout.MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError("not a run folder (no run.json)", file=str(path.parent)) from None
        except PermissionError:
            raise not_yours_to_read(path.parent) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"unreadable run manifest: {exc}", file=str(path)) from None
        try:
            return cls._from_dict(data, path.parent.absolute())
        except UserError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise UserError(f"not a run manifest of itwinai-hpc ({type(exc).__name__}: {exc})",
                            file=str(path)) from None

    @classmethod
    def _from_dict(cls, data: Any, folder: Path) -> RunManifest:
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        fmt = data.get("format")
        if isinstance(fmt, int) and fmt > FORMAT:
            raise UserError(f"written by itwinai-hpc {data.get('itwinai_hpc', '?')} in run "
                            f"folder format {fmt}; this is itwinai-hpc {__version__} (format "
                            f"{FORMAT}): upgrade itwinai-hpc to read it",
                            file=str(folder / layout.MANIFEST))
        known = {f.name for f in dataclasses.fields(cls)} - {"note"}
        values = {k: v for k, v in data.items() if k in known}
        values["steps"] = [StepRecord.from_dict(s) for s in data["steps"]]
        _check_recorded_graph(values["steps"], folder / layout.MANIFEST)
        values["run_dir"] = str(folder)
        for step in values["steps"]:
            step.log = _moved(step.log, data.get("run_dir"), folder)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "note"}
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path | None = None) -> None:
        path = Path(path) if path else Path(self.run_dir) / layout.MANIFEST
        atomic.write_text(path, self.to_json(), mode=MODE)

    @contextlib.contextmanager
    def updating(self) -> Iterator[RunManifest]:
        """Lock, re-read the manifest from disk, let the caller change it, save it if it
        changed (a status refresh of a finished run writes nothing), unlock."""
        with lock(Path(self.run_dir)):
            fresh = RunManifest.load(self.run_dir)
            before = fresh.to_json()
            yield fresh
            after = fresh.to_json()
            if after != before:
                atomic.write_text(Path(self.run_dir) / layout.MANIFEST, after, mode=MODE)
        note = fresh.note
        self.__dict__.update(fresh.__dict__)
        self.note = note

    # ---- queries ------------------------------------------------------------------------
    def step(self, name: str) -> StepRecord:
        for s in self.steps:
            if s.name == name:
                return s
        raise UserError(f"run {self.run_id} has no step '{name}'; steps: "
                        f"{', '.join(s.name for s in self.steps)}")

    def log_path(self, step: StepRecord, job_id: str) -> str:
        """Where the job's output goes (for an array, a glob over its tasks' files)."""
        return layout.log_glob(self.run_dir, step.plan.job_name, job_id, bool(step.array))

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


def _moved(log: str | None, recorded: Any, folder: Path) -> str | None:
    """A log path as recorded (absolute, under the folder run.json named as the run's) read
    where the folder is now: a run folder moved after its jobs ran still finds its logs. A
    path outside the recorded folder stays as it is."""
    if not log or not isinstance(recorded, str) or not recorded or Path(recorded) == folder:
        return log
    try:
        inside = Path(log).relative_to(recorded)
    except ValueError:
        return log
    return str(folder / inside)


def _check_recorded_graph(steps: list[StepRecord], where: Path) -> None:
    """What every reader of run.json relies on, checked on load (a hand-edited run.json): step
    names unique, indexes whole numbers, every need a step of the run, no cycle (a runner or
    `submit --wait` would wait forever)."""
    names = [s.name for s in steps]
    for s in steps:
        if not isinstance(s.plan.index, int) or isinstance(s.plan.index, bool):
            raise UserError(f"step '{s.name}': index is {s.plan.index!r}, expected a whole "
                            "number", file=str(where))
        if names.count(s.name) > 1:
            raise UserError(f"step '{s.name}' is listed twice", file=str(where))
        unknown = [n for n in (*s.plan.needs, *s.plan.after) if n not in names]
        if unknown:
            raise UserError(f"step '{s.name}' needs {', '.join(map(repr, unknown))}, which is "
                            f"no step of this run ({', '.join(names)})", file=str(where))
    needs = {s.name: set(s.plan.needs) | set(s.plan.after) for s in steps}
    done: set[str] = set()
    while len(done) < len(needs):
        ready = [n for n, wants in needs.items() if n not in done and wants <= done]
        if not ready:
            cycle = sorted(set(needs) - done)
            raise UserError(f"the steps {', '.join(cycle)} need each other in a cycle; no order "
                            "can run them", file=str(where))
        done.update(ready)

