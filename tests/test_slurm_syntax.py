"""SLURM's time and array grammar (slurm_syntax.py): what sbatch accepts is accepted and means
the same here; what sbatch would refuse, or what would hang or exhaust a local run, is refused
with the reason."""

from __future__ import annotations

import pytest

from itwinai_hpc.core.slurm_syntax import parse_array, time_minutes, time_seconds


@pytest.mark.parametrize("spec, ids, limit", [
    ("0-3", [0, 1, 2, 3], None), ("1,3,5", [1, 3, 5], None), ("0-9:2", [0, 2, 4, 6, 8], None),
    ("0-7%2", list(range(8)), 2), ("4", [4], None), ("1-2,10-12%3", [1, 2, 10, 11, 12], 3),
    (5, [5], None)])
def test_array_specs_expand_like_slurms(spec, ids, limit):
    parsed = parse_array(spec)
    assert (list(parsed.ids), parsed.limit) == (ids, limit)


@pytest.mark.parametrize("spec, reason", [
    ("5-1", "runs backwards"),              # hung a local run forever
    ("0-9:0", "step of 0-9:0 must be at least 1"),   # crashed the local runner
    ("0-999999999", "beyond what any SLURM cluster allows"),   # exhausted memory
    ("0-3%0", "throttle"), ("a-b", "not a SLURM array spec"), ("", "not a SLURM array spec")])
def test_array_specs_sbatch_would_refuse_are_refused_with_the_reason(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_array(spec)


@pytest.mark.parametrize("value, minutes", [
    ("30", 30), ("00:30:00", 30), ("1:00:01", 61), ("2-00", 2880), ("1-01:30", 1530),
    ("0:45", 1), ("12:00:00", 720), (90, 90), (None, None)])
def test_slurm_times_become_whole_minutes(value, minutes):
    assert time_minutes(value) == minutes


@pytest.mark.parametrize("value", ["0", "00:00:00", "1:2:3:4", "1h", "-5", True, 0])
def test_times_sbatch_would_refuse_are_refused(value):
    with pytest.raises(ValueError):
        time_seconds(value)
