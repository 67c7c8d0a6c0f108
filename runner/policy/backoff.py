"""How long to wait before a retry, and whether to retry at all (SPEC section 3).

Everything here is a pure function of the policy, the attempt's facts and an
injected random source, so the engine can commit a retry's due time before it
waits and tests can replay any decision.

A transient failure waits `transient_delay` instead of the backoff only when
that delay is above zero; the default 0s means "use the backoff". The model
cannot tell an explicit `0s` from an absent key, and a zero wait would let a
burst of "connection refused" spend every attempt in a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from runner.spec.model import Backoff, ErrorClass, RetryPolicy

Random = Callable[[], float]
"""A source of floats in [0, 1), like `random.random`."""

_MAX_STEPS = 2**53
"""Growth steps beyond this change nothing a float can hold, and products of
larger integers with a float's logarithm would overflow."""


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float
    """Seconds to wait before the next attempt; 0 when not retrying."""
    reason: str
    """Why, in words for the event log: "retry 2 in 1.73s (full jitter of 2s)"."""


def base_delay(backoff: Backoff, retry_number: int) -> float:
    """The delay d before retry `retry_number` (1 for the first), before jitter.

    d = min(initial x multiplier^(k-1), max), computed so that no retry number,
    however large, overflows or takes long.
    """
    if retry_number < 1:
        raise ValueError(f"retry numbers start at 1, got {retry_number}")

    steps = min(retry_number - 1, _MAX_STEPS)
    if steps == 0 or backoff.initial <= 0 or backoff.multiplier == 1:
        return min(backoff.initial, backoff.max)
    if backoff.multiplier <= 0 or backoff.max <= 0:
        return min(0.0, backoff.max)

    # Compare logarithms first: the power itself would overflow long before
    # the retry number stops being plausible.
    log_delay = math.log(backoff.initial) + steps * math.log(backoff.multiplier)
    if log_delay >= math.log(backoff.max):
        return backoff.max

    return min(backoff.initial * backoff.multiplier**steps, backoff.max)


def jittered(backoff: Backoff, d: float, rand: Random) -> float:
    """The delay d spread by the backoff's jitter mode, with `rand()` in [0, 1)."""
    if backoff.jitter == "full":
        return rand() * d
    if backoff.jitter == "equal":
        return d / 2 + rand() * d / 2
    if backoff.jitter == "add":
        # The formula of the original bash scripts: it may exceed max by d/4.
        return d + rand() * d / 4

    return d


def decide_retry(
    policy: RetryPolicy,
    error_class: ErrorClass,
    attempts_made: int,
    elapsed: float,
    rand: Random,
) -> RetryDecision:
    """Whether to retry after `attempts_made` attempts, and after what delay.

    `elapsed` is the time from the start of the first attempt to now: no retry
    may start later than `max_elapsed` after it.
    """
    refusal = _refusal(policy, error_class, attempts_made)
    if refusal is not None:
        return RetryDecision(retry=False, delay=0.0, reason=refusal)

    retry_number = attempts_made
    delay, how = _delay(policy, error_class, retry_number, rand)

    if policy.max_elapsed is not None and elapsed + delay > policy.max_elapsed:
        reason = f"max_elapsed {_seconds(policy.max_elapsed)} would be exceeded"
        return RetryDecision(retry=False, delay=0.0, reason=reason)

    reason = f"retry {retry_number} in {delay:.2f}s ({how})"
    return RetryDecision(retry=True, delay=delay, reason=reason)


def _refusal(
    policy: RetryPolicy, error_class: ErrorClass, attempts_made: int
) -> str | None:
    """Why no retry is possible whatever the delay, or None."""
    if error_class == "permanent":
        return "permanent failures are not retried"
    if error_class not in policy.retry_on:
        return f"class {error_class} not in retry_on"
    if attempts_made >= policy.max_attempts:
        # No wait follows the last attempt: the step fails at once.
        return f"attempts exhausted ({attempts_made} of {policy.max_attempts})"

    return None


def _delay(
    policy: RetryPolicy, error_class: ErrorClass, retry_number: int, rand: Random
) -> tuple[float, str]:
    """The wait before retry `retry_number`, and how it was chosen."""
    # SPEC section 3: transient failures (momentary: a timeout, a reset
    # connection) wait transient_delay instead of the backoff; its default, 0s,
    # retries them at once. Intermittent ones (rate limits) need the backoff.
    if error_class == "transient":
        return policy.transient_delay, "transient_delay"

    backoff = policy.backoff
    d = base_delay(backoff, retry_number)
    if backoff.jitter == "none":
        return d, "no jitter"

    return jittered(backoff, d, rand), f"{backoff.jitter} jitter of {_seconds(d)}"


def _seconds(duration: float) -> str:
    return f"{duration:g}s"
