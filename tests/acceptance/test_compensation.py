"""Backward recovery: compensation order, retries, signals, crashes and redrive.

Forward steps write to `ledger.txt`, compensations to `undo.txt` (both FAULTS
T3 ledgers), so each test sees what really ran, how often and in what order,
whatever the runner recorded. Order in the store comes from the event table.
"""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import Ledger

PY = sys.executable
QUICK = {"max_attempts": 3, "backoff": {"initial": "10ms", "jitter": "none"}}
"""A retry policy whose waits do not slow the tests down."""
FAILS = {"run": "exit 2", "classify": [{"exit_codes": [2], "class": "permanent"}]}
"""A step that fails for good on its first attempt."""
FAILS_REASON = "step fail failed (permanent: steps.fail.classify[0]: exit code 2)"


@pytest.fixture
def undo(tmp_path: Path) -> Ledger:
    """The ledger of compensations."""
    return Ledger(tmp_path / "undo.txt")


def wf(steps: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "name": "saga", "steps": steps}


def events(runner, run_id: str = "r1") -> list[tuple[str, str | None, dict]]:
    """The run's journal as (kind, step, detail), oldest first."""
    database = runner.state / "state.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT kind, step, detail FROM events WHERE run_id = ? ORDER BY id",
            (run_id,),
        ).fetchall()
    return [(kind, step, json.loads(detail or "{}")) for kind, step, detail in rows]


def undone(runner, run_id: str = "r1") -> list[str]:
    """Steps in the order the store recorded their compensation succeeding."""
    return [
        step for kind, step, _ in events(runner, run_id) if kind == "step.compensated"
    ]


def wait_event(runner, kind: str, step: str | None = None, timeout: float = 20) -> None:
    """Block until the journal holds an event `kind` (of `step`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = [e for e in events(runner) if e[0] == kind and step in (None, e[1])]
        except sqlite3.Error:
            found = []
        if found:
            return
        time.sleep(0.01)
    raise AssertionError(f"no event {kind} of {step} in the journal")


def slow_until_flagged(ledger: Ledger, step: str, flag: Path) -> str:
    """A ledger command that works 30 s until `flag` exists, then 20 ms."""
    head = shlex.join(ledger.argv(step, 0)[:-2])
    quoted = shlex.quote(str(flag))
    return f'if [ -e {quoted} ]; then ms=20; else ms=30000; fi; {head} "$ms" 0'


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out + err


def chain(ledger: Ledger, undo: Ledger, **b: Any) -> dict[str, Any]:
    """a -> b -> fail, a and b compensated into `undo`; `b` overrides b's keys."""
    return wf(
        {
            "a": {"run": ledger.command("a", 5), "compensate": undo.command("a", 5)},
            "b": {
                "needs": ["a"],
                "run": ledger.command("b", 5),
                "compensate": undo.command("b", 5),
                **b,
            },
            "fail": {"needs": ["b"], **FAILS},
        }
    )


# Order -------------------------------------------------------------------------


def test_a_step_running_at_the_turn_that_succeeds_is_undone_before_its_needs(
    runner, workflow, ledger, undo
):
    """A slow sibling of the failing step finishes, is compensated, then its need."""
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "slow": {
                    "needs": ["a"],
                    "run": ledger.command("slow", 400),
                    "compensate": undo.command("slow", 50),
                },
                "fail": {"needs": ["a"], **FAILS},
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    steps = runner.steps("r1")
    assert {name: step["status"] for name, step in steps.items()} == {
        "a": "compensated",
        "slow": "compensated",
        "fail": "failed",
    }
    assert undone(runner) == ["slow", "a"]
    assert [e.step for e in undo.starts()] == ["slow", "a"]
    assert undo.of("a")[0].at >= undo.of("slow", "end")[0].at
    assert undo.of("slow")[0].at >= ledger.of("slow", "end")[0].at


def test_a_step_running_at_the_turn_that_fails_is_not_retried_or_undone(
    runner, workflow, ledger, undo
):
    """A sibling failing after the turn spends no retry and gets no compensation."""
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "flaky": {
                    "needs": ["a"],
                    "run": ledger.command("flaky", 300, exit_code=1),
                    "retry": QUICK,
                    "compensate": undo.command("flaky", 5),
                },
                "fail": {"needs": ["a"], **FAILS},
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    steps = runner.steps("r1")
    assert steps["flaky"]["status"] == "failed"
    assert steps["flaky"]["attempts"] == 1
    assert steps["a"]["status"] == "compensated"
    assert ledger.count("flaky") == 1
    assert [e.step for e in undo.starts()] == ["a"]


