"""Processes as Linux's /proc shows them: finding, recognising, ending them.

The engine recognises a step's process group after the runner died by the
group's pgid, the leader's start time and the boot id. It finds the members of
a group by scanning /proc, because `killpg(pgid, 0)` also counts zombies and
cannot tell an empty group from one whose leader is unreaped; and it finds
processes that left the group by a mark in their environment.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
SETTLE = 0.01  # how often to look whether killed processes are gone


@dataclass(frozen=True)
class ProcessIdentity:
    """Enough to recognise an attempt's process group after the runner died."""

    pid: int
    pgid: int
    start_time: int
    """Field 22 of /proc/PID/stat, in clock ticks since boot."""
    boot_id: str


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the engine needs."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int

    @property
    def alive(self) -> bool:
        """False for a zombie or a dead task: it holds no files any more."""
        return self.state not in ("Z", "X", "x")


def read_stat(pid: int) -> ProcStat | None:
    """The stat of `pid`, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None

    # The command name in parentheses may hold spaces and parentheses; the
    # fields after its last ')' are plain numbers, starting with field 3.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_time=int(fields[19]),
    )


def iter_processes() -> Iterator[ProcStat]:
    """Every process visible in /proc, skipping those that vanish meanwhile."""
    with os.scandir("/proc") as entries:
        pids = [int(entry.name) for entry in entries if entry.name.isdigit()]

    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            yield stat


def group_members(pgid: int, *, exclude: int | None = None) -> list[ProcStat]:
    """The processes in group `pgid`, zombies included, except `exclude`."""
    return [p for p in iter_processes() if p.pgrp == pgid and p.pid != exclude]


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether `entry` (b"NAME=value") is in the environment of `pid`."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry in raw.split(b"\0")


@functools.cache
def boot_id() -> str:
    """This boot's random id: start times only compare within one boot."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def enable_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux only).

    A step's process that daemonises (double fork, `setsid`) then stays a
    descendant of the runner instead of init. Attempts reap the orphans of
    their own group and the escapees they kill; an escapee that exits on its
    own, or an orphan of a process not started by an Attempt, stays a zombie
    until the runner exits. Returns False where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


# Ending processes.


def kill_leftover(identity: ProcessIdentity, grace: float) -> bool:
    """End the process group a dead runner's attempt left; True if any was.

    The group is recognised by its leader (same pid and start time) or, when
    the leader is gone, by members of the pgid in the leader's session that
    started no earlier than it. Nothing is killed on another boot, nor when the
    pid now belongs to a different process. SIGTERM first, SIGKILL after
    `grace`; returns once no member is left.
    """
    if identity.boot_id != boot_id() or not _is_leftover(identity):
        return False

    pgid = identity.pgid
    _killpg_quietly(pgid, signal.SIGTERM)
    due = time.monotonic() + grace
    while _leftover_members(identity) and time.monotonic() < due:
        time.sleep(SETTLE)

    while _leftover_members(identity):
        _killpg_quietly(pgid, signal.SIGKILL)
        time.sleep(SETTLE)
    return True


def _is_leftover(identity: ProcessIdentity) -> bool:
    leader = read_stat(identity.pid)
    if leader is not None and leader.start_time != identity.start_time:
        # The pid is a new process, so the old group cannot exist: the kernel
        # does not reuse a pid while it is still some group's pgid.
        return False
    return bool(_leftover_members(identity))


def _leftover_members(identity: ProcessIdentity) -> list[ProcStat]:
    return [
        p
        for p in group_members(identity.pgid)
        if p.alive
        and p.session == identity.pgid
        and p.start_time >= identity.start_time
    ]


def _killpg_quietly(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def await_group_gone(
    leader: int, kill: Callable[[], None], pause: Callable[[], None]
) -> None:
    """Kill the group until no member but the zombie leader is left.

    Members orphaned to this process (when it is a subreaper) are reaped.
    """
    me = os.getpid()
    while True:
        kill()
        members = group_members(leader, exclude=leader)
        for member in members:
            if not member.alive and member.ppid == me:
                _reap_quietly(member.pid)
        if not any(m.alive for m in members):
            return
        pause()


def kill_marked(mark: bytes, since: int) -> tuple[int, ...]:
    """Kill live processes whose environment carries `mark`; their pids."""
    killed: set[int] = set()
    unkillable: set[int] = set()
    while True:
        found = [
            p
            for p in iter_processes()
            if p.alive
            and p.start_time >= since
            and p.pid not in unkillable
            and environ_has(p.pid, mark)
        ]
        if not found:
            break
        for process in found:
            target = killed if _kill_exactly(process) else unkillable
            target.add(process.pid)
        time.sleep(SETTLE)

    me = os.getpid()
    for pid in killed:
        stat = read_stat(pid)
        if stat is not None and stat.ppid == me and not stat.alive:
            _reap_quietly(pid)
    return tuple(sorted(killed))


def _kill_exactly(process: ProcStat) -> bool:
    """SIGKILL `process`, never a process that reused its pid; False if denied.

    A pidfd pins the process while its start time is checked; kernels before
    5.3 have none, and there a plain kill follows the check.
    """
    try:
        pidfd: int | None = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return True
    except OSError:
        pidfd = None

    try:
        now = read_stat(process.pid)
        if now is None or now.start_time != process.start_time:
            return True
        if pidfd is None:
            os.kill(process.pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except PermissionError:
        return False
    except ProcessLookupError:
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def _reap_quietly(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
