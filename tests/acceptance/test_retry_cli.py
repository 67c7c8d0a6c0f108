"""`runner retry`, classification as recorded, and retry timing (SPEC 2, 3; I1, I3).

Commands that fail on purpose count their calls in a file, so a test can make
a command fail a given number of times and then succeed, across attempts,
resumes and redrives.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PY = sys.executable


def flaky(counter: Path, failures: int, message: str) -> str:
    """A shell command that prints `message` and fails its first `failures` runs."""
    return (
        f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > '{counter}'; "
        f"if [ $n -le {failures} ]; then echo '{message}'; exit 1; fi"
    )


def calls(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


def query(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows read straight from the store's SQLite database (never creating it)."""
    uri = f"file:{state / 'state.db'}?mode=rw"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return connection.execute(sql, args).fetchall()


def attempt_times(state: Path, run_id: str) -> list[tuple[int, float, float | None]]:
    """(number, started_at, ended_at) of each run attempt, in order."""
    rows = query(
        state,
        "SELECT number, started_at, ended_at FROM attempts "
        "WHERE run_id = ? AND kind = 'run' ORDER BY seq",
        run_id,
    )
    return [(row[0], row[1], row[2]) for row in rows]


def wait_until(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def waiting_after(state: Path, run_id: str, attempts: int) -> bool:
    """Whether the run's step waits for a retry after `attempts` attempts."""
    try:
        steps = query(state, "SELECT status FROM steps WHERE run_id = ?", run_id)
        made = query(
            state,
            "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND ended_at IS NOT NULL",
            run_id,
        )
    except sqlite3.OperationalError:  # no database or tables yet
        return False
    return steps == [("waiting",)] and made[0][0] == attempts


def one_step(step: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "name": "one", **top, "steps": {"only": step}}


# runner retry ------------------------------------------------------------------


def test_a_succeeding_command_passes_its_output_through(runner):
    """stdout and stderr come out as the command wrote them; exit 0."""
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"

    done = runner("retry", "ok", "--", PY, "-c", code)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "to stdout\n"
    assert "to stderr\n" in done.stderr
    assert runner.steps("ok")["task"]["attempts"] == 1


def test_a_flaky_command_succeeds_on_its_third_attempt(runner, tmp_path):
    """Two 'connection refused' then success: exit 0 after 3 attempts."""
    counter = tmp_path / "count"
    command = flaky(counter, 2, "connect: connection refused")

    done = runner("retry", "flaky", "--", "sh", "-c", command)

    assert done.returncode == 0, done.stderr
    task = runner.steps("flaky")["task"]
    assert (task["status"], task["attempts"]) == ("succeeded", 3)
    assert task["error_class"] == "transient"
    assert calls(counter) == 3


def test_a_permanent_failure_exits_1_at_once(runner, tmp_path):
    """'403 Forbidden' is not retried: one attempt, exit 1."""
    counter = tmp_path / "count"
    command = flaky(counter, 99, "HTTP/1.1 403 Forbidden")

    done = runner("retry", "denied", "--max-attempts", "5", "--", "sh", "-c", command)

    assert done.returncode == 1
    assert "403 Forbidden" in done.stdout
    task = runner.steps("denied")["task"]
    assert (task["attempts"], task["error_class"]) == (1, "permanent")
    assert calls(counter) == 1


def test_an_exhausted_task_waits_for_redrive_with_a_fresh_budget(runner, tmp_path):
    """Out of attempts: exit 1, pending redrive; `redrive` gets 2 more attempts."""
    counter = tmp_path / "count"
    command = flaky(counter, 3, "503 Service Unavailable")
    options = ("--max-attempts", "2", "--initial", "20ms", "--jitter", "none")

    done = runner("retry", "job", *options, "--", "sh", "-c", command)

    assert done.returncode == 1
    assert runner.steps("job")["task"]["status"] == "failed"
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert (stats["pending_redrive"], stats["retries_exhausted"]) == (1, 1)

    redriven = runner("redrive", "job")

    assert redriven.returncode == 0, redriven.stderr
    task = runner.steps("job")["task"]
    assert (task["status"], task["attempts"]) == ("succeeded", 2)
    assert calls(counter) == 4
    assert json.loads(runner("stats", "-o", "json").stdout)["pending_redrive"] == 0


def test_a_taken_task_id_gets_a_number(runner):
    """The same TASK_ID three times makes runs job, job-2 and job-3."""
    for _ in range(3):
        assert runner("retry", "job", "--", "true").returncode == 0

    run_ids = [run["run_id"] for run in runner.status()["runs"]]

    assert run_ids == ["job", "job-2", "job-3"]


def test_an_open_circuit_with_no_wait_fails_without_an_attempt(runner, tmp_path):
    """--no-wait on an open circuit: exit 1 at once, the command never runs."""
    assert runner("circuits", "open", "ext").returncode == 0
    marker = tmp_path / "ran"

    done = runner(
        "retry", "guarded", "--circuit", "ext", "--no-wait", "--", "touch", str(marker)
    )

    assert done.returncode == 1
    assert not marker.exists()
    task = runner.steps("guarded")["task"]
    assert (task["status"], task["attempts"]) == ("failed", 0)
    assert "circuit ext is OPEN" in task["message"]


def test_an_open_circuit_parks_the_task_until_it_half_opens(runner, workflow, tmp_path):
    """Without --no-wait the task waits for the circuit's stored policy to probe."""
    declares = one_step(
        {"run": "true", "circuit": "gate"},
        circuits={"gate": {"failure_threshold": 1, "half_open_after": "1500ms"}},
    )
    assert runner("run", str(workflow(declares)), "--run-id", "declare").returncode == 0
    assert runner("circuits", "record-failure", "gate").returncode == 0
    opened = time.time()
    marker = tmp_path / "ran"

    done = runner("retry", "parked", "--circuit", "gate", "--", "touch", str(marker))

    assert done.returncode == 0, done.stderr
    assert marker.stat().st_mtime >= opened + 1.4
    assert runner.steps("parked")["task"]["attempts"] == 1
    circuit = json.loads(runner("circuits", "show", "gate", "-o", "json").stdout)
    assert circuit["policy"]["half_open_after"] == 1.5


def test_the_command_is_argv_and_never_meets_a_shell(runner, tmp_path):
    """Shell metacharacters and template text reach the command as they are."""
    words = ["$(touch PWNED)", "; touch PWNED", "`touch PWNED`", "${{ params.x }}", "*"]

    done = runner("retry", "literal", "--", "echo", *words)

    assert done.returncode == 0, done.stderr
    assert done.stdout == " ".join(words) + "\n"
    assert not list(tmp_path.rglob("PWNED"))


# Classification as recorded -------------------------------------------------------


CLASSIFIED = {
    "exit-75": (one_step({"run": "exit 75"}), "transient", "exit code 75"),
    "too-many-requests": (
        one_step({"run": "echo '429 Too Many Requests'; exit 1"}),
        "intermittent",
        "Too Many Requests",
    ),
    "missing-argv-command": (
        one_step({"run": ["no-such-command-for-runner-tests"]}),
        "permanent",
        "could not be started",
    ),
    "missing-shell-command": (
        one_step({"run": "no-such-command-for-runner-tests"}),
        "permanent",
        "exit code 127",
    ),
    "user-rule-beats-builtins": (
        one_step(
            {"run": "echo 'quota exceeded: 503 Service Unavailable'; exit 1"},
            classify=[{"pattern": "quota exceeded", "class": "permanent"}],
        ),
        "permanent",
        "classify[0]",
    ),
    "step-rule-beats-workflow-rule": (
        one_step(
            {
                "run": "echo 'quota exceeded'; exit 1",
                "classify": [{"exit_codes": [1], "class": "transient"}],
            },
            classify=[{"pattern": "quota exceeded", "class": "permanent"}],
        ),
        "transient",
        "exit code 1",
    ),
}


@pytest.mark.parametrize(
    ("document", "error_class", "rule"), CLASSIFIED.values(), ids=CLASSIFIED.keys()
)
def test_status_shows_the_class_and_rule_of_a_failure(
    runner, workflow, document, error_class, rule
):
    """Each failure class is recorded with the rule that chose it."""
    document["steps"]["only"]["retry"] = {"max_attempts": 1}

    done = runner("run", str(workflow(document)), "--run-id", "c")

    assert done.returncode == 1
    step = runner.steps("c")["only"]
    assert (step["status"], step["error_class"]) == ("failed", error_class)
    assert rule in step["rule"]


def test_a_timeout_is_transient_and_its_attempt_recorded_timed_out(runner, workflow):
    """A timed-out attempt is transient and shows as timed out in the logs."""
    step = {
        "run": "sleep 10",
        "timeout": "200ms",
        "kill_grace": "100ms",
        "retry": {"max_attempts": 1},
    }

    done = runner("run", str(workflow(one_step(step))), "--run-id", "t")

    assert done.returncode == 1
    recorded = runner.steps("t")["only"]
    assert (recorded["error_class"], recorded["rule"]) == (
        "transient",
        "builtin: timed out",
    )
    logs = runner("logs", "t", "only")
    assert "== only run attempt 1 (timed_out, transient: builtin: timed out) ==" in (
        logs.stdout
    )
    statuses = query(runner.state, "SELECT status FROM attempts WHERE run_id = 't'")
    assert statuses == [("timed_out",)]


# Retry timing on the engine ---------------------------------------------------------


def test_backoff_delays_follow_the_policy(runner, workflow):
    """initial 300ms x2, no jitter: attempts start about 0.3 s and 0.6 s apart."""
    step = {
        "run": "echo '503 Service Unavailable'; exit 1",
        "retry": {
            "max_attempts": 3,
            "backoff": {"initial": "300ms", "multiplier": 2, "jitter": "none"},
        },
    }

    done = runner("run", str(workflow(one_step(step))), "--run-id", "b")

    assert done.returncode == 1
    times = attempt_times(runner.state, "b")
    assert [number for number, _, _ in times] == [1, 2, 3]
    first_wait = times[1][1] - times[0][2]
    second_wait = times[2][1] - times[1][2]
    assert 0.29 <= first_wait <= 1.3
    assert 0.59 <= second_wait <= 1.6
    delays = query(
        runner.state,
        "SELECT detail FROM events WHERE kind = 'retry.scheduled' ORDER BY id",
    )
    assert [json.loads(row[0])["delay"] for row in delays] == [0.3, 0.6]


def test_a_resumed_run_waits_only_what_is_left_of_the_backoff(
    runner, workflow, tmp_path
):
    """SIGKILL during a 3 s backoff, resume 1 s later: the retry starts when due."""
    counter = tmp_path / "count"
    step = {
        "run": flaky(counter, 2, "503 Service Unavailable"),
        "retry": {
            "max_attempts": 3,
            "backoff": {"initial": "200ms", "multiplier": 15, "jitter": "none"},
        },
    }
    path = workflow(one_step(step))
    started = runner.start("run", str(path), "--run-id", "w")
    wait_until(lambda: waiting_after(runner.state, "w", 2))
    started.send_signal(signal.SIGKILL)
    started.wait()
    [(due_at,)] = query(runner.state, "SELECT due_at FROM steps WHERE run_id = 'w'")
    time.sleep(1)

    resumed = runner("resume", "w")

    assert resumed.returncode == 0, resumed.stderr
    last_start = attempt_times(runner.state, "w")[-1][1]
    assert due_at - 0.05 <= last_start <= due_at + 0.8
    assert calls(counter) == 3


def test_a_resumed_run_continues_the_attempt_count(runner, workflow, tmp_path):
    """Killed while waiting before attempt 3: resume runs attempt 3, not 1."""
    numbers = tmp_path / "attempts"
    step = {
        "run": f"echo $RUNNER_ATTEMPT >> '{numbers}'; "
        "echo '503 Service Unavailable'; exit 1",
        "retry": {
            "max_attempts": 3,
            "backoff": {"initial": "100ms", "multiplier": 15, "jitter": "none"},
        },
    }
    started = runner.start("run", str(workflow(one_step(step))), "--run-id", "n")
    wait_until(lambda: waiting_after(runner.state, "n", 2))
    waiting = runner.steps("n")["only"]
    started.send_signal(signal.SIGKILL)
    started.wait()

    resumed = runner("resume", "n")

    assert waiting["attempts"] == 2
    assert resumed.returncode == 1
    assert numbers.read_text().split() == ["1", "2", "3"]
    assert [n for n, _, _ in attempt_times(runner.state, "n")] == [1, 2, 3]
    assert runner.steps("n")["only"]["attempts"] == 3
