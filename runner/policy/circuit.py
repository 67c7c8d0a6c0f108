"""The circuit breaker as a pure state machine (SPEC section 4).

Each function takes a state and returns the next one with the names of the
transitions it made, so the store can run it inside one transaction and log
the transitions as events. Time is the `now` argument: seconds on a clock every
process sharing the store agrees on.

Only transient and intermittent failures are recorded: the caller filters out
permanent ones, which say nothing about the health of what the circuit guards.

Every state transition increments `generation`. A caller keeps the generation
its call was admitted under and passes it back to `record`; a result from an
older generation is stale and ignored, so a slow call admitted before the
circuit opened cannot reopen it, nor close it, later.

Time moves lazily: an OPEN circuit turns HALF_OPEN, and a probe whose lease
ran out frees its place, the next time any function looks at it with a later
`now`. `record` looks too, so a script that checked the circuit and recorded
a success can close it without ever taking a probe place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from runner.spec.model import CircuitPolicy

State = Literal["CLOSED", "OPEN", "HALF_OPEN"]
Transition = Literal["opened", "half_opened", "closed", "refused"]
"""Events for the log; "refused" is a refused call, not a change of state."""
Outcome = Literal["success", "failure"]
Transitions = tuple[Transition, ...]


@dataclass(frozen=True)
class Probe:
    """A call admitted while HALF_OPEN, holding its place until it reports."""

    token: str
    expires_at: float
    """When the place frees itself, in case the probe's process died."""


@dataclass(frozen=True)
class CircuitState:
    """One circuit's state; the defaults are a new, closed circuit."""

    state: State = "CLOSED"
    failure_count: int = 0
    """Consecutive counted failures while CLOSED, toward opening."""
    success_count: int = 0
    """Successes while HALF_OPEN, toward closing."""
    opened_at: float | None = None
    """When the circuit last opened; None while CLOSED."""
    forced_open: bool = False
    """Opened by hand: stays OPEN until reset, whatever the time."""
    probes: tuple[Probe, ...] = ()
    generation: int = 0


@dataclass(frozen=True)
class Admission:
    admitted: bool
    state: CircuitState
    probe: bool = False
    """The call holds a HALF_OPEN place and must report to release it."""
    retry_at: float | None = None
    """When a refused call may ask again; None when only a reset will do."""
    transitions: Transitions = ()


def admit(
    state: CircuitState, policy: CircuitPolicy, now: float, token: str, lease: float
) -> Admission:
    """Let a call through or refuse it; a HALF_OPEN call becomes a probe.

    `token` names the call and `lease` is how long its probe place lasts
    without a report. Admitting a token that already holds a place renews it,
    so a caller repeating itself after a crash does not take a second one.
    """
    state, transitions = _advance(state, policy, now)

    if state.state == "CLOSED":
        return Admission(admitted=True, state=state, transitions=transitions)
    if state.state == "OPEN":
        retry_at = _half_open_at(state, policy)
        return _refused(state, retry_at, transitions)

    return _admit_probe(state, policy, Probe(token, now + lease), transitions)


def check(state: CircuitState, policy: CircuitPolicy, now: float) -> bool:
    """Whether a call would be admitted now, without taking a probe place."""
    state, _ = _advance(state, policy, now)

    if state.state == "HALF_OPEN":
        return len(state.probes) < policy.half_open_max_calls

    return state.state == "CLOSED"


def record(
    state: CircuitState,
    policy: CircuitPolicy,
    now: float,
    outcome: Outcome,
    *,
    generation: int,
    token: str | None,
) -> tuple[CircuitState, Transitions]:
    """Count a call's outcome, releasing its probe place if it held one.

    `generation` is the one the call was admitted under (a script reporting
    on its own passes the current one); `token` is the call's, or None.
    """
    if generation != state.generation:
        return state, ()

    state, transitions = _advance(state, policy, now)
    state = replace(state, probes=_without(state.probes, token))

    if state.state == "CLOSED":
        state, counted = _record_closed(state, policy, now, outcome)
    elif state.state == "HALF_OPEN":
        state, counted = _record_half_open(state, policy, now, outcome)
    else:
        # Nothing is admitted while OPEN; a late report changes nothing.
        counted = ()

    return state, (*transitions, *counted)


