"""HTTP client of workflows/dispatch-tasks.yml (standard library only).

    dispatch.py prepare TASKS WORKDIR   copy the task list, one task a line
    dispatch.py send URL WORKDIR        POST each task to URL/tasks
    dispatch.py confirm URL WORKDIR     GET URL/tasks/ID of each dispatched task
    dispatch.py cancel URL WORKDIR      POST URL/cancel for each dispatched task

Python rather than curl because curl is missing from slim images where
python3 is not. Each task is sent with `Idempotency-Key: RUN:STEP:DIGEST`,
the step's RUNNER_IDEMPOTENCY_KEY and a digest of the task, so a retry, a
resume or a redrive sends the same key and the service keeps one task.

WORKDIR/dispatched.tsv records `KEY<TAB>ID<TAB>TASK` for every task the
service accepted, written (and synced) as soon as it answers: a retry skips
those, and `cancel` undoes exactly those. A failure prints one line the
workflow's `classify` rules read, `HTTP 503 Service Unavailable` or
`connection refused`, and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = float(os.environ.get("DISPATCH_TIMEOUT", "10"))
TASKS = "tasks.txt"
DISPATCHED = "dispatched.tsv"
CANCELLED = "cancelled.tsv"


class CallFailed(Exception):
    """A request that got no useful answer; the message names the class."""


def call(method: str, url: str, key: str | None = None, body: str = "") -> Any:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body.encode() if method == "POST" else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        detail = error.read(200).decode("utf-8", errors="replace").strip()
        raise CallFailed(f"HTTP {error.code} {error.reason}: {detail}") from None
    except urllib.error.URLError as error:
        raise CallFailed(_network_reason(error.reason)) from None
    except TimeoutError:
        raise CallFailed(f"timed out after {TIMEOUT:g}s") from None
    except ConnectionError as error:
        raise CallFailed(_network_reason(error)) from None


def _network_reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, TimeoutError):
        return f"timed out after {TIMEOUT:g}s"
    return f"network error: {reason}"


def output(**values: object) -> None:
    """Append `key=value` lines to $RUNNER_OUTPUT (outside runner: stdout)."""
    lines = "".join(f"{key}={value}\n" for key, value in values.items())
    target = os.environ.get("RUNNER_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(lines)
    else:
        sys.stdout.write(lines)


def append_synced(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def read_table(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [line.split("\t", 2) for line in text.splitlines() if line]


def prepare(tasks: str, workdir: Path) -> int:
    lines = Path(tasks).read_text(encoding="utf-8").splitlines()
    kept = [line.strip() for line in lines]
    kept = [line for line in kept if line and not line.startswith("#")]
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = workdir / (TASKS + ".part")
    part.write_text("".join(f"{task}\n" for task in kept), encoding="utf-8")
    part.replace(workdir / TASKS)
    print(f"{len(kept)} task(s) to dispatch from {tasks}")
    output(count=len(kept), workdir=workdir)
    return 0


def task_key(task: str) -> str:
    digest = hashlib.sha256(task.encode()).hexdigest()[:16]
    return f"{os.environ['RUNNER_IDEMPOTENCY_KEY']}:{digest}"


def send(url: str, workdir: Path) -> int:
    ledger = workdir / DISPATCHED
    done = {row[0]: row[1] for row in read_table(ledger)}
    tasks = (workdir / TASKS).read_text(encoding="utf-8").splitlines()

    for number, task in enumerate(tasks, 1):
        key = task_key(task)
        if key in done:
            continue
        try:
            answer = call("POST", f"{url}/tasks", key, task)
        except CallFailed as failure:
            print(f"task {number} ({task}): {failure}", file=sys.stderr)
            return 1
        done[key] = answer["id"]
        append_synced(ledger, f"{key}\t{answer['id']}\t{task}")
        print(f"task {number} ({task}) dispatched as {answer['id']}")

    output(count=len(done), ids=" ".join(done.values()))
    return 0


def confirm(url: str, workdir: Path) -> int:
    confirmed = 0
    for _key, task_id, task in read_table(workdir / DISPATCHED):
        try:
            answer = call("GET", f"{url}/tasks/{task_id}")
        except CallFailed as failure:
            print(f"task {task_id} ({task}): {failure}", file=sys.stderr)
            return 1
        if answer.get("status") != "accepted":
            print(f"task {task_id} ({task}) is {answer.get('status')}", file=sys.stderr)
            return 1
        confirmed += 1
    print(f"{confirmed} task(s) confirmed")
    output(confirmed=confirmed)
    return 0


def cancel(url: str, workdir: Path) -> int:
    cancelled_path = workdir / CANCELLED
    cancelled = {row[0] for row in read_table(cancelled_path)}
    for key, task_id, task in read_table(workdir / DISPATCHED):
        if key in cancelled:
            continue
        try:
            call("POST", f"{url}/cancel", key, task_id)
        except CallFailed as failure:
            if not str(failure).startswith("HTTP 404"):
                print(f"cancel {task_id} ({task}): {failure}", file=sys.stderr)
                return 1
            print(f"{task_id} ({task}): the service has no such task; nothing to undo")
        else:
            print(f"cancelled {task_id} ({task})")
        append_synced(cancelled_path, f"{key}\t{task_id}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("prepare", "send", "confirm", "cancel"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    action, first, workdir = argv[0], argv[1], Path(argv[2])
    if action == "prepare":
        return prepare(first, workdir)
    url = first.rstrip("/")
    return {"send": send, "confirm": confirm, "cancel": cancel}[action](url, workdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
