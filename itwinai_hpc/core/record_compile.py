"""How a record's annotations become checkers (core/record_types.py): unions, nested records,
and Annotated constraints. Pure.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from itwinai_hpc.core.record_types import (
    FAIL,
    AnyNode,
    BoolNode,
    DictNode,
    Field,
    FloatNode,
    IntNode,
    ListNode,
    LiteralNode,
    Node,
    NoneNode,
    StrNode,
    error,
)


class RecordNode(Node):
    kinds, error_type, container = frozenset({"dict"}), "model_type", True

    def __init__(self, record: type):
        self.record = record

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (dict, self.record))

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        return self.record._check_record(value, loc, errors)       # type: ignore[attr-defined]

    def schema(self, defs: dict) -> dict:
        from itwinai_hpc.core.record_schema import add_definition
        add_definition(self.record, defs)
        return {"$ref": f"#/$defs/{self.record.__name__}"}


class UnionNode(Node):
    def __init__(self, members: list[Node]):
        self.members = members
        self.typed = [m for m in members if not isinstance(m, NoneNode)]
        self.kinds = frozenset().union(*(m.kinds for m in members))

    def accepts(self, value: Any) -> bool:
        return any(m.accepts(value) for m in self.members)

    def check(self, value: Any, loc: tuple, errors: list[dict]) -> Any:
        if value is None and len(self.typed) < len(self.members):
            return None
        if len(self.typed) == 1:                    # X | None: X's own errors
            return self.typed[0].check(value, loc, errors)
        fits = [m for m in self.typed if m.accepts(value)]
        if len(fits) == 1 and fits[0].container:   # a mapping for the record: its errors
            return fits[0].check(value, loc, errors)
        for member in fits:
            tried: list[dict] = []
            result = member.check(value, loc, tried)
            if not tried:
                return result
        for member in self.typed:       # fits none: each type's complaint, said together
            tried = []
            member.check(value, loc, tried)
            said = tried[0] if tried else error(member.error_type, loc, "", value)
            errors.append({**said, "type": member.error_type, "loc": loc, "input": value})
        return FAIL

    def schema(self, defs: dict) -> dict:
        return {"anyOf": [m.schema(defs) for m in self.members]}


_SCALARS = {str: StrNode, int: IntNode, float: FloatNode, bool: BoolNode, type(None): NoneNode}


def compile_type(tp: Any) -> Node:
    """The checker of one annotation (type hints already evaluated)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        node = compile_type(args[0])
        for meta in args[1:]:
            if isinstance(meta, Field):
                node = _constrained(node, meta)
        return node
    if origin in (Union, types.UnionType):
        return UnionNode([compile_type(a) for a in args])
    if origin is Literal:
        return LiteralNode(args)
    if origin is list:
        return ListNode(compile_type(args[0]) if args else AnyNode())
    if origin is dict:
        return DictNode(*(compile_type(a) for a in args)) if args else DictNode(AnyNode(),
                                                                                AnyNode())
    if tp is None or tp in _SCALARS:
        return _SCALARS[type(None) if tp is None else tp]()
    if tp is Any:
        return AnyNode()
    if isinstance(tp, type) and hasattr(tp, "_check_record"):
        return RecordNode(tp)
    raise TypeError(f"a record field cannot be of type {tp!r}")


def _constrained(node: Node, field: Field) -> Node:
    if isinstance(node, StrNode):
        return StrNode(field.pattern or node.pattern,
                       field.min_length if field.min_length is not None else node.min_length)
    if isinstance(node, IntNode) and field.ge is not None:
        return IntNode(field.ge)
    if isinstance(node, ListNode) and field.min_length is not None:
        return ListNode(node.item, field.min_length)
    raise TypeError(f"Field(...) constraints do not apply to {type(node).__name__}")
