"""Run-level operations on top of a backend: submit, status, wait, cancel, resume.

What a user means by "the run" lives here (which steps to resume, when a run is done, the exit
code of `status`); what a scheduler means by "a job" lives in backends/. No torch, no mlflow.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from itwinai_hpc.backends import Backend, get_backend
from itwinai_hpc.core import atomic
from itwinai_hpc.core.errors import RunStateError, UserError
from itwinai_hpc.core.slurm_syntax import parse_array
from itwinai_hpc.run import guard, layout, watchdog
from itwinai_hpc.run.exit_status import read_task_exit_statuses
from itwinai_hpc.run.folders import check_owner, lock, operation_lock
from itwinai_hpc.run.manifest import MODE as MANIFEST_MODE
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.states import FAILED_ITSELF, SUCCEEDED, StepState

# Exit codes of `status` (and of `submit --wait`, which ends with a status).
EXIT_OK, EXIT_FAILED, EXIT_ACTIVE = 0, 1, 3


def backend_for(manifest: RunManifest) -> Backend:
    if not manifest.backend:
        raise UserError(f"run {manifest.run_id} was rendered but never submitted; submit it "
                        f"with `bash {Path(manifest.run_dir) / 'submit.sh'}` or "
                        "`itwinai-hpc submit`")
    return get_backend(manifest.backend)


def submit(manifest: RunManifest, backend: Backend, steps: list[str] | None = None) -> None:
    """Submit `steps` (default: all) of a written run folder with `backend`. A folder is
    submitted once (under its lock, so two submits cannot both win); `resume` re-submits."""
    check_owner(manifest)
    _check_folder(manifest)
    with operation_lock(manifest.run_dir, "submit"):
        _submit(manifest, backend, steps)


def _check_folder(manifest: RunManifest) -> None:
    """Before anything runs as the owner: no planted links, no script someone else changed."""
    guard.check_no_links(manifest.run_dir)
    guard.check_scripts(manifest.run_dir, manifest.extra.get(guard.SCRIPTS) or {})


def _submit(manifest: RunManifest, backend: Backend, steps: list[str] | None) -> None:
    with manifest.updating() as m:
        if m.backend or any(s.job_id for s in m.steps) or \
                (Path(m.run_dir) / layout.JOBS_TSV).exists():
            raise UserError(f"run {m.run_id} was submitted already"
                            f"{f' (backend {m.backend})' if m.backend else ''}; follow it with "
                            f"`itwinai-hpc status {m.run_dir}`, or re-submit what did not "
                            f"complete with `itwinai-hpc resume {m.run_dir}`")
        before = m.to_json(), {s.name: s.job_id for s in m.steps}
        m.backend = backend.name
        m.extra[guard.FOLDER] = guard.folder_record(m.run_dir)
    names = steps if steps is not None else [s.name for s in manifest.steps]
    with _unchanged_unless_queued(manifest, *before):
        backend.submit(manifest, names)


@contextlib.contextmanager
def _unchanged_unless_queued(manifest: RunManifest, before: str, ids: dict[str, str | None]
                             ) -> Iterator[None]:
    """run.json as `before` again when the block fails before any job was queued (sbatch
    missing, a script deleted, Ctrl-C): a refused submit or resume changes nothing, so the same
    command works once the cause is fixed. Once a job was queued, what happened stays recorded
    (the backends cancel what they queued and mark the refused step)."""
    tsv = Path(manifest.run_dir) / layout.JOBS_TSV
    tsv_before = tsv.read_bytes() if tsv.exists() else None
    try:
        yield
    except BaseException:
        with lock(Path(manifest.run_dir)):
            fresh = RunManifest.load(manifest.run_dir)
            queued = any(s.job_id and s.job_id != ids.get(s.name) for s in fresh.steps)
            if not queued and (tsv.read_bytes() if tsv.exists() else None) == tsv_before:
                atomic.write_text(Path(manifest.run_dir) / layout.MANIFEST, before,
                                  mode=MANIFEST_MODE)
        raise


def exit_code(manifest: RunManifest) -> int:
    """0 when every step completed; 1 as soon as any failed or was cancelled (the run cannot
    succeed any more, even if an independent branch still runs); else 3: work remains."""
    if all(s.state in SUCCEEDED for s in manifest.steps):
        return EXIT_OK
    if any(s.finished and s.state not in SUCCEEDED for s in manifest.steps):
        return EXIT_FAILED
    if any(_active(s) for s in manifest.steps):
        return EXIT_ACTIVE
    return EXIT_FAILED      # nothing runs and something never got submitted (refused)


def _active(step: StepRecord) -> bool:
    return step.job_id is not None and not step.finished


def adopt_hand_submission(manifest: RunManifest) -> None:
    """A run folder submitted by hand with `bash submit.sh` has job ids in jobs.tsv only: take
    them (the last line per step wins) so that status, logs, cancel and resume work on it."""
    jobs_tsv = Path(manifest.run_dir) / layout.JOBS_TSV
    if manifest.backend or not jobs_tsv.is_file():
        return
    ids = dict(line.split("\t", 1) for line in jobs_tsv.read_text().splitlines() if "\t" in line)
    with manifest.updating() as m:
        m.backend = "slurm"
        for s in m.steps:
            if s.name in ids:
                s.job_id, s.state = ids[s.name].strip(), StepState.PENDING
                s.log = m.log_path(s, s.job_id)


def refresh(manifest: RunManifest) -> RunManifest:
    """Ask the run's backend once about every unfinished step; returns the updated manifest."""
    adopt_hand_submission(manifest)
    if any(_active(s) for s in manifest.steps):
        backend_for(manifest).refresh(manifest)
        mark_hung(manifest)
    return manifest


