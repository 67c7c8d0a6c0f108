"""Run, resume and redrive: set a run up in the store, then hand it to the driver.

Each entry point validates first (nothing is recorded for an invalid
workflow), takes the run's lease, reconciles what a dead owner left, and
drives the run to its end or to a signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from runner.engine import breakers, jobs, ownership
from runner.engine.crashpoints import crashpoint
from runner.engine.driver import LEASE_SECONDS, Driver, Reporter
from runner.engine.stats import REDRIVABLE
from runner.engine.values import carried_params, parse_params
from runner.errors import ChangedError, ExitCode, UsageError
from runner.spec.model import OnCrash, Workflow
from runner.spec.validate import checker_id
from runner.store.sqlite import Store, Txn

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_RECOVERIES = int(os.environ.get("RUNNER_MAX_RECOVERIES", "20"))
UNFINISHED = ("running", "compensating", "interrupted")


@dataclass(frozen=True)
class RunRequest:
    workflow: Workflow
    params: Mapping[str, str]
    run_id: str | None
    concurrency: int
    park_refused: bool = True
    """False: a step its circuit refuses fails at once (`retry --no-wait`)."""


def start_run(store: Store, request: RunRequest, reporter: Reporter) -> ExitCode:
    workflow = request.workflow
    params = parse_params(workflow, request.params)
    run_id = request.run_id or _new_run_id(store, workflow.name)
    if not RUN_ID.match(run_id):
        raise UsageError(
            f"run id '{run_id}' is not valid; use letters, digits, '.', '_', '-'"
        )
    if store.run(run_id) is not None:
        raise UsageError(f"run id '{run_id}' is taken; choose another --run-id")
    _record_run(store, run_id, workflow, params)
    crashpoint("run.created")
    reporter("running", None, {"run_id": run_id})
    return _drive(
        store,
        run_id,
        workflow,
        params,
        request.concurrency,
        reporter,
        park_refused=request.park_refused,
    )


def _new_run_id(store: Store, name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def _record_run(
    store: Store, run_id: str, workflow: Workflow, params: dict[str, Any]
) -> None:
    owner = json.dumps(ownership.me())
    with store.write() as txn:
        txn.insert_run(
            {
                "run_id": run_id,
                "workflow": workflow.name,
                "kind": "workflow",
                "status": "running",
                "path": os.path.abspath(workflow.path),
                "source": workflow.source,
                "params": json.dumps(params),
                "started_at": txn.now,
                "epoch": 1,
                "owner": owner,
                "lease_until": txn.now + LEASE_SECONDS,
                "checked_by": checker_id(),
            }
        )
        txn.insert_pending_steps(run_id, list(workflow.steps))
        breakers.declare(txn, dict(workflow.circuits))
        txn.event("run.started", run_id, workflow=workflow.name)


def _drive(
    store: Store,
    run_id: str,
    workflow: Workflow,
    params: dict[str, Any],
    concurrency: int,
    reporter: Reporter,
    *,
    park_refused: bool = True,
) -> ExitCode:
    run = store.run(run_id)
    assert run is not None
    driver = Driver(
        store, run, workflow, params, concurrency=concurrency, reporter=reporter
    )
    driver.park_refused = park_refused
    with _forward_signals(driver.request_stop):
        return driver.drive()


class _forward_signals:
    """SIGINT and SIGTERM stop the driver at its next turn."""

    def __init__(self, stop: Callable[[int], None]) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.stop(signum)

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


# Resume ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeRequest:
    run_id: str | None
    workflow_file: Workflow | None
    """The workflow as it is now on disk, when it still validates."""
    accept_changes: bool
    original: bool
    concurrency: int


def pick_run(
    store: Store,
    run_id: str | None,
    statuses: tuple[str, ...],
) -> dict[str, Any] | None:
    """The named run, or the newest one in `statuses`; None when there is none."""
    if run_id is not None:
        run = store.run(run_id)
        if run is None:
            raise UsageError(
                f"no run '{run_id}' in this state store; see 'runner status'"
            )
        return run
    candidates = store.runs(statuses)
    return candidates[-1] if candidates else None


def nothing_to(purpose: str, statuses: tuple[str, ...]) -> str:
    return f"no {' or '.join(statuses)} run to {purpose}; nothing to do"


def changed_steps(stored: Workflow, current: Workflow) -> list[str]:
    """Names of steps added, removed or defined differently."""
    names = list(dict.fromkeys([*stored.steps, *current.steps]))
    return [n for n in names if stored.steps.get(n) != current.steps.get(n)]


def choose_workflow(
    run: dict[str, Any],
    stored: Workflow,
    current: Workflow | None,
    accept_changes: bool,
    original: bool,
) -> Workflow:
    """The stored copy, or the file on disk when it changed and that is accepted."""
    if original or current is None or current.source == stored.source:
        return stored
    if accept_changes:
        return current
    differing = changed_steps(stored, current) or ["(workflow settings)"]
    old = hashlib.sha256(stored.source.encode()).hexdigest()[:8]
    new = hashlib.sha256(current.source.encode()).hexdigest()[:8]
    raise ChangedError(
        f"workflow changed since run {run['run_id']} started (sha256 {old} -> {new}); "
        f"steps that differ: {', '.join(differing)}; pass --accept-changes to use "
        "the new file or --original to keep the stored copy"
    )


def resume_run(
    store: Store,
    run: dict[str, Any],
    workflow: Workflow,
    concurrency: int,
    reporter: Reporter,
) -> ExitCode:
    run_id = run["run_id"]
    if run["status"] not in UNFINISHED:
        details = {"run_id": run_id, "message": "nothing to do"}
        reporter("nothing", None, {**details, "status": run["status"]})
        return ExitCode.OK if run["status"] == "succeeded" else ExitCode.RUN_FAILED
    params = carried_params(workflow, json.loads(run["params"]), run_id)
    epoch, crashed = ownership.acquire(store, run_id, LEASE_SECONDS)
    if crashed and run["recoveries"] + 1 > MAX_RECOVERIES:
        return _give_up(store, run_id, epoch)
    _reconcile(store, run_id, epoch, workflow, params, crashed)
    crashpoint("resume.after_reconcile")
    reporter("resumed", None, {"run_id": run_id})
    return _drive(store, run_id, workflow, params, concurrency, reporter)


def _reconcile(
    store: Store,
    run_id: str,
    epoch: int,
    workflow: Workflow,
    params: dict[str, Any],
    crashed: bool,
) -> None:
    """Make sure attempts of a dead owner are dead, then reopen their steps."""
    steps = store.steps(run_id)
    for row in steps:
        step = workflow.steps.get(row["name"])
        if row["status"] in ("running", "compensating") and row["due_at"] is None:
            grace = step.kill_grace if step else 5.0
            token = jobs.attempt_token(store.key, run_id, row["name"], row["seq"])
            ownership.kill_leftovers(token, grace)
    run = store.run(run_id)
    assert run is not None
    back, undoing = _backward_work(store, run, steps)
    with store.write(run_id, epoch) as txn:
        if crashed:
            txn.update_run(run_id, recoveries=run["recoveries"] + 1)
        status = "compensating" if back else "running"
        txn.update_run(run_id, status=status, ended_at=None)
        txn.execute(
            "UPDATE attempts SET status = 'interrupted', ended_at = ? "
            "WHERE run_id = ? AND status = 'running'",
            (txn.now, run_id),
        )
        for row in steps:
            if row["name"] in undoing:
                txn.update_step(run_id, row["name"], status="compensating", due_at=None)
            else:
                _reopen(txn, run_id, row, workflow)
        _adopt(txn, run, workflow, params, steps)
        txn.event("run.resumed", run_id, after_crash=crashed)


def _backward_work(
    store: Store, run: dict[str, Any], steps: list[dict[str, Any]]
) -> tuple[bool, set[str]]:
    """Whether the run was compensating, and the compensations cut short."""
    if not _turned_back(store, run):
        return False, set()
    return True, _cut_short_compensations(store, run["run_id"], steps)


def _turned_back(store: Store, run: dict[str, Any]) -> bool:
    """Whether an unfinished run is compensating.

    A signal leaves a run `interrupted` whichever way it was going, so the
    direction comes from the journal: turning back is recorded with the
    `run.compensating` event, and only a redrive sets it again.
    """
    if run["status"] != "interrupted":
        return bool(run["status"] == "compensating")
    back = False
    for event in store.events(run["run_id"]):
        if event["kind"] == "run.compensating":
            back = True
        elif event["kind"] == "run.redriven":
            back = bool(json.loads(event["detail"] or "{}").get("backward"))
    return back


def _cut_short_compensations(
    store: Store, run_id: str, steps: list[dict[str, Any]]
) -> set[str]:
    """Steps whose last attempt, a compensation, a signal or crash cut short.

    A compensation is run again after a crash whatever `on_crash` says: that
    key is about the step's own command.
    """
    last: dict[str, str] = {}
    for attempt in store.attempts(run_id):
        last[attempt["step"]] = attempt["kind"]
    return {
        row["name"]
        for row in steps
        if row["status"] in ("interrupted", "compensating")
        and row["due_at"] is None
        and last.get(row["name"]) == "compensate"
    }


def _reopen(txn: Any, run_id: str, row: dict[str, Any], workflow: Workflow) -> None:
    name, status = row["name"], row["status"]
    step = workflow.steps.get(name)
    if status in ("running", "interrupted"):
        if step is not None and step.on_crash is OnCrash.FAIL:
            txn.update_step(
                run_id,
                name,
                status="failed",
                error_class=None,
                message="on_crash: fail; the attempt was cut short by a crash",
                ended_at=txn.now,
            )
            txn.event("step.failed", run_id, name, message="on_crash: fail")
        else:
            txn.update_step(run_id, name, status="pending", due_at=None)
    elif status == "compensating" and row["due_at"] is None:
        txn.update_step(run_id, name, status="compensating")


def _give_up(store: Store, run_id: str, epoch: int) -> ExitCode:
    """End a crash-looping run in its redrive queue.

    A run turned back ends `compensation_failed`, its unfinished compensations
    waiting for redrive, so a redrive goes on undoing instead of re-running
    forward steps that were being undone.
    """
    reason = f"max recovery attempts exceeded ({MAX_RECOVERIES})"
    run = store.run(run_id)
    assert run is not None
    steps = store.steps(run_id)
    back, undoing = _backward_work(store, run, steps)
    status = "compensation_failed" if back else "failed"
    with store.write(run_id, epoch) as txn:
        for row in steps:
            if row["name"] in undoing or row["status"] == "compensating":
                txn.update_step(
                    run_id,
                    row["name"],
                    status="compensation_failed",
                    due_at=None,
                    message=reason,
                )
            elif row["status"] in ("running", "interrupted"):
                txn.update_step(run_id, row["name"], status="failed", message=reason)
        run_reason = f"{run['reason']}; then {reason}" if back else reason
        txn.update_run(
            run_id, status=status, reason=run_reason, ended_at=txn.now, lease_until=0
        )
        txn.event(f"run.{status}", run_id, reason=reason)
    return ExitCode.RUN_FAILED


# Redrive ---------------------------------------------------------------------


def check_redrivable(store: Store, run_id: str) -> dict[str, Any]:
    """The run as stored now, if redrive may take it; writes nothing.

    Exit 4 while another live process drives it (a redrive in progress
    included), exit 2 when it is neither failed nor compensation_failed.
    """
    run = store.run(run_id)
    assert run is not None
    ownership.refuse_if_held(run_id, run["owner"], run["lease_until"], time.time())
    if run["status"] not in REDRIVABLE:
        raise UsageError(_not_redrivable(run))
    return run


def _not_redrivable(run: dict[str, Any]) -> str:
    run_id, status = run["run_id"], run["status"]
    if status in UNFINISHED:
        # Its driver is gone (check_redrivable refused a live one): a redrive
        # cut short lands here too, and resume is what finishes it.
        return (
            f"run {run_id} is interrupted, not failed; finish it with "
            f"'runner resume {run_id}'"
        )
    return (
        f"run {run_id} is {status}; only failed or compensation_failed runs "
        "can be redriven"
    )


def redrive_run(
    store: Store,
    run: dict[str, Any],
    workflow: Workflow,
    concurrency: int,
    reporter: Reporter,
) -> ExitCode:
    """Re-run failed steps with fresh budgets, or failed compensations.

    The run leaves the redrive queue in the one transaction that reopens it:
    a crash before it leaves the run failed (redrive again), a crash after it
    leaves an interrupted run that `resume` finishes.
    """
    run_id = run["run_id"]
    check_redrivable(store, run_id)
    params = carried_params(workflow, json.loads(run["params"]), run_id)
    epoch, _ = ownership.acquire(store, run_id, LEASE_SECONDS)
    held = store.run(run_id)
    assert held is not None
    if held["status"] not in REDRIVABLE:  # another redrive ended before we took it
        _release(store, run_id, epoch)
        raise UsageError(_not_redrivable(held))
    with store.write(run_id, epoch) as txn:
        _reopen_for_redrive(txn, store, held, workflow, params)
    crashpoint("redrive.after_reopen")
    reporter("redriven", None, {"run_id": run_id})
    return _drive(store, run_id, workflow, params, concurrency, reporter)


def _release(store: Store, run_id: str, epoch: int) -> None:
    with store.write(run_id, epoch) as txn:
        txn.update_run(run_id, lease_until=0)


def _reopen_for_redrive(
    txn: Txn,
    store: Store,
    run: dict[str, Any],
    workflow: Workflow,
    params: dict[str, Any],
) -> None:
    run_id = run["run_id"]
    backward = run["status"] == "compensation_failed"
    _adopt(txn, run, workflow, params, store.steps(run_id))
    for row in store.steps(run_id):  # read again: adopting may remove steps
        if backward and row["status"] == "compensation_failed":
            txn.update_step(
                run_id,
                row["name"],
                status="compensating",
                comp_attempts=0,
                due_at=None,
            )
        elif not backward and row["status"] == "failed":
            txn.update_step(
                run_id,
                row["name"],
                status="pending",
                attempts=0,
                due_at=None,
                first_started_at=None,
                message="redriven with a fresh retry budget",
            )
            txn.event("step.redriven", run_id, row["name"], after=row["attempts"])
    # A redrive is a person's decision after a fix: the crash-loop limit
    # counts from here, or a run failed by it would give up at the next crash.
    txn.update_run(
        run_id,
        status="compensating" if backward else "running",
        ended_at=None,
        reason=None if not backward else run["reason"],
        recoveries=0,
    )
    txn.event("run.redriven", run_id, backward=backward)


def _adopt(
    txn: Txn,
    run: dict[str, Any],
    workflow: Workflow,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    """Give the run the steps and params of an accepted changed file, and store it.

    Steps the file added start pending; rows of steps it removed go (their
    attempts stay in the history); params it added take their defaults. The
    stored copy becomes the accepted one, so a later resume or redrive
    compares the file with what actually runs.
    """
    if workflow.source == run["source"]:
        return
    run_id = run["run_id"]
    for row in rows:
        if row["name"] not in workflow.steps:
            txn.execute(
                "DELETE FROM steps WHERE run_id = ? AND name = ?",
                (run_id, row["name"]),
            )
            txn.event("step.removed", run_id, row["name"], status=row["status"])
    known = {row["name"] for row in rows}
    position = max((row["position"] for row in rows), default=-1)
    for name in workflow.steps:
        if name not in known:
            position += 1
            txn.insert_step(
                run_id, {"name": name, "position": position, "status": "pending"}
            )
            txn.event("step.added", run_id, name)
    breakers.declare(txn, dict(workflow.circuits))
    txn.update_run(
        run_id,
        source=workflow.source,
        checked_by=checker_id(),
        params=json.dumps(params),
    )
    txn.event("run.changes_accepted", run_id)
