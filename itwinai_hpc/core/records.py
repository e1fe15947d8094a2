"""Strict, frozen typed records: the workflow and profile schema, checked without pydantic.

A login-node command (validate, render, status) must start fast, and pydantic alone costs more
than yaml and jinja2 together (benchmarks/bench_startup.py --front-door). The workflow format
needs a small part of it, which this module gives with the same spelling, so a schema reads as
a pydantic model does:

    class Resources(Record):
        nodes: Annotated[StrictInt, Field(ge=1)] | None = None
        time: str | StrictInt | None = None

        @check("time")
        def _time(v): ...          # after the type check; ValueError -> a located error

Keys are the fields' names in kebab-case and nothing else (extra keys are errors); ints and
bools are strict (`"2"` is not 2, `true` is not 1); a field without a default is required.
Checkers: str, int, float, bool, None, Literal, list, dict, Union, other Records, and
Annotated[..., Field(pattern=, ge=, min_length=)]. Every problem of a document is collected
as a pydantic-style error dict (type, loc, msg, input, ctx), so core/validation.py locates and
words them the same way for these records and for the ML configs' pydantic models. Pure.
"""

from __future__ import annotations

import copy
import typing
from typing import Annotated, Any, ClassVar, Literal, Union, get_origin

from itwinai_hpc.core.record_compile import compile_type
from itwinai_hpc.core.record_types import (
    FAIL,
    Field,
    Node,
    RecordValidationError,
    StrictBool,
    StrictInt,
    error,
)

__all__ = ["Annotated", "Field", "Literal", "Record", "RecordValidationError", "StrictBool",
           "StrictInt", "Union", "check", "serializer"]


def check(*names: str, before: bool = False):
    """Register `fn(value) -> value` for the named fields: after their type check (default), or
    on the raw input before it (`before=True`). A ValueError it raises is that field's error."""
    def mark(fn):
        fn.__record_check__ = (names, before)
        return staticmethod(fn)
    return mark


def serializer(name: str):
    """Register `fn(value) -> value` that gives the field's value as model_dump writes it."""
    def mark(fn):
        fn.__record_serializer__ = name
        return staticmethod(fn)
    return mark


class FieldInfo:
    """One field: its key (alias), type, default and checks (what pydantic's FieldInfo says)."""

    def __init__(self, name: str, annotation: Any, default: Any, required: bool):
        self.name, self.annotation, self.default = name, annotation, default
        self.alias = name.replace("_", "-")
        self.description: str | None = None
        self.required = required
        self.node: Node = compile_type(annotation)
        self.before: list = []
        self.after: list = []
        self.serializer = None

    def fresh_default(self) -> Any:
        return copy.copy(self.default) if isinstance(self.default, (dict, list)) else \
            self.default


def _collect_fields(cls: type) -> dict[str, FieldInfo]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, FieldInfo] = {}
    for name, annotation in hints.items():
        if name.startswith("_") or get_origin(annotation) is ClassVar:
            continue
        missing = not hasattr(cls, name)
        fields[name] = FieldInfo(name, annotation, None if missing else getattr(cls, name),
                                 missing)
    methods: dict[str, Any] = {}            # by name: a subclass's method replaces its base's
    for klass in reversed(cls.__mro__):
        methods.update(vars(klass))
    for attr in methods.values():
        fn = getattr(attr, "__func__", None)
        names, before = getattr(fn, "__record_check__", ((), False))
        for field in names:
            (fields[field].before if before else fields[field].after).append(fn)
        target = getattr(fn, "__record_serializer__", None)
        if target:
            fields[target].serializer = fn
    return fields


class _Fields:
    """`Model.model_fields`: computed on first use (the type hints are evaluated then)."""

    def __get__(self, obj, owner: type) -> dict[str, FieldInfo]:
        found = owner.__dict__.get("_record_fields")
        if found is None:
            found = _collect_fields(owner)
            owner._record_fields = found        # type: ignore[attr-defined]
        return found