def mark_hung(manifest: RunManifest) -> None:
    """A step that ended without success and whose ranks left watchdog marks is HUNG, with
    the rank and node that stopped first as its reason (whatever the scheduler called it: the
    hung rank exits 124, torchrun then ends the others)."""
    ended = [s for s in manifest.steps if s.job_id and s.finished and s.state not in SUCCEEDED
             and s.state != StepState.HUNG]
    found = {s.name: watchdog.first_hung(manifest.run_dir, s.job_id, bool(s.array))
             for s in ended}
    found = {name: why for name, why in found.items() if why}
    if not found:
        return
    with manifest.updating() as m:
        for name, why in found.items():
            m.step(name).state, m.step(name).reason = StepState.HUNG, why


FIRST_PAUSE_S = 0.2      # wait's first pause; each next one 1.5x longer, up to `interval`


def wait(manifest: RunManifest, interval: float = 2.0, timeout: float | None = None,
         progress=None) -> int:
    """Poll until no step is pending or running; returns the status exit code. The pauses
    grow from FIRST_PAUSE_S to `interval` (a short run is seen to end at once, a long one
    costs the scheduler one query per `interval`) and never run past `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    pause = min(FIRST_PAUSE_S, interval)
    while True:
        refresh(manifest)
        line = progress_line(manifest)
        if progress and line != last:
            progress(line)
            last = line
        if not any(_active(s) for s in manifest.steps):
            return exit_code(manifest)
        if deadline is not None and time.monotonic() >= deadline:
            return EXIT_ACTIVE
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        time.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 1.5, interval)


def progress_line(manifest: RunManifest) -> str:
    return "  ".join(f"{s.name}:{s.state}" for s in manifest.steps)


def cancel(manifest: RunManifest) -> list[str]:
    check_owner(manifest)
    with operation_lock(manifest.run_dir, "cancel"):
        refresh(manifest)
        if not any(_active(s) for s in manifest.steps):
            return []
        guard.check_not_a_copy(manifest.run_dir, manifest.extra.get(guard.FOLDER), "cancel")
        return backend_for(manifest).cancel(manifest)


def steps_to_resume(manifest: RunManifest) -> list[str]:
    """Steps that did not complete, plus everything that needs them, in run order."""
    not_done = {s.name for s in manifest.steps if s.state not in SUCCEEDED}
    todo = manifest.dependents(not_done)
    return [s.name for s in sorted(manifest.steps, key=lambda s: s.index) if s.name in todo]


def resume(manifest: RunManifest, check: Callable[[list[str]], None] | None = None,
           exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Re-submit what did not complete (and its dependents); completed steps are kept. The
    check of what is still active and the re-submission happen under one operation lock.
    `check(steps)` may refuse (raise) before anything changes (the CLI's preflight); `exclude`
    nodes join run.json's list, which every later submission of the run keeps out."""
    check_owner(manifest)
    _check_folder(manifest)
    with operation_lock(manifest.run_dir, "resume"):
        return _resume(manifest, check, tuple(exclude))


