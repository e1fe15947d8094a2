"""Load a workflow file: YAML -> --set overrides -> ${var} substitution -> typed, checked Workflow.

Every problem becomes a UserError naming the file, the YAML line and the field; all problems of a
file are reported at once. Never imports torch or mlflow; writes nothing.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import UserError, UserErrors
from .plan import merge
from .schema import Container, Defaults, Requeue, Resources, Step, Workflow
from .yamlsrc import YamlDoc, load_yaml

VAR_RE = re.compile(r"\$(\$?)\{([^}]*)\}")
VAR_NAME = re.compile(r"^(env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)
BUILTIN_VARS = ("workflow_dir", "workdir", "run_dir", "run_id")

# Which model a mapping at a given key belongs to (for "did you mean" on unknown keys).
_SECTION_MODELS = {"steps": Step, "resources": Resources, "container": Container,
                   "defaults": Defaults, "requeue": Requeue}


@dataclass(frozen=True)
class LoadedWorkflow:
    workflow: Workflow
    path: Path            # the workflow file as given
    doc: YamlDoc          # raw data after overrides and substitution (for line lookups)
    overrides: tuple[str, ...]


def load_workflow(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  builtins: dict[str, str] | None = None) -> LoadedWorkflow:
    """Parse, override, substitute and validate `path`. Raises UserError(s); writes nothing.

    `builtins` gives the values of ${run_dir} and ${run_id} (placeholders when only validating).
    """
    path = Path(path)
    doc = load_yaml(path)
    for item in overrides:
        apply_override(doc, item)
    context = {"workflow_dir": str(path.resolve().parent), "workdir": os.getcwd(),
               "run_dir": "<run_dir>", "run_id": "<run_id>"}
    context.update(builtins or {})
    _substitute_document(doc, context)
    try:
        wf = Workflow.model_validate(doc.data)
    except ValidationError as exc:
        raise UserErrors(_by_line(_explain(exc, doc))) from None
    problems = check_graph(wf, doc)
    if problems:
        raise UserErrors(_by_line(problems))
    return LoadedWorkflow(wf, path, doc, tuple(overrides))


def peek_name(path: str | Path) -> str:
    """The workflow's raw `name` (for naming a run before the full load), or 'workflow'."""
    data = load_yaml(path).data
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) \
        else "workflow"


def _by_line(errors: list[UserError]) -> list[UserError]:
    return sorted(errors, key=lambda e: (e.file or "", e.line or 0))


# ---- --set overrides -------------------------------------------------------------------------

def apply_override(doc: YamlDoc, item: str) -> None:
    """Apply one `--set dotted.path=value` (value parsed as YAML) to the raw document."""
    if "=" not in item:
        raise UserError(f"'--set {item}' needs the form dotted.path=value, e.g. "
                        "steps.train.resources.nodes=4 or vars.data_dir=/scratch/x")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise UserError(f"'--set {item}': empty part in the path '{dotted}'")
    node: Any = doc.data
    real_path: list[Any] = []
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list) and real_path == ["steps"]:
            key = _step_index(node, key, dotted)
        elif isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UserError(f"'--set {item}': '{key}' is not an index of the list "
                                f"{'.'.join(map(str, real_path))}")
            key = int(key)
        elif not isinstance(node, dict):
            raise UserError(f"'--set {item}': {'.'.join(map(str, real_path))} is not a mapping")
        real_path.append(key)
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and (key not in node or node[key] is None):
                node[key] = {}
            node = node[key]
    doc.overridden[tuple(real_path)] = item


def _step_index(steps: list, name: str, dotted: str) -> int:
    names = [s.get("name") for s in steps if isinstance(s, dict)]
    if name in names:
        return names.index(name)
    if name.isdigit() and int(name) < len(steps):
        return int(name)
    raise UserError(f"'--set {dotted}': no step named '{name}'{_did_you_mean(name, names)} "
                    f"(steps: {', '.join(map(str, names))})")


# ---- ${var} substitution ---------------------------------------------------------------------

