"""A job: one attempt of a step or of its compensation, on the engine's reactor.

The engine decides and records; a job only runs processes: the step's `check`
first (exit 0 means the work is done), then the command. Both run on the
driver's reactor, so a job costs no thread; its outcome goes back to the
engine through a callback on that same thread, the only one that touches the
store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.engine.process import Attempt, AttemptResult, AttemptSpec
from runner.engine.reactor import Reactor
from runner.spec.model import Command

TOKEN_VAR = "RUNNER_ATTEMPT_TOKEN"
"""Marks every process of an attempt, so resume can find what a dead runner
left running, even a process started just before the crash."""


def attempt_token(store_key: str, run_id: str, step: str, seq: int) -> str:
    """The mark of one attempt's processes: STORE/RUN/STEP/SEQ.

    The store's key is part of it: two state directories may hold runs of
    the same id, and a resume in one must never end the other's processes.
    """
    return f"{store_key}/{run_id}/{step}/{seq}"


@dataclass(frozen=True)
class Launch:
    """Everything a job needs to run, decided and recorded by the engine."""

    step: str
    kind: str
    """`run` or `compensate`."""
    seq: int
    number: int
    command: Command
    check: Command | None
    env: dict[str, str]
    cwd: str
    timeout: float | None
    kill_grace: float
    log_prefix: str
    """Log files are LOG_PREFIX.stdout and LOG_PREFIX.stderr (and .check.*)."""


@dataclass
class Outcome:
    result: AttemptResult | None = None
    skipped_by_check: bool = False
    error: str | None = None
    """An unexpected exception in the worker: recorded, never swallowed."""


@dataclass
class Job:
    launch: Launch
    outcome: Outcome = field(default_factory=Outcome)
    _attempt: Attempt | None = None
    _stopped: int | None = None
    _reactor: Reactor | None = None
    _done: Callable[[Job], None] | None = None

    def start(self, reactor: Reactor, done: Callable[[Job], None]) -> None:
        """Start on `reactor`; `done` gets the finished job on its thread."""
        self._reactor, self._done = reactor, done
        launch = self.launch
        if launch.check is not None:
            self._begin(launch.check, launch.log_prefix + ".check", self._checked)
        else:
            self._begin(launch.command, launch.log_prefix, self._ran)

    def interrupt(self, sig: int) -> None:
        self._stopped = sig
        if self._attempt is not None:
            self._attempt.interrupt(sig)

    @property
    def interrupted(self) -> bool:
        return self._stopped is not None

    def _begin(
        self,
        command: Command,
        prefix: str,
        then: Callable[[AttemptResult | BaseException], None],
    ) -> None:
        launch = self.launch
        spec = AttemptSpec(
            command=command,
            cwd=launch.cwd,
            env=launch.env,
            timeout=launch.timeout,
            kill_grace=launch.kill_grace,
            stdout_path=prefix + ".stdout",
            stderr_path=prefix + ".stderr",
        )
        attempt = self._attempt = Attempt(spec)
        if self._stopped is not None:
            attempt.interrupt(self._stopped)
        assert self._reactor is not None
        try:
            attempt.start(self._reactor, then)
        except Exception as error:  # reported as the step's failure, with its text
            self._settle(_error(error))

    def _checked(self, checked: AttemptResult | BaseException) -> None:
        if isinstance(checked, BaseException):
            self._settle(_error(checked))
        elif checked.exit_code == 0 and not checked.timed_out:
            self._settle(Outcome(skipped_by_check=True))
        else:
            self._begin(self.launch.command, self.launch.log_prefix, self._ran)

    def _ran(self, result: AttemptResult | BaseException) -> None:
        if isinstance(result, BaseException):
            self._settle(_error(result))
        else:
            self._settle(Outcome(result=result))

    def _settle(self, outcome: Outcome) -> None:
        self.outcome = outcome
        assert self._done is not None
        self._done(self)


def _error(error: BaseException) -> Outcome:
    return Outcome(error=f"{type(error).__name__}: {error}")


def attempt_prefix(state_dir: str, run_id: str, step: str, seq: int, kind: str) -> str:
    """Where an attempt's files go: PREFIX.stdout, .stderr, .output, .check.*.

    One private folder per run; step names are safe in file names (the schema
    allows only letters, digits, `_` and `-`).
    """
    return os.path.join(state_dir, "logs", run_id, f"{step}.{seq}.{kind}")


def run_log_dir(state_dir: str, run_id: str) -> str:
    """Create the run's log folder (and `logs/`), each private."""
    path = state_dir
    for part in ("logs", run_id):
        path = os.path.join(path, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    return path
