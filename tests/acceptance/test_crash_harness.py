"""The crash harness (FAULTS T1, T2, T4): kill the runner anywhere, resume, check.

A diamond of ledger steps (a -> b, c, d; b, c -> e; d, e -> f) passes outputs
down. Each trial kills the runner, by an armed crash point or by SIGKILL from
outside at a seeded random instant, resumes until the run ends, then checks:

- V1 every step succeeded exactly once, and nothing started after that;
- V2 a step ran at most 1 + (kills inside its STARTED..COMPLETED window) times;
- V3 no two executions of one step overlapped (the ledger's flock probe);
- V4 a step began only after each of its needs had ended;
- V5 `PRAGMA integrity_check` is ok;
- V6 the outputs equal those of a fault-free reference run.

Compensation trials do the same for a run that turns back: the last step fails
permanently and kills land while the others are being compensated.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import Cli, Ledger, wait_gone, write_workflow

from runner.engine.crashpoints import POINTS

RUN_ID = "r"
STEP_MS = 30
SLACK = 0.05
"""Seconds a kill may be off its window's edges and still count (lenient)."""
MAX_RESUMES = 5
NEEDS = {
    "a": [],
    "b": ["a"],
    "c": ["a"],
    "d": ["a"],
    "e": ["b", "c"],
    "f": ["d", "e"],
}
PER_PROCESS = ("run.created", "run.before_finish_commit")
FORWARD = [
    point for point in POINTS if point.startswith("step.") or point in PER_PROCESS
]
CASES = [
    (point, hit)
    for point in FORWARD
    for hit in ((1,) if point in PER_PROCESS else range(1, 7))
]


def diamond(ledger: Ledger) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for name, needs in NEEDS.items():
        step: dict[str, Any] = {"run": ledger.command(name, STEP_MS)}
        if needs:
            outputs = ",".join(f"${{{{ steps.{n}.outputs.out }}}}" for n in needs)
            step |= {"needs": needs, "env": {"LEDGER_IN": outputs}}
        steps[name] = step
    return {"version": 1, "name": "diamond", "steps": steps}


def expected_outputs() -> dict[str, str]:
    outputs: dict[str, str] = {}
    for name, needs in NEEDS.items():
        outputs[name] = f"{name}<{','.join(outputs[n] for n in needs)}>"
    return outputs


