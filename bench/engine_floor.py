"""The floor for runner's design: a durable commit before every start, in Python.

A single-threaded loop does per step what the engine must do, and nothing
else: one transaction (WAL, synchronous=FULL) recording the steps that ended
and the steps about to start, then the starts (posix_spawn in a new session,
stdout and stderr on pipes), then a wait on pidfds and pipes in one epoll.
No validation, no model, no reporter, no retry policy. Its slope beside
make's shows how much of runner's per-step cost the design itself needs:
what is left above the floor is runner's own overhead.

    .venv/bin/python bench/engine_floor.py                # fan-out and chain
    .venv/bin/python bench/engine_floor.py --sync OFF     # size the fsync
    .venv/bin/python bench/engine_floor.py --shape chain --steps 1000 --once DIR

`--once DIR` runs one loop in DIR and exits: bench/engine.py times it as the
tool `floor`, side by side with runner and make.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

CONCURRENCY = 2
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class Loop:
    """Runs N steps of `true` as a chain or a fan-out, journaling each start."""

    def __init__(self, folder: Path, shape: str, steps: int, args: argparse.Namespace):
        self.shape, self.steps = shape, steps
        if args.argv:
            self.path, self.argv = "/usr/bin/true", ["true"]
        else:
            self.path, self.argv = "/bin/sh", ["/bin/sh", "-c", "true"]
        self.db = sqlite3.connect(folder / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA synchronous = {args.sync}")
        self.db.execute(
            "CREATE TABLE steps (name TEXT PRIMARY KEY, status TEXT, "
            "started_at REAL, ended_at REAL)"
        )
        self.db.execute("CREATE TABLE events (at REAL, step TEXT, kind TEXT)")
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT INTO steps VALUES (?, 'pending', 0, 0)",
            [(str(index),) for index in range(steps)],
        )
        self.db.execute("COMMIT")
        self.epoll = select.epoll()
        self.env = dict(os.environ)
        self.ready: deque[int] = deque([0])
        self.running: dict[int, tuple[int, int, int, int]] = {}
        """pidfd -> (step, pid, stdout, stderr)"""
        self.ended: list[int] = []

    def run(self) -> None:
        done = 0
        while done < self.steps:
            starts: list[int] = []
            while self.ready and len(self.running) + len(starts) < CONCURRENCY:
                starts.append(self.ready.popleft())
            self._record(starts)
            for step in starts:
                self._spawn(step)
            done += self._wait()

    def _record(self, starts: list[int]) -> None:
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        for step in self.ended:
            self.db.execute(
                "UPDATE steps SET status = 'succeeded', ended_at = ? WHERE name = ?",
                (now, str(step)),
            )
        for step in starts:
            self.db.execute(
                "UPDATE steps SET status = 'running', started_at = ? WHERE name = ?",
                (now, str(step)),
            )
        events = [(now, str(s), "ended") for s in self.ended]
        events += [(now, str(s), "started") for s in starts]
        self.db.executemany("INSERT INTO events VALUES (?, ?, ?)", events)
        self.db.execute("COMMIT")
        self.ended = []

    def _spawn(self, step: int) -> None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.posix_spawn(
            self.path,
            self.argv,
            self.env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT_SIGNALS,
        )
        os.close(out_w)
        os.close(err_w)
        pidfd = os.pidfd_open(pid)
        self.epoll.register(pidfd, select.EPOLLIN)
        self.running[pidfd] = (step, pid, out_r, err_r)

    def _wait(self) -> int:
        finished = 0
        for pidfd, _ in self.epoll.poll():
            step, pid, out_r, err_r = self.running.pop(pidfd)
            self.epoll.unregister(pidfd)
            os.close(pidfd)
            for fd in (out_r, err_r):
                os.read(fd, 65536)
                os.close(fd)
            os.waitpid(pid, 0)
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
        Loop(Path(folder), shape, steps, args).run()
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--argv", action="store_true", help="exec true, no shell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sync",
        default="FULL",
        choices=("FULL", "NORMAL", "OFF"),
        help="FULL is runner's; the others size what the fsync costs",
    )
    parser.add_argument("--tmp")
    parser.add_argument("--shape", choices=("fanout", "chain"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--once", metavar="DIR", help="run one loop in DIR, exit")
    args = parser.parse_args()

    if args.once:
        Loop(Path(args.once), args.shape or "fanout", args.steps, args).run()
        return 0
    for shape in (args.shape,) if args.shape else ("fanout", "chain"):
        small = statistics.median(wall(shape, 100, args) for _ in range(args.repeats))
        large = statistics.median(wall(shape, 1000, args) for _ in range(args.repeats))
        slope = (large - small) / 900 * 1000
        print(f"{shape:7} 100: {small:.3f}s  1000: {large:.3f}s  ", end="")
        print(f"slope {slope:.2f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