def current(
    state: CircuitState, policy: CircuitPolicy, now: float
) -> tuple[CircuitState, Transitions]:
    """The state as time alone makes it: OPEN turns HALF_OPEN, leases expire."""
    return _advance(state, policy, now)


def reset(state: CircuitState) -> tuple[CircuitState, Transitions]:
    """Close the circuit by hand, forgetting its counts."""
    if state.state == "CLOSED":
        return replace(state, failure_count=0), ()

    return _closed(state), ("closed",)


def force_open(state: CircuitState, now: float) -> tuple[CircuitState, Transitions]:
    """Open the circuit by hand until it is reset."""
    if state.state == "OPEN":
        return replace(state, forced_open=True), ()

    return _opened(state, now, forced=True), ("opened",)


def _advance(
    state: CircuitState, policy: CircuitPolicy, now: float
) -> tuple[CircuitState, Transitions]:
    """Apply what time alone does: end the OPEN wait, expire probe leases."""
    half_open_at = _half_open_at(state, policy)
    if state.state == "OPEN" and half_open_at is not None and now >= half_open_at:
        state = replace(state, state="HALF_OPEN", generation=state.generation + 1)
        return state, ("half_opened",)

    live = tuple(probe for probe in state.probes if probe.expires_at > now)
    return replace(state, probes=live), ()


def _half_open_at(state: CircuitState, policy: CircuitPolicy) -> float | None:
    if state.forced_open or state.opened_at is None:
        return None

    return state.opened_at + policy.half_open_after


def _admit_probe(
    state: CircuitState, policy: CircuitPolicy, probe: Probe, transitions: Transitions
) -> Admission:
    others = _without(state.probes, probe.token)
    if len(others) >= policy.half_open_max_calls:
        retry_at = min((other.expires_at for other in others), default=None)
        return _refused(state, retry_at, transitions)

    state = replace(state, probes=(*others, probe))
    return Admission(admitted=True, state=state, probe=True, transitions=transitions)


def _refused(
    state: CircuitState, retry_at: float | None, transitions: Transitions
) -> Admission:
    transitions = (*transitions, "refused")
    return Admission(False, state, retry_at=retry_at, transitions=transitions)


def _record_closed(
    state: CircuitState, policy: CircuitPolicy, now: float, outcome: Outcome
) -> tuple[CircuitState, Transitions]:
    if outcome == "success":
        # Only consecutive failures open the circuit.
        return replace(state, failure_count=0), ()

    failures = state.failure_count + 1
    if failures >= policy.failure_threshold:
        return _opened(state, now, forced=False), ("opened",)

    return replace(state, failure_count=failures), ()


def _record_half_open(
    state: CircuitState, policy: CircuitPolicy, now: float, outcome: Outcome
) -> tuple[CircuitState, Transitions]:
    if outcome == "failure":
        return _opened(state, now, forced=False), ("opened",)

    successes = state.success_count + 1
    if successes >= policy.success_threshold:
        return _closed(state), ("closed",)

    return replace(state, success_count=successes), ()


def _opened(state: CircuitState, now: float, *, forced: bool) -> CircuitState:
    return CircuitState(
        state="OPEN",
        opened_at=now,
        forced_open=forced,
        generation=state.generation + 1,
    )


def _closed(state: CircuitState) -> CircuitState:
    return CircuitState(state="CLOSED", generation=state.generation + 1)


def _without(probes: tuple[Probe, ...], token: str | None) -> tuple[Probe, ...]:
    return tuple(probe for probe in probes if probe.token != token)
