"""Validation problems as text, JSON or GitHub Actions annotations."""

from __future__ import annotations

import json
from collections.abc import Sequence

from runner.spec.validate import Report, format_problem


def as_text(reports: Sequence[Report]) -> str:
    lines = [format_problem(r.path, p) for r in reports for p in r.problems]
    return "\n".join(lines)


def as_github(reports: Sequence[Report]) -> str:
    return "\n".join(
        f"::{p.severity} file={r.path},line={p.line},col={p.column}::"
        + _escape(p.message)
        for r in reports
        for p in r.problems
    )


def _escape(message: str) -> str:
    """GitHub's workflow-command escaping for the message part."""
    return message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def as_json(reports: Sequence[Report]) -> str:
    files = [
        {
            "file": r.path,
            "valid": not r.has_errors(),
            "problems": [
                {
                    "severity": p.severity,
                    "line": p.line,
                    "column": p.column,
                    "path": p.path,
                    "message": p.message,
                }
                for p in r.problems
            ],
        }
        for r in reports
    ]
    return json.dumps({"files": files}, indent=2)
