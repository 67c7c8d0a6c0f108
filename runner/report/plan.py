"""`runner run --dry-run`: the order in waves, pools, and what would be skipped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.report.graph import waves
from runner.spec import expressions
from runner.spec.model import Workflow


def render_plan(workflow: Workflow, params: Mapping[str, Any]) -> str:
    lines = [f"plan of {workflow.name}: {len(workflow.steps)} steps, nothing runs"]
    for index, wave in enumerate(waves(workflow), start=1):
        lines.append(f"wave {index}:")
        for name in wave:
            lines.append(f"  {name}{_notes(workflow, name, params)}")
    return "\n".join(lines)


def _notes(workflow: Workflow, name: str, params: Mapping[str, Any]) -> str:
    step = workflow.steps[name]
    notes = []
    if step.pool:
        notes.append(f"pool {step.pool} ({workflow.pools[step.pool]} at once)")
    if step.circuit:
        notes.append(f"circuit {step.circuit}")
    if step.if_ is not None:
        notes.append(_condition(step.if_, params))
    if step.check is not None:
        notes.append("skipped if its check passes")
    return f"  [{'; '.join(notes)}]" if notes else ""


def _condition(source: str, params: Mapping[str, Any]) -> str:
    """Whether `if` is decided by params alone, before anything runs."""
    parsed = expressions.parse(source)
    if any(ref.root != "params" for ref in parsed.references()):
        return f"if {source}: decided when it is reached"
    context = expressions.Context(params=params, env={}, steps={})
    try:
        value = parsed.evaluate(context)
    except expressions.ExpressionError as error:
        return f"if {source}: error: {error.message}"
    return "would run" if value is True else "would be skipped ('if' is false)"
