"""`itwinai-hpc logs`: print or follow a step's output file(s)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ops import operations
from itwinai_hpc.run.manifest import RunManifest, StepRecord
from itwinai_hpc.run.states import FAILED_ITSELF, StepState


def pick_step(manifest: RunManifest, name: str | None) -> StepRecord:
    """The named step; without a name the first failed step, else the last one that started."""
    if name:
        return manifest.step(name)
    steps = sorted(manifest.steps, key=lambda s: s.index)
    failed = [s for s in steps if s.state in FAILED_ITSELF]
    started = [s for s in steps
               if s.job_id and s.state not in (StepState.PENDING, StepState.CANCELLED)]
    if failed or started:
        return (failed or started[::-1])[0]
    raise UserError(f"no step of run {manifest.run_id} has started yet; name a step: "
                    f"{', '.join(s.name for s in steps)}")


def show(manifest: RunManifest, name: str | None, follow: bool = False,
         out=None, interval: float = 0.5) -> int:
    out = out or sys.stdout          # looked up now: tests and callers may have replaced it
    step = pick_step(manifest, name)
    backend = operations.backend_for(manifest)
    files = backend.log_files(manifest, step)
    if not follow:
        existing = [f for f in files if f.exists()]
        if not existing:
            raise UserError(f"step '{step.name}' ({step.state}) has no log yet"
                            + (f"; it will be {files[0]}" if files else ""))
        for f in existing:
            if len(existing) > 1:
                out.write(f"==> {f} <==\n")
            out.write(f.read_text(errors="replace"))
        out.flush()
        return 0
    return _follow(manifest, step.name, backend, out, interval)


def _follow(manifest, name: str, backend, out, interval: float) -> int:
    """Print new lines of the step's log(s) as they come, until the step has finished."""
    offsets: dict[Path, int] = {}
    while True:
        operations.refresh(manifest)
        step = manifest.step(name)
        for f in backend.log_files(manifest, step):
            if f.exists():
                with open(f, "rb") as fh:
                    fh.seek(offsets.get(f, 0))
                    chunk = fh.read()
                    offsets[f] = fh.tell()
                if chunk:
                    out.write(chunk.decode(errors="replace"))
                    out.flush()
        if step.finished:
            return 0
        time.sleep(interval)
