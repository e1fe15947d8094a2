"""The one loader of the typed configs (train, inference, preprocessing): a YAML file with the
line of every key, or the defaults, with `--set` overrides; the config's pydantic model then
validates it (core/validation.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.core.overrides import apply_override
from itwinai_hpc.core.yamlsrc import YamlDoc, parse_yaml


def read_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> YamlDoc:
    """The one loader of the typed configs (train, inference, preprocessing) before their model
    validates them: a YAML file with the line of every key (an empty file, or no file: the
    model's defaults), `--set KEY=VALUE` overrides applied. Unreadable files are UserErrors."""
    if path is None:
        doc = YamlDoc(file="<defaults>", data={})
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError("config file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the config: {exc}", file=str(path)) from None
        doc = YamlDoc(file=str(path), data={}) if _empty_yaml(text) else \
            parse_yaml(text, str(path))
    for item in overrides:
        apply_override(doc, item, keep_number_text=False)
    return doc


def _empty_yaml(text: str) -> bool:
    """Only comments, blank lines and document markers (`yaml.safe_load` would give None)."""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return all(line in ("", "---", "...", "~", "null") for line in lines)
