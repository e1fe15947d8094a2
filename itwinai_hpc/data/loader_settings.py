"""How the reader holds a split: the mode ("memory" or "stream"), the memory budget that picks
between them, and their environment variables, so a job script can set them without any
config change. Pure: reads the environment, nothing else.
"""

from __future__ import annotations

import os
import re

from itwinai_hpc.core import job_env
from itwinai_hpc.core.errors import UserError

MODES = ("auto", "memory", "stream")
MODE_ENV = job_env.DATA_MODE
BUDGET_ENV = job_env.DATA_MEMORY_BUDGET
# Per rank, and held whole (4-8 ranks of a GPU node share its memory); also what a rank reads
# before its first batch in memory mode: 256 MB is under a second, 50,000 MNIST images 40 MB.
DEFAULT_MEMORY_BUDGET = 256 << 20
DEFAULT_PREFETCH_SHARDS = 1  # the next shard reads while this one is batched

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str | int, *, field: str) -> int:
    """512MiB, 2G, 1.5GB or a plain byte count -> bytes; anything else is a UserError."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserError(f"{text!r} is not a size; write bytes or a number with a unit, e.g. "
                        "512MiB, 2G, 1.5GB", field=field)
    return int(float(match[1]) * _UNITS[(match[2] or "").lower()])


def describe_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def choose_mode(mode: str | None, budget: int | str | None,
                split_bytes: int) -> tuple[str, int, bool]:
    """(memory or stream, the budget in bytes, whether the size chose): explicit arguments
    first, then the environment; auto keeps a split of at most the budget in memory."""
    field = "mode" if mode is not None else MODE_ENV
    mode = mode if mode is not None else os.environ.get(MODE_ENV) or "auto"
    if mode not in MODES:
        raise UserError(f"data mode must be one of {', '.join(MODES)}, got {mode!r}", field=field)
    if budget is None:
        budget = parse_bytes(os.environ.get(BUDGET_ENV) or DEFAULT_MEMORY_BUDGET,
                             field=BUDGET_ENV)
    else:
        budget = parse_bytes(budget, field="memory_budget")
    if mode == "auto":
        return ("memory" if split_bytes <= budget else "stream"), budget, True
    return mode, budget, False