class Record:
    """The base of every record: frozen, compared and hashed by value, built by model_validate
    from parsed YAML (strict, all problems at once) or by model_construct without checks."""

    model_fields: ClassVar[dict[str, FieldInfo]] = _Fields()    # type: ignore[assignment]

    def __init__(self, **values: Any):
        for name, field in type(self).model_fields.items():
            object.__setattr__(self, name, values.pop(name) if name in values
                               else field.fresh_default())
        if values:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(values)}")

    @classmethod
    def model_construct(cls, **values: Any):
        """A record of these values (the rest default), unchecked: for values already checked."""
        return cls(**values)

    @classmethod
    def model_validate(cls, data: Any):
        """A record from parsed YAML; RecordValidationError listing every problem."""
        errors: list[dict] = []
        value = validate_record(cls, data, (), errors)
        if errors:
            raise RecordValidationError(errors, cls.__name__)
        return value

    @classmethod
    def _check_record(cls, data: Any, loc: tuple, errors: list[dict]) -> Any:
        return validate_record(cls, data, loc, errors)

    def model_copy(self, *, update: dict[str, Any] | None = None):
        return type(self)(**{**self._values(), **(update or {})})

    def model_dump(self, *, mode: str = "json", by_alias: bool = True, exclude_none: bool = False,
                   exclude_defaults: bool = False) -> dict[str, Any]:
        """The record as plain data (mode 'json': tuples as lists), keys as written in YAML."""
        out = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if exclude_none and value is None or exclude_defaults and value == field.default:
                continue
            if field.serializer is not None:
                value = field.serializer(value)
            out[field.alias if by_alias else name] = _dump(value, by_alias, exclude_none,
                                                           exclude_defaults)
        return out

    @classmethod
    def model_json_schema(cls, by_alias: bool = True, mode: str = "validation") -> dict:
        from itwinai_hpc.core.record_schema import json_schema
        return json_schema(cls)

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: use model_copy(update=...)")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._values().items())))

    def __repr__(self) -> str:
        set_ = ", ".join(f"{k}={v!r}" for k, v in self._values().items() if v is not None)
        return f"{type(self).__name__}({set_})"


def _dump(value: Any, *args: bool) -> Any:
    if isinstance(value, Record):
        return value.model_dump(by_alias=args[0], exclude_none=args[1], exclude_defaults=args[2])
    if isinstance(value, dict):
        return {k: _dump(v, *args) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v, *args) for v in value]
    return value


def validate_record(cls: type[Record], data: Any, loc: tuple, errors: list[dict]) -> Any:
    """`data` (a mapping of the record's keys) as a `cls`, or FAIL with its problems in
    `errors`: unknown keys, missing ones, and each field's own."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        errors.append(error("model_type", loc, "Input should be a valid dictionary or instance "
                                               f"of {cls.__name__}", data))
        return FAIL
    fields = cls.model_fields
    known = {f.alias: f for f in fields.values()}
    before = len(errors)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if field.alias in data:
            value = _field_value(field, data[field.alias], loc + (field.alias,), errors)
            if value is not FAIL:
                values[name] = value
        elif field.required:
            errors.append(error("missing", loc + (field.alias,), "Field required", data))
    for key in data:
        if key not in known:
            errors.append(error("extra_forbidden", loc + (key,), "Extra inputs are not permitted",
                                data[key]))
    return FAIL if len(errors) > before else cls.model_construct(**values)


def _field_value(field: FieldInfo, raw: Any, loc: tuple, errors: list[dict]) -> Any:
    value = raw
    try:
        for fn in field.before:
            value = fn(value)
    except ValueError as exc:
        errors.append(error("value_error", loc, f"Value error, {exc}", raw))
        return FAIL
    before = len(errors)
    value = field.node.check(value, loc, errors)
    if value is FAIL or len(errors) > before:
        return FAIL
    try:
        for fn in field.after:
            value = fn(value)
    except ValueError as exc:
        errors.append(error("value_error", loc, f"Value error, {exc}", raw))
        return FAIL
    return value
