"""Recovery statistics, totalled from the event log and the current steps."""

from __future__ import annotations

import json
from typing import Any

from runner.store.sqlite import Store

REDRIVABLE = ("failed", "compensation_failed")
"""Run statuses `runner redrive` takes; their steps of the same status wait."""


def waits_for_redrive(run_status: str, step_status: str) -> bool:
    """A failed step of a failed run, a failed compensation of such a run."""
    return run_status in REDRIVABLE and step_status == run_status


def recovery_stats(store: Store) -> dict[str, Any]:
    # A success counts as after retry if an attempt of the same step failed
    # before it, in this redrive or an earlier one (a redrive starts the count
    # of attempts again, so the event's own count is not enough).
    rows = store.select(
        "SELECT kind, detail, kind = 'step.succeeded' AND EXISTS (SELECT 1 FROM "
        "events AS f WHERE f.run_id = e.run_id AND f.id < e.id AND "
        "f.step = e.step AND f.kind = 'run.attempt_failed') FROM events AS e "
        "WHERE kind IN ('step.succeeded', 'retry.scheduled', 'circuit.opened', "
        "'circuit.closed', 'circuit.refused', 'step.failed', 'retry.exhausted')"
    )
    totals: dict[str, Any] = {
        "succeeded_first_attempt": 0,
        "succeeded_after_retry": 0,
        "retries_by_class": {"transient": 0, "intermittent": 0, "permanent": 0},
        "circuit_opened": 0,
        "circuit_refused": 0,
        "circuit_closed": 0,
        "permanent_failures": 0,
        "retries_exhausted": 0,
    }
    for kind, text, failed_before in rows:
        _count(totals, kind, json.loads(text) if text else {}, bool(failed_before))
    totals["pending_redrive"] = _pending_redrive(store)
    return totals


def _count(
    totals: dict[str, Any], kind: str, detail: dict[str, Any], failed_before: bool
) -> None:
    if kind == "step.succeeded":
        retried = failed_before or detail.get("attempts", 1) > 1
        totals["succeeded_after_retry" if retried else "succeeded_first_attempt"] += 1
    elif kind == "retry.scheduled" and detail.get("of", "run") == "run":
        error_class = detail.get("error_class", "intermittent")
        totals["retries_by_class"][error_class] += 1
    elif kind.startswith("circuit."):
        totals[kind.replace(".", "_")] += 1
    elif kind == "step.failed" and detail.get("error_class") == "permanent":
        totals["permanent_failures"] += 1
    elif kind == "retry.exhausted":
        totals["retries_exhausted"] += 1


def _pending_redrive(store: Store) -> int:
    marks = ", ".join("?" * len(REDRIVABLE))
    rows = store.select(
        "SELECT COUNT(*) FROM steps JOIN runs ON runs.run_id = steps.run_id "
        f"WHERE runs.status IN ({marks}) AND steps.status = runs.status",
        REDRIVABLE,
    )
    return int(rows[0][0])