def test_independent_compensations_run_in_parallel_within_the_concurrency(
    runner, workflow, ledger, undo
):
    """Three independent compensations with --concurrency 2: two at a time."""
    steps: dict[str, Any] = {
        name: {"run": ledger.command(name, 5), "compensate": undo.command(name, 300)}
        for name in ("x", "y", "z")
    }
    steps["fail"] = {"needs": ["x", "y", "z"], **FAILS}
    path = workflow(wf(steps))

    done = runner("run", str(path), "--run-id", "r1", "--concurrency", "2")

    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(undone(runner)) == ["x", "y", "z"]
    assert undo.max_parallel() == 2


# Retries, timeouts, failure ------------------------------------------------------


def test_a_compensation_that_needs_retries_is_retried_with_its_own_policy(
    runner, workflow, ledger, tmp_path
):
    """Its own policy, not the step's, retries a compensation until attempt 3."""
    undoing = 'echo "$RUNNER_ATTEMPT" >> tries.txt; test "$RUNNER_ATTEMPT" -ge 3'
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "retry": {"max_attempts": 1},
                    "compensate": {"run": undoing, "retry": QUICK},
                },
                "fail": {"needs": ["a"], **FAILS},
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "compensated"
    assert (tmp_path / "tries.txt").read_text() == "1\n2\n3\n"
    step = runner.steps("r1")["a"]
    assert step["status"] == "compensated"
    assert step["message"] == "compensate succeeded on attempt 3"
    assert [(h["kind"], h["status"]) for h in step["history"]] == [
        ("run", "succeeded"),
        ("compensate", "failed"),
        ("compensate", "failed"),
        ("compensate", "succeeded"),
    ]
    scheduled = [d for k, s, d in events(runner) if k == "retry.scheduled"]
    assert [d["of"] for d in scheduled] == ["compensate", "compensate"]
    assert ledger.count("a") == 1


@pytest.mark.parametrize(
    ("undoing", "attempts", "error_class"),
    [("exit 1", 2, "intermittent"), ("exit 127", 1, "permanent")],
    ids=["retried-then-exhausted", "permanent-not-retried"],
)
def test_a_compensation_that_fails_for_good_ends_the_run_compensation_failed(
    runner, workflow, ledger, undo, undoing, attempts, error_class
):
    """b's undo fails for good: a waits, independent z is undone, b awaits redrive."""
    retry = {"max_attempts": 2, "backoff": {"initial": "10ms"}}
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "b": {
                    "needs": ["a"],
                    "run": ledger.command("b", 5),
                    "compensate": {"run": undoing, "retry": retry},
                },
                "z": {
                    "run": ledger.command("z", 5),
                    "compensate": undo.command("z", 5),
                },
                "fail": {"needs": ["b", "z"], **FAILS},
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    document = runner.status("r1")
    assert document["status"] == "compensation_failed"
    assert document["reason"] == FAILS_REASON
    steps = {step["name"]: step for step in document["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == {
        "a": "succeeded",
        "b": "compensation_failed",
        "z": "compensated",
        "fail": "failed",
    }
    assert steps["b"]["error_class"] == error_class
    compensations = [h for h in steps["b"]["history"] if h["kind"] == "compensate"]
    assert [h["status"] for h in compensations] == ["failed"] * attempts
    assert steps["a"]["message"] == "not compensated: waits for b"
    assert [e.step for e in undo.starts()] == ["z"]
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert stats["pending_redrive"] == 1
    text = runner("status", "r1").stdout
    assert "compensation_failed" in text
    assert "not compensated: waits for b" in text


def test_a_compensation_is_ended_at_its_own_timeout(runner, workflow, ledger):
    """A compensate map's `timeout` ends a hung compensation; recorded timed out."""
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "timeout": "30s",
                    "compensate": {
                        "run": "sleep 30",
                        "timeout": "200ms",
                        "retry": {"max_attempts": 1},
                    },
                },
                "fail": {"needs": ["a"], **FAILS},
            }
        )
    )

    began = time.monotonic()
    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - began < 10
    step = runner.steps("r1")["a"]
    assert step["status"] == "compensation_failed"
    assert step["error_class"] == "transient"
    assert [(h["kind"], h["status"]) for h in step["history"]] == [
        ("run", "succeeded"),
        ("compensate", "timed_out"),
    ]


