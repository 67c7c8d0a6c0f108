"""The floor for runner's design: a durable commit before every start, in Python.

A single-threaded loop does per step what the engine must do, and nothing
else: one transaction (WAL, synchronous=FULL) recording the steps that ended
and the steps about to start, then the spawns (own session, output pipes,
optionally two log files), then a wait on pidfds and pipes in one selector.
No job threads, no validation, no reporter. Compare its slope with make's to
see how much of runner's per-step cost the design itself needs.

    .venv/bin/python bench/engine_floor.py            # fan-out and chain
    .venv/bin/python bench/engine_floor.py --no-logs  # without log files
"""

from __future__ import annotations

import argparse
import os
import selectors
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

CONCURRENCY = 2
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW


class Loop:
    """Runs N steps of `true` as a chain or a fan-out, journaling each start."""

    def __init__(self, folder: Path, shape: str, steps: int, args: argparse.Namespace):
        self.folder, self.shape, self.steps = folder, shape, steps
        self.command = ["/usr/bin/true"] if args.argv else ["/bin/sh", "-c", "true"]
        self.logs = args.logs
        self.db = sqlite3.connect(folder / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA synchronous = {args.sync}")
        self.db.execute(
            "CREATE TABLE steps (name TEXT PRIMARY KEY, status TEXT, "
            "started_at REAL, ended_at REAL)"
        )
        self.db.execute("CREATE TABLE events (at REAL, step TEXT, kind TEXT)")
        with self._transaction():
            for index in range(steps):
                self.db.execute(
                    "INSERT INTO steps VALUES (?, 'pending', 0, 0)", (index,)
                )
        self.selector = selectors.DefaultSelector()
        self.ready: deque[int] = deque([0])
        self.ended: list[int] = []
        self.running = 0

    def _transaction(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def run(self) -> None:
        done = 0
        while done < self.steps:
            starts: list[int] = []
            while self.ready and self.running + len(starts) < CONCURRENCY:
                starts.append(self.ready.popleft())
            self._record(starts)
            for step in starts:
                self._spawn(step)
            done += self._wait()

    def _record(self, starts: list[int]) -> None:
        now = time.time()
        with self._transaction():
            for step in self.ended:
                self.db.execute(
                    "UPDATE steps SET status = 'succeeded', ended_at = ? "
                    "WHERE name = ?",
                    (now, step),
                )
                self.db.execute(
                    "INSERT INTO events VALUES (?, ?, 'ended')", (now, step)
                )
            for step in starts:
                self.db.execute(
                    "UPDATE steps SET status = 'running', started_at = ? "
                    "WHERE name = ?",
                    (now, step),
                )
                self.db.execute(
                    "INSERT INTO events VALUES (?, ?, 'started')", (now, step)
                )
        self.ended = []

    def _spawn(self, step: int) -> None:
        if self.logs:
            for stream in ("stdout", "stderr"):
                os.close(os.open(self.folder / f"{step}.{stream}", FLAGS, 0o600))
        process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pidfd = os.pidfd_open(process.pid)
        self.selector.register(pidfd, selectors.EVENT_READ, (step, process))
        self.running += 1

    def _wait(self) -> int:
        finished = 0
        for key, _ in self.selector.select():
            step, process = key.data
            self.selector.unregister(key.fd)
            os.close(key.fd)
            process.stdout.read()
            process.stderr.read()
            process.stdout.close()
            process.stderr.close()
            process.wait()
            self.running -= 1
            self.ended.append(step)
            self._release(step)
            finished += 1
        return finished

    def _release(self, step: int) -> None:
        if self.shape == "chain" and step + 1 < self.steps:
            self.ready.append(step + 1)
        elif self.shape == "fanout" and step == 0:
            self.ready.extend(range(1, self.steps))


def wall(shape: str, steps: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="runner-floor-", dir=args.tmp) as folder:
        started = time.perf_counter()
        loop = Loop(Path(folder), shape, steps, args)
        loop.run()
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--argv", action="store_true", help="exec true, no shell")
    parser.add_argument("--no-logs", dest="logs", action="store_false")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sync",
        default="FULL",
        choices=("FULL", "NORMAL", "OFF"),
        help="FULL is runner's; the others size what the fsync costs",
    )
    parser.add_argument("--tmp")
    args = parser.parse_args()

    for shape in ("fanout", "chain"):
        small = statistics.median(wall(shape, 100, args) for _ in range(args.repeats))
        large = statistics.median(wall(shape, 1000, args) for _ in range(args.repeats))
        slope = (large - small) / 900 * 1000
        print(f"{shape:7} 100: {small:.3f}s  1000: {large:.3f}s  ", end="")
        print(f"slope {slope:.2f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
