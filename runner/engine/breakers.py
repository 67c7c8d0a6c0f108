"""Circuit breakers on the shared store: the pure machine, run in transactions.

Each operation reads a circuit, applies a function of `runner.policy.circuit`
and writes the result inside one `BEGIN IMMEDIATE` transaction, so every
process on the store (runs, `runner retry`, `runner circuits`) sees and makes
atomic transitions and no update is lost. Transitions are logged as events.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from runner.policy import circuit as machine
from runner.policy.circuit import Admission, CircuitState, Probe
from runner.spec.model import CircuitPolicy
from runner.store.sqlite import Store, Txn

PARK_POLL = 1.0
"""A parked step asks again at least this often: a probe that reports frees
its place before its lease says so."""


@dataclass(frozen=True)
class Ticket:
    """What an admitted call must hand back when it reports."""

    circuit: str
    generation: int
    token: str
    probe: bool


def load(txn: Txn, name: str) -> tuple[CircuitState, CircuitPolicy]:
    row = txn.execute(
        "SELECT state, failure_count, success_count, opened_at, forced_open, "
        "generation, policy FROM circuits WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return CircuitState(), CircuitPolicy()
    probes = txn.execute(
        "SELECT token, expires_at FROM probes WHERE circuit = ? ORDER BY expires_at",
        (name,),
    ).fetchall()
    state = CircuitState(
        state=row[0],
        failure_count=row[1],
        success_count=row[2],
        opened_at=row[3],
        forced_open=bool(row[4]),
        probes=tuple(Probe(token, expires) for token, expires in probes),
        generation=row[5],
    )
    return state, _policy(row[6])


def _policy(text: str | None) -> CircuitPolicy:
    return CircuitPolicy(**json.loads(text)) if text else CircuitPolicy()


def save(txn: Txn, name: str, state: CircuitState, policy: CircuitPolicy) -> None:
    txn.execute(
        "INSERT INTO circuits (name, state, failure_count, success_count, "
        "opened_at, forced_open, generation, policy, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
        "failure_count = excluded.failure_count, "
        "success_count = excluded.success_count, "
        "opened_at = excluded.opened_at, forced_open = excluded.forced_open, "
        "generation = excluded.generation, policy = excluded.policy, "
        "updated_at = excluded.updated_at",
        (
            name,
            state.state,
            state.failure_count,
            state.success_count,
            state.opened_at,
            int(state.forced_open),
            state.generation,
            json.dumps(asdict(policy)),
            txn.now,
        ),
    )
    txn.execute("DELETE FROM probes WHERE circuit = ?", (name,))
    for probe in state.probes:
        txn.execute(
            "INSERT INTO probes (circuit, token, expires_at) VALUES (?, ?, ?)",
            (name, probe.token, probe.expires_at),
        )


def _log(
    txn: Txn,
    name: str,
    transitions: tuple[str, ...],
    run_id: str | None = None,
    step: str | None = None,
) -> None:
    for transition in transitions:
        txn.event(f"circuit.{transition}", run_id, step, circuit=name)


def declare(txn: Txn, policies: dict[str, CircuitPolicy]) -> None:
    """Store each declared policy with its circuit (the last declaration wins)."""
    for name, policy in policies.items():
        state, _ = load(txn, name)
        save(txn, name, state, policy)


def admit(
    store: Store,
    name: str,
    token: str,
    lease: float,
    where: tuple[str, str],
    *,
    log_refusal: bool = True,
) -> tuple[Admission, Ticket | None]:
    """Ask the circuit to let one call through (a probe place when HALF_OPEN).

    `where` is the (run, step) asking; `log_refusal` is false when the step
    was already parked, so the event log counts each parking once.
    """
    run_id, step = where
    with store.write() as txn:
        state, policy = load(txn, name)
        admission = machine.admit(state, policy, txn.now, token, lease)
        save(txn, name, admission.state, policy)
        transitions = admission.transitions
        if not log_refusal:
            transitions = tuple(t for t in transitions if t != "refused")
        _log(txn, name, transitions, run_id, step)
    if not admission.admitted:
        return admission, None
    ticket = Ticket(name, admission.state.generation, token, admission.probe)
    return admission, ticket


def report(
    txn: Txn, ticket: Ticket, outcome: str | None, run_id: str | None, step: str | None
) -> None:
    """Count an admitted call's outcome (None: not counted, only release)."""
    state, policy = load(txn, ticket.circuit)
    if outcome is None:
        state = replace(
            state, probes=tuple(p for p in state.probes if p.token != ticket.token)
        )
        transitions: tuple[str, ...] = ()
    else:
        state, transitions = machine.record(
            state,
            policy,
            txn.now,
            "success" if outcome == "success" else "failure",
            generation=ticket.generation,
            token=ticket.token,
        )
    save(txn, ticket.circuit, state, policy)
    _log(txn, ticket.circuit, transitions, run_id, step)


def record_outcome(store: Store, name: str, outcome: str) -> tuple[str, ...]:
    """`runner circuits record-failure|record-success` from a script."""
    with store.write() as txn:
        state, policy = load(txn, name)
        state, transitions = machine.record(
            state,
            policy,
            txn.now,
            "success" if outcome == "success" else "failure",
            generation=state.generation,
            token=None,
        )
        save(txn, name, state, policy)
        _log(txn, name, transitions)
    return transitions


def manual(store: Store, name: str, action: str) -> tuple[str, ...]:
    """`reset` closes, `open` forces open until reset."""
    with store.write() as txn:
        state, policy = load(txn, name)
        if action == "reset":
            state, transitions = machine.reset(state)
        else:
            state, transitions = machine.force_open(state, txn.now)
        save(txn, name, state, policy)
        _log(txn, name, transitions)
        txn.event(f"circuit.manual_{action}", None, None, circuit=name)
    return transitions


def would_admit(store: Store, name: str) -> bool:
    """`runner circuits check`: no probe place is taken.

    A read transaction, not a write: it sees one consistent snapshot of the
    circuit and its probes, and never queues behind the writers' lock.
    """
    with store.read() as reader:
        state, policy = load(reader, name)
    return machine.check(state, policy, reader.now)


def describe(store: Store, name: str) -> dict[str, Any] | None:
    """A circuit as `circuits show` prints it, its lazy transitions applied."""
    with store.write() as txn:
        exists = txn.execute("SELECT 1 FROM circuits WHERE name = ?", (name,))
        if exists.fetchone() is None:
            return None
        state, policy = load(txn, name)
        advanced, transitions = machine.current(state, policy, txn.now)
        if transitions or advanced != state:
            save(txn, name, advanced, policy)
            _log(txn, name, transitions)
    return {
        "name": name,
        "state": advanced.state,
        "failure_count": advanced.failure_count,
        "success_count": advanced.success_count,
        "opened_at": advanced.opened_at,
        "policy": asdict(policy),
    }


def names(store: Store) -> list[str]:
    rows = store.select("SELECT name FROM circuits ORDER BY name")
    return [row[0] for row in rows]
