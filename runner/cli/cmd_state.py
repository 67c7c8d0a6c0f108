"""Commands that read the state store: status, logs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from runner.cli.main import cli, state_option
from runner.errors import UsageError


def iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


def open_store() -> Any:
    from runner.store.location import resolve_state
    from runner.store.sqlite import Store

    return Store(resolve_state(click.get_current_context().find_root().obj["state"]))


def shown_status(run: dict[str, Any]) -> str:
    """`interrupted` as soon as the driver of an unfinished run is gone."""
    from runner.engine.ownership import owner_alive

    if run["status"] in ("running", "compensating"):
        owner = json.loads(run["owner"]) if run["owner"] else None
        if not owner_alive(owner):
            return "interrupted"
    return str(run["status"])


def _run_json(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run["run_id"],
        "workflow": run["workflow"],
        "status": shown_status(run),
        "started_at": iso(run["started_at"]),
        "ended_at": iso(run["ended_at"]),
    }


def _step_json(
    row: dict[str, Any], history: list[dict[str, Any]], run_status: str
) -> dict[str, Any]:
    duration = None
    if row["first_started_at"] and row["ended_at"]:
        duration = round(row["ended_at"] - row["first_started_at"], 3)
    from runner.engine.stats import waits_for_redrive

    queued = waits_for_redrive(run_status, row["status"])
    tail = None
    if queued:
        tail = next((a["tail"] for a in reversed(history) if a["tail"]), None)
    return {
        "name": row["name"],
        "status": row["status"],
        "attempts": row["attempts"],
        "error_class": row["error_class"],
        "rule": row["rule"],
        "message": row["message"],
        "started_at": iso(row["first_started_at"]),
        "ended_at": iso(row["ended_at"]),
        "duration": duration,
        "outputs": json.loads(row["outputs"]) if row["outputs"] else {},
        "redrive": queued,
        "tail": tail,
        "history": [_attempt_json(attempt) for attempt in history],
    }


def _attempt_json(attempt: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": attempt["kind"],
        "number": attempt["number"],
        "status": attempt["status"],
        "exit_code": attempt["exit_code"],
        "signal": attempt["signal"],
        "error_class": attempt["error_class"],
        "rule": attempt["rule"],
        "started_at": iso(attempt["started_at"]),
        "ended_at": iso(attempt["ended_at"]),
    }


def _print_step(step: dict[str, Any]) -> None:
    extra = f"  {step['error_class']}: {step['rule']}" if step["error_class"] else ""
    took = f"  {step['duration']}s" if step["duration"] is not None else ""
    click.echo(
        f"  {step['name']:<24} {step['status']:<20} "
        f"attempts {step['attempts']}{took}{extra}"
    )
    if step["message"]:
        click.echo(f"      {step['message']}")
    if not step["redrive"]:
        return
    history = ", ".join(
        f"{a['kind']} {a['number']} {a['status']}"
        + (f" ({a['error_class']})" if a["error_class"] else "")
        for a in step["history"]
    )
    click.echo(f"      history: {history or 'no attempt'}")
    lines = (step["tail"] or "").rstrip("\n").splitlines()[-5:]
    for line in lines:
        click.echo(f"      | {line}")
    click.echo(f"      waiting for: runner redrive {step['run_id']}")


@cli.command()
@click.argument("run_id", required=False)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@state_option
def status(run_id: str | None, output: str) -> None:
    """Runs, or one run's steps: state, attempts, error class, durations."""
    store = open_store()
    if run_id is None:
        runs = [_run_json(run) for run in store.runs()]
        if output == "json":
            click.echo(json.dumps({"runs": runs}, indent=2))
        else:
            for run in runs:
                click.echo(
                    f"{run['run_id']}  {run['workflow']}  {run['status']}  "
                    f"{run['started_at']}"
                )
        return
    run = store.run(run_id)
    if run is None:
        raise UsageError(f"no run '{run_id}' in this state store; see 'runner status'")
    document = _run_json(run)
    document["reason"] = run["reason"]
    history: dict[str, list[dict[str, Any]]] = {}
    for attempt in store.attempts(run_id):
        history.setdefault(attempt["step"], []).append(attempt)
    document["steps"] = [
        _step_json(row, history.get(row["name"], []), run["status"])
        for row in store.steps(run_id)
    ]
    if output == "json":
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"run {run_id} ({run['workflow']}): {document['status']}")
    if run["reason"]:
        click.echo(f"  reason: {run['reason']}")
    for step in document["steps"]:
        _print_step({**step, "run_id": run_id})


@cli.command()
@click.argument("run_id")
@click.argument("step", required=False)
@state_option
def logs(run_id: str, step: str | None) -> None:
    """Captured output, attempt by attempt."""
    from runner.engine.jobs import attempt_prefix

    store = open_store()
    if store.run(run_id) is None:
        raise UsageError(f"no run '{run_id}' in this state store; see 'runner status'")
    attempts = store.attempts(run_id, step)
    if (
        step is not None
        and not attempts
        and step not in {row["name"] for row in store.steps(run_id)}
    ):
        raise UsageError(f"run {run_id} has no step '{step}'")
    redrives = [event["at"] for event in store.events(run_id, "run.redriven")]
    out = sys.stdout.buffer
    shown = 0
    for attempt in attempts:
        # Attempt numbers start again at 1 after a redrive: say where.
        while shown < len(redrives) and redrives[shown] <= attempt["started_at"]:
            shown += 1
            when = iso(redrives[shown - 1])
            mark = f"== redrive {shown} at {when}: attempts counted from 1 again =="
            out.write(mark.encode() + b"\n")
        head = (
            f"== {attempt['step']} {attempt['kind']} attempt {attempt['number']} "
            f"({attempt['status']}"
        )
        if attempt["error_class"]:
            head += f", {attempt['error_class']}: {attempt['rule']}"
        out.write((head + ") ==\n").encode())
        prefix = attempt_prefix(
            store.state_dir, run_id, attempt["step"], attempt["seq"], attempt["kind"]
        )

        for stream in ("stdout", "stderr"):
            _copy(prefix + f".{stream}", out, stream)
    out.flush()


def _copy(path: str, out: Any, label: str) -> None:
    try:
        with open(path, "rb") as file:
            data = file.read(64 * 1024 * 1024)
    except FileNotFoundError:
        return
    if data:
        out.write(f"-- {label} --\n".encode())
        out.write(data if data.endswith(b"\n") else data + b"\n")
