"""How a run's state is shown: the `status` table and its --json form. Pure formatting."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from itwinai_hpc.core.slurm_syntax import clock, parse_array
from itwinai_hpc.run import layout
from itwinai_hpc.run.exit_status import read_task_exit_statuses
from itwinai_hpc.run.manifest import RunManifest
from itwinai_hpc.run.states import SUCCEEDED, from_exit

MAX_RESULT_BYTES = 1 << 20      # a task's result is a few hundred bytes
COLUMNS = ("STEP", "JOB ID", "STATE", "ELAPSED", "EXIT", "NODES", "LOG")


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
        out.append((s.name, s.job_id or "-", state, clock(s.elapsed),
                    "-" if s.exit_code is None else str(s.exit_code), s.nodes or "-",
                    _log(s.log, manifest.run_dir, s.finished)))
        if s.plan.sweep and s.plan.sweep_task is None:
            out.extend(_task_rows(manifest, s))
    return out


def _task_rows(manifest: RunManifest, s) -> list[tuple[str, ...]]:
    """One row per task of a sweep's job array (see `_tasks`)."""
    return [(f"  [{t['task']}] {_values(t['matrix'])}", "", t["state"], "",
             "-" if t["exit_code"] is None else str(t["exit_code"]), "",
             "-" if t["log"] is None else _log(t["log"], manifest.run_dir, False))
            for t in _tasks(manifest, s)]


def _tasks(manifest: RunManifest, s) -> list[dict]:
    """Per task of a sweep's job array: its index, values, and how it ended (the exit status
    its script left), else whether it started (its log exists); its log (None: none to show)."""
    # A resumed sweep re-ran only some tasks: the others ended in an earlier attempt.
    current = {str(i) for i in parse_array(s.array).ids} if s.array else set()
    codes: dict[str, int] = {}
    job_of: dict[str, str] = {}
    for job_id in [s.job_id, *reversed(s.history)] if s.job_id else []:
        for task, code in read_task_exit_statuses(manifest.run_dir, job_id).items():
            if task not in codes and (job_id == s.job_id or task not in current):
                codes[task], job_of[task] = code, job_id
    out = []
    for task, values in enumerate(s.plan.matrix):
        code = codes.get(str(task))
        job_id = job_of.get(str(task), s.job_id)
        log = layout.log_file(manifest.run_dir, s.plan.job_name, job_id,
                              str(task)) if s.job_id else None
        if code is not None:
            state = str(from_exit(code))
        elif s.finished:
            state = "-" if s.state in SUCCEEDED else s.state
        else:
            state = "RUNNING" if log and Path(log).exists() else "PENDING"
        out.append({"task": task, "matrix": values, "state": state, "exit_code": code,
                    "job_id": job_id, "log": None if _log(log, manifest.run_dir,
                                                          code is not None) == "-" else log})
    return out


def _step_task(manifest: RunManifest, s) -> dict:
    """A sweep task that is a job of its own (a resource matrix): the step's own record."""
    return {"task": s.plan.sweep_task, "matrix": s.plan.matrix[0] if s.plan.matrix else {},
            "state": s.state, "exit_code": s.exit_code, "job_id": s.job_id, "step": s.name,
            "log": None if _log(s.log, manifest.run_dir, s.finished) == "-" else s.log}


MAX_VALUE_CHARS = 40    # a value as the table shows it; `--json` has it whole
MAX_VALUES_CHARS = 120  # all of a task's values, as the table shows them


def _values(values: dict[str, str]) -> str:
    """key=value ...; a newline or a terminal escape in a value shows escaped, one row a task;
    a long value (up to 4096 bytes each) is cut short with an ellipsis."""
    def printable(text) -> str:
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    text = " ".join(f"{_cut(printable(k), MAX_VALUE_CHARS)}={_cut(printable(v), MAX_VALUE_CHARS)}"
                    for k, v in values.items())
    return _cut(text, MAX_VALUES_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def sweeps(manifest: RunManifest) -> dict[str, dict]:
    """Per sweep: its size, each task's state, exit code and log (`task_states`, in task
    order), and what its finished tasks achieved (the files their code leaves,
    layout.sweep_result), best first."""
    out: dict[str, dict] = {}
    for s in sorted(manifest.steps, key=lambda s: (s.index, s.plan.sweep_task or 0)):
        if s.plan.sweep and s.plan.sweep not in out:
            out[s.plan.sweep] = {"tasks": s.plan.sweep_size, "results": [], "task_states": []}
        if s.plan.sweep:        # what the table shows per task: state, exit code, log
            out[s.plan.sweep]["task_states"].extend(
                _tasks(manifest, s) if s.plan.sweep_task is None else [_step_task(manifest, s)])
    for name, sweep in out.items():
        folder = Path(layout.sweep_result(manifest.run_dir, name, "0")).parent
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            result = _read_result(path)
            if result is not None:
                sweep["results"].append(result)
        sweep["results"].sort(key=lambda r: float(r["value"]),
                              reverse=all(r.get("higher_is_better", True)
                                          for r in sweep["results"]))
    return out


def _read_result(path: Path) -> dict | None:
    """A task's result file, or None where it is not one: being written, not ours, no regular
    file (a FIFO would block `status` for good), too big, or not a finite value and a mapping
    of values (NaN and Infinity are not JSON: `status --json` must stay readable)."""
    def no_constant(name: str):
        raise ValueError(name)
    try:
        if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
            return None
        result = json.loads(path.read_text(), parse_constant=no_constant)
        value = float(result["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not math.isfinite(value) or not isinstance(result.get("matrix") or {}, dict):
        return None
    return result


def sweep_lines(manifest: RunManifest) -> list[str]:
    lines = []
    for name, sweep in sweeps(manifest).items():
        results = sweep["results"]
        line = f"sweep {name}: {len(results)} of {sweep['tasks']} task(s) reported"
        if results:
            best = results[0]
            model = best.get("model_name")
            line += (f"; best so far: task {best.get('task')} ({_values(best.get('matrix') or {})})"
                     f" {best.get('metric', 'metric')}={float(best['value']):.4f}")
            if model and best.get("model_version"):
                line += f", model {model} version {best['model_version']}"
        lines.append(line)
    return lines


def format_table(manifest: RunManifest) -> str:
    body = rows(manifest)
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = [f"run {manifest.run_id} ({manifest.backend or 'not submitted'}): {manifest.run_dir}"]
    for r in [COLUMNS, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.extend(sweep_lines(manifest))
    if manifest.note:
        lines.append(f"note: {manifest.note}")
    return "\n".join(lines)


def to_json(manifest: RunManifest) -> str:
    run = {k: getattr(manifest, k) for k in ("run_id", "run_dir", "workflow_name",
                                             "workflow_file", "backend", "created")}
    steps = [{"name": s.name, "job_id": s.job_id, "state": s.state, "exit_code": s.exit_code,
              "elapsed": s.elapsed, "nodes": s.nodes, "log": s.log, "needs": s.needs,
              "reason": s.reason, "history": s.history} for s in manifest.steps]
    return json.dumps({"run": run, "steps": steps, "sweeps": sweeps(manifest),
                       "note": manifest.note}, indent=2)
