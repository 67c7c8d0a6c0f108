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

from runner.engine import breakers, ownership
from runner.engine.crashpoints import crashpoint
from runner.engine.driver import LEASE_SECONDS, Driver, Reporter
from runner.engine.values import parse_params
from runner.errors import ChangedError, ExitCode, UsageError
from runner.spec.model import OnCrash, Workflow
from runner.store.sqlite import Store

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
            }
        )
        for position, name in enumerate(workflow.steps):
            txn.insert_step(
                run_id, {"name": name, "position": position, "status": "pending"}
            )
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
    store: Store, run_id: str | None, statuses: tuple[str, ...]
) -> dict[str, Any]:
    if run_id is not None:
        run = store.run(run_id)
        if run is None:
            raise UsageError(
                f"no run '{run_id}' in this state store; see 'runner status'"
            )
        return run
    candidates = store.runs(statuses)
    if not candidates:
        raise UsageError(f"no {' or '.join(statuses)} run to continue; nothing to do")
    return candidates[-1]


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
    epoch, crashed = ownership.acquire(store, run_id, LEASE_SECONDS)
    if crashed and run["recoveries"] + 1 > MAX_RECOVERIES:
        return _give_up(store, run_id, epoch, workflow)
    _reconcile(store, run_id, epoch, workflow, crashed)
    crashpoint("resume.after_reconcile")
    params = json.loads(run["params"])
    reporter("resumed", None, {"run_id": run_id})
    return _drive(store, run_id, workflow, params, concurrency, reporter)


def _reconcile(
    store: Store, run_id: str, epoch: int, workflow: Workflow, crashed: bool
) -> None:
    """Make sure attempts of a dead owner are dead, then reopen their steps."""
    steps = store.steps(run_id)
    for row in steps:
        step = workflow.steps.get(row["name"])
        if row["status"] in ("running", "compensating") and row["due_at"] is None:
            grace = step.kill_grace if step else 5.0
            ownership.kill_leftovers(run_id, row["name"], row["seq"], grace)
    run = store.run(run_id)
    assert run is not None
    with store.write(run_id, epoch) as txn:
        if crashed:
            txn.update_run(run_id, recoveries=run["recoveries"] + 1)
        back = run["status"] == "compensating"
        status = "compensating" if back else "running"
        txn.update_run(run_id, status=status, ended_at=None)
        txn.execute(
            "UPDATE attempts SET status = 'interrupted', ended_at = ? "
            "WHERE run_id = ? AND status = 'running'",
            (txn.now, run_id),
        )
        for row in steps:
            _reopen(txn, run_id, row, workflow)
        txn.event("run.resumed", run_id, after_crash=crashed)


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


def _give_up(store: Store, run_id: str, epoch: int, workflow: Workflow) -> ExitCode:
    reason = f"max recovery attempts exceeded ({MAX_RECOVERIES})"
    with store.write(run_id, epoch) as txn:
        for row in store.steps(run_id):
            if row["status"] in ("running", "interrupted", "compensating"):
                txn.update_step(run_id, row["name"], status="failed", message=reason)
        txn.update_run(
            run_id, status="failed", reason=reason, ended_at=txn.now, lease_until=0
        )
        txn.event("run.failed", run_id, reason=reason)
    return ExitCode.RUN_FAILED


# Redrive ---------------------------------------------------------------------


def redrive_run(
    store: Store,
    run: dict[str, Any],
    workflow: Workflow,
    concurrency: int,
    reporter: Reporter,
) -> ExitCode:
    """Re-run failed steps with fresh budgets, or failed compensations."""
    run_id = run["run_id"]
    if run["status"] not in ("failed", "compensation_failed"):
        raise UsageError(
            f"run {run_id} is {run['status']}; only failed or compensation_failed "
            "runs can be redriven"
        )
    epoch, _ = ownership.acquire(store, run_id, LEASE_SECONDS)
    backward = run["status"] == "compensation_failed"
    with store.write(run_id, epoch) as txn:
        for row in store.steps(run_id):
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
                )
        txn.update_run(
            run_id,
            status="compensating" if backward else "running",
            ended_at=None,
            reason=None if not backward else run["reason"],
        )
        txn.event("run.redriven", run_id, backward=backward)
    crashpoint("redrive.after_reopen")
    params = json.loads(run["params"])
    reporter("redriven", None, {"run_id": run_id})
    return _drive(store, run_id, workflow, params, concurrency, reporter)
