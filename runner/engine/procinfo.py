"""What Linux's /proc says about processes: groups, start times, boot id.

The engine recognises a step's process group after the runner died by the
group's pgid, the leader's start time and the boot id, and it finds the
members of a group by scanning /proc, because `killpg(pgid, 0)` also counts
zombies and cannot tell an empty group from one whose leader is unreaped.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


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
    descendant of the runner instead of init, so it can still be found and
    reaped. Returns False where prctl is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