@dataclass
class Trial:
    """One workflow in its own folder, driven to its end through kills."""

    folder: Path
    document: Any
    args: tuple[str, ...] = ("--concurrency", "3")
    kills: list[float] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cli = Cli(self.folder)
        self.ledger = Ledger(self.folder / "ledger.txt")
        self.comp = Ledger(self.folder / "compensations.txt")
        document = self.document(self) if callable(self.document) else self.document
        self.path = write_workflow(self.folder / "wf.yaml", document)
        self.processes = 0

    def note(self, text: str) -> None:
        self.timeline.append(f"{time.time() - self.began:8.3f}s {text}")

    def recorded(self) -> bool:
        """Whether the run exists in the store (a kill may precede it)."""
        db = self.cli.state / "state.db"
        if not db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
                row = connection.execute(
                    "SELECT 1 FROM runs WHERE run_id = ?", (RUN_ID,)
                ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def command(self) -> tuple[str, ...]:
        if self.recorded():
            return ("resume", RUN_ID)
        return ("run", str(self.path), "--run-id", RUN_ID, *self.args)

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        self.processes += 1
        args = self.command()
        log = open(self.folder / f"process{self.processes}.log", "w")  # noqa: SIM115
        self.note(f"start {args[0]} (process{self.processes}.log)")
        return self.cli.start(*args, env=env, stdout=log, stderr=log)

    def kill_after(self, process: subprocess.Popen[str], delay: float) -> None:
        """SIGKILL `process` after `delay` seconds unless it ended before."""
        try:
            code = process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            self.kills.append(time.time())
            process.kill()
            code = process.wait()
            self.note(f"SIGKILL after {delay:.3f}s")
            return
        self.note(f"ended by itself with {code} before the kill at {delay:.3f}s")

    def crash_at(self, point: str) -> int:
        """Run with `point` armed; a death by SIGKILL counts as a kill."""
        process = self.start({"RUNNER_CRASHPOINT": point})
        code = process.wait(timeout=60)
        if code == -signal.SIGKILL:
            self.kills.append(time.time())
        self.note(f"crash point {point}: exit {code}")
        return code

    def finish(self, done: tuple[int, ...] = (0,)) -> int:
        """Resume (or run) until an exit code in `done`; the last code."""
        code = -1
        for _ in range(MAX_RESUMES):
            process = self.start()
            code = process.wait(timeout=60)
            self.note(f"exit {code}")
            if code in done:
                return code
        return code

    def report(self) -> str:
        return "\n".join(self.timeline)


# Invariants -------------------------------------------------------------------


def db_rows(trial: Trial, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(trial.cli.state / "state.db") as connection:
        return connection.execute(query, (RUN_ID,)).fetchall()


def windows(trial: Trial, kind: str) -> dict[str, tuple[float, float]]:
    """Per step: the first recorded STARTED and its successful COMPLETED."""
    rows = db_rows(
        trial,
        "SELECT step, MIN(started_at), MAX(CASE WHEN status = 'succeeded' "
        f"THEN ended_at END) FROM attempts WHERE run_id = ? AND kind = '{kind}' "
        "GROUP BY step",
    )
    return {step: (start, end or float("inf")) for step, start, end in rows}


def kills_inside(trial: Trial, window: tuple[float, float]) -> int:
    start, end = window
    return sum(start - SLACK <= at <= end + SLACK for at in trial.kills)


def check_integrity(trial: Trial) -> None:
    """V5, and no process of any step is left running."""
    with sqlite3.connect(trial.cli.state / "state.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert wait_gone(str(trial.folder), timeout=5) == []


def check_executions(trial: Trial, ledger: Ledger, kind: str) -> None:
    """V1 (one success per step), V2 (bounded re-runs), V3 (no overlaps)."""
    successes = db_rows(
        trial,
        "SELECT step, COUNT(*) FROM attempts WHERE run_id = ? "
        f"AND kind = '{kind}' AND status = 'succeeded' GROUP BY step",
    )
    assert all(count == 1 for _, count in successes), successes
    assert ledger.overlaps() == []
    for step, window in windows(trial, kind).items():
        allowed = 1 + kills_inside(trial, window)
        assert ledger.count(step) <= allowed, (step, ledger.count(step), allowed)


def check_nothing_after_success(trial: Trial) -> None:
    """V1: no attempt of a step starts after the step succeeded."""
    events = db_rows(
        trial,
        "SELECT step, kind FROM events WHERE run_id = ? AND step IS NOT NULL "
        "ORDER BY id",
    )
    succeeded: set[str] = set()
    for step, kind in events:
        if kind == "run.attempt_started":
            assert step not in succeeded, f"{step} started again after success"
        if kind == "step.succeeded":
            assert step not in succeeded, f"{step} succeeded twice"
            succeeded.add(step)


def check_order(ledger: Ledger, needs: dict[str, list[str]]) -> None:
    """V4: each step's first start after the last end of each of its needs."""
    for step, before in needs.items():
        starts = [entry.at for entry in ledger.of(step)]
        for need in before:
            ends = [entry.at for entry in ledger.of(need, "end")]
            assert starts, f"{step} never ran"
            assert ends, f"{need} never ended"
            assert min(starts) >= max(ends), f"{step} began before {need} ended"


def check_forward(trial: Trial, reference: dict[str, str]) -> None:
    """V1-V6 after the run succeeded."""
    document = trial.cli.status(RUN_ID)
    assert document["status"] == "succeeded"
    steps = {step["name"]: step for step in document["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        NEEDS, "succeeded"
    )
    check_executions(trial, trial.ledger, "run")
    check_nothing_after_success(trial)
    check_order(trial.ledger, NEEDS)
    check_integrity(trial)
    outputs = {name: step["outputs"].get("out") for name, step in steps.items()}
    assert outputs == reference


def checked(trial: Trial, check: Any, *args: Any) -> None:
    """Run `check`; on failure show the trial's timeline and ledgers."""
    try:
        check(trial, *args)
    except AssertionError as error:
        ledgers = "".join(
            f"\n--- {ledger.path.name}\n"
            + (ledger.path.read_text() if ledger.path.exists() else "(none)")
            for ledger in (trial.ledger, trial.comp)
        )
        raise AssertionError(f"{error}\n{trial.report()}{ledgers}") from error


# The reference run -------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    outputs: dict[str, str]
    seconds: float


def measure(folder: Path, document: Any, done: int) -> tuple[Trial, float]:
    trial = Trial(folder, document)
    began = time.monotonic()
    code = trial.finish(done=(done,))
    seconds = time.monotonic() - began
    assert code == done, trial.report()
    return trial, seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A fault-free run of the diamond: its outputs and its wall time, T_ref."""
    folder = tmp_path_factory.mktemp("reference")
    trial, seconds = measure(folder / "1", lambda t: diamond(t.ledger), 0)
    _, again = measure(folder / "2", lambda t: diamond(t.ledger), 0)
    steps = trial.cli.steps(RUN_ID)
    outputs = {name: step["outputs"]["out"] for name, step in steps.items()}
    assert outputs == expected_outputs()
    return Reference(outputs, (seconds + again) / 2)


# T1: every crash point, every hit ------------------------------------------------


@pytest.mark.parametrize(("point", "hit"), CASES, ids=[f"{p}:{n}" for p, n in CASES])
def test_a_crash_at_any_point_resumes_to_the_reference_result(
    tmp_path, reference, point, hit
):
    """SIGKILL at the N-th hit of a crash point; resume ends with V1-V6 held."""
    trial = Trial(tmp_path / "trial", lambda t: diamond(t.ledger))

    code = trial.crash_at(f"{point}:{hit}")

    if hit == 1:
        assert code == -signal.SIGKILL, f"{point} was never reached\n{trial.report()}"
    else:
        assert code in (0, -signal.SIGKILL), trial.report()
    assert trial.finish() == 0, trial.report()
    checked(trial, check_forward, reference.outputs)


# T2: seeded random kills from outside ----------------------------------------------


def test_random_kills_keep_the_invariants(tmp_path, reference, trial):
    """Up to 3 SIGKILLs at U(0, T_ref), resumes included; V1-V6 hold (seeded)."""
    rng = random.Random(trial)
    run = Trial(tmp_path / "trial", lambda t: diamond(t.ledger))
    run.note(f"seed {trial}, T_ref {reference.seconds:.3f}s")

    for _ in range(rng.randint(1, 3)):
        run.kill_after(run.start(), rng.uniform(0, reference.seconds))
    assert run.finish() == 0, run.report()

    checked(run, check_forward, reference.outputs)


# Compensation under kills ------------------------------------------------------------

COMP_NEEDS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "z": ["d"]}
COMPENSATED = ("a", "b", "d")
"""Steps with a `compensate`; c has none, z fails for good."""


def turning_back(trial: Trial) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for name, needs in COMP_NEEDS.items():
        failing = name == "z"
        step: dict[str, Any] = {
            "run": trial.ledger.command(name, 20, exit_code=127 if failing else 0)
        }
        if needs:
            step["needs"] = needs
        if name in COMPENSATED:
            step["compensate"] = trial.comp.command(name, 40)
        steps[name] = step
    return {"version": 1, "name": "turning-back", "steps": steps}


def descendants(name: str) -> set[str]:
    found: set[str] = set()
    for step, needs in COMP_NEEDS.items():
        if name in needs:
            found |= {step, *descendants(step)}
    return found


def check_compensated(trial: Trial) -> None:
    """The run compensated each step once, in order, and nothing ran forward."""
    document = trial.cli.status(RUN_ID)
    assert document["status"] == "compensated"
    statuses = {step["name"]: step["status"] for step in document["steps"]}
    assert statuses == {
        "a": "compensated",
        "b": "compensated",
        "c": "succeeded",
        "d": "compensated",
        "z": "failed",
    }
    check_executions(trial, trial.ledger, "run")
    check_executions(trial, trial.comp, "compensate")
    check_order(trial.ledger, COMP_NEEDS)
    first_compensation = min(entry.at for entry in trial.comp.starts())
    last_forward = max(entry.at for entry in trial.ledger.starts())
    assert last_forward < first_compensation, "a forward step ran after the turn"
    for name in COMPENSATED:
        began = min(entry.at for entry in trial.comp.of(name))
        for later in descendants(name) & set(COMPENSATED):
            ended = max(entry.at for entry in trial.comp.of(later, "end"))
            assert began >= ended, f"{name} compensated before {later}"
    check_integrity(trial)


@dataclass(frozen=True)
class BackwardReference:
    seconds: float
    turn: float
    """Seconds from the start of `run` to its first compensation."""


@pytest.fixture(scope="module")
def backward_reference(tmp_path_factory: pytest.TempPathFactory) -> BackwardReference:
    """A fault-free turning-back run: its wall time and when compensation began."""
    folder = tmp_path_factory.mktemp("backward")
    began = time.time()
    trial, seconds = measure(folder, turning_back, 1)
    checked(trial, check_compensated)
    turn = min(entry.at for entry in trial.comp.starts()) - began
    return BackwardReference(seconds, turn)


def test_kills_during_compensation_keep_the_invariants(
    tmp_path, backward_reference, trial
):
    """Up to 3 seeded SIGKILLs while compensating; each undone once, in order."""
    rng = random.Random(10_000 + trial)
    ref = backward_reference
    run = Trial(tmp_path / "trial", turning_back)
    run.note(f"seed {10_000 + trial}, T_ref {ref.seconds:.3f}s, turn {ref.turn:.3f}s")

    run.kill_after(run.start(), rng.uniform(0.8 * ref.turn, ref.seconds))
    for _ in range(rng.randint(0, 2)):
        run.kill_after(run.start(), rng.uniform(0, ref.seconds))
    assert run.finish(done=(1,)) == 1, run.report()

    checked(run, check_compensated)


def test_every_compensation_crash_point_is_reached(tmp_path, backward_reference):
    """Each compensation crash point fires in a turning-back run; resume ends it."""
    del backward_reference  # only to share the module's warm-up
    for point in [p for p in POINTS if p.startswith("compensation.")]:
        run = Trial(tmp_path / point, turning_back)
        assert run.crash_at(point) == -signal.SIGKILL, f"{point} never reached"
        assert run.finish(done=(1,)) == 1, run.report()
        checked(run, check_compensated)


def test_a_killed_run_shows_interrupted_until_resumed(tmp_path):
    """A run whose runner died is shown `interrupted` as soon as it is gone."""
    run = Trial(tmp_path / "trial", lambda t: diamond(t.ledger))
    assert run.crash_at("step.after_spawn:2") == -signal.SIGKILL
    document = json.loads(run.cli("status", RUN_ID, "-o", "json").stdout)
    assert document["status"] == "interrupted"
