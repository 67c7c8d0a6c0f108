"""Why `full` jitter is the default: a herd of clients retrying into a limit.

A dependency comes back after an outage and serves at most CAPACITY calls per
SLOT; the calls beyond that fail (throttled) and retry with runner's own
backoff (`runner.policy.backoff`, SPEC defaults: 1s initial, x2, 30s cap).
Every client calls at t=0, as after an outage. For each jitter mode this
prints, averaged over seeded trials: the calls made in all (the load the
dependency took), and the time by which half and all of the clients got
through. Pure simulation on a virtual clock: it runs in about a second.

    .venv/bin/python bench/jitter.py [--clients 200] [--trials 20]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.policy.backoff import base_delay, jittered
from runner.spec.model import Backoff

SLOT = 0.1
"""Seconds per service window."""
CAPACITY = 20
"""Calls the dependency serves per window (200 per second)."""
MODES = ("none", "add", "equal", "full")


def herd(mode: str, clients: int, seed: int) -> tuple[int, float, float]:
    """Calls made, and the times by which half and all clients succeeded."""
    backoff = Backoff(jitter=mode)  # type: ignore[arg-type]
    rand = random.Random(seed).random
    calls = [(0.0, client, 0) for client in range(clients)]
    heapq.heapify(calls)
    served: dict[int, int] = {}
    done: list[float] = []
    made = 0
    while calls:
        at, client, failures = heapq.heappop(calls)
        made += 1
        window = int(at / SLOT)
        if served.get(window, 0) < CAPACITY:
            served[window] = served.get(window, 0) + 1
            done.append(at)
            continue
        delay = jittered(backoff, base_delay(backoff, failures + 1), rand)
        heapq.heappush(calls, (at + delay, client, failures + 1))
    return made, statistics.median(done), max(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()

    print(
        f"{args.clients} clients at t=0, dependency serves {CAPACITY} calls per "
        f"{SLOT:g}s; backoff 1s x2 cap 30s; mean of {args.trials} seeded trials"
    )
    print(f"{'jitter':<8} {'calls':>8} {'half done':>10} {'all done':>9}")
    for mode in MODES:
        runs = [herd(mode, args.clients, seed) for seed in range(args.trials)]
        columns = zip(*runs, strict=True)
        made, half, last = (statistics.mean(column) for column in columns)
        print(f"{mode:<8} {made:>8.0f} {half:>9.2f}s {last:>8.2f}s")


if __name__ == "__main__":
    main()
