"""Recovery commands usable from scripts: circuits, retry, stats."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from runner.cli.cmd_state import iso, open_store
from runner.cli.main import cli, state_option
from runner.errors import ExitCode, UsageError


def _circuit_json(described: dict[str, Any]) -> dict[str, Any]:
    return {**described, "opened_at": iso(described["opened_at"])}


def _describe(store: Any, name: str) -> dict[str, Any]:
    from runner.engine import breakers

    described = breakers.describe(store, name)
    if described is None:
        known = ", ".join(breakers.names(store)) or "none yet"
        raise UsageError(f"no circuit '{name}' in this state store (known: {known})")
    return _circuit_json(described)


def all_circuits(store: Any) -> list[dict[str, Any]]:
    from runner.engine import breakers

    return [_describe(store, name) for name in breakers.names(store)]


def _print_circuit(circuit: dict[str, Any]) -> None:
    opened = f"  opened {circuit['opened_at']}" if circuit["opened_at"] else ""
    click.echo(
        f"{circuit['name']:<24} {circuit['state']:<9} failures "
        f"{circuit['failure_count']}  successes {circuit['success_count']}{opened}"
    )


@cli.group(invoke_without_command=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@state_option
@click.pass_context
def circuits(ctx: click.Context, output: str) -> None:
    """Circuit breakers shared by every run on the store."""
    ctx.obj["output"] = output
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_circuits, output=output)


def _output(output: str | None) -> str:
    return output or click.get_current_context().find_root().obj.get("output", "text")


_out = click.option("-o", "--output", type=click.Choice(["text", "json"]))


@circuits.command("list")
@_out
@state_option
def list_circuits(output: str | None) -> None:
    """Every circuit and its state."""
    found = all_circuits(open_store())
    if _output(output) == "json":
        click.echo(json.dumps({"circuits": found}, indent=2))
        return
    for circuit in found:
        _print_circuit(circuit)


@circuits.command("show")
@click.argument("name")
@_out
@state_option
def show_circuit(name: str, output: str | None) -> None:
    """One circuit: state, counts, policy."""
    circuit = _describe(open_store(), name)
    if _output(output) == "json":
        click.echo(json.dumps(circuit, indent=2))
        return
    _print_circuit(circuit)
    click.echo(f"  policy: {json.dumps(circuit['policy'])}")


@circuits.command("reset")
@click.argument("name")
@state_option
def reset_circuit(name: str) -> None:
    """Close a circuit and forget its counts."""
    from runner.engine import breakers

    breakers.manual(open_store(), name, "reset")
    click.echo(f"circuit {name}: CLOSED")


@circuits.command("open")
@click.argument("name")
@state_option
def open_circuit(name: str) -> None:
    """Force a circuit open until it is reset."""
    from runner.engine import breakers

    breakers.manual(open_store(), name, "open")
    click.echo(f"circuit {name}: OPEN until 'runner circuits reset {name}'")


@circuits.command("check")
@click.argument("name")
@state_option
def check_circuit(name: str) -> None:
    """Exit 0 if a call would be admitted now, 1 if refused."""
    from runner.engine import breakers

    sys.exit(0 if breakers.would_admit(open_store(), name) else 1)


@circuits.command("record-failure")
@click.argument("name")
@state_option
def record_failure(name: str) -> None:
    """Count a failed call on a circuit."""
    from runner.engine import breakers

    for transition in breakers.record_outcome(open_store(), name, "failure"):
        click.echo(f"circuit {name}: {transition}")


@circuits.command("record-success")
@click.argument("name")
@state_option
def record_success(name: str) -> None:
    """Count a successful call on a circuit."""
    from runner.engine import breakers

    for transition in breakers.record_outcome(open_store(), name, "success"):
        click.echo(f"circuit {name}: {transition}")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("task_id")
@click.argument("command", nargs=-1, required=True)
@click.option(
    "--max-attempts", type=click.IntRange(min=1), default=3, show_default=True
)
@click.option("--circuit", help="Guard the command with this circuit.")
@click.option("--no-wait", is_flag=True, help="Fail at once if the circuit refuses.")
@click.option("--initial", default="1s", show_default=True, help="First backoff.")
@click.option("--multiplier", type=float, default=2.0, show_default=True)
@click.option(
    "--max", "max_delay", default="30s", show_default=True, help="Backoff cap."
)
@click.option(
    "--jitter",
    type=click.Choice(["full", "equal", "add", "none"]),
    default="full",
    show_default=True,
)
@click.option("--timeout", help="Per attempt, e.g. 30s.")
@state_option
def retry(
    task_id: str,
    command: tuple[str, ...],
    max_attempts: int,
    circuit: str | None,
    no_wait: bool,
    initial: str,
    multiplier: float,
    max_delay: str,
    jitter: str,
    timeout: str | None,
) -> None:
    """Run one command with classification, backoff, circuit and redrive.

    Write the command after `--`: runner retry fetch-1 -- curl -fsS URL
    """
    from runner.engine.oneshot import RetryRequest, run_retry

    request = RetryRequest(
        task_id=task_id,
        command=command,
        max_attempts=max_attempts,
        circuit=circuit,
        no_wait=no_wait,
        initial=initial,
        multiplier=multiplier,
        max_delay=max_delay,
        jitter=jitter,
        timeout=timeout,
        cwd=os.getcwd(),
    )
    sys.exit(int(run_retry(open_store(), request)))


@cli.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@state_option
def stats(output: str) -> None:
    """Recovery statistics of every run on the store."""
    from runner.engine.stats import recovery_stats

    store = open_store()
    totals = recovery_stats(store)
    totals["circuits"] = all_circuits(store)
    if output == "json":
        click.echo(json.dumps(totals, indent=2))
        return
    for key, value in totals.items():
        if key == "circuits":
            continue
        shown = json.dumps(value) if isinstance(value, dict) else value
        click.echo(f"{key:<24} {shown}")
    for circuit in totals["circuits"]:
        _print_circuit(circuit)


__all__ = ["ExitCode"]