@pytest.mark.parametrize(
    ("on_exhausted", "run_status", "a_status"),
    [("compensate", "compensated", "compensated"), ("redrive", "failed", "succeeded")],
)
def test_retries_running_out_turn_the_run_back_only_with_on_exhausted_compensate(
    runner, workflow, ledger, undo, on_exhausted, run_status, a_status
):
    """Exhausted retries compensate with `on_exhausted: compensate`, else wait."""
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "flaky": {
                    "needs": ["a"],
                    "run": ledger.command("flaky", 5, exit_code=1),
                    "retry": {**QUICK, "max_attempts": 2},
                    "on_exhausted": on_exhausted,
                },
                "after": {"needs": ["flaky"], "run": ledger.command("after", 5)},
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    document = runner.status("r1")
    assert document["status"] == run_status
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["flaky"]["status"] == "failed"
    assert steps["flaky"]["attempts"] == 2
    assert steps["a"]["status"] == a_status
    assert ledger.count("flaky") == 2
    assert ledger.count("after") == 0
    exhausted = [s for k, s, _ in events(runner) if k == "retry.exhausted"]
    assert exhausted == ["flaky"]
    if on_exhausted == "compensate":
        assert document["reason"] == (
            "step flaky failed (intermittent: default: no rule matched)"
        )
        assert steps["after"]["status"] == "cancelled"
        assert [e.step for e in undo.starts()] == ["a"]
    else:
        assert document["reason"] is None
        assert steps["after"]["status"] == "pending"
        assert undo.starts() == []


# What a compensation gets ---------------------------------------------------------

SHOW = (
    "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v "
    "in os.environ.items() if k.startswith(('RUNNER_', 'WF_', 'STEP_'))}}, "
    "open('seen.json', 'w'))"
)
TOKEN = "$(touch PWNED); `touch PWNED` 'q' \"d\""
"""An output full of shell syntax: it must reach the compensation as bytes."""


@pytest.mark.parametrize("form", ["string", "list", "map"])
def test_a_compensation_gets_its_steps_environment_outputs_and_key(
    runner, workflow, tmp_path, form
):
    """Each form sees the step's env, outputs, idempotency key, COMPENSATING=1."""
    expression = "${{ steps.make.outputs.token }}"
    shell = f'{shlex.quote(PY)} -c {shlex.quote(SHOW)} "{expression}"'
    compensate: Any = {
        "string": shell,
        "list": [PY, "-c", SHOW, expression],
        "map": {"run": shell, "timeout": "10s", "retry": {"max_attempts": 1}},
    }[form]
    forward = (
        f"printf 'token=%s\\n' {shlex.quote(TOKEN)} >> \"$RUNNER_OUTPUT\"; "
        'printf "%s %s" "$RUNNER_IDEMPOTENCY_KEY" '
        '"${RUNNER_COMPENSATING-unset}" > forward.txt'
    )
    path = workflow(
        {
            **wf(
                {
                    "make": {
                        "run": forward,
                        "env": {"STEP_VAR": "from-step"},
                        "compensate": compensate,
                    },
                    "fail": {"needs": ["make"], **FAILS},
                }
            ),
            "env": {"WF_VAR": "from-workflow"},
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.steps("r1")["make"]["status"] == "compensated"
    assert (tmp_path / "forward.txt").read_text() == "r1:make unset"
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == [TOKEN]
    env = seen["env"]
    assert env["RUNNER_IDEMPOTENCY_KEY"] == "r1:make"
    assert env["RUNNER_COMPENSATING"] == "1"
    assert env["RUNNER_STEP"] == "make"
    assert env["RUNNER_RUN_ID"] == "r1"
    assert env["RUNNER_ATTEMPT"] == "1"
    assert env["WF_VAR"] == "from-workflow"
    assert env["STEP_VAR"] == "from-step"
    assert list(tmp_path.rglob("PWNED")) == []


# What is not compensated -----------------------------------------------------------


def test_steps_without_compensate_are_passed_over_in_order_and_recorded(
    runner, workflow, ledger, undo
):
    """plain is passed over between b and a; skipped, cancelled steps are left."""
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "plain": {"needs": ["a"], "run": ledger.command("plain", 5)},
                "b": {
                    "needs": ["plain"],
                    "run": ledger.command("b", 5),
                    "compensate": undo.command("b", 5),
                },
                "off": {
                    "if": "${{ 1 == 2 }}",
                    "run": ledger.command("off", 5),
                    "compensate": undo.command("off", 5),
                },
                "done": {
                    "run": ledger.command("done", 5),
                    "check": "true",
                    "compensate": undo.command("done", 5),
                },
                "fail": {"needs": ["b", "off", "done"], **FAILS},
                "never": {
                    "needs": ["fail"],
                    "run": ledger.command("never", 5),
                    "compensate": undo.command("never", 5),
                },
            }
        )
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    backward = [
        (kind, step)
        for kind, step, _ in events(runner)
        if kind in ("step.compensated", "compensation.passed_over")
    ]
    assert backward == [
        ("step.compensated", "b"),
        ("compensation.passed_over", "plain"),
        ("step.compensated", "a"),
    ]
    steps = runner.steps("r1")
    assert steps["plain"]["status"] == "succeeded"
    assert steps["plain"]["message"] == "passed over: no compensate"
    assert steps["off"]["status"] == "skipped"
    assert steps["done"]["status"] == "skipped"
    assert steps["never"]["status"] == "cancelled"
    assert [e.step for e in undo.starts()] == ["b", "a"]
    text = runner("status", "r1").stdout
    assert "passed over: no compensate" in text
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert stats["succeeded_first_attempt"] == 3
    assert stats["permanent_failures"] == 1
    assert stats["pending_redrive"] == 0


