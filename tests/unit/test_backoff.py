"""Backoff delays, jitter bounds and retry decisions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.policy.backoff import (
    RetryDecision,
    base_delay,
    decide_retry,
    jittered,
)
from runner.spec.model import ERROR_CLASSES, Backoff, ErrorClass, Jitter, RetryPolicy

durations = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
multipliers = st.floats(min_value=1.0, max_value=100.0, allow_nan=False)
retry_numbers = st.integers(min_value=1, max_value=10**12)
unit_floats = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
JITTERS: tuple[Jitter, ...] = ("full", "equal", "add", "none")
backoffs = st.builds(
    Backoff,
    initial=durations,
    multiplier=multipliers,
    max=durations,
    jitter=st.sampled_from(JITTERS),
)
retry_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=20),
    backoff=backoffs,
    transient_delay=durations,
    max_elapsed=st.none() | durations,
    retry_on=st.frozensets(st.sampled_from(ERROR_CLASSES)),
)


def test_base_delay_follows_spec_formula() -> None:
    """d = min(initial x multiplier^(k-1), max): 1, 2, 4, ... capped at 30."""
    backoff = Backoff(initial=1.0, multiplier=2.0, max=30.0)

    delays = [base_delay(backoff, k) for k in range(1, 8)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_base_delay_rejects_retry_zero() -> None:
    """Retry numbers start at 1; 0 is a caller's bug."""
    with pytest.raises(ValueError, match="start at 1"):
        base_delay(Backoff(), 0)


@pytest.mark.parametrize("retry_number", [10_000, 10**9, 10**400])
def test_base_delay_huge_retry_number_is_capped(retry_number: int) -> None:
    """Huge retry numbers give max, without overflow or delay."""
    assert base_delay(Backoff(multiplier=2.0, max=30.0), retry_number) == 30.0
    assert base_delay(Backoff(multiplier=1e300, max=30.0), retry_number) == 30.0


def test_base_delay_shrinking_multiplier_does_not_underflow_to_error() -> None:
    """A multiplier below 1 decays towards 0 without raising."""
    assert base_delay(Backoff(multiplier=0.5), 10**9) == 0.0


@given(backoff=backoffs, k=retry_numbers)
def test_base_delay_monotone_and_capped(backoff: Backoff, k: int) -> None:
    """With multiplier >= 1, d never shrinks from retry to retry nor passes max."""
    d = base_delay(backoff, k)

    assert 0.0 <= d <= backoff.max
    assert d <= base_delay(backoff, k + 1)


@given(backoff=backoffs, d=durations, r=unit_floats)
def test_jitter_bounds(backoff: Backoff, d: float, r: float) -> None:
    """Each jitter mode stays within the bounds SPEC section 3 gives it."""
    delay = jittered(backoff, d, lambda: r)

    bounds = {
        "full": (0.0, d),
        "equal": (d / 2, d),
        "add": (d, 1.25 * d),
        "none": (d, d),
    }
    low, high = bounds[backoff.jitter]
    assert low <= delay <= high


def test_jitter_formulas() -> None:
    """Each mode applies its formula to the random draw."""
    d = 8.0

    def spread(jitter: Jitter) -> float:
        return jittered(Backoff(jitter=jitter), d, lambda: 0.5)

    assert [spread(j) for j in ("full", "equal", "add", "none")] == [
        4.0,
        6.0,
        9.0,
        8.0,
    ]


def test_first_retry_uses_initial_delay() -> None:
    """After attempt 1 comes retry 1, jittered from the initial delay."""
    policy = RetryPolicy(backoff=Backoff(initial=2.0, jitter="full"))

    decision = decide_retry(policy, "intermittent", 1, 0.0, lambda: 0.5)

    assert decision == RetryDecision(True, 1.0, "retry 1 in 1.00s (full jitter of 2s)")


def test_no_jitter_reason() -> None:
    """With jitter none the delay is d itself, and the reason says so."""
    policy = RetryPolicy(backoff=Backoff(initial=1.0, jitter="none"))

    decision = decide_retry(policy, "intermittent", 2, 0.0, random.random)

    assert decision == RetryDecision(True, 2.0, "retry 2 in 2.00s (no jitter)")


def test_permanent_is_never_retried() -> None:
    """Permanent failures are not retried, even when listed in retry_on."""
    policy = RetryPolicy(retry_on=frozenset(ERROR_CLASSES))

    decision = decide_retry(policy, "permanent", 1, 0.0, random.random)

    assert decision == RetryDecision(False, 0.0, "permanent failures are not retried")


def test_class_outside_retry_on_is_not_retried() -> None:
    """A class missing from retry_on ends the step at once."""
    policy = RetryPolicy(retry_on=frozenset({"transient"}))

    decision = decide_retry(policy, "intermittent", 1, 0.0, random.random)

    assert decision.reason == "class intermittent not in retry_on"
    assert not decision.retry


def test_no_wait_after_last_attempt() -> None:
    """When the attempts are spent there is no retry and no delay."""
    decision = decide_retry(
        RetryPolicy(max_attempts=3), "transient", 3, 0.0, random.random
    )

    assert decision == RetryDecision(False, 0.0, "attempts exhausted (3 of 3)")


def test_transient_delay_replaces_backoff_when_set() -> None:
    """A transient failure waits transient_delay, without jitter, when it is set."""
    policy = RetryPolicy(transient_delay=0.25, backoff=Backoff(initial=10.0))

    decision = decide_retry(policy, "transient", 1, 0.0, random.random)

    assert decision == RetryDecision(True, 0.25, "retry 1 in 0.25s (transient_delay)")


def test_transient_failures_retry_at_once_by_default() -> None:
    """With the default transient_delay of 0s a transient failure retries at once."""
    policy = RetryPolicy(backoff=Backoff(initial=4.0, jitter="none"))

    decision = decide_retry(policy, "transient", 1, 0.0, random.random)

    assert decision.delay == 0.0


def test_transient_delay_does_not_apply_to_intermittent() -> None:
    """Intermittent failures always use the backoff."""
    policy = RetryPolicy(transient_delay=0.25, backoff=Backoff(jitter="none"))

    assert decide_retry(policy, "intermittent", 1, 0.0, random.random).delay == 1.0


def test_max_elapsed_stops_a_late_retry() -> None:
    """No retry may start after max_elapsed since the first attempt."""
    policy = RetryPolicy(max_elapsed=60.0, backoff=Backoff(initial=8.0, jitter="none"))

    late = decide_retry(policy, "intermittent", 1, 55.0, random.random)
    on_time = decide_retry(policy, "intermittent", 1, 52.0, random.random)

    assert late == RetryDecision(False, 0.0, "max_elapsed 60s would be exceeded")
    assert on_time.retry
    assert on_time.delay == 8.0


@given(
    policy=retry_policies,
    error_class=st.sampled_from(ERROR_CLASSES),
    attempts_made=st.integers(min_value=1, max_value=40),
    elapsed=durations,
    r=unit_floats,
)
def test_decide_retry_respects_its_limits(
    policy: RetryPolicy,
    error_class: ErrorClass,
    attempts_made: int,
    elapsed: float,
    r: float,
) -> None:
    """No retry is permanent, outside retry_on, or past either limit."""
    decision = decide_retry(policy, error_class, attempts_made, elapsed, lambda: r)

    if decision.retry:
        assert error_class != "permanent"
        assert error_class in policy.retry_on
        assert attempts_made < policy.max_attempts
        limit = policy.max_elapsed
        assert limit is None or elapsed + decision.delay <= limit
        assert decision.delay >= 0.0
    else:
        assert decision.delay == 0.0
