"""The SQLite state store: runs, steps, attempts, events, circuits.

Durability: WAL with `synchronous=FULL`, so a committed transition survives a
power cut. Every read-then-write transaction starts with `BEGIN IMMEDIATE`,
which takes the write lock up front: a deferred transaction that upgrades
fails at once with "database is locked" under contention instead of waiting.

Failures: the database is created whole (see `store.files`) and checked
before anything is written to it. A commit that fails (a full disk, an fsync
error) closes the connection for good: the same commit is never retried on
it, since a failed fsync may have dropped the data it was to sync, and every
later write or read raises the same StoreError.

Fencing: a run is driven by the holder of its lease (`runs.epoch`). Every
write for a run checks the epoch it was given, so an owner that was paused and
lost its lease can write nothing when it wakes up.

The SQL is kept portable (no SQLite-only functions in queries) so the
PostgreSQL store can share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runner.errors import LockedError, StoreError, UsageError
from runner.store import files

SCHEMA_VERSION = 2
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # v1 -> v2: which validator checked the run's stored workflow copy, so
    # resume and redrive can build an unchanged copy without checking again.
    1: ("ALTER TABLE runs ADD COLUMN checked_by TEXT",),
}
"""For each old version, the statements that bring it to the next one."""
LOCK_TIMEOUT_VAR = "RUNNER_LOCK_TIMEOUT"
"""Seconds a write waits for another process's lock before giving up (exit 3)."""

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
    recoveries INTEGER NOT NULL DEFAULT 0,
    checked_by TEXT
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
    "checked_by",
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
        self.key = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]
        """Tells this store's runs from another's of the same id on this machine."""
        self.lock_timeout = _lock_timeout()
        self.broken: str | None = None
        """Why writes stopped: after a failed commit the connection is closed,
        so the same commit is never retried on it (an fsync that failed once
        may have dropped the data it was to sync)."""
        self.connection = self._open()

    def _open(self) -> sqlite3.Connection:
        files.remove_stale_temps(self.state_dir)
        if not os.path.lexists(self.path):
            files.create_database(self.path, _initialise)
        files.check_files(self.path)

        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self.lock_timeout,
            check_same_thread=False,
        )
        try:
            # Checked before anything is written: a damaged file stays as it is.
            version = self._check_schema(connection)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                self._migrate(connection)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
            # SQLite's message may quote damaged bytes that are not UTF-8.
            connection.close()
            raise StoreError(files.corrupt(self.path, _plain(error))) from None
        except StoreError:
            connection.close()
            raise

        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        return connection

    def _check_schema(self, connection: sqlite3.Connection) -> int:
        """The schema version, once the file is found sound and not too new."""
        check = connection.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(files.corrupt(self.path, check))
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema v{version}, newer than this "
                f"runner (v{SCHEMA_VERSION}); upgrade runner"
            )
        if version == 0:
            # Stores are created whole, schema included, so an existing file
            # without one lost it: typically its -wal file was deleted.
            raise StoreError(
                files.corrupt(
                    self.path,
                    "it holds no runner schema; was its -wal file deleted?",
                )
            )
        return int(version)

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Bring an older schema up to date in one transaction, after a backup.

        The write lock is taken first, so the backup (made through a second,
        read-only connection) is the store exactly as migrated; another
        process that migrated meanwhile leaves nothing to do.
        """
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                files.back_up(self.path, f"v{version}")
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    connection.execute(statement)
                version += 1
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def write(
        self,
        run_id: str | None = None,
        epoch: int | None = None,
        *,
        lease: float | None = None,
    ) -> Iterator[Txn]:
        """One durable transaction; fenced by `epoch` when given, and then
        renewing the run's lease for `lease` seconds when that is given."""
        if self.broken is not None:
            raise StoreError(self.broken)
        connection = self.connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(self._cannot_begin(error)) from None
        txn = Txn(connection)
        try:
            if epoch is not None:
                txn.fence(run_id or "", epoch, lease)
            yield txn
            txn.flush_events()
            connection.execute("COMMIT")
        except (sqlite3.Error, UnicodeDecodeError) as error:
            self._rollback()
            raise self._discard(
                f"cannot record {txn.summary()} in state database {self.path}: "
                f"{_plain(error)}; nothing more was run; free the disk or fix the "
                "store, then resume"
            ) from None
        except BaseException:
            self._rollback()
            raise
        if txn.started_run:
            self._checkpoint()

    def _cannot_begin(self, error: sqlite3.OperationalError) -> str:
        if _code(error) == sqlite3.SQLITE_BUSY:
            return (
                f"state database {self.path} stayed locked by another process for "
                f"{self.lock_timeout:g}s; nothing more was run; find what holds it "
                f"(fuser {self.path}), then try again"
            )
        return f"cannot write state database {self.path}: {_plain(error)}"

    def _checkpoint(self) -> None:
        """Copy the log into the database file, not waiting for readers.

        Done when a run starts, so that the run is in `state.db` itself: a
        plain copy of that file, or one whose -wal file was lost, still holds
        the run, and resume re-runs what it cannot see finished. A failure
        here (a full disk, an fsync error) stops the runner like a failed
        commit, though what was committed is safe in the log.
        """
        try:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, UnicodeDecodeError) as error:
            raise self._discard(
                f"cannot copy the log into state database {self.path}: "
                f"{_plain(error)}; the run is recorded, nothing more was run; free "
                "the disk or fix the store, then resume"
            ) from None

    def _discard(self, reason: str) -> StoreError:
        """Close the connection for good; the error to raise, saying `reason`."""
        self.broken = reason
        with contextlib.suppress(sqlite3.Error):
            self.connection.close()
        return StoreError(reason)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")

    # Reads -------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """One consistent snapshot for several reads; takes no write lock."""
        if self.broken is not None:
            raise StoreError(self.broken)
        try:
            self.connection.execute("BEGIN")
            try:
                yield Txn(self.connection)
            finally:
                self.connection.execute("COMMIT")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
            raise StoreError(files.corrupt(self.path, _plain(error))) from None

    def select(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """All rows of a query; damage found while reading is a StoreError."""
        if self.broken is not None:
            raise StoreError(self.broken)
        try:
            return self.connection.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
            # quick_check cannot see every damage: bad text in a row shows here.
            raise StoreError(files.corrupt(self.path, _plain(error))) from None

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.select(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)
        )
        return dict(zip(RUN_COLUMNS, rows[0], strict=True)) if rows else None

    def runs(self, statuses: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Runs, oldest first, optionally only those in `statuses`."""
        where = (
            f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        )
        rows = self.select(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where} ORDER BY seq", statuses
        )
        return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.select(
            f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE run_id = ? "
            "ORDER BY position",
            (run_id,),
        )
        return [dict(zip(STEP_COLUMNS, row, strict=True)) for row in rows]

    def attempts(self, run_id: str, step: str | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ?"
        args: tuple[str, ...] = (run_id,)
        if step is not None:
            query, args = query + " AND step = ?", (run_id, step)
        rows = self.select(query + " ORDER BY started_at, seq", args)
        return [dict(zip(ATTEMPT_COLUMNS, row, strict=True)) for row in rows]

    def events(
        self, run_id: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Events, oldest first; of one run, of one kind, when given."""
        query = "SELECT id, at, run_id, step, kind, detail FROM events WHERE 1 = 1"
        args: tuple[str, ...] = ()
        if run_id is not None:
            query, args = query + " AND run_id = ?", (*args, run_id)
        if kind is not None:
            query, args = query + " AND kind = ?", (*args, kind)
        rows = self.select(query + " ORDER BY id", args)
        keys = ("id", "at", "run_id", "step", "kind", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self.select("SELECT kind, COUNT(*) FROM events GROUP BY kind")
        return {str(kind): int(count) for kind, count in rows}

    def integrity(self) -> str:
        return str(self.select("PRAGMA integrity_check")[0][0])


class Txn:
    """The writes of one transaction."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.now = time.time()
        self.changes: list[str] = []
        """What the transaction records, in words, for an error message."""
        self.events: list[tuple[Any, ...]] = []
        """Event rows, inserted together just before the commit."""
        self.started_run = False

    def summary(self) -> str:
        """What this transaction records, as 'step build succeeded, ...'."""
        if not self.changes:
            return "the change"
        shown = ", ".join(self.changes[:3])
        more = len(self.changes) - 3
        return f"{shown} and {more} more changes" if more > 0 else shown

    def fence(self, run_id: str, epoch: int, lease: float | None = None) -> None:
        """Stop unless `epoch` still holds the run; renew its lease if asked."""
        if lease is None:
            row = self.connection.execute(
                "SELECT epoch FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            held = row is not None and row[0] == epoch
        else:
            held = self.connection.execute(
                "UPDATE runs SET lease_until = ? WHERE run_id = ? AND epoch = ?",
                (self.now + lease, run_id, epoch),
            ).rowcount == 1
        if not held:
            raise LockedError(
                f"run {run_id} was taken over by another process; this one stops"
            )

    def insert_run(self, fields: Mapping[str, Any]) -> None:
        self.changes.append(f"the start of run {fields.get('run_id')}")
        self.started_run = True
        self._insert("runs", fields)

    def insert_step(self, run_id: str, fields: Mapping[str, Any]) -> None:
        self._insert("steps", {"run_id": run_id, **fields})

    def insert_pending_steps(self, run_id: str, names: list[str]) -> None:
        """A new run's steps, all pending, at their positions in the file."""
        self.connection.executemany(
            "INSERT INTO steps (run_id, name, position, status) "
            "VALUES (?, ?, ?, 'pending')",
            [(run_id, name, position) for position, name in enumerate(names)],
        )

    def insert_attempt(self, run_id: str, fields: Mapping[str, Any]) -> None:
        self._insert("attempts", {"run_id": run_id, **fields})

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "status" in fields:
            self.changes.append(f"run {run_id} {fields['status']}")
        self._update("runs", fields, "run_id = ?", (run_id,))

    def update_step(self, run_id: str, name: str, **fields: Any) -> None:
        if "status" in fields:
            self.changes.append(f"step {name} {fields['status']}")
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
        detail_text = json.dumps(detail) if detail else None
        self.events.append((self.now, run_id, step, kind, detail_text))

    def flush_events(self) -> None:
        """Insert the events recorded so far, in the order they came."""
        if self.events:
            self.connection.executemany(
                "INSERT INTO events (at, run_id, step, kind, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                self.events,
            )
            self.events = []

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, args)

    def _insert(self, table: str, fields: Mapping[str, Any]) -> None:
        key = (table, *fields)
        sql = _SQL.get(key)
        if sql is None:
            names, marks = ", ".join(fields), ", ".join("?" * len(fields))
            sql = _SQL[key] = f"INSERT INTO {table} ({names}) VALUES ({marks})"
        self.connection.execute(sql, tuple(fields.values()))

    def _update(
        self, table: str, fields: Mapping[str, Any], where: str, args: tuple[Any, ...]
    ) -> None:
        key = (table, where, *fields)
        sql = _SQL.get(key)
        if sql is None:
            sets = ", ".join(f"{name} = ?" for name in fields)
            sql = _SQL[key] = f"UPDATE {table} SET {sets} WHERE {where}"
        self.connection.execute(sql, (*fields.values(), *args))


_SQL: dict[tuple[str, ...], str] = {}
"""Statements by table and columns: a turn writes the same few shapes again and
again, and building their text each time cost more than running them."""


def _lock_timeout() -> float:
    text = os.environ.get(LOCK_TIMEOUT_VAR, "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(
            f"{LOCK_TIMEOUT_VAR}='{text}' is not a number of seconds; unset it or "
            "give one such as 30"
        )
    return seconds


def _initialise(connection: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _code(error: sqlite3.Error) -> int:
    """The primary SQLite result code of `error` (SQLITE_BUSY, SQLITE_FULL...)."""
    return int(getattr(error, "sqlite_errorcode", 0)) & 0xFF


def _plain(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "SQLite reported damaged, undecodable text"
    return str(error)
