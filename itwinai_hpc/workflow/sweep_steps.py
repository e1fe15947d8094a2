"""A sweep whose values change resources becomes one step per combination: the values filled in,
each task named `<sweep>-<N>`, the YAML lines kept (an expanded step's fields point at the
sweep's), and needs of the sweep rewired to all its tasks. Used by matrix.expand_matrices. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itwinai_hpc.core.markers import MARKER, task_name, value_text

if TYPE_CHECKING:
    from itwinai_hpc.core.yamlsrc import YamlDoc


def fill(node: Any, combo: dict[str, Any]) -> Any:
    """`node` with the markers replaced by one combination's values; a value that is one whole
    marker keeps its type (nodes: ${matrix.nodes} stays an int)."""
    if isinstance(node, dict):
        return {k: fill(v, combo) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, combo) for v in node]
    if isinstance(node, str) and "\x00" in node:
        whole = MARKER.fullmatch(node)
        if whole:
            return combo[whole.group(1)]
        return MARKER.sub(lambda m: value_text(combo[m.group(1)]), node)
    return node


def expand_step(step: dict, combos: list[dict[str, Any]]) -> list[dict]:
    out = []
    for task, combo in enumerate(combos):
        one = {k: fill(v, combo) for k, v in step.items() if k != "matrix"}
        one["name"] = task_name(step["name"], task)
        one["sweep"] = {"name": step["name"], "task": task, "tasks": len(combos),
                        "values": combo}
        out.append(one)
    return out


def replace_steps(doc: YamlDoc, expanded: dict[int, list[dict]]) -> None:
    """Put the expanded steps in place of theirs, keep the lines of everything (an expanded
    step's fields point at the sweep's), and make needs of a sweep name all its tasks."""
    steps = doc.data["steps"]
    new_steps: list[Any] = []
    position: dict[int, list[int]] = {}          # old index -> new indexes
    for i, step in enumerate(steps):
        tasks = expanded.get(i, [step])
        position[i] = list(range(len(new_steps), len(new_steps) + len(tasks)))
        new_steps.extend(tasks)
    doc.lines = _moved(doc.lines, position)
    doc.overridden = _moved(doc.overridden, position)
    renamed = {steps[i]["name"]: [t["name"] for t in tasks] for i, tasks in expanded.items()}
    for step in new_steps:
        if isinstance(step, dict) and "needs" in step:
            step["needs"] = _renamed_needs(step["needs"], renamed)
    doc.data["steps"] = new_steps


def _moved(by_path: dict[tuple, Any], position: dict[int, list[int]]) -> dict[tuple, Any]:
    """Lines (or --set texts) keyed by path, with ("steps", i, ...) at the new index(es)."""
    out: dict[tuple, Any] = {}
    for path, value in by_path.items():
        if len(path) >= 2 and path[0] == "steps" and path[1] in position:
            for j in position[path[1]]:
                out[("steps", j) + path[2:]] = value
        else:
            out[path] = value
    return out


def _renamed_needs(needs: Any, renamed: dict[str, list[str]]) -> Any:
    if isinstance(needs, str):
        return renamed.get(needs, needs)
    if isinstance(needs, list):
        return [n for need in needs for n in (renamed.get(need, [need]) if isinstance(need, str)
                                              else [need])]
    if isinstance(needs, dict):
        return {n: cond for need, cond in needs.items() for n in renamed.get(need, [need])}
    return needs
