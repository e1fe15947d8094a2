"""Sweep markers: what `${matrix.KEY}` stands for between substitution and the run folder.

workflow/ puts markers into a document, run/ and the templates turn them back into text or
shell variables. Pure, and imports nothing else of the package.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "matrix."
# What `${matrix.KEY}` becomes until the values are known: NUL cannot reach a shell line (no
# argument or variable can hold it, and variables.py refuses it in every value written), so a
# marker is never mistaken for text a user wrote.
MARKER = re.compile("\x00matrix\\.([^\x00]*)\x00")


def marker(key: str) -> str:
    return f"\x00{PREFIX}{key}\x00"


def variable(key: str) -> str:
    """The shell variable a task's value of `key` is in: batch-size -> MATRIX_BATCH_SIZE."""
    return "MATRIX_" + key.upper().replace("-", "_")


def display(text: str) -> str:
    """Markers back as the ${matrix.KEY} the user wrote (run.json, the resolved workflow)."""
    return MARKER.sub(lambda m: "${" + PREFIX + m.group(1) + "}", text)


def value_text(value: Any) -> str:
    """A matrix value as it reaches a command line or a variable (YAML's true, not True)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def task_name(sweep: str, task: int) -> str:
    return f"{sweep}-{task}"