def _substitute_document(doc: YamlDoc, context: dict[str, str]) -> None:
    data = doc.data
    raw_vars = data.get("vars") if isinstance(data, dict) else None
    resolved: dict[str, Any] = {}
    errors: list[UserError] = []
    if isinstance(raw_vars, dict):
        resolving: list[str] = []

        def resolve(name: str) -> Any:
            if name in resolved:
                return resolved[name]
            if name in resolving:
                cycle = " -> ".join(resolving[resolving.index(name):] + [name])
                raise _VarError(f"variables refer to each other in a loop: {cycle}")
            resolving.append(name)
            try:
                value = _subst_value(raw_vars[name], lookup)
            finally:
                resolving.pop()
            resolved[name] = value
            return value

        def lookup(name: str) -> Any:
            if name in raw_vars:
                return resolve(name)
            return _lookup_builtin(name, context, raw_vars)

        for name in list(raw_vars):
            try:
                raw_vars[name] = resolve(name)
            except _VarError as exc:
                file, line = doc.where(("vars", name))
                errors.append(UserError(str(exc), file=file, line=line, field=f"vars.{name}"))
    names = raw_vars if isinstance(raw_vars, dict) else {}

    def lookup_doc(name: str) -> Any:
        if name in names:
            return names[name]
        return _lookup_builtin(name, context, names)

    def walk(node: Any, path: tuple) -> Any:
        if isinstance(node, dict):
            for key in node:
                if path == () and key == "vars":
                    continue
                node[key] = walk(node[key], path + (key,))
            return node
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        try:
            return _subst_value(node, lookup_doc)
        except _VarError as exc:
            file, line = doc.where(path)
            errors.append(UserError(str(exc), file=file, line=line, field=_dotted(path, doc.data)))
            return node

    walk(data, ())
    if errors:
        raise UserErrors(_by_line(errors))


class _VarError(Exception):
    pass


def _lookup_builtin(name: str, context: dict[str, str], defined) -> Any:
    m = VAR_NAME.fullmatch(name)
    if not m:
        raise _VarError(f"'${{{name}}}' is not a variable reference; write $${{...}} for a "
                        "literal '${...}' (e.g. shell code)")
    is_env, var, default = m.groups()
    if is_env:
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise _VarError(f"environment variable {var} is not set (write ${{env:{var}:-DEFAULT}} "
                        "to give a default)")
    if default is None and var in context:
        return context[var]
    known = sorted(set(defined) | set(BUILTIN_VARS))
    raise _VarError(f"unknown variable ${{{name}}}{_did_you_mean(name, known)}; defined: "
                    f"{', '.join(known)}; write $${{{name}}} for a literal '${{{name}}}'")


def _subst_value(value: Any, lookup) -> Any:
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = VAR_RE.fullmatch(value)
    if whole and not whole.group(1):
        return lookup(whole.group(2))   # keeps the type: nodes: ${n} stays an int

    def repl(m: re.Match) -> str:
        if m.group(1):                  # $${x} -> literal ${x}
            return "${" + m.group(2) + "}"
        return str(lookup(m.group(2)))

    return VAR_RE.sub(repl, value)


# ---- pydantic errors -> located UserErrors ---------------------------------------------------

def _explain(exc: ValidationError, doc: YamlDoc) -> list[UserError]:
    grouped: dict[tuple, list[dict]] = {}
    for err in exc.errors(include_url=False):
        if _wrong_union_branch(err):
            continue
        path = _data_path(err["loc"], doc.data, err["type"])
        grouped.setdefault(path, []).append(err)
    out = []
    for path, errs in grouped.items():
        file, line = doc.where(path)
        out.append(UserError(_message(path, errs, doc.data), file=file, line=line,
                             field=_dotted(path, doc.data) or "(top level)"))
    return out


def _wrong_union_branch(err: dict) -> bool:
    """A mapping tried against a union's `'none'` branch: the Container branch's errors speak."""
    return any(isinstance(k, str) and k.startswith("literal[") for k in err["loc"]) and \
        not isinstance(err.get("input"), str)


