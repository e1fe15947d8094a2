"""A scaling study: one step of a workflow run at several sizes, and what that did to throughput.

`itwinai-hpc scaling WORKFLOW --step train --nodes 1,2,4 [--gpus-per-node 4]` keeps the step
and the steps it needs (they run once), drops the rest, and gives the step a matrix over its
size: `matrix: {nodes: [1, 2, 4]}` with `resources.nodes: ${matrix.nodes}`. The sizes differ in
resources, so each is a job of its own (matrix.py), run one after the other (max-parallel 1:
sizes that shared the nodes would measure each other). The numbers come from the step's own
MLflow runs, tagged with the sweep id (ml/scaling.py); this module never imports mlflow.
"""

from __future__ import annotations

from typing import Any

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.yamlsrc import YamlDoc

SIZE_KEYS = ("nodes", "gpus-per-node")


def parse_sizes(text: str, flag: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: positive, distinct, in the order given."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
        raise UserError(f"{flag} {text!r}: expected distinct positive whole numbers separated "
                        "by commas, e.g. 1,2,4", field=flag)
    return sizes


def study(doc: YamlDoc, step: str, sizes: dict[str, list[int]]) -> None:
    """Turn the parsed workflow into the study of `step` over `sizes` (in place, before ${...}
    substitution): the step and its ancestors only, the step with a matrix over its size."""
    steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
    by_name = {s.get("name"): s for s in steps or [] if isinstance(s, dict)}
    if step not in by_name:
        raise UserError(f"--step {step}: the workflow has no such step; it has "
                        f"{', '.join(str(n) for n in by_name) or 'none'}",
                        file=doc.file, field="--step")
    target = by_name[step]
    if "matrix" in target:
        raise UserError(f"step '{step}' has a matrix already; a scaling study sweeps its size "
                        "alone: remove the matrix (or --set one value)", file=doc.file,
                        field=f"steps.{step}.matrix")
    assert steps is not None            # by_name has `step`, so steps is a list with it in
    keep = _ancestors(by_name, step)
    kept = [i for i, s in enumerate(steps) if isinstance(s, dict) and s.get("name") in keep]
    doc.data["steps"] = [steps[i] for i in kept]
    position = {old: new for new, old in enumerate(kept)}
    doc.lines = _kept(doc.lines, position)
    doc.overridden = _kept(doc.overridden, position)
    target["matrix"] = {key: values for key, values in sizes.items()}
    target["max-parallel"] = 1
    resources = target.setdefault("resources", {})
    if not isinstance(resources, dict):
        raise UserError("resources must be a mapping", file=doc.file,
                        field=f"steps.{step}.resources")
    for key in sizes:
        resources[key] = "${matrix." + key + "}"


def _kept(by_path: dict[tuple, Any], position: dict[int, int]) -> dict[tuple, Any]:
    """Lines (or --set texts) keyed by path: the kept steps' only, at their new indexes."""
    return {(("steps", position[p[1]]) + p[2:] if _in_steps(p) else p): value
            for p, value in by_path.items() if not _in_steps(p) or p[1] in position}


def _in_steps(path: tuple) -> bool:
    return len(path) >= 2 and path[0] == "steps"


def _ancestors(by_name: dict, step: str) -> set[str]:
    keep, todo = set(), [step]
    while todo:
        name = todo.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        needs = by_name[name].get("needs")
        if not isinstance(needs, (list, dict)):
            needs = [needs]
        # names only: needs of another shape are the schema's to report, after the study
        todo.extend(n for n in needs if isinstance(n, str))
    return keep
