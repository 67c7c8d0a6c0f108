"""Reporters for a run's lifecycle: plain lines, or a live table on a terminal.

The engine calls a reporter with (status, step or None, details) at every
state change; a reporter only shows, it decides nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


class PlainReporter:
    """One line per state change: for pipes, logs and `NO_COLOR`."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.run_id = ""

    def __call__(self, status: str, step: str | None, details: dict[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S")
        subject = f"step {step}" if step else "run"
        self.run_id = details.get("run_id") or self.run_id
        self._write(f"{stamp} {subject}: {status}{_details(details)}\n")

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reader went away; the run itself goes on

    def close(self) -> None:
        if self.run_id:
            self._write(f"{logs_hint(self.run_id)}\n")


def logs_hint(run_id: str) -> str:
    """Where the steps' output is: the live view and plain lines show states."""
    return f"output of each step: runner logs {run_id}"


def _details(details: dict[str, Any]) -> str:
    parts = []
    if details.get("run_id"):
        parts.append(str(details["run_id"]))
    if details.get("attempt") is not None:
        kind = details.get("kind")
        word = "compensation attempt" if kind == "compensate" else "attempt"
        parts.append(f"{word} {details['attempt']}")
    if details.get("delay") is not None:
        parts.append(f"retry in {details['delay']:.2f}s")
    for key in ("message", "reason", "status"):
        if details.get(key):
            parts.append(str(details[key]))
    return f" ({'; '.join(parts)})" if parts else ""


class LiveReporter:
    """A table of steps with state, attempt and elapsed time (rich)."""

    def __init__(self, steps: list[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.rows: dict[str, list[Any]] = {
            name: ["pending", "", None, None] for name in steps
        }
        self.run_status = "running"
        self.run_id = ""
        self.live = Live(
            self._table(),
            console=Console(stderr=False),
            refresh_per_second=4,
            get_renderable=self._table,
        )
        self.live.start()

    def __call__(self, status: str, step: str | None, details: dict[str, Any]) -> None:
        if step is None:
            self.run_status = status
            self.run_id = details.get("run_id") or self.run_id
            return
        row = self.rows.setdefault(step, ["pending", "", None, None])
        row[0] = status
        if details.get("attempt") is not None:
            row[1] = str(details["attempt"])
        if status in ("running", "compensating") and details.get("attempt"):
            row[2], row[3] = time.monotonic(), None
        elif row[2] is not None and row[3] is None:
            row[3] = time.monotonic()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(caption=f"run {self.run_id}: {self.run_status}")
        for column in ("step", "state", "attempt", "elapsed"):
            table.add_column(column)
        now = time.monotonic()
        for name, (status, attempt, since, until) in self.rows.items():
            elapsed = f"{(until or now) - since:.1f}s" if since else ""
            table.add_row(name, status, attempt, elapsed)
        return table

    def close(self) -> None:
        self.live.stop()
        if self.run_id:
            self.live.console.print(logs_hint(self.run_id), highlight=False)


def make_reporter(steps: list[str]) -> PlainReporter | LiveReporter:
    """Live table on a terminal; plain lines in a pipe or with NO_COLOR."""
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return LiveReporter(steps)
    return PlainReporter()
