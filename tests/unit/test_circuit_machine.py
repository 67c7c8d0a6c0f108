"""The circuit breaker state machine, on a fake clock and against a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from runner.policy.circuit import (
    Admission,
    CircuitState,
    Outcome,
    Probe,
    Transition,
    Transitions,
    admit,
    check,
    force_open,
    record,
    reset,
)
from runner.spec.model import CircuitPolicy

POLICY = CircuitPolicy(
    failure_threshold=3,
    half_open_after=60.0,
    success_threshold=2,
    half_open_max_calls=1,
)
LEASE = 30.0


def fail(state: CircuitState, now: float, times: int = 1) -> CircuitState:
    """Record `times` failures against the current generation."""
    for _ in range(times):
        state, _ = record(
            state, POLICY, now, "failure", generation=state.generation, token=None
        )
    return state


def opened(now: float = 0.0) -> CircuitState:
    """A circuit that opened at `now` after failure_threshold failures."""
    return fail(CircuitState(), now, POLICY.failure_threshold)


def probing(now: float = 60.0, token: str = "p1") -> Admission:
    """The admission of the first probe once the open circuit's wait is over."""
    return admit(opened(0.0), POLICY, now, token, LEASE)


def test_new_circuit_is_closed_and_admits() -> None:
    """A fresh circuit is CLOSED and lets calls through without a probe."""
    admission = admit(CircuitState(), POLICY, 0.0, "t", LEASE)

    assert admission == Admission(admitted=True, state=CircuitState())
    assert check(CircuitState(), POLICY, 0.0)


def test_failures_below_threshold_keep_closed() -> None:
    """Two failures of three are counted and the circuit stays CLOSED."""
    state = fail(CircuitState(), 1.0, 2)

    assert state == CircuitState(failure_count=2)


def test_threshold_failure_opens() -> None:
    """The failure reaching failure_threshold opens the circuit at that time."""
    state = fail(CircuitState(), 1.0, 2)

    state, transitions = record(state, POLICY, 5.0, "failure", generation=0, token=None)

    assert transitions == ("opened",)
    assert state == CircuitState(state="OPEN", opened_at=5.0, generation=1)


def test_success_resets_consecutive_failures() -> None:
    """Only consecutive failures count: a success in between starts over."""
    state = fail(CircuitState(), 1.0, 2)

    state, transitions = record(state, POLICY, 2.0, "success", generation=0, token=None)

    assert transitions == ()
    assert fail(state, 3.0, 2).state == "CLOSED"


def test_open_refuses_until_half_open_after() -> None:
    """An OPEN circuit refuses, telling when to ask again."""
    admission = admit(opened(10.0), POLICY, 69.9, "t", LEASE)

    assert not admission.admitted
    assert admission.retry_at == 70.0
    assert admission.transitions == ("refused",)
    assert not check(opened(10.0), POLICY, 69.9)


def test_open_turns_half_open_and_admits_a_probe() -> None:
    """Once half_open_after has passed the next call is admitted as a probe."""
    admission = probing(now=60.0)

    assert admission.admitted
    assert admission.probe
    assert admission.transitions == ("half_opened",)
    assert admission.state == CircuitState(
        state="HALF_OPEN",
        opened_at=0.0,
        probes=(Probe("p1", 90.0),),
        generation=2,
    )


def test_half_open_limits_live_probes() -> None:
    """With one place taken a second call is refused until the lease ends."""
    state = probing().state

    second = admit(state, POLICY, 61.0, "p2", LEASE)

    assert not second.admitted
    assert second.retry_at == 90.0
    assert second.transitions == ("refused",)
    assert not check(state, POLICY, 61.0)


def test_expired_probe_frees_its_place() -> None:
    """A probe whose lease ran out (its process died) frees its place."""
    state = probing().state

    later = admit(state, POLICY, 90.0, "p2", LEASE)

    assert later.admitted
    assert later.state.probes == (Probe("p2", 120.0),)
    assert check(state, POLICY, 90.0)


def test_same_token_renews_its_place() -> None:
    """Admitting a token that holds a place renews it instead of refusing."""
    state = probing().state

    again = admit(state, POLICY, 70.0, "p1", LEASE)

    assert again.admitted
    assert again.state.probes == (Probe("p1", 100.0),)


def test_probe_success_counts_and_releases_place() -> None:
    """A probe's success counts toward closing and frees its place."""
    admission = probing()

    state, transitions = record(
        admission.state,
        POLICY,
        61.0,
        "success",
        generation=admission.state.generation,
        token="p1",
    )

    assert transitions == ()
    assert state.success_count == 1
    assert state.probes == ()


