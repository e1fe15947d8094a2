"""Sweeps: a step's `matrix:` becomes one task per combination of its values.

    - name: train
      matrix: {lr: [0.01, 0.05], batch-size: [64, 128]}    # 4 tasks, the first key slowest
      max-parallel: 2                                     # at most 2 at a time (optional)
      args: [--lr, "${matrix.lr}", --batch-size, "${matrix.batch-size}"]

`${matrix.KEY}` may appear in the step's args, env and resources. Substitution (variables.py)
turns each into a marker; `expand_matrices` then, on the raw document, before validation:
  - where the values change only args/env, keeps one step: plan.py makes it a job array whose
    task N runs combination N, and the templates turn each marker into "$MATRIX_KEY", set per
    task (render.shell_quote);
  - where they change resources (nodes, time, ...), which one job array cannot vary, replaces
    the step by one step per combination (`train-0`, `train-1`, ...) with the values filled in
    and `sweep:` saying which task of which sweep it is; the steps that needed `train` need
    every one of them.
Every problem is a located UserError. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

from itwinai_hpc.core.errors import UserError, UserErrors
from itwinai_hpc.core.markers import (
    MARKER,
    PREFIX,
    marker,
    task_name,
    value_text,
    variable,
)
from itwinai_hpc.workflow.sweep_steps import expand_step, fill, replace_steps

if TYPE_CHECKING:
    from itwinai_hpc.core.yamlsrc import YamlDoc

FIELDS = ("args", "env", "resources")        # where ${matrix.KEY} may appear
MAX_TASKS = 1000                              # SLURM's default MaxArraySize is 1001
MAX_VALUE_BYTES = 4096                        # a value as text, reaching argv and env
MAX_TASK_BYTES = 32768                        # a task's values together (ITWINAI_HPC_MATRIX)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")   # a matrix key, and a step's (schema.py)


class MatrixError(Exception):
    pass


def reference(name: str, path: tuple, data: Any) -> str:
    """What substitution puts for `${matrix.KEY}` at `path`: a marker, where a matrix step's
    args, env or resources hold it; else the reason it cannot be there."""
    step = None
    if len(path) >= 3 and path[0] == "steps" and isinstance(data.get("steps"), list):
        steps = data["steps"]
        step = steps[path[1]] if isinstance(path[1], int) and path[1] < len(steps) else None
    if not isinstance(step, dict) or "matrix" not in step:
        raise MatrixError(f"${{{name}}} refers to a matrix, and this is not a step with one "
                          "(write matrix: {KEY: [values]} on the step)")
    if path[2] not in FIELDS:
        raise MatrixError(f"${{{name}}} may be used in the step's {', '.join(FIELDS)}, not in "
                          f"its {path[2]}")
    return marker(name[len(PREFIX):])


def expand_matrices(doc: YamlDoc) -> None:
    """Check every step's matrix and expand those that vary resources (see the module doc).
    Changes doc.data and doc.lines in place; raises UserErrors with every problem found."""
    # Here, not at the top: run.json readers (planned.py, the backends) import this module for
    # its markers, and need not load pydantic for them.
    from itwinai_hpc.core.validation import by_line, dotted

    steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
    if not isinstance(steps, list):
        return
    errors: list[UserError] = []

    def err(path: tuple, message: str) -> None:
        file, line = doc.where(path)
        errors.append(UserError(message, file=file, line=line, field=dotted(path, doc.data)))

    expanded: dict[int, list[dict]] = {}
    names: set[str] = {step["name"] for step in steps
                       if isinstance(step, dict) and isinstance(step.get("name"), str)}
    for i, step in enumerate(steps):
        # Without a valid name (the schema says what is wrong with it) there is nothing to
        # name the tasks after.
        if not isinstance(step, dict) or "matrix" not in step or \
                not isinstance(step.get("name"), str) or not NAME.fullmatch(step["name"]):
            continue
        combos = _combinations(step.get("matrix"), ("steps", i, "matrix"), err)
        if combos is None:
            continue
        if step.get("array") is not None:
            err(("steps", i, "array"), "a step with a matrix is a job array already (one task "
                "per combination); remove array:")
            continue
        if not _known_references(step, ("steps", i), combos[0], err) or \
                not _unshadowed(doc.data, i, combos[0], err):
            continue
        per_task = [fill(step.get("resources"), c) for c in combos]
        if all(r == per_task[0] for r in per_task):
            if "resources" in step:
                step["resources"] = per_task[0]
        elif not NAME.fullmatch(task_name(step["name"], len(combos) - 1)):
            err(("steps", i, "name"), f"its resources differ per task, so each task is a step "
                f"of its own ({task_name(step['name'], 0)}, ...), and "
                f"'{task_name(step['name'], len(combos) - 1)}' is longer than a step name may "
                "be (63 characters): shorten the name")
        elif _valid_per_task(per_task, combos, ("steps", i, "resources"), err):
            expanded[i] = expand_step(step, combos)
            taken = names & {task["name"] for task in expanded[i]}
            if taken:
                err(("steps", i, "matrix"), f"its resources differ per task, so each task is a "
                    f"step of its own ({task_name(step['name'], 0)}, ...), and step "
                    f"'{sorted(taken)[0]}' exists already: rename one")
    for j, step in enumerate(steps):
        needed = _needed_names(step.get("needs") if isinstance(step, dict) else None)
        for i, tasks in expanded.items():
            both = sorted(needed & {task["name"] for task in tasks})
            if steps[i]["name"] in needed and both:
                err(("steps", j, "needs"), f"names sweep '{steps[i]['name']}' (all its tasks) "
                    f"and its task '{both[0]}' too: keep one of them")
    if errors:
        raise UserErrors(by_line(errors))
    if expanded:
        replace_steps(doc, expanded)


def _needed_names(needs: Any) -> set[str]:
    """The step names in a needs value (a name, a list of names or a {name: condition})."""
    if isinstance(needs, str):
        return {needs}
    return {n for n in needs if isinstance(n, str)} if isinstance(needs, (list, dict)) \
        else set()


def _valid_per_task(per_task: list, combos: list[dict], path: tuple, err) -> bool:
    """Each task's resources are valid resources: else say which task, with which values."""
    from itwinai_hpc.core.records import RecordValidationError
    from itwinai_hpc.workflow.sbatch_fields import Resources

    for task, (resources, combo) in enumerate(zip(per_task, combos)):
        try:
            Resources.model_validate(resources or {})
        except RecordValidationError as exc:
            first = exc.errors()[0]
            where = path + tuple(first["loc"][:1])
            err(where, f"task {task} ({', '.join(f'{k}={value_text(v)}' for k, v in combo.items())}"
                f"): {first['msg']} (got {first.get('input')!r})")
            return False
    return True


