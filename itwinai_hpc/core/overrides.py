"""`--set dotted.path=value` on a workflow's raw YAML document, before substitution.

Values are read as YAML; a step is named by its name (`steps.train.resources.nodes=4`) or index.
The override is remembered in the document, so an error about that value names the flag.
Pure: changes only the document it is given.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.validation import did_you_mean
from itwinai_hpc.core.yamlsrc import YamlDoc, parse_value


def apply_override(doc: YamlDoc, item: str, keep_number_text: bool = True) -> None:
    """Apply one `--set dotted.path=value` (value parsed as YAML) to the raw document; a
    number keeps its text as written (3.10) unless keep_number_text is False (typed configs)."""
    if "=" not in item:
        raise UserError(f"'--set {item}' needs the form dotted.path=value, e.g. "
                        "steps.train.resources.nodes=4 or vars.data_dir=/scratch/x")
    dotted, raw = item.split("=", 1)
    if not re.fullmatch(r" *[A-Za-z0-9_.-]+ *", dotted):
        raise UserError(f"'--set {item!r}': the path {dotted!r} may hold letters, digits, "
                        "'-', '_' and dots only")
    flow = raw.lstrip().startswith(("[", "{"))
    try:
        # A newline stays one (YAML would fold it into a space, hiding it from the checks a
        # workflow file's value gets); anything else is read as YAML.
        value = raw if "\n" in raw and not flow else \
            parse_value(raw, keep_number_text) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if flow:    # meant as a list or mapping: say why it is not one, not "expected a list"
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"'--set {item}': the value is not a YAML list or mapping "
                            f"({problem}); quote items that hold ${{...}}, ':' or ',', e.g. "
                            "[--data, \"${data}/x\"]") from None
        value = raw
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise UserError(f"'--set {item}': empty part in the path '{dotted}'")
    node: Any = doc.data
    real_path: list[Any] = []
    key: str | int                      # a list index once resolved
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
    raise UserError(f"'--set {dotted}': no step named '{name}'{did_you_mean(name, names)} "
                    f"(steps: {', '.join(map(str, names))})")
