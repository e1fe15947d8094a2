"""The type checkers behind core/records.py: each annotation of a record compiles once into a
Node that checks a parsed-YAML value strictly (no coercion), reports problems as pydantic-style
error dicts, and writes its JSON Schema. Pure.
"""

from __future__ import annotations

import re
from typing import Any

# The checks' result when a value did not pass (None is a value).
FAIL: Any = type("Fail", (), {"__repr__": lambda self: "FAIL"})()

# Ints and bools are always strict here; the names say so where a schema reads like pydantic.
StrictInt = int
StrictBool = bool


class Field:
    """Constraints of an Annotated type: `Annotated[StrictInt, Field(ge=1)]`."""

    def __init__(self, *, pattern: str | None = None, ge: int | None = None,
                 min_length: int | None = None):
        self.pattern, self.ge, self.min_length = pattern, ge, min_length


class RecordValidationError(ValueError):
    """Every problem of one document, as pydantic's ValidationError lists them."""

    def __init__(self, errors: list[dict], title: str):
        super().__init__(f"{len(errors)} validation error(s) for {title}")
        self._errors = errors

    def errors(self, include_url: bool = False) -> list[dict]:
        return list(self._errors)


def error(kind: str, loc: tuple, msg: str, value: Any, **ctx: Any) -> dict:
    return {"type": kind, "loc": loc, "msg": msg, "input": value, **({"ctx": ctx} if ctx else {})}


def value_kind(value: Any) -> str:
    for kind, types_ in (("none", type(None)), ("bool", bool), ("int", int), ("float", float),
                         ("str", str), ("dict", dict), ("list", (list, tuple))):
        if isinstance(value, types_):
            return kind
    return "other"


class Node:
    kinds: frozenset[str] = frozenset()
    error_type = "any"
    container = False           # a mapping or list: its own errors locate the problem better

    def accepts(self, value: Any) -> bool:
        return value_kind(value) in self.kinds

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        raise NotImplementedError

    def schema(self, defs: dict) -> dict:
        raise NotImplementedError

    def type_error(self, value: Any, loc: tuple, errors: list[dict], what: str) -> Any:
        errors.append(error(self.error_type, loc, f"Input should be a valid {what}", value))
        return FAIL


class AnyNode(Node):
    kinds = frozenset({"none", "bool", "int", "float", "str", "dict", "list", "other"})

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        return value

    def schema(self, defs: dict) -> dict:
        return {}


class NoneNode(Node):
    kinds, error_type = frozenset({"none"}), "none_required"

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if value is None:
            return None
        errors.append(error("none_required", loc, "Input should be None", value))
        return FAIL

    def schema(self, defs: dict) -> dict:
        return {"type": "null"}


class StrNode(Node):
    kinds, error_type = frozenset({"str"}), "string_type"

    def __init__(self, pattern: str | None = None, min_length: int | None = None):
        self.pattern, self.min_length = pattern, min_length
        # `$` ends the text, as in the regex engines JSON Schema validators use (Python's
        # would also match before a final newline: a name like "a\n" would pass)
        self.regex = None if pattern is None else \
            re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if not isinstance(value, str):
            return self.type_error(value, loc, errors, "string")
        if self.min_length is not None and len(value) < self.min_length:
            n = self.min_length
            errors.append(error("string_too_short", loc, f"String should have at least {n} "
                                f"character{'s' if n != 1 else ''}", value, min_length=n))
            return FAIL
        if self.regex is not None and not self.regex.search(value):
            errors.append(error("string_pattern_mismatch", loc,
                                f"String should match pattern '{self.pattern}'", value,
                                pattern=self.pattern))
            return FAIL
        return value

    def schema(self, defs: dict) -> dict:
        extra = {"minLength": self.min_length} if self.min_length is not None else {}
        return {**extra, **({"pattern": self.pattern} if self.pattern else {}),
                "type": "string"}


class IntNode(Node):
    kinds, error_type = frozenset({"int"}), "int_type"

    def __init__(self, ge: int | None = None):
        self.ge = ge

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if value_kind(value) != "int":
            return self.type_error(value, loc, errors, "integer")
        if self.ge is not None and value < self.ge:
            errors.append(error("greater_than_equal", loc, "Input should be greater than or "
                                f"equal to {self.ge}", value, ge=self.ge))
            return FAIL
        return value

    def schema(self, defs: dict) -> dict:
        return {**({"minimum": self.ge} if self.ge is not None else {}), "type": "integer"}


class FloatNode(Node):
    kinds, error_type = frozenset({"int", "float"}), "float_type"

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        return value if self.accepts(value) else self.type_error(value, loc, errors, "number")

    def schema(self, defs: dict) -> dict:
        return {"type": "number"}


class BoolNode(Node):
    kinds, error_type = frozenset({"bool"}), "bool_type"

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        return value if self.accepts(value) else self.type_error(value, loc, errors, "boolean")

    def schema(self, defs: dict) -> dict:
        return {"type": "boolean"}


class LiteralNode(Node):
    error_type = "literal_error"

    def __init__(self, options: tuple):
        self.options = options
        self.kinds = frozenset(value_kind(o) for o in options)

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if any(type(value) is type(o) and value == o for o in self.options):
            return value
        said = [repr(o) for o in self.options]
        expected = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} or {said[-1]}"
        errors.append(error("literal_error", loc, f"Input should be {expected}", value,
                            expected=expected))
        return FAIL

    def schema(self, defs: dict) -> dict:
        kind = {str: "string", int: "integer", bool: "boolean"}.get(type(self.options[0]))
        body: dict = {"const": self.options[0]} if len(self.options) == 1 else \
            {"enum": list(self.options)}
        return {**body, **({"type": kind} if kind else {})}


class ListNode(Node):
    kinds, error_type, container = frozenset({"list"}), "list_type", True

    def __init__(self, item: Node, min_length: int | None = None):
        self.item, self.min_length = item, min_length

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if not self.accepts(value):
            return self.type_error(value, loc, errors, "list")
        before = len(errors)
        items = [self.item.check(v, loc + (i,), errors) for i, v in enumerate(value)]
        if len(errors) > before:
            return FAIL
        if self.min_length is not None and len(items) < self.min_length:
            n = self.min_length
            errors.append(error("too_short", loc, f"List should have at least {n} item"
                                f"{'s' if n != 1 else ''} after validation, not {len(items)}",
                                value, field_type="List", min_length=n,
                                actual_length=len(items)))
            return FAIL
        return items

    def schema(self, defs: dict) -> dict:
        extra = {"minItems": self.min_length} if self.min_length is not None else {}
        return {"items": self.item.schema(defs), **extra, "type": "array"}


class DictNode(Node):
    kinds, error_type, container = frozenset({"dict"}), "dict_type", True

    def __init__(self, key: Node, value: Node):
        self.key, self.value = key, value

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if not self.accepts(value):
            return self.type_error(value, loc, errors, "dictionary")
        before = len(errors)
        out = {}
        for k, v in value.items():
            key = self.key.check(k, loc + (k,), errors)
            out[key] = self.value.check(v, loc + (k,), errors)
        return FAIL if len(errors) > before else out

    def schema(self, defs: dict) -> dict:
        values = self.value.schema(defs)
        if isinstance(self.key, StrNode) and self.key.pattern:
            return {"patternProperties": {self.key.pattern: values}, "type": "object"}
        names = {"propertyNames": self.key.schema(defs)} if isinstance(self.key, LiteralNode) \
            else {}
        return {"additionalProperties": values, **names, "type": "object"}
