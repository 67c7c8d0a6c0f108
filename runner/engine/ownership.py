"""Who drives a run: a lease with a fencing epoch, and leftovers of dead owners.

A run is driven by the holder of its lease. Taking it increments the run's
epoch, and every later write of the holder checks that epoch, so an owner
that was paused (SIGSTOP, a frozen VM) and lost its lease writes nothing when
it wakes. A lease is free when it expired, or at once when the process that
holds it is gone: same boot, and no live process with that pid and start time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from typing import Any

from runner.engine import procinfo
from runner.engine.jobs import TOKEN_VAR
from runner.errors import LockedError
from runner.store.sqlite import Store


def me() -> dict[str, Any]:
    stat = procinfo.read_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "start_time": stat.start_time if stat else 0,
        "boot_id": procinfo.boot_id(),
        "host": socket.gethostname(),
    }


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the process recorded as `owner` still runs on this machine."""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine: only its lease can tell
    if owner.get("boot_id") != procinfo.boot_id():
        return False
    stat = procinfo.read_stat(int(owner["pid"]))
    return stat is not None and stat.alive and stat.start_time == owner["start_time"]


def refuse_if_held(
    run_id: str, owner_text: str | None, lease_until: float, now: float
) -> None:
    """LockedError (exit 4) while a live process holds the run's lease."""
    owner = json.loads(owner_text) if owner_text else None
    if owner and lease_until > now and owner_alive(owner):
        raise LockedError(
            f"run {run_id} is driven by pid {owner['pid']} on {owner['host']}; "
            "wait for it to end, or stop it first"
        )


def acquire(store: Store, run_id: str, lease: float) -> tuple[int, bool]:
    """Take the run's lease: the new epoch, and whether a dead owner held it."""
    with store.write() as txn:
        row = txn.execute(
            "SELECT epoch, owner, lease_until, status FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        epoch, owner_text, lease_until, status = row
        refuse_if_held(run_id, owner_text, lease_until, txn.now)
        owner = json.loads(owner_text) if owner_text else None
        crashed = status in ("running", "compensating") and owner is not None
        txn.update_run(
            run_id,
            epoch=epoch + 1,
            owner=json.dumps(me()),
            lease_until=txn.now + lease,
        )
        txn.event("run.owner_taken", run_id, epoch=epoch + 1, after_crash=crashed)
    return epoch + 1, crashed


def kill_leftovers(token: str, grace: float) -> list[int]:
    """End every process of an attempt a dead runner left behind.

    Each process of an attempt carries its token (`jobs.attempt_token`) in its
    environment, so this finds even one started just before the crash, and
    escapees from the group.
    """
    entry = f"{TOKEN_VAR}={token}".encode()
    groups = {
        process.pgrp
        for process in procinfo.iter_processes()
        if process.alive and procinfo.environ_has(process.pid, entry)
    }
    if not groups:
        return []
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(groups):
        time.sleep(0.02)
    _signal_groups(groups, signal.SIGKILL)
    while _alive(groups):
        time.sleep(0.01)
    return sorted(groups)


def _signal_groups(groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _alive(groups: set[int]) -> bool:
    return any(
        process.alive and process.pgrp in groups
        for process in procinfo.iter_processes()
    )
