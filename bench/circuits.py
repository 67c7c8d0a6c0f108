"""Circuit breakers on the store: cost per call, and many writers (issue 4).

Measured:
- the cost of one circuit check (`breakers.would_admit`) and of one recorded
  outcome (`breakers.record_outcome`) in this process, each timed 1,000 times
  on a fresh store: median and p99 (target: under 1 ms each);
- recorded outcomes per second from 8 processes on one circuit, each
  recording N failures behind a file barrier, from the barrier's release to
  the last process's end (target: at least 1,000/s), with the lost updates
  (calls made minus the final count) and any "database is locked" error;
- the same 8 x N updates through bench/jq_breaker.sh, a bash + jq breaker
  that keeps its state in a JSON file with no lock (the naive design runner
  replaces), with its lost updates;
- openings under a failure storm at threshold 3 (8 processes x 50 failures):
  runner opens once, the JSON file as often as its races let it.

    .venv/bin/python bench/circuits.py            # N = 500 (FAULTS C4)
    .venv/bin/python bench/circuits.py --quick    # N = 100

Needs `jq` for the reference (bench only; `apt-get install -y jq`). Results
go to bench/out/circuits.json; a table is printed. Every store commits with
WAL and `synchronous=FULL`, as runner does, so the figures include an fsync
per recorded outcome and depend on the disk under --tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "circuits.json"
JQ_BREAKER = REPO / "bench" / "jq_breaker.sh"
PROCESSES = 8
SAMPLES = 1_000
WARMUP = 50
STORM = 50
"""Failures per process in the opening storm."""
TARGETS = {"check_ms": 1.0, "record_ms": 1.0, "outcomes_per_s": 1_000.0}


# Workers ----------------------------------------------------------------------


def worker(state: str, barrier: str, name: str, count: int) -> None:
    """One of the 8 writers: record `count` failures once the barrier opens."""
    from runner.engine import breakers
    from runner.store.sqlite import Store

    store = Store(state)
    Path(barrier, f"ready-{os.getpid()}").touch()
    while not Path(barrier, "go").exists():
        time.sleep(0.0005)
    errors = []
    opened = 0
    for _ in range(count):
        try:
            opened += breakers.record_outcome(store, name, "failure").count("opened")
        except Exception as error:  # counted, not fatal: a lock error is a finding
            errors.append(str(error))
    print(json.dumps({"ended": time.time(), "opened": opened, "errors": errors}))


def release(barrier: Path, processes: list[subprocess.Popen[str]]) -> float:
    """Wait for every worker at the barrier, open it; the time it opened."""
    while len(list(barrier.glob("ready-*"))) < len(processes):
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("a worker died before the barrier")
        time.sleep(0.005)
    go = time.time()
    (barrier / "go").touch()
    return go


# Measurements -------------------------------------------------------------------


@contextmanager
def fresh_folder(root: str | None) -> Iterator[Path]:
    folder = tempfile.mkdtemp(prefix="runner-circuits-", dir=root)
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_store(folder: Path, name: str, threshold: int) -> Any:
    from runner.engine import breakers
    from runner.spec.model import CircuitPolicy
    from runner.store.sqlite import Store

    state = folder / "state"
    state.mkdir(mode=0o700)
    store = Store(str(state))
    with store.write() as txn:
        breakers.declare(txn, {name: CircuitPolicy(failure_threshold=threshold)})
    return store


def timed(call: Callable[[], object], samples: int) -> dict[str, float]:
    """Median and p99 of `samples` calls, in milliseconds."""
    for _ in range(WARMUP):
        call()
    costs = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        call()
        costs.append((time.perf_counter_ns() - started) / 1e6)
    costs.sort()
    return {
        "median_ms": statistics.median(costs),
        "p99_ms": costs[int(len(costs) * 0.99) - 1],
        "max_ms": costs[-1],
        "samples": samples,
    }


def in_process(root: str | None) -> dict[str, Any]:
    from runner.engine import breakers

    with fresh_folder(root) as folder:
        store = new_store(folder, "api", threshold=10**9)
        check = timed(lambda: breakers.would_admit(store, "api"), SAMPLES)
        record = timed(
            lambda: breakers.record_outcome(store, "api", "failure"), SAMPLES
        )
        store.close()
    with fresh_folder(root) as folder:
        floor = timed(commit(folder / "floor.db"), SAMPLES)
    return {"would_admit": check, "record_outcome": record, "commit_floor": floor}


def commit(path: Path) -> Callable[[], object]:
    """One one-row commit as runner's store makes them: WAL, synchronous=FULL.

    The floor under any recorded outcome: its cost is the disk's fsync.
    """
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("CREATE TABLE t (x INTEGER)")

    def once() -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO t VALUES (1)")
        connection.execute("COMMIT")

    return once


def runner_writers(root: str | None, count: int, threshold: int) -> dict[str, Any]:
    """8 processes x `count` recorded failures on one circuit of one store."""
    from runner.engine import breakers

    with fresh_folder(root) as folder:
        store = new_store(folder, "api", threshold)
        barrier = folder / "barrier"
        barrier.mkdir()
        argv = [sys.executable, __file__, "--worker", store.state_dir, str(barrier)]
        processes = [
            subprocess.Popen(
                [*argv, "api", str(count)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(PROCESSES)
        ]
        go = release(barrier, processes)
        reports = [json.loads(process.communicate()[0]) for process in processes]
        described = breakers.describe(store, "api")
        assert described is not None
        opened = store.event_counts().get("circuit.opened", 0)
        store.close()
    calls = PROCESSES * count
    elapsed = max(report["ended"] for report in reports) - go
    errors = [error for report in reports for error in report["errors"]]
    counted = described["failure_count"] if described["state"] == "CLOSED" else None
    return {
        "calls": calls,
        "seconds": elapsed,
        "per_second": calls / elapsed,
        "lost": None if counted is None else calls - counted,
        "errors": len(errors),
        "locked_errors": sum("locked" in error for error in errors),
        "openings": opened,
    }


def jq_writers(root: str | None, count: int, threshold: int) -> dict[str, Any]:
    """8 bash + jq processes x `count` failures on one JSON file."""
    with fresh_folder(root) as folder:
        state = folder / "breaker.json"
        state.write_text('{"state": "CLOSED", "failure_count": 0, "recorded": 0}\n')
        env = {**os.environ, "JQ_BREAKER_THRESHOLD": str(threshold)}
        argv = ["bash", str(JQ_BREAKER), str(state), "record-failure", str(count)]
        started = time.time()
        processes = [
            subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(PROCESSES)
        ]
        failures = [p.communicate()[1] for p in processes if p.wait() != 0]
        elapsed = time.time() - started
        final = json.loads(state.read_text())
        events = state.with_name(state.name + ".events")
        openings = len(events.read_text().splitlines()) if events.exists() else 0
    calls = PROCESSES * count
    return {
        "calls": calls,
        "seconds": elapsed,
        "per_second": calls / elapsed,
        "lost": calls - final["recorded"],
        "errors": len(failures),
        "locked_errors": 0,
        "openings": openings,
    }


# Report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    jq = subprocess.run(["jq", "--version"], capture_output=True, text=True, check=True)
    return {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "jq": jq.stdout.strip(),
    }


def check_targets(results: dict[str, Any]) -> dict[str, bool]:
    single = results["in_process"]
    return {
        "check_under_1ms": single["would_admit"]["median_ms"] < TARGETS["check_ms"]
        and single["would_admit"]["p99_ms"] < TARGETS["check_ms"],
        "record_under_1ms": single["record_outcome"]["median_ms"] < TARGETS["record_ms"]
        and single["record_outcome"]["p99_ms"] < TARGETS["record_ms"],
        "outcomes_per_s": results["writers"]["runner"]["per_second"]
        >= TARGETS["outcomes_per_s"],
        "no_lost_update": results["writers"]["runner"]["lost"] == 0,
        "no_locked_error": results["writers"]["runner"]["locked_errors"] == 0,
        "opens_once": results["storm"]["runner"]["openings"] == 1,
    }


def report(results: dict[str, Any]) -> str:
    single = results["in_process"]
    lines = [
        f"In this process, {SAMPLES} calls each (ms):",
        f"  {'call':<34} {'median':>8} {'p99':>8} {'max':>8}  target",
    ]
    for name, label, target in (
        ("would_admit", "circuit check (would_admit)", "< 1 ms"),
        ("record_outcome", "recorded outcome (record_outcome)", "< 1 ms"),
        ("commit_floor", "floor: a bare one-row commit", ""),
    ):
        cost = single[name]
        lines.append(
            f"  {label:<34} {cost['median_ms']:>8.3f} {cost['p99_ms']:>8.3f} "
            f"{cost['max_ms']:>8.3f}  {target}"
        )
    count = results["per_process"]
    lines += [
        "",
        f"{PROCESSES} processes x {count} recorded failures on one circuit:",
        f"  {'design':<24} {'calls':>6} {'seconds':>8} {'per s':>8} {'lost':>6} "
        f"{'errors':>7}",
    ]
    for name, label in (("runner", "runner (SQLite)"), ("jq", "bash + jq JSON file")):
        row = results["writers"][name]
        lost = "?" if row["lost"] is None else row["lost"]
        lines.append(
            f"  {label:<24} {row['calls']:>6} {row['seconds']:>8.2f} "
            f"{row['per_second']:>8.0f} {lost!s:>6} {row['errors']:>7}"
        )
    storm = results["storm"]
    lines += [
        "",
        f"Openings, {PROCESSES} processes x {STORM} failures at threshold 3 "
        "(expected 1):",
        f"  runner (SQLite) {storm['runner']['openings']}   "
        f"bash + jq JSON file {storm['jq']['openings']}",
        "",
        "targets: "
        + ", ".join(
            f"{name} {'ok' if ok else 'MISSED'}"
            for name, ok in results["targets"].items()
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100, not 500")
    parser.add_argument("--per-process", type=int, help="N, outcomes per process")
    parser.add_argument("--tmp", help="where the stores live (default: system temp)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        state, barrier, name, count = args.worker
        worker(state, barrier, name, int(count))
        return 0
    if shutil.which("jq") is None:
        print("jq is needed for the reference breaker: apt-get install -y jq")
        return 2
    count = args.per_process or (100 if args.quick else 500)

    results: dict[str, Any] = {"machine": machine(), "per_process": count}
    results["load_before"] = os.getloadavg()
    results["in_process"] = in_process(args.tmp)
    results["writers"] = {
        "runner": runner_writers(args.tmp, count, threshold=10**9),
        "jq": jq_writers(args.tmp, count, threshold=10**9),
    }
    results["storm"] = {
        "runner": runner_writers(args.tmp, STORM, threshold=3),
        "jq": jq_writers(args.tmp, STORM, threshold=3),
    }
    results["load_after"] = os.getloadavg()
    results["targets"] = check_targets(results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
