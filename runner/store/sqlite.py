"""The SQLite state store: runs, steps, attempts, events, circuits.

Durability: WAL with `synchronous=FULL`, so a committed transition survives a
power cut. Every read-then-write transaction starts with `BEGIN IMMEDIATE`,
which takes the write lock up front: a deferred transaction that upgrades
fails at once with "database is locked" under contention instead of waiting.

Fencing: a run is driven by the holder of its lease (`runs.epoch`). Every
write for a run checks the epoch it was given, so an owner that was paused and
lost its lease can write nothing when it wakes up.

The SQL is kept portable (no SQLite-only functions in queries) so the
PostgreSQL store can share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runner.errors import LockedError, StoreError

SCHEMA_VERSION = 1
HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    params TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    reason TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    recoveries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    error_class TEXT,
    rule TEXT,
    message TEXT,
    started_at REAL,
    ended_at REAL,
    first_started_at REAL,
    due_at REAL,
    outputs TEXT,
    process TEXT,
    comp_attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    number INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    signal TEXT,
    error_class TEXT,
    rule TEXT,
    message TEXT,
    tail TEXT,
    PRIMARY KEY (run_id, step, seq)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    run_id TEXT,
    step TEXT,
    kind TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX events_run ON events (run_id, id);
CREATE TABLE circuits (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    failure_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    opened_at REAL,
    forced_open INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    policy TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE probes (
    circuit TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (circuit, token)
);
"""

RUN_COLUMNS = [
    "run_id",
    "workflow",
    "kind",
    "status",
    "path",
    "source",
    "params",
    "started_at",
    "ended_at",
    "reason",
    "epoch",
    "owner",
    "lease_until",
    "recoveries",
]
STEP_COLUMNS = [
    "name",
    "position",
    "status",
    "attempts",
    "seq",
    "error_class",
    "rule",
    "message",
    "started_at",
    "ended_at",
    "first_started_at",
    "due_at",
    "outputs",
    "process",
    "comp_attempts",
]
ATTEMPT_COLUMNS = [
    "step",
    "seq",
    "kind",
    "number",
    "status",
    "started_at",
    "ended_at",
    "exit_code",
    "signal",
    "error_class",
    "rule",
    "message",
    "tail",
]


class Store:
    """One connection to the state database of a state directory."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "state.db")
        self.connection = self._open()

    def _open(self) -> sqlite3.Connection:
        if not _create_private(self.path):
            _check_header(self.path)
        try:
            connection = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            self._migrate(connection)
        except sqlite3.DatabaseError as error:
            raise StoreError(_corrupt(self.path, error)) from None
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        return connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema v{version}, newer than this "
                f"runner (v{SCHEMA_VERSION}); upgrade runner"
            )
        if version == SCHEMA_VERSION:
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(_corrupt(self.path, check))
            return
        connection.execute("BEGIN IMMEDIATE")
        if connection.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def write(
        self, run_id: str | None = None, epoch: int | None = None
    ) -> Iterator[Txn]:
        """One durable transaction; fenced by `epoch` when given."""
        connection = self.connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(
                f"cannot write state database {self.path}: {error}"
            ) from None
        try:
            txn = Txn(connection)
            if epoch is not None:
                txn.fence(run_id or "", epoch)
            yield txn
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(
                f"cannot record the change in state database {self.path}: {error}; "
                "nothing more was run; free the disk or fix the store, then resume"
            ) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")

    # Reads -------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.connection.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return dict(zip(RUN_COLUMNS, row, strict=True)) if row else None

    def runs(self, statuses: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Runs, oldest first, optionally only those in `statuses`."""
        where = (
            f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        )
        rows = self.connection.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} ORDER BY seq", statuses
        ).fetchall()
        return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.connection.execute(
            f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE run_id = ? "
            "ORDER BY position",
            (run_id,),
        ).fetchall()
        return [dict(zip(STEP_COLUMNS, row, strict=True)) for row in rows]

    def attempts(self, run_id: str, step: str | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ?"
        args: tuple[str, ...] = (run_id,)
        if step is not None:
            query, args = query + " AND step = ?", (run_id, step)
        rows = self.connection.execute(query + " ORDER BY started_at, seq", args)
        return [dict(zip(ATTEMPT_COLUMNS, row, strict=True)) for row in rows]

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, at, run_id, step, kind, detail FROM events"
        args: tuple[str, ...] = ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        rows = self.connection.execute(query + " ORDER BY id", args).fetchall()
        keys = ("id", "at", "run_id", "step", "kind", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self.connection.execute(
            "SELECT kind, COUNT(*) FROM events GROUP BY kind"
        ).fetchall()
        return dict(rows)

    def integrity(self) -> str:
        return str(self.connection.execute("PRAGMA integrity_check").fetchone()[0])


class Txn:
    """The writes of one transaction."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.now = time.time()

    def fence(self, run_id: str, epoch: int) -> None:
        row = self.connection.execute(
            "SELECT epoch FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None or row[0] != epoch:
            raise LockedError(
                f"run {run_id} was taken over by another process; this one stops"
            )

    def insert_run(self, fields: Mapping[str, Any]) -> None:
        self._insert("runs", fields)

    def insert_step(self, run_id: str, fields: Mapping[str, Any]) -> None:
        self._insert("steps", {"run_id": run_id, **fields})

    def insert_attempt(self, run_id: str, fields: Mapping[str, Any]) -> None:
        self._insert("attempts", {"run_id": run_id, **fields})

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._update("runs", fields, "run_id = ?", (run_id,))

    def update_step(self, run_id: str, name: str, **fields: Any) -> None:
        self._update("steps", fields, "run_id = ? AND name = ?", (run_id, name))

    def update_attempt(self, run_id: str, step: str, seq: int, **fields: Any) -> None:
        self._update(
            "attempts",
            fields,
            "run_id = ? AND step = ? AND seq = ?",
            (run_id, step, seq),
        )

    def event(
        self,
        kind: str,
        run_id: str | None = None,
        step: str | None = None,
        **detail: Any,
    ) -> None:
        self.connection.execute(
            "INSERT INTO events (at, run_id, step, kind, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.now, run_id, step, kind, json.dumps(detail) if detail else None),
        )

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, args)

    def _insert(self, table: str, fields: Mapping[str, Any]) -> None:
        names = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        self.connection.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(fields.values())
        )

    def _update(
        self, table: str, fields: Mapping[str, Any], where: str, args: tuple[Any, ...]
    ) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.connection.execute(
            f"UPDATE {table} SET {sets} WHERE {where}", (*fields.values(), *args)
        )


def _create_private(path: str) -> bool:
    """Create the database file 0600 (its -wal and -shm copy the mode); True if new."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return False
    except OSError as error:
        raise StoreError(
            f"cannot create state database {path}: {error.strerror}"
        ) from None
    os.close(descriptor)
    return True


def _check_header(path: str) -> None:
    try:
        with open(path, "rb") as file:
            header = file.read(len(HEADER))
    except OSError as error:
        raise StoreError(
            f"cannot read state database {path}: {error.strerror}"
        ) from None
    wal = path + "-wal"
    wal_empty = not os.path.exists(wal) or os.path.getsize(wal) == 0
    if not header and wal_empty:
        raise StoreError(_corrupt(path, "the file is empty"))
    if header and header != HEADER[: len(header)]:
        raise StoreError(_corrupt(path, "not an SQLite database"))


def _corrupt(path: str, detail: object) -> str:
    return (
        f"state database {path} is corrupt or unreadable ({detail}); nothing was "
        "run; restore a backup or use another --state directory"
    )
