"""Read a YAML file into plain Python data plus the line of every key, so errors can say where.

YAML 1.2 scalars (what the user wrote is what the job gets): only true/false are booleans,
`12:00:00` and `NO` stay strings, `0644` is not octal 420. With keep_number_text (workflows) a
number whose text is not its canonical form (`3.10`, `0644`, `1e3`) stays the text as written.
Aliases, merge keys, explicit tags other than YAML's own and nesting deeper than MAX_DEPTH are
refused: a 600-byte file must not be able to exhaust memory. Pure: no schema knowledge here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from itwinai_hpc.core.errors import UserError

Path_ = tuple  # a path into the data: ("steps", 1, "resources", "nodes")
MAX_DEPTH = 64
_PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map",
                                                  "seq")}


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types instead of YAML 1.1's."""


Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
        ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                  r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+.0123456789")):
    Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:" + _tag, re.compile(_pattern),
                                       list(_first))


try:
    from yaml.cyaml import CParser
except ImportError:                       # PyYAML built without libyaml
    CParser = None


if CParser is not None:
    class _Yaml12CLoader(CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """The same rules with libyaml's parser (5-10x faster than PyYAML's own)."""

        def __init__(self, stream) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _Yaml12CLoader.yaml_implicit_resolvers = Yaml12Loader.yaml_implicit_resolvers
_PARSER = _Yaml12CLoader if CParser is not None else Yaml12Loader


def _compose(text: str, loader: type = _PARSER) -> yaml.Node | None:
    """The document's node tree; nesting deeper than MAX_DEPTH is refused while the events
    stream by (no recursion), before composing could exhaust the stack."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH + 1:
                    raise _TooDeep(event.start_mark.line + 1)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml scans ahead of the events it hands out and stops at its own limit (1000
        # levels) before the count above sees the 65th: the same problem, said the same way.
        if "maximum nesting depth" in str(exc.problem) and exc.problem_mark is not None:
            raise _TooDeep(exc.problem_mark.line + 1) from None
        raise
    return yaml.compose(text, Loader=loader)


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)


def _construct_bool(loader, node) -> bool:
    return loader.construct_scalar(node).lower() == "true"


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def parse_value(text: str, keep_number_text: bool = True):
    """One YAML value (a --set VALUE) with the same YAML 1.2 rules; aliases are refused."""
    try:
        node = _compose(text, Yaml12Loader)
    except _TooDeep:
        raise UserError(f"nested deeper than {MAX_DEPTH} levels", file="--set", line=1) from None
    if node is None:
        return None
    doc = YamlDoc(file="--set", data=None)
    return _build(node, (), doc, Yaml12Loader(""), keep_number_text=keep_number_text)


@dataclass
class YamlDoc:
    """Parsed YAML data and where each value came from (file line, or a --set override)."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: dict[Path_, str] = field(default_factory=dict)   # path -> the --set text

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def where(self, path: Path_) -> tuple[str, int | None]:
        """(file, line) for an error about `path`; a --set value names the flag instead."""
        path = tuple(path)
        for i in range(len(path), 0, -1):
            if path[:i] in self.overridden:
                return f"--set {self.overridden[path[:i]]}", None
        return self.file, self.line_of(path)


def load_yaml(path: str | Path, *, keep_number_text: bool = False) -> YamlDoc:
    """Parse `path`; a syntax error, a duplicate key or a non-mapping document is a UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read file: {exc}", file=str(path)) from None
    return parse_yaml(text, str(path), keep_number_text=keep_number_text)


def parse_yaml(text: str, file: str, *, keep_number_text: bool = False) -> YamlDoc:
    try:
        node = _compose(text)
    except _TooDeep as exc:
        raise UserError(f"nested deeper than {MAX_DEPTH} levels", file=file,
                        line=exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"invalid YAML: {problem}", file=file,
                        line=mark.line + 1 if mark else None) from None
    if node is None:
        raise UserError("the file is empty; expected a mapping with 'name' and 'steps'", file=file)
    if not isinstance(node, yaml.MappingNode):
        raise UserError("expected a mapping (key: value) at the top level", file=file,
                        line=node.start_mark.line + 1)
    doc = YamlDoc(file=file, data=None)
    doc.data = _build(node, (), doc, Yaml12Loader(""), keep_number_text)
    return doc


def _build(node: yaml.Node, path: Path_, doc: YamlDoc, constructor: yaml.SafeLoader,
           keep_number_text: bool = False, depth: int = 0, seen: set | None = None) -> Any:
    """Plain data from a composed node, recording lines. `seen` holds the ids of the nodes on
    the way here and before: a node met twice is an alias (refused, as are cycles)."""
    line = node.start_mark.line + 1
    doc.lines.setdefault(path, line)
    seen = set() if seen is None else seen
    if id(node) in seen:
        raise UserError("YAML aliases (*name) are not supported; write the value out",
                        file=doc.file, line=line)
    if depth > MAX_DEPTH:
        raise UserError(f"nested deeper than {MAX_DEPTH} levels", file=doc.file, line=line)
    if node.tag not in _PLAIN_TAGS:
        raise UserError(f"YAML tag {node.tag!r} is not supported (plain values, lists and "
                        "mappings only)", file=doc.file, line=line)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        seen.add(id(node))
    build = lambda child, where: _build(child, where, doc, constructor,  # noqa: E731
                                        keep_number_text, depth + 1, seen)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise UserError("YAML merge keys (<<) are not supported; write the keys out",
                                file=doc.file, line=key_node.start_mark.line + 1)
            if key_node.tag not in _PLAIN_TAGS or not isinstance(key_node, yaml.ScalarNode):
                raise UserError("mapping keys must be plain scalars", file=doc.file,
                                line=key_node.start_mark.line + 1)
            key = _scalar(key_node, constructor, doc)
            if not isinstance(key, (str, int, float, bool)):
                raise UserError("mapping keys must be plain scalars", file=doc.file,
                                line=key_node.start_mark.line + 1)
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                raise UserError(f"duplicate key '{key}' (first at line "
                                f"{doc.lines[path + (key,)]})", file=doc.file,
                                line=key_node.start_mark.line + 1)
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = build(value_node, path + (key,))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [build(item, path + (i,)) for i, item in enumerate(node.value)]
    value = _scalar(node, constructor, doc)
    if keep_number_text and not node.style and isinstance(value, (int, float)) \
            and not isinstance(value, bool) and str(value) != node.value:
        return node.value          # 3.10, 0644, 1e3: what was written, not 3.1, 644, 1000.0
    return value


def _scalar(node: yaml.ScalarNode, constructor: yaml.SafeLoader, doc: YamlDoc) -> Any:
    try:
        return constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError) as exc:
        raise UserError(f"invalid YAML value {node.value!r}: {exc}", file=doc.file,
                        line=node.start_mark.line + 1) from None
