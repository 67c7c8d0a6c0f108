"""One attempt of a step: a process group, its logs, its timeout, its end.

Every attempt runs in its own session and process group, so a timeout, an
interrupt or the end of the step reaches all of its processes, and a terminal's
Ctrl-C reaches none of them. Both output streams are drained together in 64 KiB
chunks into per-attempt log files, capped at `max_log_bytes`, with only a
bounded tail kept in memory, so no output size can stall or grow the runner.

The command starts at once (see `spawn`), unless the attempt has an
`on_started`: then the child waits at a gate until `on_started` has returned,
so a caller can record the process identity durably before the command does
any work and find what it left behind later (`kill_leftover`). The engine
needs no gate: it finds a dead runner's attempts by the token in their
environment, recorded before the spawn.

Attempts run on a `Reactor`: the engine starts all of a run's attempts on its
own thread, which waits on every output pipe and every leader's pidfd at once;
`Attempt.run` is the same on a reactor of its own. Only the rare full sweep of
/proc (after a timeout, an interrupt, or pipes held open by a leftover) runs
on a short-lived thread, because it sleeps while killed processes go.

Nothing here installs signal handlers or changes this process's signal mask;
an attempt may be interrupted from any thread. The child starts with no signal
blocked, whatever the starting thread blocks.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial

from runner.engine import procinfo, spawn
from runner.engine.procinfo import (
    SETTLE,
    ProcessIdentity,
    enable_subreaper,
    kill_leftover,
)
from runner.engine.reactor import Reactor

__all__ = [
    "TRACKING_VAR",
    "Attempt",
    "AttemptResult",
    "AttemptSpec",
    "ProcessIdentity",
    "enable_subreaper",
    "kill_leftover",
]

CHUNK = 64 * 1024
TRACKING_VAR = "RUNNER_TRACKING_ID"
"""Set in each child's environment when `track_escapees` is on; a process that
leaves the step's group (setsid, double fork) is still found by it."""

FAST_PATH_WAIT = 0.05
"""How long the output pipes may take to close after the leader exited before
the full sweep of /proc is used instead."""
_POLL = 0.05  # how often to look for the leader's exit when there is no pidfd


