"""Errors a user can cause and fix. The CLI prints them as one sentence and exits 2 (no traceback).

Runtime failures (a job failed, a process died) are not UserErrors: they exit 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, a field or a flag the user can correct. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = str(self.file) + (f":{self.line}" if self.line else "") + ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class UserErrors(UserError):
    """Several UserErrors found in one pass (validation reports all of them at once)."""

    def __init__(self, errors: list[UserError]):
        self.errors = errors
        super().__init__("\n".join(e.format() for e in errors))

    def format(self) -> str:
        return "\n".join(e.format() for e in self.errors)


class RunStateError(Exception):
    """The run's state forbids this now: another command is working on it, steps are still
    active, or its local runner lives on another machine. Nothing was changed. Exit code 1."""

    exit_code = 1
