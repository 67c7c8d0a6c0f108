"""Helpers of the acceptance tests: the CLI, workflow files, ledgers, processes.

Acceptance tests drive the command line as a user would: real SQLite, real
processes, real signals. A ledger (FAULTS T3) is what the steps themselves
saw: each execution of a ledger step appends its start and end, so a test can
count executions and see overlaps, whatever the runner recorded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PYTHON = sys.executable
LEDGER_STEP = Path(__file__).with_name("ledger_step.py").resolve()


class Cli:
    """Runs `python -m runner ...` with a private state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.cwd = tmp_path

    def argv(self, args: tuple[str, ...], state: Path | str | None) -> list[str]:
        return [PYTHON, "-m", "runner", "--state", str(state or self.state), *args]

    def environment(self, env: dict[str, str] | None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        base.update(NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
        base.update(env or {})
        return base

    def __call__(
        self,
        *args: str,
        state: Path | str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args, state),
            cwd=cwd or self.cwd,
            env=self.environment(env),
            capture_output=True,
            text=True,
            errors="backslashreplace",
            timeout=timeout,
            check=False,
        )

    def start(
        self,
        *args: str,
        state: Path | str | None = None,
        env: dict[str, str] | None = None,
        **popen: Any,
    ) -> subprocess.Popen[str]:
        """Start the runner without waiting; output goes to pipes."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            self.argv(args, state),
            cwd=self.cwd,
            env=self.environment(env),
            text=True,
            errors="backslashreplace",
            **popen,
        )

    def status(self, run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        args = ("status", run_id, "-o", "json") if run_id else ("status", "-o", "json")
        done = self(*args, **kwargs)
        assert done.returncode == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def steps(self, run_id: str, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """The steps of `status RUN_ID -o json`, by name."""
        return {step["name"]: step for step in self.status(run_id, **kwargs)["steps"]}


@dataclass(frozen=True)
class Entry:
    """One ledger line: `STEP ATTEMPT PID EVENT TIME`."""

    step: str
    attempt: int
    pid: int
    event: str
    at: float


class Ledger:
    """A side-effect ledger file and the step commands that write to it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(self, step: str, milliseconds: int, exit_code: int = 0) -> str:
        """A shell string that runs the ledger helper for `step`."""
        return shlex.join(self.argv(step, milliseconds, exit_code))

    def argv(self, step: str, milliseconds: int, exit_code: int = 0) -> list[str]:
        return [
            PYTHON,
            "-I",
            "-S",
            str(LEDGER_STEP),
            str(self.path),
            step,
            str(milliseconds),
            str(exit_code),
        ]

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            step, attempt, pid, event, at = line.split()
            entries.append(Entry(step, int(attempt), int(pid), event, float(at)))
        return entries

    def of(self, step: str, event: str = "start") -> list[Entry]:
        return [e for e in self.entries() if e.step == step and e.event == event]

    def starts(self) -> list[Entry]:
        """Every execution's start, of any step."""
        return [e for e in self.entries() if e.event == "start"]

    def count(self, step: str) -> int:
        """Executions of `step` that began working."""
        return len(self.of(step))

    def overlaps(self) -> list[Entry]:
        return [e for e in self.entries() if e.event == "OVERLAP"]

    def max_parallel(self, steps: set[str] | None = None) -> int:
        """The most executions (of `steps`, default all) working at one time."""
        edges = sorted(
            (e.at, 1 if e.event == "start" else -1)
            for e in self.entries()
            if e.event in ("start", "end") and (steps is None or e.step in steps)
        )
        running = peak = 0
        for _, change in edges:
            running += change
            peak = max(peak, running)
        return peak

    def wait_for(self, step: str, event: str = "start", timeout: float = 20) -> Entry:
        """Block until `step` has an `event` line; the first one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(step, event)
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no '{event}' of step {step} in {self.path}")


def write_workflow(path: Path, document: dict[str, Any] | str) -> Path:
    """Write a workflow file (a mapping is dumped as YAML, in its key order)."""
    text = (
        document
        if isinstance(document, str)
        else yaml.safe_dump(document, sort_keys=False, width=10_000)
    )
    path.write_text(text, encoding="utf-8")
    return path


def processes_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rindex(b")") + 2 :].split()[0]
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def wait_gone(marker: str, timeout: float = 10) -> list[int]:
    """Wait until no process carries `marker`; those still left after timeout."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left
