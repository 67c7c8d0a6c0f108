"""docs/getting-started.md, followed word for word as a new user would.

Every `sh` block of the page runs, in order, in one bash session; the output
block after it is what the page promises. Times, ids and delays differ from
run to run, so what is compared is what a reader acts on: the exit codes the
page prints, each state change (`step X: status`), each status table row
(step, status, attempts) and the first lines of `validate` and `graph`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
TOUR = "/tmp/runner-tour"
BLOCK = re.compile(r"```(sh|text)\n(.*?)```", re.S)
MARK = "@@block {}@@"

EVENT = re.compile(r"^(?:\d\d:\d\d:\d\d )?((?:run|step \S+): \w+)")
ROW = re.compile(r"^  (\S+) +(\w+) +attempts (\d+)")
EXIT = re.compile(r"^exit \d+$")
LITERAL = re.compile(
    r"^(valid|  \d+  \S.*|plan of .*|wave \d+:|\S+:\d+:\d+: .*"
    r"|output of each step: .*|      (history|waiting for): .*|[a-z_]+ {2,}\S.*)$"
)
RUN_ID = re.compile(r"-\d{8}T\d{6}-[0-9a-f]{6}\b")


def _promises(text: str) -> list[str]:
    """The lines of an output block that the comparison holds to."""
    kept = []
    for line in RUN_ID.sub("-ID", text).splitlines():
        if match := EVENT.match(line):
            kept.append(match.group(1))
        elif match := ROW.match(line):
            kept.append(" ".join(match.groups()))
        elif EXIT.match(line) or LITERAL.match(line):
            kept.append(line)
    return kept


def _pairs() -> list[tuple[str, str | None]]:
    """Each `sh` block with the `text` block right after it, if any."""
    blocks = BLOCK.findall(PAGE.read_text())
    pairs: list[tuple[str, str | None]] = []
    for index, (kind, body) in enumerate(blocks):
        if kind != "sh":
            continue
        after = blocks[index + 1] if index + 1 < len(blocks) else None
        pairs.append((body, after[1] if after and after[0] == "text" else None))
    return pairs


def _checkout(tmp_path: Path) -> Path:
    """A folder that looks like the user's clone: workflows and `.venv/bin`."""
    clone = tmp_path / "clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / "workflows").symlink_to(ROOT / "workflows")
    runner = clone / ".venv" / "bin" / "runner"
    runner.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runner "$@"\n')
    runner.chmod(0o755)
    return clone


def _script(pairs: list[tuple[str, str | None]], tour: Path) -> str:
    lines = ["set -u"]
    for number, (body, _) in enumerate(pairs):
        # The install itself is what CI does; the user's first run is kept.
        command = body.rsplit("&& ", 1)[1] if "pip install" in body else body
        lines += [f"echo '{MARK.format(number)}'", command.replace(TOUR, str(tour))]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(sys.platform != "linux", reason="the page's commands are Linux")
def test_every_command_of_getting_started_works_as_written(tmp_path: Path) -> None:
    """Each block's exit codes, state changes and status rows match the page."""
    pairs = _pairs()
    tour = tmp_path / "runner-tour"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RUNNER_", "XDG_")) and key != "NO_COLOR"
    }
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")

    done = subprocess.run(
        ["bash", "-c", _script(pairs, tour)],
        cwd=_checkout(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="backslashreplace",
        timeout=180,
        check=False,
    )

    assert "Traceback" not in done.stdout, done.stdout
    outputs = re.split(r"^@@block \d+@@\n", done.stdout, flags=re.M)[1:]
    assert len(outputs) == len(pairs), done.stdout
    for (body, promised), shown in zip(pairs, outputs, strict=True):
        if promised is None:
            continue
        expected = [line.replace(TOUR, str(tour)) for line in _promises(promised)]
        assert _promises(shown) == expected, f"$ {body}\n{shown}"
    assert not tour.exists(), "the clean-up block removes the playground"
