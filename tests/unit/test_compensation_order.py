"""The order of backward recovery on chains, diamonds and generated DAGs."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.policy.compensation import backward_done, blockers, reached


def ready_to_compensate(
    needs: dict[str, tuple[str, ...]],
    status: dict[str, str],
    has_compensation: dict[str, bool],
) -> list[str]:
    """What the driver queues: the reached steps that have a compensation."""
    return [n for n in reached(needs, status, has_compensation) if has_compensation[n]]


def simulate(
    needs: dict[str, tuple[str, ...]],
    status: dict[str, str],
    has_compensation: dict[str, bool],
    fails: set[str],
    rng: random.Random,
) -> list[str]:
    """Compensate one ready step at a time, in a random order; return the order."""
    order: list[str] = []
    while True:
        ready = ready_to_compensate(needs, status, has_compensation)
        if not ready:
            return order
        name = rng.choice(ready)
        status[name] = "compensation_failed" if name in fails else "compensated"
        order.append(name)


def test_a_chain_is_compensated_from_its_end() -> None:
    """a -> b -> c compensates c, then b, then a."""
    needs = {"a": (), "b": ("a",), "c": ("b",)}
    status = dict.fromkeys(needs, "succeeded")
    order = simulate(needs, status, dict.fromkeys(needs, True), set(), random.Random(1))
    assert order == ["c", "b", "a"]


def test_a_diamond_waits_for_both_branches() -> None:
    """The root of a diamond goes last, after both branches."""
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    status = dict.fromkeys(needs, "succeeded")
    order = simulate(needs, status, dict.fromkeys(needs, True), set(), random.Random(2))
    assert order[0] == "d" and order[-1] == "a" and set(order[1:3]) == {"b", "c"}


def test_a_step_without_compensate_still_holds_the_order() -> None:
    """a -> x -> c with x passed over: a waits for c all the same."""
    needs = {"a": (), "x": ("a",), "c": ("x",)}
    status = dict.fromkeys(needs, "succeeded")
    has = {"a": True, "x": False, "c": True}
    assert ready_to_compensate(needs, status, has) == ["c"]
    status["c"] = "compensated"
    assert ready_to_compensate(needs, status, has) == ["a"]


def test_a_failed_compensation_blocks_what_it_needs_only() -> None:
    """b's compensation failed: a (needed by b) waits; independent z goes."""
    needs = {"a": (), "b": ("a",), "z": ()}
    status = {"a": "succeeded", "b": "compensation_failed", "z": "succeeded"}
    assert ready_to_compensate(needs, status, dict.fromkeys(needs, True)) == ["z"]


def test_a_step_without_compensate_is_reached_in_the_same_order() -> None:
    """x (no compensate) is reached, to be passed over, only once c is undone."""
    needs = {"a": (), "x": ("a",), "c": ("x",)}
    status = dict.fromkeys(needs, "succeeded")
    has = {"a": True, "x": False, "c": True}
    assert reached(needs, status, has) == ["c"]
    status["c"] = "compensated"
    assert reached(needs, status, has) == ["x", "a"]


def test_blockers_name_the_failed_compensations_downstream() -> None:
    """a and b wait for c's failed compensation; independent z for nothing."""
    needs = {"a": (), "b": ("a",), "c": ("b",), "z": ()}
    status = {"a": "succeeded", "b": "succeeded", "c": "compensation_failed"}
    status["z"] = "succeeded"
    held = blockers(needs, status)
    assert held == {"a": ["c"], "b": ["c"], "c": [], "z": []}


def test_steps_that_never_succeeded_are_not_compensated() -> None:
    """Failed, skipped and cancelled steps get no compensation and block nothing."""
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("a",)}
    status = {"a": "succeeded", "b": "failed", "c": "skipped", "d": "cancelled"}
    assert ready_to_compensate(needs, status, dict.fromkeys(needs, True)) == ["a"]


@st.composite
def runs(
    draw: st.DrawFn,
) -> tuple[dict[str, tuple[str, ...]], dict[str, str], dict[str, bool], set[str], int]:
    size = draw(st.integers(min_value=1, max_value=25))
    names = [f"s{i}" for i in range(size)]
    needs = {
        name: tuple(
            sorted(draw(st.sets(st.sampled_from(names[:index]), max_size=3)))
            if index
            else ()
        )
        for index, name in enumerate(names)
    }
    statuses = st.sampled_from(
        ["succeeded", "succeeded", "failed", "skipped", "cancelled"]
    )
    status = {name: draw(statuses) for name in names}
    has = {name: draw(st.booleans()) for name in names}
    fails = draw(st.sets(st.sampled_from(names), max_size=3))
    return needs, status, has, fails, draw(st.integers(0, 2**16))


@settings(max_examples=150, deadline=None)
@given(runs())
def test_generated_dags_respect_the_reversed_dependencies(
    run: tuple[
        dict[str, tuple[str, ...]], dict[str, str], dict[str, bool], set[str], int
    ],
) -> None:
    """Every compensation comes after those of the succeeded steps that need it."""
    needs, status, has, fails, seed = run
    initial = dict(status)
    order = simulate(needs, status, has, fails, random.Random(seed))
    position = {name: index for index, name in enumerate(order)}
    for name in order:
        assert initial[name] == "succeeded" and has[name]
        for other, needed in needs.items():
            if name in needed and other in position:
                assert position[other] < position[name]
    assert len(order) == len(set(order))
    for name in needs:
        if initial[name] == "succeeded" and has[name] and name not in position:
            # Left out only when a compensation it waits for failed for good.
            assert any(status[d] == "compensation_failed" for d in _after(needs, name))
    assert all(
        backward_done(needs, status, has)[name]
        for name in position
        if status[name] == "compensated"
    )


def _after(needs: dict[str, tuple[str, ...]], name: str) -> set[str]:
    """Every step that needs `name`, directly or not."""
    found: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for other, needed in needs.items():
            if current in needed and other not in found:
                found.add(other)
                frontier.append(other)
    return found
