"""One process of a multi-process circuit test: waits at a barrier, then acts.

    circuit_worker.py STATE BARRIER NAME record OUTCOME COUNT
    circuit_worker.py STATE BARRIER NAME admit TOKEN LEASE [hold]

The barrier is a folder: the worker opens the store, creates `ready-PID` in
it, and waits until a file `go` appears, so every worker starts its calls
within a millisecond of the others, after its imports and its connection.

`record` counts COUNT outcomes through `breakers.record_outcome`; `admit` asks
for one call's admission, and with `hold` stays alive after printing (a probe
holder for a test to SIGKILL). Either prints one JSON line: what it saw,
including any error, since a "database is locked" must be counted, not lost.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from runner.engine import breakers
from runner.store.sqlite import Store

POLL = 0.0005


def wait_at_barrier(barrier: Path) -> None:
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(POLL)


def record(store: Store, name: str, outcome: str, count: int) -> dict[str, object]:
    errors: list[str] = []
    opened = 0
    for _ in range(count):
        try:
            transitions = breakers.record_outcome(store, name, outcome)
        except Exception as error:  # every failure is a finding
            errors.append(f"{type(error).__name__}: {error}")
            continue
        opened += transitions.count("opened")
    return {
        "recorded": count - len(errors),
        "opened": opened,
        "errors": errors,
    }


def admit(store: Store, name: str, token: str, lease: float) -> dict[str, object]:
    try:
        admission, ticket = breakers.admit(store, name, token, lease, ("", token))
    except Exception as error:  # every failure is a finding
        return {"admitted": False, "errors": [f"{type(error).__name__}: {error}"]}
    return {
        "admitted": admission.admitted,
        "probe": admission.probe,
        "state": admission.state.state,
        "generation": None if ticket is None else ticket.generation,
        "errors": [],
    }


def main(argv: list[str]) -> None:
    state, barrier, name, action, *rest = argv
    store = Store(state)
    wait_at_barrier(Path(barrier))

    if action == "record":
        result = record(store, name, rest[0], int(rest[1]))
    else:
        result = admit(store, name, rest[0], float(rest[1]))
    print(json.dumps(result), flush=True)

    if rest[2:] == ["hold"]:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
