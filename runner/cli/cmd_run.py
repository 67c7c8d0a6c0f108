"""Commands that drive runs: run, resume, redrive."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from runner.cli.main import cli, state_option
from runner.errors import ChangedError, ExitCode, LockedError, UsageError

if TYPE_CHECKING:
    from runner.engine.driver import Reporter
    from runner.spec.model import Workflow
    from runner.store.sqlite import Store


def _concurrency(value: int | None) -> int:
    return value if value is not None else (os.cpu_count() or 2)


def _state_dir() -> str:
    from runner.store.location import resolve_state

    state: str | None = click.get_current_context().find_root().obj["state"]
    return resolve_state(state)


def _open_store() -> Store:
    from runner.store.sqlite import Store

    return Store(_state_dir())


def _with_reporter(steps: list[str], work: Callable[[Reporter], ExitCode]) -> None:
    from runner.report.progress import make_reporter

    reporter = make_reporter(steps)
    try:
        code = work(reporter)
    finally:
        reporter.close()
    sys.exit(int(code))


@cli.command()
@click.argument("file")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="A parameter value; repeat for more.",
)
@click.option("--run-id", help="Name the run (exit 2 if taken).")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Steps running at once (default: the number of CPUs).",
)
@click.option("--dry-run", is_flag=True, help="Show the plan, run nothing.")
@state_option
def run(
    file: str,
    params: tuple[str, ...],
    run_id: str | None,
    concurrency: int | None,
    dry_run: bool,
) -> None:
    """Start a run of a workflow."""
    from runner.engine.lifecycle import RunRequest, start_run
    from runner.engine.values import parse_param_args, parse_params
    from runner.spec.validate import load_workflow

    workflow = load_workflow(file)
    given = parse_param_args(params)
    if dry_run:
        from runner.report.plan import render_plan

        values = parse_params(workflow, given)
        click.echo(render_plan(workflow, values))
        return
    store = _open_store()
    request = RunRequest(workflow, given, run_id, _concurrency(concurrency))
    _with_reporter(
        list(workflow.steps),
        lambda reporter: start_run(store, request, reporter),
    )


def _stored_and_current(run: dict[str, Any], accept: bool, original: bool) -> Workflow:
    from runner.engine.lifecycle import choose_workflow
    from runner.spec.validate import (
        InvalidWorkflow,
        build_checked,
        check_file,
        check_text,
        checker_id,
        read_source,
    )

    if run["checked_by"] == checker_id():
        # This validator accepted the copy when it was stored: checking the
        # same text again could only cost time.
        stored: Workflow | None = build_checked(run["path"], run["source"])
    else:
        stored = check_text(run["path"], run["source"]).workflow
    if stored is None:
        raise UsageError(f"the stored copy of run {run['run_id']} no longer validates")
    if original or not os.path.exists(run["path"]):
        return choose_workflow(run, stored, None, accept, original)
    if read_source(run["path"]) == run["source"]:
        return stored  # unchanged: validating it again would only cost time
    report = check_file(run["path"])
    if report.workflow is None and accept:
        raise InvalidWorkflow(report)
    return choose_workflow(run, stored, report.workflow, accept, original)


_accept = click.option(
    "--accept-changes",
    is_flag=True,
    help="Use the changed workflow file for steps not yet succeeded.",
)
_original = click.option(
    "--original",
    is_flag=True,
    help="Keep the workflow copy stored when the run started.",
)
_conc = click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Steps running at once (default: the number of CPUs).",
)


@cli.command()
@click.argument("run_id", required=False)
@_accept
@_original
@_conc
@state_option
def resume(
    run_id: str | None, accept_changes: bool, original: bool, concurrency: int | None
) -> None:
    """Continue an interrupted run (default: the newest unfinished one)."""
    from runner.engine.lifecycle import UNFINISHED, nothing_to, pick_run, resume_run

    store = _open_store()
    run = pick_run(store, run_id, UNFINISHED)
    if run is None:
        click.echo(nothing_to("continue", UNFINISHED))
        return
    workflow = _stored_and_current(run, accept_changes, original)
    _with_reporter(
        list(workflow.steps),
        lambda reporter: resume_run(
            store, run, workflow, _concurrency(concurrency), reporter
        ),
    )


@cli.command()
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Redrive every failed run.")
@_accept
@_original
@_conc
@state_option
def redrive(
    run_id: str | None,
    all_runs: bool,
    accept_changes: bool,
    original: bool,
    concurrency: int | None,
) -> None:
    """Re-run failed steps (or failed compensations) with fresh retry budgets."""
    from runner.engine.lifecycle import nothing_to, pick_run
    from runner.engine.stats import REDRIVABLE

    if all_runs and run_id:
        raise UsageError("give a RUN_ID or --all, not both")
    store = _open_store()
    choice = (accept_changes, original, _concurrency(concurrency))
    if not all_runs:
        run = pick_run(store, run_id, REDRIVABLE)
        if run is None:
            click.echo(nothing_to("redrive", REDRIVABLE))
            return
        sys.exit(int(_redrive_one(store, run, *choice)))
    runs = store.runs(REDRIVABLE)
    if not runs:
        click.echo(nothing_to("redrive", REDRIVABLE))
    worst = ExitCode.OK
    for run in runs:
        try:
            code = _redrive_one(store, run, *choice)
        except (ChangedError, LockedError, UsageError) as error:
            # One run refused (held, edited, redriven meanwhile): the others go on.
            click.echo(error.message, err=True)
            code = error.exit_code
        if code in (ExitCode.SIGINT, ExitCode.SIGTERM):
            sys.exit(int(code))
        worst = max(worst, code)
    sys.exit(int(worst))


def _redrive_one(
    store: Store, run: dict[str, Any], accept: bool, original: bool, concurrency: int
) -> ExitCode:
    from runner.engine.lifecycle import check_redrivable, redrive_run
    from runner.report.progress import PlainReporter

    run = check_redrivable(store, run["run_id"])
    workflow = _stored_and_current(run, accept, original)
    reporter = PlainReporter()
    code = redrive_run(store, run, workflow, concurrency, reporter)
    reporter.close()
    return code
