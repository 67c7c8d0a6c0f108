"""Where state lives: a private directory, created 0700, checked when it exists."""

from __future__ import annotations

import contextlib
import os
import stat

from runner.errors import StoreError, UsageError


def default_state_dir() -> str:
    from platformdirs import user_state_dir

    return user_state_dir("runner", appauthor=False)


def resolve_state(state: str | None) -> str:
    """The state directory for `--state` / RUNNER_STATE, made private if new."""
    target = state or default_state_dir()
    if target.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            f"state URL '{target}': PostgreSQL state is not available in this "
            "version; give a directory instead"
        )
    path = os.path.abspath(os.path.expanduser(target))
    _ensure_private_dir(path)
    return path


def _ensure_private_dir(path: str) -> None:
    try:
        _make_dirs(path)
    except OSError as error:
        raise StoreError(
            f"cannot create state directory {path}: {error.strerror}"
        ) from None
    _check_private(path)


def _make_dirs(path: str) -> None:
    """Create `path` and its missing parents, each 0700 (as XDG asks of them).

    One that another process makes meanwhile is taken as it is: the checks
    that follow judge it like any existing directory.
    """
    missing = []
    folder = path
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


def _check_private(path: str) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise StoreError(f"state directory {path} is a symbolic link; give its target")
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"state path {path} is not a directory")
    if info.st_uid != os.getuid():
        raise StoreError(f"state directory {path} is not owned by you; use your own")
    if info.st_mode & 0o022:
        raise StoreError(
            f"state directory {path} is writable by others; run 'chmod 700 {path}'"
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise StoreError(
                f"state directory {path} is on a read-only file system; "
                "use another --state directory"
            )
        raise StoreError(
            f"state directory {path} is not writable; run 'chmod 700 {path}'"
        )


def private_dir(path: str) -> str:
    """Create `path` (and parents inside the state dir) with mode 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path