def _combinations(matrix: Any, path: tuple, err) -> list[dict[str, Any]] | None:
    if not isinstance(matrix, dict) or not matrix:
        err(path, "expected a mapping of names to lists of values, e.g. "
            "{lr: [0.01, 0.1], batch-size: [64, 128]}")
        return None
    ok = True
    names: dict[str, str] = {}
    for key, values in matrix.items():
        if not NAME.fullmatch(key):
            err(path + (key,), f"'{key}' is not a matrix name (a letter, then letters, digits, "
                "_ or -)")
            ok = False
            continue
        other = names.setdefault(variable(key), key)
        if other != key:
            err(path + (key,), f"'{key}' and '{other}' would share the variable "
                f"{variable(key)}; rename one")
            ok = False
        if not isinstance(values, list) or not values or \
                not all(isinstance(v, (str, int, float, bool)) for v in values):
            err(path + (key,), "expected a non-empty list of plain values (numbers, strings, "
                "true/false)")
            ok = False
        elif len({value_text(v) for v in values}) != len(values):
            # as text, as the tasks get them: 1 and "1", true and "true" are one value
            texts = [value_text(v) for v in values]
            twice = next(t for t in texts if texts.count(t) > 1)
            err(path + (key,), f"a value is listed twice ({twice}; each combination would run "
                "twice)")
            ok = False
        elif (size := max(len(value_text(v).encode()) for v in values)) > MAX_VALUE_BYTES:
            # past Linux's 128 KiB per argument or variable, exec fails ("Argument list too
            # long"); a task's ITWINAI_HPC_MATRIX holds all its values at once
            err(path + (key,), f"a value is {size} bytes; at most {MAX_VALUE_BYTES}: put long "
                "text in a file and sweep over its name")
            ok = False
    if not ok:
        return None
    total = sum(len(key) + max(len(value_text(v).encode()) for v in values)
                for key, values in matrix.items())
    if total > MAX_TASK_BYTES:
        err(path, f"a task's values together take up to {total} bytes; at most "
            f"{MAX_TASK_BYTES} (each task's ITWINAI_HPC_MATRIX holds them all, and one "
            "environment variable holds at most 128 KiB): put long text in files")
        return None
    n = 1
    for values in matrix.values():
        n *= len(values)
    if n > MAX_TASKS:
        err(path, f"{n} combinations; at most {MAX_TASKS} (SLURM's usual limit for one job "
            "array): split the sweep, or sample the values")
        return None
    return combinations(matrix)


def combinations(matrix: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the values, the first key varying slowest: task N is the Nth."""
    keys = list(matrix)
    return [dict(zip(keys, combo)) for combo in itertools.product(*matrix.values())]


def _known_references(step: dict, path: tuple, combo: dict, err) -> bool:
    ok = True

    def walk(node: Any, at: tuple) -> None:
        nonlocal ok
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, at + (k,))
        elif isinstance(node, list):
            for j, v in enumerate(node):
                walk(v, at + (j,))
        elif isinstance(node, str):
            for key in MARKER.findall(node):
                if key not in combo:
                    err(at, f"${{matrix.{key}}}: the matrix has no '{key}'; it has "
                        f"{', '.join(combo)}")
                    ok = False

    for field in FIELDS:
        walk(step.get(field), path + (field,))
    return ok


def _unshadowed(data: dict, i: int, combo: dict, err) -> bool:
    """No env or runtime-env of the step or the defaults sets a task's MATRIX_KEY: exported
    after the task's values, it would give every task its one value, silently."""
    ours = {variable(key): key for key in combo}
    ok = True
    for section, node in ((("defaults",), data.get("defaults")), (("steps", i), data["steps"][i])):
        for field in ("env", "runtime-env"):
            env = node.get(field) if isinstance(node, dict) else None
            for name in env if isinstance(env, dict) else ():
                if name in ours:
                    err(section + (field, name), f"{name} holds each task's value of "
                        f"${{matrix.{ours[name]}}}; set here, every task would get this one "
                        "value: use another name")
                    ok = False
    return ok