@dataclass(frozen=True)
class AttemptSpec:
    """What to run for one attempt, and where its output goes."""

    command: str | tuple[str, ...]
    """A string runs with `/bin/sh -c`; a tuple is argv, with no shell."""
    cwd: str
    env: Mapping[str, str]
    """The complete environment of the child (plus `TRACKING_VAR`, see below)."""
    timeout: float | None
    kill_grace: float
    stdout_path: str
    stderr_path: str
    max_log_bytes: int = 64 * 1024 * 1024
    """Cap per stream; output past it is counted, not kept, and a
    "[truncated N bytes]" line ends the log."""
    tail_bytes: int = 64 * 1024
    """How much of the end of each stream is kept in memory, to classify."""
    track_escapees: bool = True
    """Mark the child's environment with `TRACKING_VAR` and kill, at the end of
    the attempt, processes carrying the mark that left the process group."""


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended.

    Exactly one of exit_code, signal and spawn_error is set, unless the attempt
    was interrupted before its command started: then none is, or exit_code is
    125 when the process was already waiting at the gate.
    """

    exit_code: int | None
    signal: str | None
    timed_out: bool
    spawn_error: str | None
    interrupted: bool
    stdout_tail: bytes
    stderr_tail: bytes
    stdout_bytes: int
    stderr_bytes: int
    duration: float
    group_signals: tuple[str, ...] = ()
    """Signals sent to the group for a timeout or an interrupt, in order, e.g.
    ("SIGTERM", "SIGKILL"). The SIGKILL that ends leftovers after the leader
    exits is not listed: it is always sent."""
    escaped: tuple[int, ...] = ()
    """Pids of processes that had left the group and were killed."""


@dataclass
class _Stream:
    """One output stream: its log file, its byte counts and its tail.

    The file is created with the first byte of output: most steps print
    nothing, and creating two files per attempt cost more than the rest of
    an attempt's bookkeeping together. No output, no file (`runner logs`
    shows nothing for it either way).
    """

    path: str
    max_bytes: int
    tail_bytes: int
    log: int = -1
    total: int = 0
    kept: int = 0
    tail: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.total += len(data)

        room = self.max_bytes - self.kept
        if room > 0:
            try:
                if self.log < 0:
                    self.log = _create_log(self.path)
                _write_all(self.log, data[:room])
                self.kept += min(room, len(data))
            except OSError:
                # A full disk must not fail the step: keep draining, and let
                # the marker (if it fits) say how much is missing.
                self.max_bytes = self.kept

        self.tail += data
        if len(self.tail) > 2 * self.tail_bytes + CHUNK:
            del self.tail[: len(self.tail) - self.tail_bytes]

    def last_bytes(self) -> bytes:
        if self.tail_bytes <= 0:
            return b""
        return bytes(self.tail[-self.tail_bytes :])

    def close(self) -> None:
        if self.log < 0:
            return
        dropped = self.total - self.kept
        try:
            if dropped:
                _write_all(self.log, f"\n[truncated {dropped} bytes]\n".encode())
        except OSError:
            pass  # the log is short either way; the totals are in the result
        finally:
            os.close(self.log)


def _create_log(path: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    log = os.open(path, flags, 0o600)
    os.fchmod(log, 0o600)  # a file that existed keeps its mode otherwise
    return log


@dataclass
class _Outcome:
    returncode: int | None = None
    spawn_error: str | None = None
    timed_out: bool = False
    escaped: tuple[int, ...] = ()


class Attempt:
    """One run of one command.

    `start` it on a `Reactor` (the engine's way: every attempt on the driver's
    thread), or `run` it to its end on a reactor of its own. `interrupt` may
    come from any thread.
    """

    def __init__(
        self,
        spec: AttemptSpec,
        on_started: Callable[[ProcessIdentity], None] | None = None,
    ) -> None:
        self.spec = spec
        self._on_started = on_started
        self._token = secrets.token_hex(16)
        self._lock = threading.Lock()
        # Guarded by _lock: interrupt() reads and writes them from any thread.
        self._begun = False
        self._reactor: Reactor | None = None
        self._pgid: int | None = None
        self._leader_exited = False
        self._reaped = False
        self._interrupted = False
        self._pending_signal: int | None = None
        """Asked for before the group existed: sent as soon as it does."""
        self._kill_at: float | None = None
        self._sent: list[str] = []
        # The reactor's thread alone uses the rest.
        self._done: Callable[[AttemptResult | BaseException], None] | None = None
        self._pid: int | None = None
        """The leader's pid, once started; it is the group's pgid too."""
        self._pidfd: int | None = None
        self._pipes: dict[int, _Stream] = {}
        """The output pipes still open, each with the stream it feeds."""
        self._out = _Stream(spec.stdout_path, spec.max_log_bytes, spec.tail_bytes)
        self._err = _Stream(spec.stderr_path, spec.max_log_bytes, spec.tail_bytes)
        self._started = 0.0
        self._deadline: float | None = None
        self._timed_out = False
        self._next_look: float | None = None
        """Without a pidfd: when to look again whether the leader exited."""
        self._pipes_due: float | None = None
        """After the leader's exit: how long the pipes may stay open before
        the full sweep of /proc is used instead."""
        self._sweeping = False
        self._finished = False

    def run(self) -> AttemptResult:
        """Run the command; return once its whole process group is gone.

        Raises what `on_started` raises, after killing the group (the command
        itself never started).
        """
        reactor = Reactor()
        ended: list[AttemptResult | BaseException] = []
        try:
            self.start(reactor, ended.append)
            while not ended:
                reactor.poll(None)
        finally:
            if not ended:
                self._abort()
            reactor.close()
        if isinstance(ended[0], BaseException):
            raise ended[0]
        return ended[0]

    def start(
        self, reactor: Reactor, done: Callable[[AttemptResult | BaseException], None]
    ) -> None:
        """Start the command on `reactor`; `done` gets the result, or the
        unexpected error that ended the attempt, on the reactor's thread.

        A command that cannot start, or an attempt interrupted before it
        started, calls `done` before this returns. Raises what `on_started`
        raises, after killing the group; `done` is not called then.
        """
        with self._lock:
            if self._begun:
                raise RuntimeError("an Attempt runs only once")
            self._begun = True
            self._reactor = reactor
            interrupted = self._interrupted
        self._done = done
        self._started = time.monotonic()
        if interrupted:
            self._end(_Outcome())
            return

        try:
            child = self._spawn()
        except spawn.CannotStart as exc:
            self._end(_Outcome(spawn_error=str(exc)))
            return
        self._pid = child.pid
        for fd, stream in ((child.stdout, self._out), (child.stderr, self._err)):
            os.set_blocking(fd, False)
            self._pipes[fd] = stream
        try:
            self._announce(child.pid, child.gate)
        except BaseException:
            self._abort()
            raise

        for fd in self._pipes:
            reactor.watch(fd, partial(self._guarded, self._readable, fd))
        self._pidfd = _open_pidfd(child.pid)
        if self._pidfd is not None:
            reactor.watch(self._pidfd, partial(self._guarded, self._leader_seen))
        else:
            self._next_look = self._started + _POLL
        if self.spec.timeout is not None:
            self._deadline = self._started + self.spec.timeout
        reactor.add_ticker(self)

    def interrupt(self, sig: int) -> None:
        """Send `sig` to the group, then SIGKILL after kill_grace if it lives.

        Safe from any thread, at any time: before `start` it keeps the command
        from starting; after the command ended it does nothing.
        """
        with self._lock:
            if self._leader_exited or self._reaped:
                return

            self._interrupted = True
            if self._pgid is not None:
                self._send(sig, record=True)
                self._arm_kill()
            else:
                self._pending_signal = sig
            reactor = self._reactor
        if reactor is not None:
            reactor.wakeup()  # to wait no longer than the new kill deadline

    # The reactor's side: deadlines, output, the leader's exit.

    def deadline(self) -> float | None:
        # Read without the lock: interrupt() sets _kill_at, then wakes the
        # reactor, which asks again.
        if self._finished or self._sweeping:
            return None
        soonest = None if self._timed_out else self._deadline
        for due in (self._kill_at, self._pipes_due, self._next_look):
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return soonest

    def tick(self, now: float) -> None:
        due = self.deadline()
        if due is not None and now >= due:
            self._guarded(self._tick, now)

    def _tick(self, now: float) -> None:
        if self._finished or self._sweeping:
            return
        if self._pipes_due is not None:
            if now >= self._pipes_due:
                self._pipes_due = None
                self._sweep()
            return
        if self._leader_exited:
            return
        if self._next_look is not None and now >= self._next_look:
            assert self._pid is not None
            if _has_exited(self._pid):
                self._leader_gone()
                return
            self._next_look = now + _POLL
        if self._deadline is not None and not self._timed_out and now >= self._deadline:
            self._timed_out = True
            self._terminate(signal.SIGTERM)
        self._escalate(now)

    def _readable(self, fd: int) -> None:
        stream = self._pipes.get(fd)
        if stream is None:
            return
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if data:
            stream.feed(data)
            return
        self._close_pipe(fd)
        if self._pipes_due is not None and not self._pipes:
            self._complete(())

    def _leader_seen(self) -> None:
        """The pidfd is readable: the leader exited (it stays a zombie)."""
        if self._pidfd is not None:
            assert self._reactor is not None
            self._reactor.unwatch(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._leader_gone()

    def _leader_gone(self) -> None:
        """Kill what the leader left behind, then read the rest of the output.

        A step's background processes must not outlive it, so the group gets
        SIGKILL as soon as its leader has exited, however it exited. The
        leader stays unreaped meanwhile: its zombie keeps the pgid from being
        reused while the group is signalled.

        The common case costs no /proc scan: no process survives the
        SIGKILL, and once no process holds the output pipes any more every
        member that could still write is gone. A timed-out or interrupted
        attempt, or one whose pipes stay open, takes the full sweep. (A
        detached daemon that closed its output is not found on the fast
        path; the docs say so.)
        """
        with self._lock:
            self._leader_exited = True
            self._kill_at = None
            cut_short = self._timed_out or self._interrupted
        self._next_look = None
        self._kill_group()
        if cut_short:
            self._sweep()
        elif not self._pipes:
            self._complete(())
        else:
            self._pipes_due = time.monotonic() + FAST_PATH_WAIT

    def _sweep(self) -> None:
        """Scan /proc until the group is gone and escapees are killed.

        The scan sleeps between looks, so it runs on a thread of its own while
        the reactor goes on draining the pipes and serving other attempts.
        """
        assert self._pid is not None and self._reactor is not None
        self._sweeping = True
        pid, reactor = self._pid, self._reactor
        stat = procinfo.read_stat(pid)  # the zombie leader's, still there
        since = stat.start_time if stat is not None else 0
        mark = f"{TRACKING_VAR}={self._token}".encode()
        track = self.spec.track_escapees

        def sweep() -> None:
            try:
                procinfo.await_group_gone(
                    pid, self._kill_group, lambda: time.sleep(SETTLE)
                )
                escaped = procinfo.kill_marked(mark, since) if track else ()
            except Exception as exc:  # ends the attempt with the error
                reactor.call_soon_threadsafe(partial(self._fail, exc))
            else:
                swept = partial(self._guarded, self._swept, escaped)
                reactor.call_soon_threadsafe(swept)

        threading.Thread(target=sweep, name="runner-sweep", daemon=True).start()

    def _swept(self, escaped: tuple[int, ...]) -> None:
        # No process of the step is left to write, so what the pipes hold is
        # all there is; a writer outside the group cannot make this wait.
        for fd, stream in list(self._pipes.items()):
            while True:
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    break
                if not data:
                    break
                stream.feed(data)
            self._close_pipe(fd)
        self._sweeping = False
        self._complete(escaped)

    def _close_pipe(self, fd: int) -> None:
        assert self._reactor is not None
        self._reactor.unwatch(fd)
        del self._pipes[fd]
        os.close(fd)

    def _complete(self, escaped: tuple[int, ...]) -> None:
        assert self._reactor is not None
        self._reactor.remove_ticker(self)
        self._pipes_due = None
        code = self._reap()
        self._end(_Outcome(code, None, self._timed_out, escaped))

    # Ending.

    def _guarded(self, call: Callable[..., None], *args: object) -> None:
        try:
            call(*args)
        except Exception as exc:  # the attempt ends with it; others go on
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        if self._finished:
            return
        self._abort()
        assert self._done is not None
        self._done(error)

    def _abort(self) -> None:
        """Kill the group and release everything, recording no result."""
        if self._finished:
            return
        self._finished = True
        reactor = self._reactor
        if reactor is not None:
            reactor.remove_ticker(self)
        if self._pidfd is not None:
            if reactor is not None:
                reactor.unwatch(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        for fd in list(self._pipes):
            if reactor is not None:
                reactor.unwatch(fd)
            os.close(fd)
        self._pipes.clear()
        if self._pid is not None:
            with suppress(Exception):
                self._reap()
        self._out.close()
        self._err.close()

    def _end(self, outcome: _Outcome) -> None:
        self._finished = True
        self._out.close()
        self._err.close()
        result = self._result(outcome, time.monotonic() - self._started)
        assert self._done is not None
        self._done(result)

    # The phases of start().

    def _spawn(self) -> spawn.Child:
        spec = self.spec
        env = dict(spec.env)
        if spec.track_escapees:
            env[TRACKING_VAR] = self._token
        # Without on_started nothing needs to wait: the command starts at once,
        # saving the gate shell's exec on every attempt.
        gated = self._on_started is not None
        child = spawn.start(spec.command, spec.cwd, env, gated=gated)

        with self._lock:
            self._pgid = child.pid
            if self._pending_signal is not None:
                # interrupt() came between the start and now: nothing got it.
                self._send(self._pending_signal, record=True)
                self._arm_kill()
        return child

    def _announce(self, pid: int, gate: int) -> None:
        """Hand the identity to on_started, then let the command start."""
        if self._on_started is None:
            return
        try:
            stat = procinfo.read_stat(pid)
            start_time = stat.start_time if stat is not None else 0
            self._on_started(ProcessIdentity(pid, pid, start_time, procinfo.boot_id()))

            with self._lock, suppress(BrokenPipeError):
                # A broken pipe means the wrapper was killed meanwhile.
                if not self._interrupted:
                    os.write(gate, b"go\n")
        finally:
            # Closed unwritten, the gate makes the wrapper exit 125 at once.
            os.close(gate)

    def _reap(self) -> int:
        """Wait for the leader; when it had not exited, kill the group first."""
        assert self._pid is not None
        with self._lock:
            already_done = self._reaped or self._leader_exited
            if not self._reaped:
                self._send(signal.SIGKILL, record=False)
                self._reaped = True

        if not already_done:
            procinfo.await_group_gone(
                self._pid, lambda: None, lambda: time.sleep(SETTLE)
            )
        try:
            _, status = os.waitpid(self._pid, 0)
        except ChildProcessError:
            return 0  # reaped behind our back (SIGCHLD ignored): status unknown
        return os.waitstatus_to_exitcode(status)

    def _result(self, outcome: _Outcome, duration: float) -> AttemptResult:
        code = outcome.returncode
        with self._lock:
            interrupted = self._interrupted
            sent = tuple(self._sent)

        out, err = self._out, self._err
        return AttemptResult(
            exit_code=code if code is not None and code >= 0 else None,
            signal=_signal_name(-code) if code is not None and code < 0 else None,
            timed_out=outcome.timed_out,
            spawn_error=outcome.spawn_error,
            interrupted=interrupted,
            stdout_tail=out.last_bytes(),
            stderr_tail=err.last_bytes(),
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            duration=duration,
            group_signals=sent,
            escaped=outcome.escaped,
        )

    # Signalling; the callers below hold _lock or take it.

    def _send(self, sig: int, *, record: bool) -> None:
        """Signal the group; only while the unreaped leader pins its pgid."""
        if self._pgid is None or self._reaped:
            return
        try:
            os.killpg(self._pgid, sig)
        except ProcessLookupError:
            return
        if record:
            self._sent.append(_signal_name(sig))

    def _arm_kill(self) -> None:
        due = time.monotonic() + self.spec.kill_grace
        if self._kill_at is None or due < self._kill_at:
            self._kill_at = due

    def _terminate(self, sig: int) -> None:
        with self._lock:
            self._send(sig, record=True)
            self._arm_kill()

    def _escalate(self, now: float) -> None:
        with self._lock:
            if self._kill_at is not None and now >= self._kill_at:
                self._send(signal.SIGKILL, record=True)
                self._kill_at = None

    def _kill_group(self) -> None:
        with self._lock:
            self._send(signal.SIGKILL, record=False)


# Watching the child.


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # kernels before 5.3: poll instead


def _has_exited(pid: int) -> bool:
    """Whether the leader exited, leaving it unreaped (a zombie)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    try:
        return os.waitid(os.P_PID, pid, flags) is not None
    except ChildProcessError:
        return True  # reaped behind our back; _reap copes


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
