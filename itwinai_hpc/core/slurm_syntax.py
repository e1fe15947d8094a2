"""SLURM's time and job-array grammar: parse, validate and convert, in one place.

schema.py validates workflow fields with it, the submitit backend converts times to minutes,
the local runner expands arrays into task ids. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (sbatch --time)
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?)")
TIME_HELP = "use MM, HH:MM:SS, D-HH or D-HH:MM:SS"
# SLURM refuses MaxArraySize above 4000001, so no cluster accepts a task id beyond this.
MAX_ARRAY_INDEX = 4_000_000
_ARRAY_PART = re.compile(r"(\d+)(?:-(\d+))?(?::(\d+))?")
ARRAY_HELP = "a SLURM array spec like '0-9', '1,3,5', '0-9:2' or '0-99%10'"


def time_seconds(value: str | int) -> int:
    """A SLURM time limit in seconds. An int (or digits alone) is minutes, as sbatch reads it.
    Raises ValueError with a message a user can act on."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a SLURM time; {TIME_HELP}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("time must be at least 1 minute")
        return value * 60
    m = _TIME.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"'{value}' is not a SLURM time; {TIME_HELP}")
    g = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
    if m.group("d") is not None:
        seconds = ((g["d"] * 24 + g["dh"]) * 60 + g["dm"]) * 60 + g["ds"]
    elif m.group("c") is not None:          # H:M:S
        seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
    else:                                   # M or M:S
        seconds = g["a"] * 60 + g["b"]
    if seconds < 1:
        raise ValueError(f"'{value}' is no time at all; {TIME_HELP}")
    return seconds


def time_minutes(value: str | int | None) -> int | None:
    """A SLURM time in whole minutes, rounded up (None stays None)."""
    if value is None or value == "":
        return None
    return -(-time_seconds(value) // 60)


@dataclass(frozen=True)
class ArraySpec:
    """A parsed --array value: its task ids (sorted, unique) and the %N throttle (or None)."""

    text: str
    ids: tuple[int, ...]
    limit: int | None


def parse_array(spec: str | int) -> ArraySpec:
    """'0-3', '1,3,5', '0-9:2', any of them with '%N'. Raises ValueError for what sbatch would
    refuse (a range that runs backwards, a step of 0, %0) or no cluster allows."""
    text = str(spec).strip()
    body, _, throttle = text.partition("%")
    limit = None
    if throttle:
        if not throttle.isdigit() or int(throttle) < 1:
            raise ValueError(f"{text!r}: the %N throttle must be a whole number >= 1; "
                             f"expected {ARRAY_HELP}")
        limit = int(throttle)
    ranges = []
    for part in body.split(","):
        m = _ARRAY_PART.fullmatch(part)
        if not m:
            raise ValueError(f"{text!r} is not {ARRAY_HELP}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        step = int(m.group(3) or 1)
        if last < first:
            raise ValueError(f"{text!r}: the range {part} runs backwards")
        if step < 1:
            raise ValueError(f"{text!r}: the step of {part} must be at least 1")
        if last > MAX_ARRAY_INDEX:
            raise ValueError(f"{text!r}: task id {last} is beyond what any SLURM cluster "
                             f"allows (MaxArraySize is at most {MAX_ARRAY_INDEX + 1})")
        ranges.append(range(first, last + 1, step))
    ids = sorted({i for r in ranges for i in r})
    return ArraySpec(text, tuple(ids), limit)


# --- sizes and durations as SLURM prints and takes them (sacct, scontrol, squeue, --mem) ---
MEM_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_elapsed(text: str) -> int | None:
    """[D-][HH:]MM:SS[.fff] (sacct, scontrol, squeue) -> whole seconds; None for INVALID or
    empty."""
    s = duration_seconds(text)
    return None if s is None else int(s)


def duration_seconds(text: str) -> float | None:
    """sacct times: [D-][HH:]MM:SS[.mmm], fractions kept; 'UNLIMITED' and the like -> None."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not m:
        return None
    d, h, mi = (int(g) if g else 0 for g in m.groups()[:3])
    return ((d * 24 + h) * 60 + mi) * 60 + float(m.group(4))


def mem_bytes(text: str) -> int | None:
    """'12345K', '500M', '4G', '4Gn' (per node), '4000Mc' (per CPU, 22.05 drops the suffix);
    a plain number is megabytes for --mem but bytes in sacct's columns: this reads sacct."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)[nc]?", text.strip())
    if not m:
        return None
    return int(float(m.group(1)) * MEM_UNITS.get(m.group(2), 1))


def clock(seconds: float | None) -> str:
    """Seconds as H:MM:SS (hours unbounded), '-' when unknown: how status and report show time."""
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"

