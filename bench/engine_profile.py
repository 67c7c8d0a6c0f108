"""Where runner's time goes per step: one `runner run`, in this process, timed.

Runs the CLI in-process on a generated workflow (the same DAGs as
bench/engine.py) with timers wrapped around the engine's phases, and prints
milliseconds per step for each (wall, and CPU of the thread: the driver's, on
which every attempt runs too). The times are inclusive: an indented line is
part of the line above it.
Modules are imported before the run starts, so start-up is not in the figures
(see `python -X importtime` for that).

    .venv/bin/python bench/engine_profile.py                 # fan-out, 1,000
    .venv/bin/python bench/engine_profile.py --shape chain --argv

Results also go to bench/out/engine_profile.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import runner_workflow

from runner.cli.main import main as runner_main
from runner.engine import driver, lifecycle, process, procinfo, reactor, spawn, values
from runner.report import progress
from runner.spec import build, schema, validate, yamlload
from runner.store import sqlite as store

OUT = Path(__file__).resolve().parent / "out" / "engine_profile.json"


@dataclass
class Timer:
    calls: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    threads: set[str] = field(default_factory=set)


TIMERS: dict[str, Timer] = {}
ORDER: list[str] = []
LOCK = threading.Lock()


def add(label: str, seconds: float, cpu: float) -> None:
    main = threading.current_thread() is threading.main_thread()
    where = "driver" if main else "sweep"
    with LOCK:
        timer = TIMERS.setdefault(label, Timer())
        timer.calls += 1
        timer.seconds += seconds
        timer.cpu += cpu
        timer.threads.add(where)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Wall time, and CPU time of this thread (which ignores waiting for the GIL
    or for another process, so it holds under load)."""
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        add(label, time.perf_counter() - started, time.thread_time() - cpu)


def wrap(owner: Any, name: str, label: str) -> None:
    """Time every call of `owner.name` under `label`."""
    original = getattr(owner, name)
    ORDER.append(label)

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        with timed(label):
            return original(*args, **kwargs)

    setattr(owner, name, timed_call)


def wrap_function(module: Any, name: str, label: str) -> None:
    """Time a module function, also where other runner modules imported it."""
    original = getattr(module, name)
    wrap(module, name, label)
    replacement = getattr(module, name)
    for other in list(sys.modules.values()):
        if getattr(other, "__name__", "").startswith("runner.") and (
            getattr(other, name, None) is original
        ):
            setattr(other, name, replacement)


