"""`runner stats`: recovery totals over every run on a store (SPEC 2, 6)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

STATS_KEYS = {
    "succeeded_first_attempt",
    "succeeded_after_retry",
    "retries_by_class",
    "circuit_opened",
    "circuit_refused",
    "circuit_closed",
    "permanent_failures",
    "retries_exhausted",
    "pending_redrive",
    "circuits",
}
FAST = {"initial": "50ms", "jitter": "none"}


def flaky(counter: Path, failures: int, message: str) -> str:
    """A shell command that prints `message` and fails its first `failures` runs."""
    return (
        f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > '{counter}'; "
        f"if [ $n -le {failures} ]; then echo '{message}'; exit 1; fi"
    )


def one_step(name: str, step: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "name": name, **top, "steps": {"only": step}}


def wait_until_parked(state: Path, run_id: str, timeout: float = 20) -> None:
    """Poll the store until the run's only step is `waiting`."""
    uri = f"file:{state / 'state.db'}?mode=rw"
    sql = "SELECT status FROM steps WHERE run_id = ?"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
                if connection.execute(sql, (run_id,)).fetchall() == [("waiting",)]:
                    return
        except sqlite3.OperationalError:  # no database or tables yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never parked")


def stats(runner: Any) -> dict[str, Any]:
    done = runner("stats", "-o", "json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_a_new_store_has_all_keys_at_zero(runner):
    """Before any run every total is 0 and there are no circuits."""
    document = stats(runner)

    assert set(document) == STATS_KEYS
    assert document["circuits"] == []
    assert document["pending_redrive"] == 0
    assert not any(document["retries_by_class"].values())


def test_stats_total_a_scripted_sequence_of_recoveries(runner, workflow, tmp_path):
    """Each kind of recovery event is counted once, in its own key."""

    def run(run_id: str, document: dict[str, Any]) -> int:
        path = workflow(document, name=f"{run_id}.yaml")
        return runner("run", str(path), "--run-id", run_id).returncode

    gate = {"failure_threshold": 1, "half_open_after": "100ms", "success_threshold": 1}
    at_once = one_step(
        "at-once", {"run": "true", "circuit": "gate"}, circuits={"gate": gate}
    )
    assert run("at-once", at_once) == 0
    retried = {
        "run": flaky(tmp_path / "retried", 1, "connection refused"),
        "retry": {"backoff": FAST},
    }
    assert run("retried", one_step("retried", retried)) == 0
    denied = {"run": "echo '403 Forbidden'; exit 1"}
    assert run("denied", one_step("denied", denied)) == 1
    throttled = {
        "run": "echo '429 Too Many Requests'; exit 1",
        "retry": {"max_attempts": 2, "backoff": FAST},
    }
    assert run("throttled", one_step("throttled", throttled)) == 1
    assert (
        runner("circuits", "record-failure", "gate").stdout == "circuit gate: opened\n"
    )
    time.sleep(0.2)
    assert "closed" in runner("circuits", "record-success", "gate").stdout
    assert runner("circuits", "open", "gate").returncode == 0
    parked = one_step(
        "parked", {"run": "true", "circuit": "gate"}, circuits={"gate": gate}
    )
    started = runner.start("run", str(workflow(parked)), "--run-id", "parked")
    wait_until_parked(runner.state, "parked")
    assert runner("circuits", "reset", "gate").returncode == 0
    _, err = started.communicate(timeout=30)
    assert started.returncode == 0, err

    document = stats(runner)

    assert set(document) == STATS_KEYS
    totals = {key: value for key, value in document.items() if key != "circuits"}
    by_class = totals.pop("retries_by_class")
    assert {kind: count for kind, count in by_class.items() if count} == {
        "transient": 1,
        "intermittent": 1,
    }
    assert totals == {
        "succeeded_first_attempt": 2,
        "succeeded_after_retry": 1,
        "circuit_opened": 2,
        "circuit_refused": 1,
        "circuit_closed": 2,
        "permanent_failures": 1,
        "retries_exhausted": 1,
        "pending_redrive": 1,
    }
    circuits = {c["name"]: c for c in document["circuits"]}
    assert sorted(circuits) == ["gate"]
    assert circuits["gate"]["state"] == "CLOSED"
    text = runner("stats")
    assert text.returncode == 0
    assert "pending_redrive" in text.stdout


def test_a_step_that_succeeds_after_a_redrive_counts_as_after_retry(
    runner, workflow, tmp_path
):
    """A redrive starts the attempt count again; the earlier failure still counts."""
    flag = tmp_path / "fixed"
    document = {
        "version": 1,
        "name": "fix-later",
        "steps": {
            "first": {"run": "true"},
            "later": {
                "needs": ["first"],
                "run": f"test -e '{flag}' || {{ echo 'service unavailable'; exit 1; }}",
                "retry": {"max_attempts": 1},
            },
        },
    }
    path = workflow(document)
    assert runner("run", str(path), "--run-id", "r1").returncode == 1
    assert stats(runner)["pending_redrive"] == 1
    flag.touch()

    assert runner("redrive", "r1").returncode == 0

    document = stats(runner)
    assert document["succeeded_first_attempt"] == 1
    assert document["succeeded_after_retry"] == 1
    assert document["pending_redrive"] == 0
