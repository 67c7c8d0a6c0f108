"""Problems found in a workflow file: where, how bad, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
PathPart = str | int


def format_path(path: Iterable[PathPart]) -> str:
    """`steps.build.needs[0]`, the JSON path users see in messages."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Problem:
    severity: Severity
    line: int
    column: int
    path: str
    message: str

    def as_error(self) -> Problem:
        """The same problem as an error, for `--strict`."""
        return Problem("error", self.line, self.column, self.path, self.message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
