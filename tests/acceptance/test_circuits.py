"""Circuit breakers shared by processes on one store (SPEC 4; FAULTS C4, C5, C6).

The multi-process tests start real worker processes (`circuit_worker.py`)
behind a file barrier, so their calls hit the SQLite store at the same
moment. The engine tests drive real workflows through the command line.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runner.engine import breakers
from runner.spec.model import CircuitPolicy
from runner.store.sqlite import Store

WORKER = Path(__file__).with_name("circuit_worker.py").resolve()
CIRCUIT_KEYS = {
    "name",
    "state",
    "failure_count",
    "success_count",
    "opened_at",
    "policy",
}
POLICY_KEYS = {
    "failure_threshold",
    "half_open_after",
    "success_threshold",
    "half_open_max_calls",
}

ROUNDS = [
    "once",
    *(pytest.param(f"again-{n}", marks=pytest.mark.stress) for n in range(1, 10)),
]
"""A race runs once by default and nine more times under --stress."""


class Crowd:
    """Worker processes that wait at one barrier, released together."""

    def __init__(self, state: Path, barrier: Path) -> None:
        self.state = state
        self.barrier = barrier
        barrier.mkdir()
        self.workers: list[subprocess.Popen[str]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        worker = subprocess.Popen(
            [sys.executable, WORKER, self.state, self.barrier, name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.workers.append(worker)
        return worker

    def release(self, at: float | None = None, timeout: float = 60) -> None:
        """Once every worker is ready (and the clock is past `at`), let them go."""
        deadline = time.monotonic() + timeout
        while len(list(self.barrier.glob("ready-*"))) < len(self.workers):
            for worker in self.workers:
                assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "workers never reached the barrier"
            time.sleep(0.01)
        if at is not None:
            time.sleep(max(0.0, at - time.time()))
        (self.barrier / "go").touch()

    def results(self, timeout: float = 120) -> list[dict[str, Any]]:
        found = []
        for worker in self.workers:
            out, err = worker.communicate(timeout=timeout)
            assert worker.returncode == 0, err
            found.append(json.loads(out))
        return found


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """The test's state store, opened in this process."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return Store(str(state))


@pytest.fixture
def crowd(tmp_path: Path, store: Store) -> Any:
    """Make crowds of workers on the test's store, each with its own barrier."""
    made: list[Crowd] = []

    def make() -> Crowd:
        made.append(Crowd(Path(store.state_dir), tmp_path / f"barrier-{len(made)}"))
        return made[-1]

    yield make
    for group in made:
        for worker in group.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def declare(store: Store, name: str, **policy: Any) -> None:
    with store.write() as txn:
        breakers.declare(txn, {name: CircuitPolicy(**policy)})


def events(store: Store, kind: str) -> int:
    return store.event_counts().get(kind, 0)


def show(runner: Any, name: str) -> dict[str, Any]:
    done = runner("circuits", "show", name, "-o", "json")
    assert done.returncode == 0, done.stderr
    circuit: dict[str, Any] = json.loads(done.stdout)
    return circuit