def test_status_says_why_the_run_turned_back_in_text_and_json(
    runner, workflow, ledger, undo
):
    """`status` text and JSON name the turn's step, class and rule, and each undo."""
    path = workflow(chain(ledger, undo))

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    document = runner.status("r1")
    assert document["status"] == "compensated"
    assert document["reason"] == FAILS_REASON
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["a"]["status"] == steps["b"]["status"] == "compensated"
    text = runner("status", "r1").stdout
    assert text.splitlines()[0] == "run r1 (saga): compensated"
    assert f"  reason: {FAILS_REASON}" in text.splitlines()
    for name in ("a", "b"):
        line = next(x for x in text.splitlines() if x.split()[:1] == [name])
        assert line.split()[1] == "compensated"


# Signals and crashes -----------------------------------------------------------------


def test_sigterm_during_compensation_exits_143_and_resume_finishes_it(
    runner, workflow, ledger, undo, tmp_path
):
    """SIGTERM mid-undo exits 143; resume redoes b's undo, then a's, nothing more."""
    flag = tmp_path / "fast"
    path = workflow(chain(ledger, undo, compensate=slow_until_flagged(undo, "b", flag)))
    process = runner.start("run", str(path), "--run-id", "r1")
    undo.wait_for("b")

    process.send_signal(signal.SIGTERM)
    code, output = finish(process)

    assert code == 143, output
    document = runner.status("r1")
    assert document["status"] == "interrupted"
    steps = {step["name"]: step["status"] for step in document["steps"]}
    assert steps == {"a": "succeeded", "b": "interrupted", "fail": "failed"}

    flag.touch()
    done = runner("resume", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "compensated"
    assert [(e.step, e.attempt) for e in undo.starts()] == [
        ("b", 1),
        ("b", 1),
        ("a", 1),
    ]
    assert len(undo.of("b", "end")) == 1
    assert undo.of("a")[0].at >= undo.of("b", "end")[0].at
    assert [e.step for e in ledger.starts()] == ["a", "b"]
    assert undone(runner) == ["b", "a"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_stop_during_a_compensation_retry_wait_resumes_the_wait(
    runner, workflow, ledger, undo, tmp_path, signum
):
    """Stopped while an undo waits to retry: resume runs its next attempt, then a."""
    undoing = (
        f'echo "$RUNNER_ATTEMPT" >> tries.txt; {undo.command("b", 5)}; '
        'test "$RUNNER_ATTEMPT" -ge 2'
    )
    retry = {"max_attempts": 3, "backoff": {"initial": "1s", "jitter": "none"}}
    path = workflow(chain(ledger, undo, compensate={"run": undoing, "retry": retry}))
    process = runner.start("run", str(path), "--run-id", "r1")
    wait_event(runner, "retry.scheduled", "b")

    process.send_signal(signum)
    code, output = finish(process)

    assert code == (143 if signum == signal.SIGTERM else -signal.SIGKILL), output
    done = runner("resume", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "compensated"
    assert (tmp_path / "tries.txt").read_text() == "1\n2\n"
    assert [e.step for e in undo.starts()] == ["b", "b", "a"]
    assert undone(runner) == ["b", "a"]
    assert [e.step for e in ledger.starts()] == ["a", "b"]


def test_a_forward_step_cut_short_after_the_turn_finishes_on_resume_then_is_undone(
    runner, workflow, ledger, undo, tmp_path
):
    """A step cut short after the turn is rerun on resume, then undone before a."""
    flag = tmp_path / "fast"
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "slow": {
                    "needs": ["a"],
                    "run": slow_until_flagged(ledger, "slow", flag),
                    "compensate": undo.command("slow", 5),
                },
                "fail": {"needs": ["a"], **FAILS},
            }
        )
    )
    process = runner.start("run", str(path), "--run-id", "r1")
    wait_event(runner, "run.compensating")
    # The command must be running: a signal in the instant before its process
    # exists is a separate race of engine/process.py.
    ledger.wait_for("slow")

    process.send_signal(signal.SIGTERM)
    code, output = finish(process)

    assert code == 143, output
    assert runner.steps("r1")["slow"]["status"] == "interrupted"
    assert undo.starts() == []

    flag.touch()
    done = runner("resume", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "compensated"
    assert [e.step for e in ledger.starts()] == ["a", "slow", "slow"]
    assert [e.step for e in undo.starts()] == ["slow", "a"]
    assert undone(runner) == ["slow", "a"]


def test_a_crash_loop_while_compensating_waits_for_redrive_of_the_compensation(
    runner, workflow, ledger, undo
):
    """A crash loop while undoing ends compensation_failed; redrive finishes undo."""
    path = workflow(chain(ledger, undo))
    crash = {"RUNNER_CRASHPOINT": "compensation.after_start_commit"}
    first = runner("run", str(path), "--run-id", "r1", env=crash)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    env = {"RUNNER_CRASHPOINT": "resume.after_reconcile", "RUNNER_MAX_RECOVERIES": "1"}

    codes = [runner("resume", "r1", env=env).returncode for _ in range(2)]

    assert codes == [-signal.SIGKILL, 1]
    document = runner.status("r1")
    assert document["status"] == "compensation_failed"
    assert document["reason"].startswith(FAILS_REASON)
    assert "max recovery attempts exceeded" in document["reason"]
    assert runner.steps("r1")["b"]["status"] == "compensation_failed"

    done = runner("redrive", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "compensated"
    assert [e.step for e in ledger.starts()] == ["a", "b"]
    assert [e.step for e in undo.starts()] == ["b", "a"]
    assert undone(runner) == ["b", "a"]


# Redrive ----------------------------------------------------------------------------


def test_redrive_of_compensation_failed_runs_the_failed_compensation_and_what_it_held(
    runner, workflow, ledger, undo, tmp_path
):
    """Redrive reruns b's undo with a fresh budget, then a's; nothing else reruns."""
    fixed = tmp_path / "fixed"
    undoing = f"{undo.command('b', 5)}; test -e {shlex.quote(str(fixed))}"
    path = workflow(
        wf(
            {
                "a": {
                    "run": ledger.command("a", 5),
                    "compensate": undo.command("a", 5),
                },
                "b": {
                    "needs": ["a"],
                    "run": ledger.command("b", 5),
                    "compensate": {
                        "run": undoing,
                        "retry": {**QUICK, "max_attempts": 2},
                    },
                },
                "plain": {"needs": ["a"], "run": ledger.command("plain", 5)},
                "z": {
                    "run": ledger.command("z", 5),
                    "compensate": undo.command("z", 5),
                },
                "fail": {"needs": ["b", "plain", "z"], **FAILS},
            }
        )
    )
    first = runner("run", str(path), "--run-id", "r1")
    assert first.returncode == 1, first.stdout + first.stderr
    assert runner.status("r1")["status"] == "compensation_failed"

    fixed.touch()
    done = runner("redrive", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    document = runner.status("r1")
    assert document["status"] == "compensated"
    assert document["reason"] == FAILS_REASON
    steps = {step["name"]: step for step in document["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == {
        "a": "compensated",
        "b": "compensated",
        "plain": "succeeded",
        "z": "compensated",
        "fail": "failed",
    }
    assert steps["plain"]["message"] == "passed over: no compensate"
    assert sorted(e.step for e in ledger.starts()) == ["a", "b", "plain", "z"]
    tries = [(e.step, e.attempt) for e in undo.starts() if e.step != "z"]
    assert tries == [("b", 1), ("b", 2), ("b", 1), ("a", 1)]
    assert undo.count("z") == 1
    assert undone(runner)[-2:] == ["b", "a"]
    kinds = [kind for kind, _, _ in events(runner)]
    assert kinds.count("compensation.passed_over") == 1
    redriven = [d for k, _, d in events(runner) if k == "run.redriven"]
    assert redriven == [{"backward": True}]
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert stats["pending_redrive"] == 0