def _data_path(loc: tuple, data: Any, kind: str) -> tuple:
    """Drop pydantic's union tags ('Container', "literal['none']") from `loc`."""
    path: list = []
    node = data
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            node = node[key]
            path.append(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            path.append(key)
        elif i == len(loc) - 1 and kind in ("missing", "extra_forbidden"):
            path.append(key)
    return tuple(path)


def _message(path: tuple, errs: list[dict], data: Any) -> str:
    first = errs[0]
    kind = first["type"]
    got = first.get("input")
    if kind == "extra_forbidden":
        valid = _valid_keys(path[:-1], data)
        return (f"unknown key '{path[-1]}'{_did_you_mean(str(path[-1]), valid)}; valid keys: "
                f"{', '.join(valid)}")
    if kind == "missing":
        return f"required key '{path[-1]}' is missing"
    if len(errs) > 1:   # a value that fits none of a union's types
        if path and path[-1] == "container":
            return f"expected a mapping (image, binds, env, gpu, ...) or 'none', got {got!r}"
        expected = [e["type"].split("_")[0] for e in errs]
        return f"expected one of {', '.join(dict.fromkeys(expected))}, got {got!r}"
    if kind == "string_pattern_mismatch" and path and path[-1] == "name":
        return (f"'{got}' is not a safe name: use letters, digits, '-' and '_', starting with a "
                "letter (it names files and SLURM jobs)")
    if kind == "string_pattern_mismatch":
        return (f"{got!r} contains characters SLURM does not accept here "
                f"(expected to match {first['ctx']['pattern']})")
    msg = first["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{msg} (got {got!r})" if kind != "value_error" else msg


def _valid_keys(parent: tuple, data: Any) -> list[str]:
    model = Workflow
    for key in reversed(parent):
        if isinstance(key, str):
            model = _SECTION_MODELS.get(key, model)
            break
    return [f.alias or n for n, f in model.model_fields.items()]


def _did_you_mean(word: str, options) -> str:
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word.replace("_", "-"), options, n=1, cutoff=0.6) or \
        difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _dotted(path: tuple, data: Any) -> str:
    """steps[1](train).resources.nodes: readable, and names the step, not only its index."""
    parts: list[str] = []
    node = data
    for key in path:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and key < len(node) and isinstance(node[key], dict) \
                    and isinstance(node[key].get("name"), str):
                label += f"({node[key]['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(key))
        node = node[key] if isinstance(node, (dict, list)) and _has(node, key) else None
    return "".join(parts)


def _has(node: Any, key: Any) -> bool:
    return (isinstance(node, dict) and key in node) or \
        (isinstance(node, list) and isinstance(key, int) and key < len(node))


# ---- graph checks ----------------------------------------------------------------------------

def check_graph(wf: Workflow, doc: YamlDoc) -> list[UserError]:
    """Duplicate names, unknown or self needs, cycles, and launcher/field mismatches."""
    errors: list[UserError] = []

    def err(path: tuple, message: str) -> None:
        file, line = doc.where(path)
        errors.append(UserError(message, file=file, line=line, field=_dotted(path, doc.data)))

    seen: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.name in seen:
            err(("steps", i, "name"), f"duplicate step name '{step.name}' (also step "
                f"[{seen[step.name]}]); step names must be unique")
        seen.setdefault(step.name, i)
    names = list(seen)
    for i, step in enumerate(wf.steps):
        for j, need in enumerate(step.needs):
            if need == step.name:
                err(("steps", i, "needs", j), f"step '{step.name}' cannot need itself")
            elif need not in seen:
                err(("steps", i, "needs", j), f"unknown step '{need}'"
                    f"{_did_you_mean(need, names)}; steps: {', '.join(names)}")
        if step.nproc_per_node is not None and step.launcher != "torchrun":
            err(("steps", i, "nproc-per-node"), "nproc-per-node applies only to launcher "
                f"'torchrun' (this step's launcher is '{step.launcher}')")
        container = merge(None if wf.defaults.container == "none" else wf.defaults.container,
                          None if step.container == "none" else step.container)
        if step.container != "none" and container is not None and not container.image:
            where = ("steps", i, "container") if step.container else ("defaults", "container")
            err(where + ("image",), "the container has no image: set image (a .sif file or "
                "a docker:// reference), or write 'container: none'")
        if step.requeue and step.requeue.grace and \
                step.requeue.grace >= step.requeue.before_limit:
            err(("steps", i, "requeue", "grace"), "grace must be shorter than before-limit, or "
                "the time limit ends the job before it is requeued")
        if step.requeue and step.array:
            err(("steps", i, "requeue"), "requeue is not supported for job arrays")
        if step.launcher == "torchrun" and (step.resources.ntasks_per_node or 1) != 1:
            err(("steps", i, "resources", "ntasks-per-node"), "with launcher 'torchrun' there is "
                "one torchrun agent per node; set nproc-per-node for the processes per node")
    if not errors:
        cycle = find_cycle(wf)
        if cycle:
            i = names.index(cycle[0])
            err(("steps", i, "needs"), "the steps' needs form a cycle: " + " -> ".join(cycle))
    return errors


def find_cycle(wf: Workflow) -> list[str] | None:
    needs = {s.name: s.needs for s in wf.steps}
    state: dict[str, int] = {}   # 1 visiting, 2 done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for parent in needs.get(name, []):
            if state.get(parent) == 1:
                return stack[stack.index(parent):] + [parent]
            if parent not in state and (found := visit(parent)):
                return found
        stack.pop()
        state[name] = 2
        return None

    for name in needs:
        if name not in state and (found := visit(name)):
            return found
    return None