def node_list(text: str) -> list[str]:
    """`--exclude n1,n2`: node names (hostlist expressions like n[1-4] pass to sbatch as
    written); each must be a plain name, as it lands on sbatch's command line."""
    import re
    names = [n for n in text.split(",") if n] if "[" not in text else [text]
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+", name):
            raise UserError(f"--exclude {text!r}: {name!r} is not a node name", field="--exclude")
    return names


def _resume(manifest: RunManifest, check: Callable[[list[str]], None] | None,
            exclude: tuple[str, ...] = ()) -> list[str]:
    refresh(manifest)
    active = [s.name for s in manifest.steps if _active(s)]
    if active:
        guard.check_not_a_copy(manifest.run_dir, manifest.extra.get(guard.FOLDER), "resume")
        note = f" ({manifest.note})" if manifest.note else ""
        raise RunStateError(f"run {manifest.run_id} still has steps pending or running "
                            f"({', '.join(active)}){note}; wait for them or `itwinai-hpc "
                            "cancel` first")
    todo = steps_to_resume(manifest)
    if not todo:
        return []
    lingering = backend_for(manifest).lingering(manifest)
    if lingering:
        raise RunStateError(f"run {manifest.run_id}: SLURM still holds job(s) "
                            f"{', '.join(lingering)} of it, whose processes are still being "
                            "killed and may still write to the run folder; resume when `squeue "
                            f"-j {','.join(lingering)}` no longer lists them")
    if check is not None:
        check(todo)
    with manifest.updating() as m:
        before = m.to_json(), {s.name: s.job_id for s in m.steps}
        m.extra[guard.FOLDER] = guard.folder_record(m.run_dir)
        if exclude:
            m.extra["exclude"] = sorted({*m.extra.get("exclude", []), *exclude})
        for s in m.steps:
            if s.name in todo:
                s.tasks = _unfinished_tasks(m, s, todo)
                if s.job_id:
                    s.history.append(s.job_id)
                s.job_id, s.state, s.exit_code = None, StepState.UNSUBMITTED, None
                s.elapsed = s.nodes = s.reason = s.log = None
    with _unchanged_unless_queued(manifest, *before):
        backend_for(manifest).submit(manifest, todo)
    return todo


def _unfinished_tasks(manifest: RunManifest, step: StepRecord, todo: list[str]) -> str | None:
    """An array step whose own needs are all kept re-runs only the tasks that have not
    succeeded in any attempt (their exit statuses in the run folder), with its %N; None: all.
    A step re-run because a step it needs is re-run runs every task again, on the new input."""
    if not step.plan.array or set(step.needs) & set(todo):
        return None
    spec = parse_array(step.plan.array)
    done = {task for job_id in [*step.history, step.job_id] if job_id
            for task, code in read_task_exit_statuses(manifest.run_dir, job_id).items()
            if code == 0}
    left = [i for i in spec.ids if str(i) not in done]
    if not left or len(left) == len(spec.ids):
        return None
    return ",".join(map(str, left)) + (f"%{spec.limit}" if spec.limit else "")


@dataclass
class FailedStep:
    step: StepRecord
    log: Path | None
    tail: str


def failures(manifest: RunManifest, lines: int = 20) -> list[FailedStep]:
    """Steps that failed on their own (not cancelled as a dependent), with their log tails."""
    backend = backend_for(manifest)
    out = []
    for s in manifest.steps:
        if s.state in FAILED_ITSELF:
            logs = backend.log_files(manifest, s)
            log = next((p for p in logs if p.exists()), None)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log else ""
            out.append(FailedStep(s, log, tail))
    return out


def print_failures(manifest: RunManifest, stream=None) -> None:
    stream = stream or sys.stderr
    for f in failures(manifest):
        print(f"\nstep '{f.step.name}' {f.step.state} (exit code {f.step.exit_code}); "
              f"log: {f.log or '(none)'}", file=stream)
        if f.tail:
            print("  " + f.tail.replace("\n", "\n  "), file=stream)
