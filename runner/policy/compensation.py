"""The order of backward recovery, as a pure function of the run's state.

A step is compensated only after every succeeded step that needs it has been
(SPEC section 5). A succeeded step without `compensate` is passed over, but in
the same order, so it never lets the steps it needs go before its own
dependents. A compensation that failed for good blocks the steps it needs;
independent ones still go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

BLOCKING = frozenset({"compensating", "compensation_failed"})
"""Statuses of a step whose compensation is not done."""


def dependents_of(needs: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    dependents: dict[str, list[str]] = {name: [] for name in needs}
    for name, needed in needs.items():
        for other in needed:
            dependents[other].append(name)
    return dependents


def backward_done(
    needs: Mapping[str, Sequence[str]],
    status: Mapping[str, str],
    has_compensation: Mapping[str, bool],
) -> dict[str, bool]:
    """Whether each step needs no more backward work, dependents included."""
    dependents = dependents_of(needs)
    done: dict[str, bool] = {}
    for name in reverse_topological(needs, dependents):
        if status[name] == "succeeded":
            done[name] = not has_compensation[name] and all(
                done[d] for d in dependents[name]
            )
        else:
            done[name] = status[name] not in BLOCKING
    return done


def reached(
    needs: Mapping[str, Sequence[str]],
    status: Mapping[str, str],
    has_compensation: Mapping[str, bool],
) -> list[str]:
    """Succeeded steps whose dependents are all done: the backward order's front.

    Those with a compensation may run it now; those without are passed over.
    """
    dependents = dependents_of(needs)
    done = backward_done(needs, status, has_compensation)
    return [
        name
        for name in reversed(list(needs))
        if status[name] == "succeeded" and all(done[d] for d in dependents[name])
    ]


def blockers(
    needs: Mapping[str, Sequence[str]], status: Mapping[str, str]
) -> dict[str, list[str]]:
    """For each step, the failed compensations among the steps that need it."""
    dependents = dependents_of(needs)
    found: dict[str, set[str]] = {}
    for name in reverse_topological(needs, dependents):
        found[name] = set()
        for dependent in dependents[name]:
            found[name] |= found[dependent]
            if status[dependent] == "compensation_failed":
                found[name].add(dependent)
    return {name: sorted(names) for name, names in found.items()}


def reverse_topological(
    needs: Mapping[str, Sequence[str]], dependents: Mapping[str, Sequence[str]]
) -> list[str]:
    """Every step after all of its dependents (iterative: no recursion limit)."""
    order: list[str] = []
    seen: set[str] = set()
    for root in needs:
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                order.append(name)
                continue
            if name in seen:
                continue
            seen.add(name)
            stack.append((name, True))
            stack.extend((d, False) for d in dependents[name] if d not in seen)
    return order
