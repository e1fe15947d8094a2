"""Read a YAML file into plain Python data plus the line of every key, so errors can say where.

Pure: no schema knowledge here (that is workflow.py's job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

Path_ = tuple  # a path into the data: ("steps", 1, "resources", "nodes")


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


def load_yaml(path: str | Path) -> YamlDoc:
    """Parse `path`; a syntax error, a duplicate key or a non-mapping document is a UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read file: {exc}", file=str(path)) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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
    constructor = yaml.SafeLoader("")
    doc.data = _build(node, (), doc, constructor)
    return doc


def _build(node: yaml.Node, path: Path_, doc: YamlDoc, constructor: yaml.SafeLoader) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise UserError("YAML merge keys (<<) are not supported; write the keys out",
                                file=doc.file, line=key_node.start_mark.line + 1)
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise UserError("mapping keys must be plain scalars", file=doc.file,
                                line=key_node.start_mark.line + 1)
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                raise UserError(f"duplicate key '{key}' (first at line "
                                f"{doc.lines[path + (key,)]})", file=doc.file,
                                line=key_node.start_mark.line + 1)
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), doc, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, constructor) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)
