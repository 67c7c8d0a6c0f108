"""The state database as files: created whole, checked before SQLite opens them.

A new database is built in a private temporary file, schema and version
included, and only then linked into place, which fails if the name exists.
So `state.db` is never seen half made: two processes that start on a new
state directory at once both end up using the one that was linked first,
and an empty or schema-less `state.db` can only be a damaged one. The schema
is in the main file from the start, not only in the write-ahead log, so a
lost `-wal` file loses recent transitions, never the store itself.

A temporary file left by a process killed while creating is removed by the
next process that opens the store, once its creator is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable

from runner.errors import StoreError

Initialise = Callable[[sqlite3.Connection], None]
"""Creates the schema and sets the version, inside the creating transaction."""

HEADER = b"SQLite format 3\x00"
TEMP_PREFIX = ".state.db.new-"
COMPANIONS = ("-wal", "-shm", "-journal")


def corrupt(path: str, detail: object) -> str:
    """The message for a database that cannot be used as it is, on one line."""
    # SQLite may quote a damaged schema, newlines and all.
    detail = " ".join(str(detail).split())
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return (
        f"state database {path} is corrupt or unreadable ({detail}); nothing was "
        "run; restore a backup or use another --state directory"
    )


def create_database(path: str, initialise: Initialise) -> None:
    """Make `path` a complete database, unless another process made it first."""
    temp = _temp_beside(path)
    try:
        _build(temp, initialise)
        _link_into_place(temp, path)
    except OSError as error:
        raise StoreError(
            f"cannot create state database {path}: {error.strerror or error}"
        ) from None
    except sqlite3.Error as error:
        raise StoreError(f"cannot create state database {path}: {error}") from None
    finally:
        _remove_with_companions(temp)


def _temp_beside(path: str) -> str:
    """A new private file's name in `path`'s folder (stale ones are cleaned up)."""
    name = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(os.path.dirname(path), name)


def _create_private(temp: str) -> None:
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(temp, flags, 0o600))  # SQLite's own files copy this mode


def _build(temp: str, initialise: Initialise) -> None:
    _create_private(temp)
    connection = sqlite3.connect(temp, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("BEGIN IMMEDIATE")
        initialise(connection)
        connection.execute("COMMIT")
        # Switching to WAL here marks the header; closing the only connection
        # then folds the log into the file and deletes it.
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()
    _fsync_file(temp)


def back_up(path: str, label: str) -> str:
    """Copy the database to `PATH.LABEL-backup`, whole or not at all; its path.

    Read through a connection of its own, so the caller may hold the write
    lock meanwhile. An earlier backup of the same label is kept, not replaced.
    """
    target = f"{path}.{label}-backup"
    temp = _temp_beside(path)
    try:
        _create_private(temp)
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        copy = sqlite3.connect(temp)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
        _fsync_file(temp)
        _link_into_place(temp, target)
    except (OSError, sqlite3.Error) as error:
        detail = error.strerror if isinstance(error, OSError) else error
        raise StoreError(
            f"cannot back up state database {path} before upgrading its schema: "
            f"{detail or error}; nothing was changed; free the disk or fix the "
            "state directory, then try again"
        ) from None
    finally:
        _remove_with_companions(temp)
    return target


def _fsync_file(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _link_into_place(temp: str, path: str) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        return  # another process created it meanwhile: use theirs
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links: a rename could replace a database
        # another process created meanwhile, so look first; the window left
        # is only between this look and the rename.
        if os.path.lexists(path):
            return
        os.rename(temp, path)
    _sync_folder(os.path.dirname(path))


def _sync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_with_companions(temp: str) -> None:
    for name in (temp, *(temp + suffix for suffix in COMPANIONS)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def remove_stale_temps(folder: str) -> None:
    """Remove databases half made by processes that died while creating them."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        pid = name[len(TEMP_PREFIX) :].partition("-")[0]
        if pid.isdigit() and int(pid) > 0 and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_files(path: str) -> None:
    """Refuse a database (or its -wal, -shm) that is not a private file of ours."""
    _check_own_file(path, "state database")
    for suffix in ("-wal", "-shm"):
        _check_own_file(path + suffix, "state database file", missing_ok=True)
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(
            f"state database {path} is not readable and writable by you; "
            f"run 'chmod 600 {path}'"
        )
    _check_header(path)


def _check_own_file(path: str, what: str, *, missing_ok: bool = False) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise StoreError(f"{what} {path} disappeared while opening it") from None
    except OSError as error:
        raise StoreError(f"cannot read {what} {path}: {error.strerror}") from None

    if stat.S_ISLNK(info.st_mode):
        raise StoreError(f"{what} {path} is a symbolic link; runner uses only files")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{what} {path} is not a regular file; move it away")
    if info.st_uid != os.getuid():
        raise StoreError(
            f"{what} {path} is owned by uid {info.st_uid}, not you (uid "
            f"{os.getuid()}); run runner as that user, or 'chown' the state "
            "directory and everything in it back to yourself"
        )


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
    # An empty file with a non-empty log is a store made by an older runner,
    # which created the schema in the log only.
    if not header and wal_empty:
        raise StoreError(corrupt(path, "the file is empty"))
    if header and header != HEADER[: len(header)]:
        raise StoreError(corrupt(path, "not an SQLite database"))