def test_success_threshold_closes() -> None:
    """success_threshold successes while HALF_OPEN close the circuit."""
    state = probing().state
    generation = state.generation
    state, _ = record(state, POLICY, 61.0, "success", generation=generation, token="p1")
    state = admit(state, POLICY, 62.0, "p2", LEASE).state

    state, transitions = record(
        state, POLICY, 63.0, "success", generation=generation, token="p2"
    )

    assert transitions == ("closed",)
    assert state == CircuitState(generation=generation + 1)


def test_half_open_failure_reopens() -> None:
    """Any counted failure while HALF_OPEN opens the circuit again, from now."""
    state = probing().state

    state, transitions = record(
        state, POLICY, 65.0, "failure", generation=state.generation, token="p1"
    )

    assert transitions == ("opened",)
    assert state == CircuitState(state="OPEN", opened_at=65.0, generation=3)


def test_stale_result_is_ignored() -> None:
    """A result from a call admitted before the circuit opened changes nothing."""
    closed = CircuitState()
    admitted_under = closed.generation
    state = fail(closed, 1.0, POLICY.failure_threshold)

    after, transitions = record(
        state, POLICY, 2.0, "failure", generation=admitted_under, token=None
    )

    assert after == state
    assert transitions == ()


def test_report_while_open_changes_nothing() -> None:
    """A current-generation report while OPEN and waiting is ignored."""
    state = opened(0.0)

    after, transitions = record(
        state, POLICY, 10.0, "success", generation=state.generation, token=None
    )

    assert after == state
    assert transitions == ()


def test_scripted_success_after_wait_counts() -> None:
    """record-success after the wait half-opens the circuit and counts."""
    state = opened(0.0)

    after, transitions = record(
        state, POLICY, 60.0, "success", generation=state.generation, token=None
    )

    assert transitions == ("half_opened",)
    assert after.state == "HALF_OPEN"
    assert after.success_count == 1


def test_force_open_holds_until_reset() -> None:
    """A circuit opened by hand refuses forever, with no time to retry at."""
    state, transitions = force_open(CircuitState(), 5.0)

    admission = admit(state, POLICY, 1e9, "t", LEASE)

    assert transitions == ("opened",)
    assert not admission.admitted
    assert admission.retry_at is None
    assert not check(state, POLICY, 1e9)


def test_force_open_on_open_circuit_pins_it() -> None:
    """Forcing an already OPEN circuit makes no transition but stops its timer."""
    state, transitions = force_open(opened(0.0), 5.0)

    assert transitions == ()
    assert state.forced_open
    assert not check(state, POLICY, 1e9)


def test_reset_closes() -> None:
    """reset closes an OPEN circuit and forgets its counts and probes."""
    state = probing().state

    state, transitions = reset(state)

    assert transitions == ("closed",)
    assert state == CircuitState(generation=3)


def test_reset_of_closed_circuit_clears_failures() -> None:
    """reset of a CLOSED circuit forgets its failures without a transition."""
    state, transitions = reset(fail(CircuitState(), 0.0, 2))

    assert transitions == ()
    assert state == CircuitState()


@dataclass
class ModelCircuit:
    """The breaker of SPEC section 4 in the plainest mutable form."""

    policy: CircuitPolicy
    state: str = "CLOSED"
    failures: int = 0
    successes: int = 0
    opened_at: float | None = None
    forced: bool = False
    probes: dict[str, float] = field(default_factory=dict)
    generation: int = 0

    def tick(self, now: float) -> list[Transition]:
        """Apply the passing of time."""
        self.probes = {t: e for t, e in self.probes.items() if e > now}
        due = self.opened_at is not None and now >= self.opened_at + (
            self.policy.half_open_after
        )
        if self.state == "OPEN" and not self.forced and due:
            self.state = "HALF_OPEN"
            self.generation += 1
            return ["half_opened"]
        return []

    def admit(self, now: float, token: str, lease: float) -> list[Transition]:
        """Admit or refuse one call."""
        transitions = self.tick(now)
        if self.state == "CLOSED":
            return transitions
        self.probes.pop(token, None)
        if (
            self.state == "HALF_OPEN"
            and len(self.probes) < self.policy.half_open_max_calls
        ):
            self.probes[token] = now + lease
            return transitions
        return [*transitions, "refused"]

    def record(
        self, now: float, outcome: Outcome, generation: int, token: str | None
    ) -> list[Transition]:
        """Count one outcome."""
        if generation != self.generation:
            return []
        transitions = self.tick(now)
        self.probes.pop(token or "", None)
        if self.state == "CLOSED" and outcome == "failure":
            self.failures += 1
            if self.failures >= self.policy.failure_threshold:
                return [*transitions, *self.open(now)]
        elif self.state == "CLOSED":
            self.failures = 0
        elif self.state == "HALF_OPEN" and outcome == "failure":
            return [*transitions, *self.open(now)]
        elif self.state == "HALF_OPEN":
            self.successes += 1
            if self.successes >= self.policy.success_threshold:
                return [*transitions, *self.close()]
        return transitions

    def open(self, now: float) -> list[Transition]:
        """Move to OPEN, forgetting counts and probes."""
        self.forget()
        self.state, self.opened_at = "OPEN", now
        return ["opened"]

    def close(self) -> list[Transition]:
        """Move to CLOSED, forgetting counts and probes."""
        self.forget()
        self.state, self.opened_at = "CLOSED", None
        return ["closed"]

    def forget(self) -> None:
        """What every transition does: a new generation with nothing counted."""
        self.failures, self.successes, self.forced = 0, 0, False
        self.probes = {}
        self.generation += 1


