"""JSON Schema (draft 2020-12) of a record (core/records.py), in the shape pydantic writes for
a model: nested records under `$defs`, referenced by name; unknown keys refused; defaults and
class docstrings kept. commands/schema.py adds descriptions and the loader's own forms.
"""

from __future__ import annotations

import inspect
from typing import Any


def json_schema(root: type) -> dict:
    defs: dict[str, dict] = {}
    body = _record_schema(root, defs)
    return _sorted({**({"$defs": defs} if defs else {}), **body})


def add_definition(record: type, defs: dict[str, dict]) -> None:
    name = record.__name__
    if name not in defs:
        defs[name] = {}                 # taken, so a record that holds itself stops here
        defs[name] = _record_schema(record, defs)


def _record_schema(record: Any, defs: dict[str, dict]) -> dict:
    properties: dict[str, dict] = {}
    required = []
    for field in record.model_fields.values():
        prop = field.node.schema(defs)
        if field.required:
            required.append(field.alias)
        else:
            prop = {**prop, "default": _plain(field.default)}
        properties[field.alias] = prop
    out: dict[str, Any] = {"additionalProperties": False}
    if record.__doc__:
        out["description"] = inspect.cleandoc(record.__doc__)
    out["properties"] = properties
    if required:
        out["required"] = required
    return {**out, "title": record.__name__, "type": "object"}


def _sorted(node: Any, parent: str | None = None) -> Any:
    """Keys in order, as pydantic writes them, except a record's properties and a default
    (their own order: the fields as declared)."""
    if isinstance(node, dict):
        keys = list(node) if parent in ("properties", "default") else sorted(node)
        return {key: _sorted(node[key], key) for key in keys}
    if isinstance(node, list):
        return [_sorted(item, parent) for item in node]
    return node


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True)
    return value
