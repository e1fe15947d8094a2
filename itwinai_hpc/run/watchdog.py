"""The marks a hung rank leaves in the run folder (ml/progress.py writes them), read back: which
rank, on which node, stopped making progress first. Reading only."""

from __future__ import annotations

import glob
import json

from itwinai_hpc.run import layout


def hung_marks(run_dir: str, job_id: str, array: bool = False) -> list[dict]:
    """Every mark of the job (an array: of all its tasks), oldest progress first."""
    pattern = layout.hung_glob(run_dir, f"{job_id}_*" if array else job_id)
    marks = []
    for path in glob.glob(_escaped(run_dir, pattern)):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            marks.append(record)
    return sorted(marks, key=lambda r: r.get("last_progress_epoch") or 0)


def _escaped(run_dir: str, pattern: str) -> str:
    """The pattern with the run folder's own path escaped: only the job and rank are globs."""
    return glob.escape(run_dir) + pattern[len(run_dir):]


def first_hung(run_dir: str, job_id: str, array: bool = False) -> str | None:
    """The reason `status` shows for a hung step, or None when no rank left a mark."""
    marks = hung_marks(run_dir, job_id, array)
    if not marks:
        return None
    first = marks[0]
    others = f" ({len(marks) - 1} other rank(s) too)" if len(marks) > 1 else ""
    return (f"hung: rank {first.get('rank', '?')} on {first.get('node', '?')} made no progress "
            f"for {first.get('no_progress_s', '?')} s after {first.get('last_progress', '?')}"
            f"{others}; its stacks are in the step's log (resume --exclude "
            f"{first.get('node', 'NODE')} to avoid that node)")