@dataclass(frozen=True)
class Call:
    token: str
    generation: int


class CircuitMachine(RuleBasedStateMachine):
    """Random sequences of calls, reports, clock moves and manual actions."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.calls: list[Call] = []
        self.next_token = 0
        self.last_generation = 0

    @initialize(
        policy=st.builds(
            CircuitPolicy,
            failure_threshold=st.integers(1, 4),
            half_open_after=st.floats(0.0, 100.0),
            success_threshold=st.integers(1, 3),
            half_open_max_calls=st.integers(1, 3),
        )
    )
    def start(self, policy: CircuitPolicy) -> None:
        self.policy = policy
        self.circuit = CircuitState()
        self.model = ModelCircuit(policy)

    @rule(seconds=st.floats(0.0, 80.0))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(lease=st.floats(1.0, 100.0))
    def call(self, lease: float) -> None:
        token = f"t{self.next_token}"
        self.next_token += 1
        would_admit = check(self.circuit, self.policy, self.now)

        admission = admit(self.circuit, self.policy, self.now, token, lease)

        assert admission.admitted == would_admit
        assert list(admission.transitions) == self.model.admit(self.now, token, lease)
        self.circuit = admission.state
        if admission.admitted:
            self.calls.append(Call(token, self.circuit.generation))

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure"]))
    def report(self, data: st.DataObject, outcome: Outcome) -> None:
        call = data.draw(st.sampled_from(self.calls))
        self.calls.remove(call)
        self.apply_record(outcome, call.generation, call.token)

    @rule(outcome=st.sampled_from(["success", "failure"]), stale=st.booleans())
    def script_report(self, outcome: Outcome, stale: bool) -> None:
        self.apply_record(outcome, self.circuit.generation - stale, None)

    @rule()
    def manual_reset(self) -> None:
        self.circuit, transitions = reset(self.circuit)
        if self.model.state == "CLOSED":
            expected: Transitions = ()
            self.model.failures = 0
        else:
            expected = tuple(self.model.close())
        assert transitions == expected

    @rule()
    def manual_open(self) -> None:
        self.circuit, transitions = force_open(self.circuit, self.now)
        if self.model.state == "OPEN":
            self.model.forced = True
            expected: Transitions = ()
        else:
            expected = tuple(self.model.open(self.now))
            self.model.forced = True
        assert transitions == expected

    def apply_record(
        self, outcome: Outcome, generation: int, token: str | None
    ) -> None:
        """Record against both and compare the transitions."""
        self.circuit, transitions = record(
            self.circuit,
            self.policy,
            self.now,
            outcome,
            generation=generation,
            token=token,
        )
        expected = self.model.record(
            self.now, outcome, generation=generation, token=token
        )
        assert list(transitions) == expected

    @invariant()
    def matches_model(self) -> None:
        """The pure machine and the model agree on every field."""
        model = self.model
        probes = {probe.token: probe.expires_at for probe in self.circuit.probes}
        assert (self.circuit.state, self.circuit.generation) == (
            model.state,
            model.generation,
        )
        assert self.circuit.failure_count == model.failures
        assert self.circuit.success_count == model.successes
        assert self.circuit.opened_at == model.opened_at
        assert self.circuit.forced_open == model.forced
        assert probes == model.probes

    @invariant()
    def live_probes_within_limit(self) -> None:
        """Never more than half_open_max_calls unexpired probes."""
        live = [p for p in self.circuit.probes if p.expires_at > self.now]
        assert len(live) <= self.policy.half_open_max_calls

    @invariant()
    def opened_at_matches_state(self) -> None:
        """OPEN always knows when it opened; CLOSED never does."""
        if self.circuit.state == "OPEN":
            assert self.circuit.opened_at is not None
        if self.circuit.state == "CLOSED":
            assert self.circuit.opened_at is None
            assert self.circuit.probes == ()

    @invariant()
    def generation_only_increases(self) -> None:
        """A generation once seen is never seen again after a later one."""
        assert self.circuit.generation >= self.last_generation
        self.last_generation = self.circuit.generation

    @invariant()
    def counts_never_negative(self) -> None:
        """Failure and success counts stay at or above zero."""
        assert self.circuit.failure_count >= 0
        assert self.circuit.success_count >= 0


CircuitMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
TestCircuitMachine = CircuitMachine.TestCase
