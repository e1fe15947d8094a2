"""Timestamps: one format for everything itwinai-hpc records (ISO 8601 with the local zone, to
the second), and the local, zone-less form SLURM's commands read (sacct --starttime)."""

from __future__ import annotations

import datetime as dt


def now_iso() -> str:
    """Now, e.g. 2026-12-07T01:54:53+01:00: what run.json, markers and runner logs record."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def slurm_time(stamp: str | dt.datetime) -> str:
    """A recorded timestamp as SLURM reads one: local time, no zone (YYYY-MM-DDTHH:MM:SS). A
    zone-less stamp (run folders of earlier versions) is taken as local time already; SLURM's
    own words (now, today, midnight, now-1hour) pass as they are."""
    if isinstance(stamp, str):
        try:
            when = dt.datetime.fromisoformat(stamp)
        except ValueError:
            return stamp
    else:
        when = stamp
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%S")
