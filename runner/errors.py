"""One exception base that carries an exit code and a message for the user.

Exit codes are the contract of SPEC section 2; they are named here once and
every command maps its outcome through them.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    RUN_FAILED = 1
    INVALID = 2
    STORE = 3
    LOCKED = 4
    CHANGED = 5
    SIGINT = 130
    SIGTERM = 143


class RunnerError(Exception):
    """An expected failure: shown as one line, never as a traceback."""

    exit_code: ExitCode = ExitCode.INVALID

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(RunnerError):
    """Invalid input or usage: nothing was started."""

    exit_code = ExitCode.INVALID


class StoreError(RunnerError):
    """The state store is unusable: corrupt, unreadable, unwritable, newer."""

    exit_code = ExitCode.STORE


class LockedError(RunnerError):
    """The run is held by another live process, or this one was fenced out."""

    exit_code = ExitCode.LOCKED


class ChangedError(RunnerError):
    """The workflow file changed since the run started."""

    exit_code = ExitCode.CHANGED
