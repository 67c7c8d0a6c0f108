"""The engine's loop: decide, record, then act.

One thread drives a run. Each turn it takes the outcomes of finished jobs,
decides what follows (retry, next steps, turning back), and records all of it
in one transaction before it starts any process. So what happens together
(steps finishing at once, a step's end and its dependents' start) costs one
commit, and a crash at any instant leaves a journal that says exactly which
attempts may have been running.

Forward, steps start as soon as their needs are done, within the run's
concurrency and each pool's limit. On a permanent failure (or exhausted
retries with `on_exhausted: compensate`) the run turns back: no new step
starts, running ones finish, then each succeeded step's `compensate` runs
after every succeeded step that needs it has been compensated.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.engine import breakers, jobs, values
from runner.engine.crashpoints import crashpoint
from runner.engine.jobs import Job, Launch
from runner.engine.process import AttemptResult
from runner.engine.reactor import Reactor
from runner.errors import ExitCode, LockedError, StoreError
from runner.policy.backoff import decide_retry
from runner.policy.classify import Classification, Failure, classify
from runner.policy.compensation import blockers, dependents_of, reached
from runner.spec import expressions
from runner.spec.model import OnExhausted, RetryPolicy, Step, Workflow
from runner.store.sqlite import Store, Txn

DONE = frozenset({"succeeded", "skipped"})
FINAL = frozenset({"succeeded", "skipped", "failed", "cancelled"})
FORWARD_BUSY = frozenset({"pending", "waiting", "running"})
"""Step statuses that, in a run turned back, mean forward work is not over."""
PASSED_OVER = "passed over: no compensate"
LEASE_SECONDS = float(os.environ.get("RUNNER_LEASE_SECONDS", "30"))
Reporter = Callable[[str, str | None, dict[str, Any]], None]


@dataclass
class StepState:
    step: Step
    position: int
    status: str = "pending"
    attempts: int = 0
    seq: int = 0
    comp_attempts: int = 0
    first_started_at: float | None = None
    due_at: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    passed_over: bool = False
    """The backward order reached this step, which has no `compensate`."""


@dataclass
class Write:
    """A change to record in the next transaction."""

    apply: Callable[[Txn], None]
    after: str | None = None
    """A crash point to pass once the transaction holding this write commits."""


class Driver:
    """Drives one run, forward or backward, until it ends or is stopped."""

    def __init__(
        self,
        store: Store,
        run: dict[str, Any],
        workflow: Workflow,
        params: dict[str, Any],
        *,
        concurrency: int,
        reporter: Reporter,
    ) -> None:
        self.store = store
        self.run_id: str = run["run_id"]
        self.epoch: int = run["epoch"]
        self.workflow = workflow
        self.renderer = values.Renderer(workflow, params)
        self.concurrency = max(1, concurrency)
        self.reporter = reporter
        self.shown: list[tuple[str, str | None, dict[str, Any]]] = []
        """Changes to show once the transaction recording them commits."""
        self.backward = run["status"] == "compensating"
        self.states = {
            row["name"]: _state(workflow.steps[row["name"]], row)
            for row in store.steps(self.run_id)
        }
        self.needs = {name: step.needs for name, step in workflow.steps.items()}
        self.dependents = dependents_of(self.needs)
        self.writes: list[Write] = []
        self.reactor = Reactor()
        self.ended: list[Job] = []
        """Jobs that finished during the last poll of the reactor."""
        self.running: dict[str, Job] = {}
        self.pool_use: dict[str | None, int] = {}
        self.ready: dict[str | None, deque[str]] = {
            pool: deque() for pool in (None, *workflow.pools)
        }
        self.waiting: list[tuple[float, str]] = []
        self.remaining: dict[str, int] = {}
        self.tickets: dict[str, breakers.Ticket] = {}
        self.parked: set[str] = set()
        self.reports_pending = False
        """A circuit outcome is recorded but not committed yet."""
        self.park_refused = True
        """False for `runner retry --no-wait`: a refused call fails at once."""
        self.stop_signal: int | None = None
        self.lease_renewed = time.monotonic()

    # The loop -----------------------------------------------------------------

    def drive(self) -> ExitCode:
        jobs.run_log_dir(self.store.state_dir, self.run_id)
        self._prepare()
        try:
            return self._loop()
        except (LockedError, StoreError):
            self._abandon()
            raise
        finally:
            self.reactor.close()

    def _abandon(self) -> None:
        """Fenced out, or the store failed: end our attempts, record nothing."""
        for job in list(self.running.values()):
            job.interrupt(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running and time.monotonic() < deadline:
            self.reactor.poll(0.1)
            for job in self._take_ended():
                self.running.pop(job.launch.step, None)

    def _loop(self) -> ExitCode:
        while True:
            self._collect(block=False)
            if self.stop_signal is not None:
                return self._interrupt()
            launches = self._plan()
            self._flush()
            self._start(launches)
            if not self.running and not launches and not self._has_pending_work():
                return self._finish()
            self._collect(block=True)

    def request_stop(self, signum: int) -> None:
        """From a signal handler: stop at the next turn of the loop."""
        self.stop_signal = signum
        self.reactor.wakeup()

    def _prepare(self) -> None:
        for name, state in self.states.items():
            if state.status in ("waiting", "compensating") and state.due_at:
                heapq.heappush(self.waiting, (state.due_at, name))
        if self.backward:
            for name, state in self.states.items():
                if state.status == "pending" and state.seq == 0:
                    # Added by an accepted change of the workflow file.
                    self._settle(name, "cancelled", message="the run turned back")
                elif state.status == "pending" or (
                    state.status == "compensating" and state.due_at is None
                ):
                    # A pending step that had an attempt was cut short by a
                    # crash: it finishes as the steps running at the turn did.
                    self._enqueue(name)
            return
        for name, state in self.states.items():
            needs = self.workflow.steps[name].needs
            self.remaining[name] = sum(self.states[n].status not in DONE for n in needs)
            if state.status == "pending" and self.remaining[name] == 0:
                self._enqueue(name)

    def _collect(self, *, block: bool) -> None:
        """Handle the jobs that ended; with `block`, wait for one first, for
        a signal, or until the next retry or lease renewal is due."""
        if block:
            due = time.monotonic() + self._wait_time()
            while not self.ended and self.stop_signal is None:
                left = due - time.monotonic()
                if left <= 0:
                    break
                self.reactor.poll(left)
        else:
            self.reactor.poll(0.0)
        for job in self._take_ended():
            self._finished(job)

    def _job_ended(self, job: Job) -> None:
        self.ended.append(job)  # the list of now: _take_ended swaps it

    def _take_ended(self) -> list[Job]:
        ended, self.ended = self.ended, []
        return ended

    def _wait_time(self) -> float:
        wait = LEASE_SECONDS / 3
        if self.waiting:
            wait = min(wait, max(0.0, self.waiting[0][0] - time.time()))
        elapsed = time.monotonic() - self.lease_renewed
        if elapsed >= LEASE_SECONDS / 3:
            self._renew_lease()
        return max(0.001, wait)

    def _renew_lease(self) -> None:
        with self.store.write(self.run_id, self.epoch, lease=LEASE_SECONDS):
            pass
        self.lease_renewed = time.monotonic()

    def _has_pending_work(self) -> bool:
        return bool(self.waiting) or any(self.ready.values())

    def _flush(self) -> None:
        writes, self.writes = self.writes, []
        if writes:
            self.reports_pending = False
            # The lease needs renewing now and then, not with every turn: an
            # untouched runs row is one page less to write and sync.
            renew = time.monotonic() - self.lease_renewed >= LEASE_SECONDS / 6
            lease = LEASE_SECONDS if renew else None
            with self.store.write(self.run_id, self.epoch, lease=lease) as txn:
                for write in writes:
                    write.apply(txn)
            if renew:
                self.lease_renewed = time.monotonic()
        shown, self.shown = self.shown, []
        for status, step, details in shown:
            self.reporter(status, step, details)
        for point in dict.fromkeys(write.after for write in writes if write.after):
            crashpoint(point)

    def _record(self, apply: Callable[[Txn], None], after: str | None = None) -> None:
        self.writes.append(Write(apply, after))

    def report(self, status: str, step: str | None, details: dict[str, Any]) -> None:
        """Show a change, after the commit that records it: never one it lost."""
        self.shown.append((status, step, details))

    # Deciding what starts -------------------------------------------------------

    def _enqueue(self, name: str) -> None:
        self.ready[self.workflow.steps[name].pool].append(name)

    def _plan(self) -> list[Launch]:
        self._wake_due()
        launches: list[Launch] = []
        backward = None
        while backward != self.backward:  # a turn while planning plans again
            backward = self.backward
            if backward:
                self._queue_compensations()
            self._take(launches)
        return launches

    def _take(self, launches: list[Launch]) -> None:
        """Launch ready steps within the run's concurrency and pool limits."""
        for pool, names in self.ready.items():
            limit = self.workflow.pools.get(pool) if pool else None
            while names and len(self.running) + len(launches) < self.concurrency:
                if limit is not None and self.pool_use.get(pool, 0) >= limit:
                    break
                launch = self._launch(names.popleft())
                if launch is not None:
                    launches.append(launch)
                    self.pool_use[pool] = self.pool_use.get(pool, 0) + 1

    def _forward_busy(self) -> bool:
        return any(state.status in FORWARD_BUSY for state in self.states.values())

    def _wake_due(self) -> None:
        now = time.time()
        while self.waiting and self.waiting[0][0] <= now:
            _, name = heapq.heappop(self.waiting)
            state = self.states[name]
            if state.status in ("waiting", "compensating") and name not in self.running:
                self._enqueue(name)

    def _launch(self, name: str) -> Launch | None:
        state = self.states[name]
        if self.backward and state.status not in FORWARD_BUSY:
            return self._launch_compensation(name)
        step = state.step
        views = self._views()
        try:
            env = self.renderer.step_env(step, views)
            if not self.renderer.condition(step, env, views):
                self._settle(name, "skipped", message="'if' was false")
                return None
            command, extra = self.renderer.command(step.run, env, views)
            check = None
            if step.check is not None:
                check, more = self.renderer.command(step.check, env, views)
                extra.update(more)
        except expressions.ExpressionError as error:
            self._fail_permanently(name, f"expression: {error.message}")
            return None
        if step.circuit is not None and not self._admitted(state, step.circuit):
            return None
        return self._begin(state, "run", command, check, {**env, **extra})

    def _admitted(self, state: StepState, circuit: str) -> bool:
        """Ask the step's circuit; a refused step is parked, spending no attempt."""
        step = state.step
        if self.reports_pending:
            self._flush()  # outcomes of this turn count before anyone is admitted
        token = f"{self.run_id}/{step.name}/{state.seq + 1}"
        lease = step.timeout + step.kill_grace + 30 if step.timeout else 300.0
        first = step.name not in self.parked
        admission, ticket = breakers.admit(
            self.store,
            circuit,
            token,
            lease,
            (self.run_id, step.name),
            log_refusal=first,
        )
        if ticket is not None:
            self.tickets[step.name] = ticket
            self.parked.discard(step.name)
            return True
        if not self.park_refused:
            message = f"circuit {circuit} is {admission.state.state}; not waiting"
            self._settle(step.name, "failed", message=message)
            return False
        self.parked.add(step.name)
        retry_at = admission.retry_at or float("inf")
        due = min(retry_at, time.time() + breakers.PARK_POLL)
        state.status, state.due_at = "waiting", due
        heapq.heappush(self.waiting, (due, step.name))
        if first:
            message = f"parked: circuit {circuit} is {admission.state.state}"
            name = step.name
            self._record(
                lambda txn: txn.update_step(
                    self.run_id, name, status="waiting", due_at=due, message=message
                )
            )
            self.report("waiting", name, {"message": message})
        return False

    def _begin(
        self,
        state: StepState,
        kind: str,
        command: Any,
        check: Any,
        env: dict[str, str],
    ) -> Launch:
        step = state.step
        state.seq += 1
        now = time.time()
        number = (state.attempts if kind == "run" else state.comp_attempts) + 1
        token = jobs.attempt_token(self.store.key, self.run_id, step.name, state.seq)
        prefix = jobs.attempt_prefix(
            self.store.state_dir, self.run_id, step.name, state.seq, kind
        )
        env.update(
            RUNNER_RUN_ID=self.run_id,
            RUNNER_STEP=step.name,
            RUNNER_ATTEMPT=str(number),
            RUNNER_IDEMPOTENCY_KEY=f"{self.run_id}:{step.name}",
            RUNNER_OUTPUT=prefix + ".output",
            **{jobs.TOKEN_VAR: token},
        )
        if kind == "compensate":
            env["RUNNER_COMPENSATING"] = "1"
        if state.first_started_at is None and kind == "run":
            state.first_started_at = now
        state.status = "running" if kind == "run" else "compensating"
        timeout, _ = self._limits(step, kind)
        launch = Launch(
            step=step.name,
            kind=kind,
            seq=state.seq,
            number=number,
            command=command,
            check=check if kind == "run" else None,
            env=env,
            cwd=step.cwd,
            timeout=timeout,
            kill_grace=step.kill_grace,
            log_prefix=prefix,
        )
        seq, status, first = state.seq, state.status, state.first_started_at

        def apply(txn: Txn) -> None:
            txn.update_step(
                self.run_id,
                step.name,
                status=status,
                seq=seq,
                started_at=now,
                first_started_at=first,
                due_at=None,
                process=token,
            )
            txn.insert_attempt(
                self.run_id,
                {
                    "step": step.name,
                    "seq": seq,
                    "kind": kind,
                    "number": number,
                    "status": "running",
                    "started_at": now,
                },
            )
            txn.event(f"{kind}.attempt_started", self.run_id, step.name, attempt=number)
            if kind == "run":
                crashpoint("step.before_start_commit")  # inside the transaction

        self._record(apply)
        self.report(status, step.name, {"attempt": number, "kind": kind})
        return launch

    def _limits(self, step: Step, kind: str) -> tuple[float | None, RetryPolicy]:
        if kind == "compensate" and step.compensate is not None:
            timeout = step.compensate.timeout
            return (step.timeout if timeout is None else timeout), step.compensate.retry
        return step.timeout, step.retry

    def _start(self, launches: list[Launch]) -> None:
        if launches:
            area = "step" if launches[0].kind == "run" else "compensation"
            crashpoint(f"{area}.after_start_commit")
        for launch in launches:
            job = Job(launch)
            self.running[launch.step] = job
            job.start(self.reactor, self._job_ended)
        if launches:
            crashpoint("step.after_spawn")

    def _views(self) -> Mapping[str, expressions.StepView]:
        return _StepViews(self.states)

    # Outcomes -------------------------------------------------------------------

    def _finished(self, job: Job) -> None:
        launch = job.launch
        self.running.pop(launch.step, None)
        pool = self.workflow.steps[launch.step].pool
        self.pool_use[pool] = self.pool_use.get(pool, 1) - 1
        if job.interrupted:
            self._report_circuit(launch.step, None)
            self._interrupted(job)
            return
        crashpoint(f"{'step' if launch.kind == 'run' else 'compensation'}.after_exit")
        outcome = job.outcome
        result = outcome.result
        self._end_attempt(job, result)
        if outcome.skipped_by_check:
            self._report_circuit(launch.step, None)
            self._settle(launch.step, "skipped", message="check: already done")
        elif outcome.error is not None:
            self._report_circuit(launch.step, None)
            self._failed(job, Classification("permanent", f"runner: {outcome.error}"))
        elif result is not None and _succeeded(result):
            self._report_circuit(launch.step, "success")
            self._succeeded(job)
        else:
            assert result is not None
            verdict = classify(_failure(result), self._rules(launch))
            counted = verdict.error_class != "permanent"
            self._report_circuit(launch.step, "failure" if counted else None)
            self._failed(job, verdict)

    def _report_circuit(self, step: str, outcome: str | None) -> None:
        """Count a call on its circuit; None only releases its probe place."""
        ticket = self.tickets.pop(step, None)
        if ticket is not None:
            self.reports_pending = True
            self._record(
                lambda txn: breakers.report(txn, ticket, outcome, self.run_id, step)
            )

    def _rules(self, launch: Launch) -> tuple[Any, ...]:
        return self.workflow.steps[launch.step].classify

    def _end_attempt(self, job: Job, result: AttemptResult | None) -> None:
        launch = job.launch
        now = time.time()
        fields: dict[str, Any] = {"ended_at": now}
        if result is not None:
            fields.update(
                exit_code=result.exit_code,
                signal=result.signal,
                tail=_tail(result),
                status="timed_out"
                if result.timed_out
                else ("succeeded" if _succeeded(result) else "failed"),
            )
        elif job.outcome.skipped_by_check:
            fields["status"] = "skipped"
        else:
            fields.update(status="failed", message=job.outcome.error)

        def apply(txn: Txn) -> None:
            txn.update_attempt(self.run_id, launch.step, launch.seq, **fields)

        area = "step" if launch.kind == "run" else "compensation"
        self._record(apply, f"{area}.after_end_commit")

    def _succeeded(self, job: Job) -> None:
        launch = job.launch
        state = self.states[launch.step]
        if launch.kind == "compensate":
            state.comp_attempts += 1
            message = f"compensate succeeded on attempt {state.comp_attempts}"
            self._settle(launch.step, "compensated", message=message)
            return
        state.attempts += 1
        state.outputs = values.parse_outputs(launch.log_prefix + ".output")
        self._settle(launch.step, "succeeded", outputs=state.outputs)

    def _failed(self, job: Job, verdict: Classification) -> None:
        launch = job.launch
        state = self.states[launch.step]
        kind = launch.kind
        if kind == "run":
            state.attempts += 1
        else:
            state.comp_attempts += 1
        made = state.attempts if kind == "run" else state.comp_attempts
        _, policy = self._limits(state.step, kind)
        elapsed = time.time() - (state.first_started_at or time.time())
        decision = decide_retry(
            policy, verdict.error_class, made, elapsed, random.random
        )
        info = {"error_class": verdict.error_class, "rule": verdict.rule}
        self._record(
            lambda txn: txn.update_attempt(self.run_id, launch.step, launch.seq, **info)
        )
        self._record(
            lambda txn: txn.event(
                f"{kind}.attempt_failed", self.run_id, launch.step, attempt=made, **info
            )
        )
        turning = self.backward and kind == "run"
        if decision.retry and not turning:
            self._schedule_retry(state, kind, decision.delay, verdict, decision.reason)
            return
        exhausted = not decision.retry and verdict.error_class != "permanent"
        if exhausted and verdict.error_class in policy.retry_on:
            reason = decision.reason
            self._record(
                lambda txn: txn.event(
                    "retry.exhausted", self.run_id, launch.step, of=kind, reason=reason
                )
            )
        final = "compensation_failed" if kind == "compensate" else "failed"
        self._settle(launch.step, final, verdict=verdict, reason=decision.reason)
        if (
            kind == "run"
            and not self.backward
            and (
                verdict.error_class == "permanent"
                or state.step.on_exhausted is OnExhausted.COMPENSATE
            )
        ):
            self._turn_back(launch.step, verdict)

    def _schedule_retry(
        self,
        state: StepState,
        kind: str,
        delay: float,
        verdict: Classification,
        reason: str,
    ) -> None:
        name = state.step.name
        due = time.time() + delay
        state.status = "waiting" if kind == "run" else "compensating"
        state.due_at = due
        heapq.heappush(self.waiting, (due, name))
        status = state.status
        spent = {"attempts": state.attempts, "comp_attempts": state.comp_attempts}

        def apply(txn: Txn) -> None:
            txn.update_step(
                self.run_id,
                name,
                status=status,
                due_at=due,
                **spent,
                error_class=verdict.error_class,
                rule=verdict.rule,
                message=reason,
            )
            txn.event(
                "retry.scheduled",
                self.run_id,
                name,
                delay=round(delay, 3),
                error_class=verdict.error_class,
                of=kind,
            )

        self._record(apply, "retry.after_schedule_commit")
        self.report("waiting", name, {"delay": delay, "reason": reason})

    def _fail_permanently(self, name: str, message: str) -> None:
        verdict = Classification("permanent", message)
        self._settle(name, "failed", verdict=verdict, reason=message)
        if not self.backward:
            self._turn_back(name, verdict)

    def _settle(
        self,
        name: str,
        status: str,
        *,
        outputs: dict[str, str] | None = None,
        verdict: Classification | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Record a step's new status; release its dependents when done."""
        state = self.states[name]
        state.status = status
        state.due_at = None
        now = time.time()
        fields: dict[str, Any] = {"status": status, "ended_at": now, "due_at": None}
        fields["attempts"] = state.attempts
        fields["comp_attempts"] = state.comp_attempts
        if outputs is not None:
            fields["outputs"] = json.dumps(outputs)
        if verdict is not None:
            fields.update(error_class=verdict.error_class, rule=verdict.rule)
        if reason or message:
            fields["message"] = reason or message

        detail = _short(fields)
        if status == "succeeded":
            detail["attempts"] = state.attempts

        def apply(txn: Txn) -> None:
            txn.update_step(self.run_id, name, **fields)
            txn.event(f"step.{status}", self.run_id, name, **detail)

        self._record(apply)
        self.report(status, name, {"message": reason or message})
        if not self.backward and status in DONE:
            self._release(name)

    def _release(self, name: str) -> None:
        for dependent in self.dependents[name]:
            self.remaining[dependent] -= 1
            if (
                self.remaining[dependent] == 0
                and self.states[dependent].status == "pending"
            ):
                self._enqueue(dependent)

    # Turning back ---------------------------------------------------------------

    def _turn_back(self, name: str, verdict: Classification) -> None:
        """Start no new step; compensate once running steps have finished."""
        self.backward = True
        for names in self.ready.values():
            names.clear()
        self.waiting.clear()
        reason = f"step {name} failed ({verdict.error_class}: {verdict.rule})"
        for other, state in self.states.items():
            # A step parked by its circuit before its first attempt never started.
            never_started = state.status == "waiting" and state.attempts == 0
            if state.status == "pending" or never_started:
                self._settle(other, "cancelled", message="the run turned back")
            elif state.status == "waiting":
                self._settle(
                    other, "failed", message="not retried: the run turned back"
                )

        def apply(txn: Txn) -> None:
            txn.update_run(self.run_id, status="compensating", reason=reason)
            txn.event("run.compensating", self.run_id, name, reason=reason)

        self._record(apply)
        self.report("compensating", None, {"reason": reason})

    def _queue_compensations(self) -> None:
        """Queue the compensations the backward order reached; pass the rest over.

        Nothing is reached while forward work goes on: a step that finishes
        after the turn may still succeed, and must be undone before the steps
        it needs.
        """
        if self._forward_busy():
            return
        queued = {n for names in self.ready.values() for n in names}
        for name in self._reached():
            state = self.states[name]
            if state.step.compensate is None:
                if not state.passed_over:
                    self._pass_over(state)
            elif name not in queued and name not in self.running:
                self._enqueue(name)

    def _reached(self) -> list[str]:
        return reached(
            self.needs,
            {name: state.status for name, state in self.states.items()},
            {n: s.step.compensate is not None for n, s in self.states.items()},
        )

    def _pass_over(self, state: StepState) -> None:
        """Record that the backward order went past a step with nothing to undo.

        The step stays `succeeded` (it was not undone); its message says why.
        """
        state.passed_over = True
        name = state.step.name

        def apply(txn: Txn) -> None:
            txn.update_step(self.run_id, name, message=PASSED_OVER)
            txn.event("compensation.passed_over", self.run_id, name)

        self._record(apply)
        self.report("succeeded", name, {"message": PASSED_OVER})

    def _launch_compensation(self, name: str) -> Launch | None:
        state = self.states[name]
        compensation = state.step.compensate
        if compensation is None or state.status not in ("succeeded", "compensating"):
            return None
        views = self._views()
        try:
            env = self.renderer.step_env(state.step, views)
            command, extra = self.renderer.command(compensation.run, env, views)
        except expressions.ExpressionError as error:
            verdict = Classification("permanent", f"expression: {error.message}")
            self._settle(name, "compensation_failed", verdict=verdict)
            return None
        return self._begin(state, "compensate", command, None, {**env, **extra})

    # Endings --------------------------------------------------------------------

    def _finish(self) -> ExitCode:
        status = self._final_status()
        if status == "compensation_failed":
            self._note_blocked()
        crashpoint("run.before_finish_commit")
        self._record(lambda txn: self._close_run(txn, status))
        self.report(status, None, {})
        self._flush()
        return ExitCode.OK if status == "succeeded" else ExitCode.RUN_FAILED

    def _final_status(self) -> str:
        statuses = {state.status for state in self.states.values()}
        if self.backward:
            return (
                "compensation_failed"
                if "compensation_failed" in statuses
                else ("compensated")
            )
        return "succeeded" if statuses <= DONE else "failed"

    def _note_blocked(self) -> None:
        """Say, on each step left undone, which failed compensation holds it."""
        statuses = {name: state.status for name, state in self.states.items()}
        held = blockers(self.needs, statuses)
        notes = {
            name: f"not compensated: waits for {', '.join(held[name])}"
            for name, state in self.states.items()
            if state.status == "succeeded" and not state.passed_over and held[name]
        }

        def apply(txn: Txn) -> None:
            for name, message in notes.items():
                txn.update_step(self.run_id, name, message=message)

        self._record(apply)

    def _close_run(self, txn: Txn, status: str) -> None:
        txn.update_run(self.run_id, status=status, ended_at=txn.now, lease_until=0)
        txn.event(f"run.{status}", self.run_id)

    def _interrupt(self) -> ExitCode:
        signum = self.stop_signal or signal.SIGTERM
        for job in list(self.running.values()):
            job.interrupt(signum)
        while self.running:
            self.reactor.poll(None)
            for job in self._take_ended():
                self.running.pop(job.launch.step, None)
                self._report_circuit(job.launch.step, None)
                self._interrupted(job)

        def apply(txn: Txn) -> None:
            txn.update_run(self.run_id, status="interrupted", lease_until=0)
            txn.event("run.interrupted", self.run_id, signal=signum)

        self._record(apply)
        self.report("interrupted", None, {"signal": signum})
        self._flush()
        return ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM

    def _interrupted(self, job: Job) -> None:
        """An attempt cut short by a signal: it spends no retry budget."""
        launch = job.launch
        state = self.states[launch.step]
        state.status = "interrupted"
        name, seq = launch.step, launch.seq

        def apply(txn: Txn) -> None:
            txn.update_attempt(
                self.run_id, name, seq, status="interrupted", ended_at=txn.now
            )
            txn.update_step(self.run_id, name, status="interrupted")
            txn.event("step.interrupted", self.run_id, name)

        self._record(apply)
        self.report("interrupted", name, {})


class _StepViews(Mapping[str, expressions.StepView]):
    """What expressions see of the steps, made on access: O(1) per launch."""

    def __init__(self, states: dict[str, StepState]) -> None:
        self.states = states

    def __getitem__(self, name: str) -> expressions.StepView:
        state = self.states[name]
        return expressions.StepView(state.status, state.outputs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)


def _state(step: Step, row: dict[str, Any]) -> StepState:
    return StepState(
        step=step,
        position=row["position"],
        status=row["status"],
        attempts=row["attempts"],
        seq=row["seq"],
        comp_attempts=row["comp_attempts"],
        first_started_at=row["first_started_at"],
        due_at=row["due_at"],
        outputs=json.loads(row["outputs"]) if row["outputs"] else {},
        passed_over=row["status"] == "succeeded" and row["message"] == PASSED_OVER,
    )


def _succeeded(result: AttemptResult) -> bool:
    return result.exit_code == 0 and not result.timed_out and result.spawn_error is None


def _failure(result: AttemptResult) -> Failure:
    return Failure(
        exit_code=result.exit_code,
        signal=result.signal,
        timed_out=result.timed_out,
        spawn_error=result.spawn_error,
        stdout_tail=result.stdout_tail,
        stderr_tail=result.stderr_tail,
    )


def _tail(result: AttemptResult) -> str:
    """The last lines of output kept in the store, for `status` and redrive."""
    raw = (result.stderr_tail or result.stdout_tail)[-2048:]
    if result.spawn_error:
        return result.spawn_error
    return raw.decode("utf-8", errors="backslashreplace")


def _short(fields: dict[str, Any]) -> dict[str, Any]:
    keep = ("error_class", "rule", "message")
    return {key: fields[key] for key in keep if fields.get(key)}
