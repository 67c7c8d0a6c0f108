"""`runner retry`: one command as a one-step run, no workflow file.

The run gets the same classification, backoff, circuit and redrive queue as
a workflow step. Its stored source is a generated workflow, so `status`,
`logs`, `resume` and `redrive` work on it like on any run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from runner.engine import breakers
from runner.engine.jobs import attempt_prefix
from runner.engine.lifecycle import RUN_ID, RunRequest, start_run
from runner.errors import ExitCode, UsageError
from runner.report.progress import PlainReporter
from runner.spec.model import CircuitPolicy
from runner.spec.validate import InvalidWorkflow, check_text
from runner.store.sqlite import Store

STEP = "task"


@dataclass(frozen=True)
class RetryRequest:
    task_id: str
    command: tuple[str, ...]
    max_attempts: int
    circuit: str | None
    no_wait: bool
    initial: str
    multiplier: float
    max_delay: str
    jitter: str
    timeout: str | None
    cwd: str


def _literal(text: str) -> str:
    """A JSON string (valid YAML) whose `${{` cannot start an expression."""
    return json.dumps(text.replace("${{", "${{ '${{' }}"))


def workflow_source(request: RetryRequest, policy: CircuitPolicy | None = None) -> str:
    """The one-step workflow; `policy` is the circuit's, declared unchanged."""
    lines = [
        "version: 1",
        "name: retry",
        "steps:",
        f"  {STEP}:",
        f"    run: [{', '.join(_literal(part) for part in request.command)}]",
        "    retry:",
        f"      max_attempts: {request.max_attempts}",
        f"      backoff: {{initial: {json.dumps(request.initial)}, "
        f"multiplier: {request.multiplier}, max: {json.dumps(request.max_delay)}, "
        f"jitter: {request.jitter}}}",
    ]
    if request.timeout:
        lines.append(f"    timeout: {json.dumps(request.timeout)}")
    if request.circuit:
        lines.append(f"    circuit: {json.dumps(request.circuit)}")
        declared = json.dumps(asdict(policy or CircuitPolicy()))
        lines += ["circuits:", f"  {json.dumps(request.circuit)}: {declared}"]
    return "\n".join(lines) + "\n"


def _stored_policy(store: Store, request: RetryRequest) -> CircuitPolicy | None:
    """A circuit named only here keeps its stored policy (else the defaults)."""
    if request.circuit is None:
        return None
    with store.write() as txn:
        _, policy = breakers.load(txn, request.circuit)
    return policy


def _free_run_id(store: Store, task_id: str) -> str:
    if not RUN_ID.match(task_id):
        raise UsageError(
            f"task id '{task_id}' is not valid; use letters, digits, '.', '_', '-'"
        )
    candidate, number = task_id, 1
    while store.run(candidate) is not None:
        number += 1
        candidate = f"{task_id}-{number}"
    return candidate


def run_retry(store: Store, request: RetryRequest) -> ExitCode:
    path = os.path.join(request.cwd, f".runner-retry-{request.task_id}.yml")
    source = workflow_source(request, _stored_policy(store, request))
    report = check_text(path, source)
    if report.workflow is None:
        raise InvalidWorkflow(report)
    run_id = _free_run_id(store, request.task_id)
    run = RunRequest(
        report.workflow, {}, run_id, concurrency=1, park_refused=not request.no_wait
    )
    code = start_run(store, run, PlainReporter(sys.stderr))
    _replay_output(store, run_id)
    return code


def _replay_output(store: Store, run_id: str) -> None:
    """Show the last attempt's output, as if the command had run in place."""
    attempts = [a for a in store.attempts(run_id, STEP) if a["kind"] == "run"]
    if not attempts:
        return
    last = attempts[-1]
    prefix = attempt_prefix(store.state_dir, run_id, STEP, last["seq"], "run")
    for suffix, stream in ((".stdout", sys.stdout), (".stderr", sys.stderr)):
        try:
            with open(prefix + suffix, "rb") as file:
                data = file.read(16 * 1024 * 1024)
        except FileNotFoundError:
            continue
        stream.flush()
        stream.buffer.write(data)
        stream.flush()
