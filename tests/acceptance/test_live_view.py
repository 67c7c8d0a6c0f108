"""The live view on a terminal, and plain lines in a pipe or with NO_COLOR."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

WORKFLOW = """\
version: 1
name: live
steps:
  first: {run: "sleep 0.3"}
  second: {run: "true", needs: [first]}
"""


def _run_on_terminal(tmp_path: Path, env: dict[str, str]) -> str:
    """Run the CLI with a pseudo-terminal as stdout; return what it showed."""
    (tmp_path / "wf.yml").write_text(WORKFLOW)
    main, child = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "--state",
            str(tmp_path / "state"),
            "run",
            "wf.yml",
        ],
        cwd=tmp_path,
        stdout=child,
        stderr=child,
        env=env,
    )
    os.close(child)
    shown = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        shown += data
    assert process.wait(timeout=30) == 0
    os.close(main)
    return shown.decode("utf-8", errors="replace")


def test_a_terminal_gets_a_table_of_steps(tmp_path: Path) -> None:
    """On a terminal the run shows a table with state, attempt and elapsed time."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    shown = _run_on_terminal(tmp_path, env)
    assert "attempt" in shown and "elapsed" in shown
    assert "first" in shown and "succeeded" in shown


def test_no_color_gets_plain_lines_even_on_a_terminal(tmp_path: Path) -> None:
    """NO_COLOR turns the table into one plain line per state change."""
    shown = _run_on_terminal(tmp_path, {**os.environ, "NO_COLOR": "1"})
    assert "step first: running (attempt 1)" in shown
    assert "step second: succeeded" in shown
    assert "┃" not in shown


def test_a_pipe_gets_plain_lines(tmp_path: Path) -> None:
    """In a pipe, each state change is one line."""
    (tmp_path / "wf.yml").write_text(WORKFLOW)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "--state",
            str(tmp_path / "state"),
            "run",
            "wf.yml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.endswith("step first: succeeded") for line in lines)
    assert lines[-2].endswith("run: succeeded")
    assert lines[-1].startswith("output of each step: runner logs live-")
