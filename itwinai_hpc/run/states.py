"""The one vocabulary of step states: SLURM's job state names, plus UNSUBMITTED.

Every backend maps what its scheduler says onto these (backends/slurm/query.py folds SLURM's
transient names like COMPLETING into them), run.json stores them, `status`, `logs` and `resume`
read them.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from itwinai_hpc.core.job_env import STOP_EXIT


class StepState(str, Enum):
    """A step's state as recorded in run.json. A str, so it compares with and serialises as
    SLURM's own name ("COMPLETED")."""

    UNSUBMITTED = "UNSUBMITTED"      # rendered (or reset by resume), not handed to a scheduler
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"             # also SLURM's DEADLINE
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"         # also SLURM's BOOT_FAIL (slurm_query folds it)
    PREEMPTED = "PREEMPTED"
    # itwinai-hpc's own: a rank made no progress for the step's watchdog duration (it left a
    # mark in the run folder; the step's reason names the rank and node that stopped first).
    HUNG = "HUNG"
    # itwinai-hpc's own: the step stopped early on request and asked to be resumed (it exited
    # with core/job_env.STOP_EXIT after its checkpoint). Not a success: dependents do not run;
    # `resume` continues it from its checkpoint.
    STOPPED = "STOPPED"

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    @classmethod
    def parse(cls, name: str) -> StepState | str:
        """The member for `name`; a name this version does not know stays a plain string (a
        newer SLURM may add states) and counts as neither finished nor succeeded."""
        try:
            return cls(name)
        except ValueError:
            return name


S = StepState
# A finished state is final: cached in run.json and never asked about again.
FINISHED = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT, S.OUT_OF_MEMORY,
                      S.NODE_FAIL, S.PREEMPTED, S.HUNG, S.STOPPED})
SUCCEEDED = frozenset({S.COMPLETED})
# Finished without success because of the step itself (not cancelled as a dependent): the
# steps whose log a user wants to read first.
FAILED_ITSELF = FINISHED - SUCCEEDED - {S.CANCELLED, S.STOPPED}


def from_exit(code: int) -> StepState:
    """The state of a step (or task) that ended with exit status `code`: 0 COMPLETED, the stop
    contract's STOP_EXIT STOPPED, anything else FAILED. Every backend reads an exit status
    through this one rule."""
    return S.COMPLETED if code == 0 else S.STOPPED if code == STOP_EXIT else S.FAILED


def from_exits(codes: Iterable[int]) -> tuple[StepState, int]:
    """(state, exit code) of a step whose tasks ended with `codes`: a failed task fails it (its
    code), else a stopped one stops it, else COMPLETED."""
    codes = list(codes)
    failed = [c for c in codes if from_exit(c) == S.FAILED]
    if failed:
        return S.FAILED, failed[0]
    if STOP_EXIT in codes:
        return S.STOPPED, STOP_EXIT
    return S.COMPLETED, 0
