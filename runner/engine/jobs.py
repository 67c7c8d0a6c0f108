"""A job: one attempt of a step or of its compensation, run in a worker thread.

The engine decides and records; a job only runs processes: the step's `check`
first (exit 0 means the work is done), then the command. Its outcome goes back
to the engine through a queue; the engine's thread alone touches the store.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass, field

from runner.engine.process import Attempt, AttemptResult, AttemptSpec
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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, done: queue.Queue[Job]) -> None:
        """Run in a worker thread; the finished job is put on `done`."""
        _WORKERS.submit(self, done)

    def interrupt(self, sig: int) -> None:
        with self._lock:
            self._stopped = sig
            attempt = self._attempt
        if attempt is not None:
            attempt.interrupt(sig)

    @property
    def interrupted(self) -> bool:
        return self._stopped is not None

    def _work(self) -> None:
        try:
            self.outcome = self._execute()
        except Exception as error:  # reported as the step's failure, with its text
            self.outcome = Outcome(error=f"{type(error).__name__}: {error}")

    def _execute(self) -> Outcome:
        launch = self.launch
        if launch.check is not None:
            checked = self._run(launch.check, launch.log_prefix + ".check")
            if checked.exit_code == 0 and not checked.timed_out:
                return Outcome(skipped_by_check=True)
        return Outcome(result=self._run(launch.command, launch.log_prefix))

    def _run(self, command: Command, prefix: str) -> AttemptResult:
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
        attempt = Attempt(spec)
        with self._lock:
            self._attempt = attempt
            stopped = self._stopped
        if stopped is not None:
            attempt.interrupt(stopped)
        return attempt.run()


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


class _Workers:
    """Threads that run jobs, kept from one job to the next.

    Starting a thread per attempt cost a third of a millisecond of the
    driver's time (the new thread's handshake under the GIL); a worker
    waiting on a queue costs nothing. There are as many as jobs ever ran at
    once, and they are daemons: they never keep the runner alive.
    """

    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue[tuple[Job, queue.Queue[Job]]] = (
            queue.SimpleQueue()
        )
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, job: Job, done: queue.Queue[Job]) -> None:
        with self.lock:
            grow = self.idle == 0
            if not grow:
                self.idle -= 1
        if grow:
            threading.Thread(target=self._serve, daemon=True).start()
        self.tasks.put((job, done))

    def _serve(self) -> None:
        while True:
            job, done = self.tasks.get()
            job._work()
            # Idle before the engine hears of the end, so the next job it
            # starts finds this worker instead of starting another.
            with self.lock:
                self.idle += 1
            done.put(job)


_WORKERS = _Workers()
