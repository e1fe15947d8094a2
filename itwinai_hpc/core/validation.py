"""Validate parsed YAML against a model; every problem becomes a located UserError.

The one way every config of the project (workflow, preprocess, train, inference) reports bad
input: `FILE:LINE: dotted.field: what is wrong (did you mean ...); valid keys: ...`, all problems
of a file at once, sorted by line. Pure: no I/O beyond what the YamlDoc already holds.
"""

from __future__ import annotations

import sys
import typing
from typing import Any, TypeVar

from itwinai_hpc.core.errors import UserError, UserErrors
from itwinai_hpc.core.markers import display
from itwinai_hpc.core.records import RecordValidationError
from itwinai_hpc.core.yamlsrc import YamlDoc

M = TypeVar("M")
# One problem, as both kinds of model report it: type, loc, msg, input (and ctx).
ErrorDetails = dict


def validate_model(model: type[M], doc: YamlDoc, data: Any = None) -> M:
    """`model` validated from `data` (default: the whole document); UserErrors naming file,
    line and field for every problem."""
    data = doc.data if data is None else data
    try:
        return model.model_validate(data)       # type: ignore[attr-defined]
    except _validation_errors() as exc:
        raise UserErrors(by_line(explain(exc, doc, model))) from None


def _validation_errors() -> tuple[type[Exception], ...]:
    """What model_validate raises: the records' error (the workflow format, core/records.py)
    and, once a pydantic model has loaded pydantic (the ML configs), pydantic's."""
    pydantic = sys.modules.get("pydantic")
    return (RecordValidationError,) + ((pydantic.ValidationError,) if pydantic else ())


def by_line(errors: list[UserError]) -> list[UserError]:
    """In file order; one error per line and message (a sweep expanded into one step per task
    would otherwise say the same about the same line once per task)."""
    seen: set[tuple] = set()
    unique = []
    for e in errors:
        key = (e.file, e.line, e.message)
        if e.line is None or key not in seen:
            seen.add(key)
            unique.append(e)
    return sorted(unique, key=lambda e: (e.file or "", e.line or 0))


def explain(exc: Any, doc: YamlDoc, model: type) -> list[UserError]:
    """One located UserError per offending field (a union's branches grouped into one)."""
    grouped: dict[tuple, list[ErrorDetails]] = {}
    for err in exc.errors(include_url=False):
        if _wrong_union_branch(err):
            continue
        path = _data_path(err["loc"], doc.data, err["type"])
        grouped.setdefault(path, []).append(err)
    out = []
    for path, errs in grouped.items():
        file, line = doc.where(path)
        out.append(UserError(_message(path, errs, doc.data, model), file=file, line=line,
                             field=dotted(path, doc.data) or "(top level)"))
    return out


def did_you_mean(word: str, options) -> str:
    import difflib  # here: only a misspelt name needs it, not every valid file
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word.replace("_", "-"), options, n=1, cutoff=0.6) or \
        difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def dotted(path: tuple, data: Any) -> str:
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
        node = node[key] if _has(node, key) else None
    return "".join(parts)


def field_names(model: Any) -> list[str]:
    """The keys a user writes for `model` (aliases where the model has them)."""
    return [f.alias or n for n, f in model.model_fields.items()]


def _wrong_union_branch(err: ErrorDetails) -> bool:
    """A mapping tried against a union's `'none'` branch: the model branch's errors speak."""
    return any(isinstance(k, str) and k.startswith("literal[") for k in err["loc"]) and \
        not isinstance(err.get("input"), str)


def _data_path(loc: tuple, data: Any, kind: str) -> tuple:
    """Drop pydantic's union tags ('Container', "literal['none']") from `loc`."""
    path: list = []
    node = data
    for i, key in enumerate(loc):
        if _has(node, key):
            node = node[key]
            path.append(key)
        elif i == len(loc) - 1 and kind in ("missing", "extra_forbidden"):
            path.append(key)
    return tuple(path)


def _message(path: tuple, errs: list[ErrorDetails], data: Any, model: type) -> str:
    first = errs[0]
    kind = first["type"]
    got = first.get("input")
    if isinstance(got, str):
        got = display(got)          # a sweep's ${matrix.KEY} as written, not its marker
    if kind == "extra_forbidden":
        valid = field_names(_model_at(model, path[:-1]))
        return (f"unknown key '{path[-1]}'{did_you_mean(str(path[-1]), valid)}; valid keys: "
                f"{', '.join(valid)}")
    if kind == "missing":
        return f"required key '{path[-1]}' is missing"
    if len(errs) > 1:   # a value that fits none of a union's types
        if path and path[-1] == "container":
            return f"expected a mapping (image, binds, env, gpu, ...) or 'none', got {got!r}"
        expected = list(dict.fromkeys(_kind_words(e) for e in errs))
        said = expected[0] if len(expected) == 1 else \
            f"{', '.join(expected[:-1])} or {expected[-1]}"
        return f"expected {said}, got {got!r}"
    if kind == "string_pattern_mismatch" and path and path[-1] == "name":
        return (f"'{got}' is not a safe name: use letters, digits, '-' and '_', starting with a "
                "letter (it names files and SLURM jobs)")
    if kind == "string_pattern_mismatch":
        return (f"{got!r} contains characters SLURM does not accept here "
                f"(expected to match {first['ctx']['pattern']})")
    msg = first["msg"].removeprefix("Value error, ")
    return f"{msg} (got {got!r})" if kind != "value_error" else msg


# What a union member takes, in words ("expected an integer or a string, got 1.5").
_KINDS = {"bool": "a boolean", "int": "an integer", "float": "a number", "string": "a string",
          "list": "a list", "dict": "a mapping", "model": "a mapping"}


def _kind_words(err: ErrorDetails) -> str:
    expected = err.get("ctx", {}).get("expected") if err["type"] == "literal_error" else None
    if expected:                        # "'a', 'b' or 'c'"
        return f"one of {expected.replace(' or ', ', ')}" if "," in expected or " or " in \
            expected else str(expected)
    kind = err["type"].split("_")[0]
    return _KINDS.get(kind, kind)


def _model_at(model: Any, path: tuple) -> Any:
    """The model class that validates the mapping at `path` below `model` (list indices and
    dict keys step into the item type; unions pick their model member)."""
    for key in path:
        if isinstance(key, str):
            field = next((f for n, f in model.model_fields.items() if (f.alias or n) == key),
                         None)
            if field is None:
                return model
            inner = _inner_model(field.annotation)
            if inner is None:
                return model
            model = inner
    return model


def _inner_model(annotation) -> type | None:
    """The first model class inside an annotation (list[X], X | None, dict[str, X], ...)."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _has(node: Any, key: Any) -> bool:
    return (isinstance(node, dict) and key in node) or \
        (isinstance(node, list) and isinstance(key, int) and key < len(node))