class TimedConnection:
    """An sqlite3 connection whose statements are timed by their first word."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        word = sql.split(None, 1)[0].upper()
        label = (
            f"  sqlite {word}" if word in ("BEGIN", "COMMIT") else "  sqlite statements"
        )
        with timed(label):
            return self._connection.execute(sql, args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        with timed("  sqlite statements"):
            return self._connection.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def instrument() -> None:
    """Wrap the phases; labels are listed in the order they are printed."""
    wrap(validate, "load_workflow", "load_workflow")
    wrap_function(yamlload, "parse", "  yaml parse")
    wrap_function(schema, "schema_problems", "  json schema")
    wrap_function(build, "build_workflow", "  build model")
    wrap(store.Store, "_open", "open store")
    wrap(lifecycle, "_record_run", "record run (insert steps)")

    wrap(driver.Driver, "_collect", "collect outcomes (incl. waiting)")
    wrap(reactor.Reactor, "poll", "  reactor poll (wait, then handlers)")
    wrap(process.Attempt, "_readable", "    output pipe readable")
    wrap(process.Attempt, "_leader_seen", "    leader exited (pidfd)")
    wrap(process.Attempt, "_reap", "      reap")
    wrap(process.Attempt, "_end", "      result to the job")
    wrap(driver.Driver, "_finished", "  finished: decide")
    wrap_function(values, "parse_outputs", "    parse_outputs (open .output)")
    wrap(driver.Driver, "_plan", "plan launches")
    wrap(driver.Driver, "_launch", "  launch: render")
    wrap(driver.Driver, "_begin", "    begin: env, journal entry")
    wrap(driver.Driver, "_flush", "flush (one transaction)")
    ORDER.extend(["  sqlite BEGIN", "  sqlite statements", "  sqlite COMMIT"])
    wrap(progress.PlainReporter, "__call__", "  reporter line")
    wrap(driver.Driver, "_start", "start jobs")
    wrap(process.Attempt, "__init__", "  Attempt() (token, streams)")
    wrap(process.Attempt, "start", "  Attempt.start")
    wrap_function(spawn, "start", "    spawn.start (pipes, posix_spawn)")
    wrap_function(process, "_create_log", "create a log file (first output)")
    wrap_function(procinfo, "read_stat", "read_stat")

    opened = store.Store._open

    def open_timed(self: store.Store) -> Any:
        return TimedConnection(opened(self))

    store.Store._open = open_timed  # type: ignore[method-assign]


def what_if(names: list[str], concurrency: int) -> None:
    """Patch in a candidate change, to measure its gain before making it.

    normal: synchronous=NORMAL (not durable on power loss: only to size fsync).
    """
    if "normal" in names:
        opened = store.Store._open

        def open_normal(self: store.Store) -> Any:
            connection = opened(self)
            connection.execute("PRAGMA synchronous = NORMAL")
            return connection

        store.Store._open = open_normal  # type: ignore[method-assign]


def run(path: Path, state: Path, concurrency: int) -> float:
    argv = ["runner", "run", str(path), "--state", str(state)]
    sys.argv = [*argv, "--concurrency", str(concurrency)]
    saved = sys.stdout
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            runner_main()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise RuntimeError(f"runner exited {exit_.code}") from None
        finally:
            sys.stdout = saved
    return time.perf_counter() - started


def report(wall: float, steps: int) -> list[dict[str, Any]]:
    rows = []
    for label in ORDER:
        timer = TIMERS.get(label)
        if timer is None:
            continue
        rows.append(
            {
                "phase": label,
                "thread": "/".join(sorted(timer.threads)),
                "calls": timer.calls,
                "ms_total": timer.seconds * 1000,
                "ms_per_step": timer.seconds * 1000 / steps,
                "cpu_ms_per_step": timer.cpu * 1000 / steps,
            }
        )
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = own.ru_utime * 1000 / steps, own.ru_stime * 1000 / steps
    children = (kids.ru_utime + kids.ru_stime) * 1000 / steps
    print(
        f"wall {wall:.3f} s for {steps} steps: {wall * 1000 / steps:.2f} ms/step; "
        f"CPU per step: runner {user + system:.2f} ms (user {user:.2f}, "
        f"sys {system:.2f}), children {children:.2f} ms"
    )
    head = f"{'phase':40} {'thread':10} {'calls':>6} {'ms total':>9} {'ms/step':>8}"
    print(head + f" {'cpu ms/step':>11}")
    for row in rows:
        print(
            f"{row['phase']:40} {row['thread']:10} {row['calls']:6d} "
            f"{row['ms_total']:9.1f} {row['ms_per_step']:8.3f} "
            f"{row['cpu_ms_per_step']:11.3f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("fanout", "chain"), default="fanout")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--argv", action="store_true", help='run: ["true"]')
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--try",
        dest="changes",
        action="append",
        default=[],
        choices=("normal",),
        help="measure with a candidate change patched in (see what_if)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    instrument()
    what_if(args.changes, args.concurrency)
    with tempfile.TemporaryDirectory(prefix="runner-profile-") as folder:
        path = Path(folder) / "workflow.yaml"
        path.write_text(runner_workflow(args.shape, args.steps, argv=args.argv))
        wall = run(path, Path(folder) / "state", args.concurrency)
    rows = report(wall, args.steps)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "wall": wall}
    args.out.write_text(json.dumps({**result, "phases": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
