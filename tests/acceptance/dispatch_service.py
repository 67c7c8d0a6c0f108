"""A local task-dispatch HTTP service to run `workflows/dispatch-tasks.yml` against.

    dispatch_service.py [--port N] [--state FILE] [--control FILE] [--lifetime S]

Listens on 127.0.0.1 only (port 0: any free port) and prints
`listening 127.0.0.1 PORT` on stdout once it accepts connections. It exits
after `--lifetime` seconds (default 300), so a test that forgets it cannot
leave it behind.

The API the workflow uses:

- `POST /tasks`: the body is one task; an `Idempotency-Key` header is
  required. A new key gets `201 {"id", "key", "duplicate": false}`; a key seen
  before gets `200` with the id it got the first time: a retried or resumed
  dispatch never creates a second task.
- `POST /cancel`: cancels the task dispatched under the request's
  `Idempotency-Key`; `200` again for a repeat, `404` for a key never seen.
- `GET /tasks/ID`: `{"id", "key", "task", "status"}`, `404` if unknown.
- `GET /health`.

Faults, set by `POST /_control` with a JSON object (each key optional):

- `{"script": [503, 429]}`: the next `POST /tasks` requests get these
  statuses, in order, before the service behaves again;
- `{"fail": [{"match": "task-3", "status": 403}]}`: every `POST /tasks` whose
  body contains `match` gets `status`, until cleared;
- `{"down": 2.5}`: stop listening for that many seconds (callers get
  "connection refused"), then listen again on the same port;
- `{"clear": true}`: drop the script and the fail rules.

With `--control FILE`, the service is also down whenever FILE holds the word
`down`: a test can take it down and bring it back without reaching it.

`GET /_control/log` returns everything recorded: `requests` (method, path,
key, body, status), `tasks` by key, `cancellations`. With `--state FILE` that
record is also written to FILE after every change (atomically) and read back
at start, so a restarted service remembers its keys.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
POLL_SECONDS = 0.02


class Record:
    """Requests, tasks by key, cancellations and the injected faults."""

    def __init__(self, state: Path | None) -> None:
        self.lock = threading.Lock()
        self.state = state
        self.data: dict[str, Any] = {"requests": [], "tasks": {}, "cancellations": []}
        if state is not None and state.exists():
            self.data = json.loads(state.read_text(encoding="utf-8"))
        self.script: list[int] = []
        self.fail: list[dict[str, Any]] = []
        self.down_until = 0.0

    def save(self) -> None:
        if self.state is None:
            return
        part = self.state.with_suffix(".part")
        part.write_text(json.dumps(self.data), encoding="utf-8")
        part.replace(self.state)

    def log(
        self, method: str, path: str, key: str | None, body: str, status: int
    ) -> None:
        self.data["requests"].append(
            {"method": method, "path": path, "key": key, "body": body, "status": status}
        )

    def injected(self, body: str) -> int | None:
        """The status a fault imposes on `POST /tasks` with `body`, if any."""
        if self.script:
            return self.script.pop(0)
        for rule in self.fail:
            if rule["match"] in body:
                return int(rule["status"])
        return None

    def dispatch(self, key: str, body: str) -> tuple[int, dict[str, Any]]:
        known = self.data["tasks"].get(key)
        if known is not None:
            return 200, {"id": known["id"], "key": key, "duplicate": True}
        task_id = f"t-{len(self.data['tasks']) + 1:06d}"
        self.data["tasks"][key] = {
            "id": task_id,
            "key": key,
            "task": body,
            "status": "accepted",
        }
        return 201, {"id": task_id, "key": key, "duplicate": False}

    def cancel(self, key: str) -> tuple[int, dict[str, Any]]:
        known = self.data["tasks"].get(key)
        if known is None:
            return 404, {"error": f"no task dispatched under key {key!r}"}
        self.data["cancellations"].append({"key": key, "id": known["id"]})
        known["status"] = "cancelled"
        return 200, {"id": known["id"], "status": "cancelled"}

    def find(self, task_id: str) -> dict[str, Any] | None:
        for task in self.data["tasks"].values():
            if task["id"] == task_id:
                return dict(task)
        return None

    def control(self, order: dict[str, Any]) -> None:
        if order.get("clear"):
            self.script, self.fail = [], []
        self.script.extend(int(status) for status in order.get("script", []))
        self.fail.extend(order.get("fail", []))
        if "down" in order:
            self.down_until = time.monotonic() + float(order["down"])


class Handler(BaseHTTPRequestHandler):
    server_version = "dispatch-service/1"
    record: Record

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the record is the log."""

    def reply(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status in (429, 503):
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> str:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length).decode("utf-8", errors="replace")

    def do_GET(self) -> None:
        record = self.record
        with record.lock:
            if self.path == "/health":
                self.reply(200, {"ok": True})
            elif self.path == "/_control/log":
                self.reply(200, record.data)
            elif self.path.startswith("/tasks/"):
                task = record.find(self.path.removeprefix("/tasks/"))
                status = 200 if task else 404
                record.log("GET", self.path, None, "", status)
                self.reply(status, task or {"error": "no such task"})
            else:
                self.reply(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        record, body = self.record, self.body()
        key = self.headers.get("Idempotency-Key")
        with record.lock:
            if self.path == "/_control":
                record.control(json.loads(body or "{}"))
                self.reply(200, {"ok": True})
                return
            status, document = self.route(key, body)
            record.log("POST", self.path, key, body, status)
            record.save()
            self.reply(status, document)

    def route(self, key: str | None, body: str) -> tuple[int, dict[str, Any]]:
        if self.path not in ("/tasks", "/cancel"):
            return 404, {"error": f"no route {self.path}"}
        if not key:
            return 400, {"error": "an Idempotency-Key header is required"}
        if self.path == "/cancel":
            return self.record.cancel(key)
        injected = self.record.injected(body)
        if injected is not None:
            return injected, {"error": HTTPStatus(injected).phrase}
        return self.record.dispatch(key, body)


class Listener:
    """The HTTP server, closed while the service is meant to be down."""

    def __init__(self, port: int, record: Record, control: Path | None) -> None:
        self.port = port
        self.record = record
        self.control = control
        self.server: ThreadingHTTPServer | None = None
        self.handler = type("BoundHandler", (Handler,), {"record": record})

    def up(self) -> None:
        server = ThreadingHTTPServer((HOST, self.port), self.handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.server = server

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def should_be_down(self) -> bool:
        if time.monotonic() < self.record.down_until:
            return True
        if self.control is None:
            return False
        try:
            return "down" in self.control.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False

    def follow(self, deadline: float) -> None:
        """Open and close the listener as the faults say, until `deadline`."""
        while time.monotonic() < deadline:
            down = self.should_be_down()
            if down and self.server is not None:
                self.down()
            elif not down and self.server is None:
                self.up()
            time.sleep(POLL_SECONDS)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--lifetime", type=float, default=300)
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    listener = Listener(options.port, Record(options.state), options.control)
    listener.up()
    print(f"listening {HOST} {listener.port}", flush=True)
    try:
        listener.follow(time.monotonic() + options.lifetime)
    finally:
        listener.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
