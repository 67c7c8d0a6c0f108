"""Named crash points, for tests: the process kills itself with SIGKILL there.

`RUNNER_CRASHPOINT=NAME` or `NAME:N` arms one point (the N-th hit, default the
first). Nothing runs after the kill, no `finally`, no `atexit`: exactly a
crash. Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "run.created",
    "step.before_start_commit",
    "step.after_start_commit",
    "step.after_spawn",
    "step.after_exit",
    "step.after_end_commit",
    "retry.after_schedule_commit",
    "compensation.after_start_commit",
    "compensation.after_exit",
    "compensation.after_end_commit",
    "run.before_finish_commit",
    "resume.after_reconcile",
    "redrive.after_reopen",
)

_hits: dict[str, int] = {}


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get("RUNNER_CRASHPOINT")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count) if count.isdigit() else 1


_ARMED = _armed()


def crashpoint(name: str) -> None:
    """SIGKILL this process if `name` is the armed point and its hit is due."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
