"""How a run's state is shown: the `status` table and its --json form. Pure formatting."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .runs import RunManifest

COLUMNS = ("STEP", "JOB ID", "STATE", "ELAPSED", "EXIT", "NODES", "LOG")


def format_elapsed(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _log(path: str | None, run_dir: str, finished: bool) -> str:
    if not path or (finished and "*" not in path and not Path(path).exists()):
        return "-"                      # e.g. a dependent cancelled before it ever started
    try:
        return os.path.relpath(path, run_dir) if Path(path).is_relative_to(run_dir) else path
    except ValueError:
        return path


def rows(manifest: RunManifest) -> list[tuple[str, ...]]:
    out = []
    for s in sorted(manifest.steps, key=lambda s: s.index):
        state = s.state + (f" ({s.reason})" if s.reason and s.state == "PENDING" else "")
        out.append((s.name, s.job_id or "-", state, format_elapsed(s.elapsed),
                    "-" if s.exit_code is None else str(s.exit_code), s.nodes or "-",
                    _log(s.log, manifest.run_dir, s.finished)))
    return out


def format_table(manifest: RunManifest) -> str:
    body = rows(manifest)
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = [f"run {manifest.run_id} ({manifest.backend or 'not submitted'}): {manifest.run_dir}"]
    for r in [COLUMNS, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if manifest.note:
        lines.append(f"note: {manifest.note}")
    return "\n".join(lines)


def to_json(manifest: RunManifest) -> str:
    run = {k: getattr(manifest, k) for k in ("run_id", "run_dir", "workflow_name",
                                             "workflow_file", "backend", "created")}
    steps = [{"name": s.name, "job_id": s.job_id, "state": s.state, "exit_code": s.exit_code,
              "elapsed": s.elapsed, "nodes": s.nodes, "log": s.log, "needs": s.needs,
              "reason": s.reason, "history": s.history} for s in manifest.steps]
    return json.dumps({"run": run, "steps": steps, "note": manifest.note}, indent=2)