def iso(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def flaky(counter: Path, failures: int, message: str) -> str:
    """A shell command that prints `message` and fails its first `failures` runs."""
    return (
        f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > '{counter}'; "
        f"if [ $n -le {failures} ]; then echo '{message}'; exit 1; fi"
    )


def query(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows read straight from the store's SQLite database (never creating it)."""
    uri = f"file:{state / 'state.db'}?mode=rw"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        return connection.execute(sql, args).fetchall()


def wait_for_status(
    state: Path, run_id: str, step: str, status: str, timeout: float = 20
) -> None:
    """Poll the store (cheaper than `runner status`) until `step` has `status`."""
    deadline = time.monotonic() + timeout
    sql = "SELECT status FROM steps WHERE run_id = ? AND name = ?"
    while time.monotonic() < deadline:
        try:
            if query(state, sql, run_id, step) == [(status,)]:
                return
        except sqlite3.OperationalError:  # no database or tables yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"step {step} of {run_id} never became {status}")


def step_events(state: Path, run_id: str, step: str) -> list[str]:
    rows = query(
        state,
        "SELECT kind FROM events WHERE run_id = ? AND step = ? ORDER BY id",
        run_id,
        step,
    )
    return [row[0] for row in rows]


# Many processes, one circuit ---------------------------------------------------


@pytest.mark.parametrize(
    "each", [200, pytest.param(500, marks=pytest.mark.stress, id="500-stress")]
)
def test_outcomes_from_eight_processes_are_all_counted(store, crowd, each):
    """8 processes x N failures: the count is exact, no write is ever refused."""
    declare(store, "api", failure_threshold=10**9)
    group = crowd()
    for _ in range(8):
        group.start("api", "record", "failure", str(each))

    group.release()
    results = group.results()

    assert [r["errors"] for r in results] == [[]] * 8
    assert sum(r["recorded"] for r in results) == 8 * each
    assert breakers.describe(store, "api")["failure_count"] == 8 * each


def test_outcomes_from_concurrent_scripts_are_all_counted(runner, store):
    """4 shell loops x 5 `runner circuits record-failure`: 20 counted."""
    declare(store, "api", failure_threshold=10**9)
    loop = " ".join(runner.argv(("circuits", "record-failure", "api"), None))
    script = f"for i in 1 2 3 4 5; do {loop} || exit 1; done"

    loops = [subprocess.Popen(["sh", "-c", script]) for _ in range(4)]

    assert [process.wait(timeout=120) for process in loops] == [0] * 4
    assert show(runner, "api")["failure_count"] == 20


def test_a_failure_storm_opens_the_circuit_exactly_once(runner, store, crowd):
    """8 processes x 50 failures at threshold 3: one opening, until a reset."""
    declare(store, "api", failure_threshold=3, half_open_after=600)
    group = crowd()
    for _ in range(8):
        group.start("api", "record", "failure", "50")

    group.release()
    results = group.results()

    assert [r["errors"] for r in results] == [[]] * 8
    assert sum(r["opened"] for r in results) == 1
    assert events(store, "circuit.opened") == 1
    assert show(runner, "api")["state"] == "OPEN"

    assert runner("circuits", "reset", "api").returncode == 0
    for _ in range(3):
        breakers.record_outcome(store, "api", "failure")
    assert events(store, "circuit.opened") == 2


@pytest.mark.parametrize("round_", ROUNDS)
def test_eight_processes_racing_for_one_probe_get_one(store, crowd, round_):
    """Past half_open_after, 8 simultaneous callers: exactly one probe admitted."""
    declare(store, "api", failure_threshold=1, half_open_after=0.3)
    breakers.record_outcome(store, "api", "failure")
    opened_at = breakers.describe(store, "api")["opened_at"]
    group = crowd()
    for number in range(8):
        group.start("api", "admit", f"caller-{number}", "30")

    group.release(at=opened_at + 0.35)
    results = group.results()

    assert [r["errors"] for r in results] == [[]] * 8
    admitted = [r for r in results if r["admitted"]]
    assert len(admitted) == 1
    assert admitted[0]["probe"] is True
    assert events(store, "circuit.half_opened") == 1
    assert events(store, "circuit.refused") == 7


@pytest.mark.parametrize("round_", ROUNDS)
def test_a_killed_probe_frees_its_place_when_its_lease_ends(store, crowd, round_):
    """SIGKILL the probe holder: refused until its lease ends, then one new probe."""
    declare(store, "api", failure_threshold=1, half_open_after=0.1)
    breakers.record_outcome(store, "api", "failure")
    time.sleep(0.15)
    holder_group = crowd()
    holder = holder_group.start("api", "admit", "holder", "1.0", "hold")
    holder_group.release()
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline())["admitted"] is True
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    expires_at = store.connection.execute("SELECT expires_at FROM probes").fetchone()
    assert not breakers.would_admit(store, "api")
    late, _ = breakers.admit(store, "api", "late", 30, ("", "late"))
    assert not late.admitted
    assert late.retry_at == pytest.approx(expires_at[0])

    group = crowd()
    for number in range(8):
        group.start("api", "admit", f"caller-{number}", "30")
    group.release(at=expires_at[0] + 0.05)
    results = group.results()

    assert [r["errors"] for r in results] == [[]] * 8
    assert sum(r["admitted"] for r in results) == 1
    assert breakers.describe(store, "api")["state"] == "HALF_OPEN"


def test_a_result_from_before_a_reset_is_ignored(runner, store):
    """A call admitted before the circuit opened and was reset cannot reopen it."""
    declare(store, "api", failure_threshold=1)
    _, slow_call = breakers.admit(store, "api", "slow", 30, ("", "slow"))
    assert slow_call is not None
    breakers.record_outcome(store, "api", "failure")
    assert runner("circuits", "reset", "api").returncode == 0

    with store.write() as txn:
        breakers.report(txn, slow_call, "failure", None, None)

    circuit = show(runner, "api")
    assert (circuit["state"], circuit["failure_count"]) == ("CLOSED", 0)
    assert events(store, "circuit.opened") == 1
    _, fresh_call = breakers.admit(store, "api", "fresh", 30, ("", "fresh"))
    assert fresh_call is not None
    with store.write() as txn:
        breakers.report(txn, fresh_call, "failure", None, None)
    assert show(runner, "api")["state"] == "OPEN"


# Circuits in workflows ----------------------------------------------------------


def test_an_open_circuit_parks_a_step_until_its_probe_closes_it(
    runner, workflow, tmp_path
):
    """A 503 opens the circuit; the other step waits unspent, probes, closes it."""
    path = workflow(
        {
            "version": 1,
            "name": "parking",
            "circuits": {
                "api": {
                    "failure_threshold": 1,
                    "half_open_after": "3s",
                    "success_threshold": 2,
                }
            },
            "steps": {
                "flaky": {
                    "run": flaky(
                        tmp_path / "flaky.count", 1, "503 Service Unavailable"
                    ),
                    "circuit": "api",
                    "retry": {
                        "max_attempts": 3,
                        "backoff": {"initial": "100ms", "jitter": "none"},
                    },
                },
                "pause": {"run": "sleep 0.5"},
                "other": {"needs": ["pause"], "run": "true", "circuit": "api"},
            },
        }
    )

    started = runner.start("run", str(path), "--run-id", "p1", "--concurrency", "2")
    wait_for_status(runner.state, "p1", "other", "waiting")
    parked = runner.steps("p1")
    _, err = started.communicate(timeout=30)

    assert (parked["other"]["status"], parked["other"]["attempts"]) == ("waiting", 0)
    assert (parked["flaky"]["status"], parked["flaky"]["attempts"]) == ("waiting", 1)
    assert started.returncode == 0, err
    steps = runner.steps("p1")
    assert steps["flaky"]["attempts"] == 2
    assert steps["other"]["attempts"] == 1
    other = step_events(runner.state, "p1", "other")
    assert other.index("circuit.refused") < other.index("run.attempt_started")
    final = show(runner, "api")
    assert (final["state"], final["opened_at"]) == ("CLOSED", None)
    circuit_events = query(
        runner.state, "SELECT kind FROM events WHERE kind LIKE 'circuit.%' ORDER BY id"
    )
    assert [kind for (kind,) in circuit_events] == [
        "circuit.opened",
        "circuit.refused",
        "circuit.refused",
        "circuit.half_opened",
        "circuit.closed",
    ]


def test_a_step_started_in_the_turn_its_circuit_opens_is_parked(
    runner, workflow, tmp_path
):
    """A step launched as the failure that opens its circuit is handled waits."""
    path = workflow(
        {
            "version": 1,
            "name": "same-turn",
            "circuits": {"api": {"failure_threshold": 1, "half_open_after": "1s"}},
            "steps": {
                "fails": {
                    "run": "echo '503 Service Unavailable'; exit 1",
                    "circuit": "api",
                    "retry": {"max_attempts": 1},
                },
                "next": {"run": "true", "circuit": "api"},
            },
        }
    )

    runner("run", str(path), "--run-id", "t1", "--concurrency", "1")

    assert "circuit.refused" in step_events(runner.state, "t1", "next")


def test_permanent_failures_do_not_count_toward_opening(runner, workflow):
    """A 403 leaves the circuit closed; a connection refused at once opens it."""
    document = {
        "version": 1,
        "name": "permanent",
        "circuits": {"api": {"failure_threshold": 1}},
        "steps": {
            "call": {
                "run": "echo '403 Forbidden'; exit 1",
                "circuit": "api",
                "retry": {"max_attempts": 1},
            }
        },
    }
    assert runner("run", str(workflow(document)), "--run-id", "a").returncode == 1
    assert runner.steps("a")["call"]["error_class"] == "permanent"
    circuit = show(runner, "api")
    assert (circuit["state"], circuit["failure_count"]) == ("CLOSED", 0)

    document["steps"]["call"]["run"] = "echo 'connection refused'; exit 1"
    assert runner("run", str(workflow(document)), "--run-id", "b").returncode == 1
    assert show(runner, "api")["state"] == "OPEN"


def test_a_forced_open_circuit_stays_open_until_reset(runner, workflow):
    """`circuits open` ignores half_open_after; `reset` closes; `check` says so."""
    path = workflow(
        {
            "version": 1,
            "name": "forced",
            "circuits": {"api": {"half_open_after": "100ms"}},
            "steps": {"call": {"run": "true", "circuit": "api"}},
        }
    )
    assert runner("run", str(path), "--run-id", "r").returncode == 0
    assert runner("circuits", "check", "api").returncode == 0

    assert runner("circuits", "open", "api").returncode == 0
    time.sleep(0.3)

    assert runner("circuits", "check", "api").returncode == 1
    circuit = show(runner, "api")
    assert circuit["state"] == "OPEN"
    assert iso(circuit["opened_at"]) == pytest.approx(time.time(), abs=30)
    assert runner("circuits", "reset", "api").returncode == 0
    assert runner("circuits", "check", "api").returncode == 0
    circuit = show(runner, "api")
    assert (circuit["state"], circuit["opened_at"]) == ("CLOSED", None)


def test_scripts_feed_a_circuit_and_check_it(runner):
    """record-failure x3 opens a default circuit; check exits 1, then 0 on reset."""
    for _ in range(2):
        assert runner("circuits", "record-failure", "ext").stdout == ""
    opening = runner("circuits", "record-failure", "ext")

    assert opening.stdout == "circuit ext: opened\n"
    assert runner("circuits", "check", "ext").returncode == 1
    assert runner("circuits", "reset", "ext").returncode == 0
    assert runner("circuits", "record-success", "ext").returncode == 0
    assert runner("circuits", "check", "ext").returncode == 0
    assert runner("circuits", "check", "never-seen").returncode == 0


def test_check_takes_no_probe_place(runner, store):
    """While HALF_OPEN, `check` answers 0 any number of times; a probe still gets in."""
    declare(store, "api", failure_threshold=1, half_open_after=0.1)
    breakers.record_outcome(store, "api", "failure")
    time.sleep(0.15)

    checks = [runner("circuits", "check", "api").returncode for _ in range(3)]

    assert checks == [0, 0, 0]
    admission, _ = breakers.admit(store, "api", "probe", 30, ("", "probe"))
    assert admission.probe
    assert runner("circuits", "check", "api").returncode == 1


def test_list_and_show_print_the_documented_json(runner, workflow):
    """`circuits list` is {"circuits": [C]}; `show` is C; times ISO, policy keys."""
    path = workflow(
        {
            "version": 1,
            "name": "shapes",
            "circuits": {
                "alpha": {"failure_threshold": 1, "half_open_after": "90s"},
                "beta": {"success_threshold": 3, "half_open_max_calls": 2},
            },
            "steps": {
                "a": {
                    "run": "exit 75",
                    "circuit": "alpha",
                    "retry": {"max_attempts": 1},
                },
                "b": {"run": "true", "circuit": "beta"},
            },
        }
    )
    assert runner("run", str(path), "--run-id", "s").returncode == 1

    listed = runner("circuits", "list", "-o", "json")

    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert set(document) == {"circuits"}
    alpha, beta = document["circuits"]
    assert set(alpha) == set(beta) == CIRCUIT_KEYS
    assert (alpha["name"], alpha["state"], alpha["failure_count"]) == (
        "alpha",
        "OPEN",
        0,
    )
    assert iso(alpha["opened_at"]) == pytest.approx(time.time(), abs=60)
    assert alpha["policy"] == {
        "failure_threshold": 1,
        "half_open_after": 90,
        "success_threshold": 2,
        "half_open_max_calls": 1,
    }
    assert (beta["state"], beta["opened_at"], beta["success_count"]) == (
        "CLOSED",
        None,
        0,
    )
    assert set(beta["policy"]) == POLICY_KEYS
    assert show(runner, "alpha") == alpha
    assert show(runner, "beta") == beta
    missing = runner("circuits", "show", "gamma", "-o", "json")
    assert missing.returncode == 2
    assert "no circuit 'gamma'" in missing.stderr


def test_the_last_workflow_that_declares_a_circuit_sets_its_policy(runner, workflow):
    """A later declaration replaces the policy whole and keeps the circuit's counts."""

    def declaring(policy: dict[str, Any], step: dict[str, Any]) -> Path:
        return workflow(
            {
                "version": 1,
                "name": "declares",
                "circuits": {"api": policy},
                "steps": {"call": step},
            }
        )

    uses = {"run": "true", "circuit": "api"}
    first = declaring({"failure_threshold": 5, "half_open_after": "10s"}, uses)
    assert runner("run", str(first), "--run-id", "one").returncode == 0
    assert show(runner, "api")["policy"]["failure_threshold"] == 5
    runner("circuits", "record-failure", "api")

    second = declaring({"success_threshold": 4}, {"run": "true"})
    assert runner("run", str(second), "--run-id", "two").returncode == 0

    circuit = show(runner, "api")
    assert (circuit["state"], circuit["failure_count"]) == ("CLOSED", 1)
    assert circuit["policy"] == {
        "failure_threshold": 3,
        "half_open_after": 60,
        "success_threshold": 4,
        "half_open_max_calls": 1,
    }
