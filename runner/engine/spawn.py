"""Starting an attempt's process: argv, program search, spawn errors.

A step's command starts with `os.posix_spawn` (vfork and exec, no Python
between them) in a session of its own, its stdin `/dev/null` (or the gate,
see below), its stdout and stderr on pipes, SIGPIPE and SIGXFSZ back at their
default action, and no signal blocked. That costs about a third of what
`subprocess.Popen` spent per start, most of it Popen's own Python code.

Two things posix_spawn does not do are done here instead:
- It has no working directory. The spawning thread changes this process's
  working directory for the instant of the spawn, under a lock, and goes back
  through a descriptor of the old one (which works even if that folder was
  removed). Nothing else in runner uses a relative path, so no other thread
  can notice.
- It does not close descriptors. The first start marks every descriptor this
  process inherited (above 2) close-on-exec; those runner opens are so already
  (Python's default since 3.4, and SQLite's). Missing 0, 1 or 2 are opened on
  `/dev/null` first, so a pipe never lands on a standard descriptor.

A program name without a slash is looked up in the PATH the step gets, not the
runner's, and the answer is remembered per PATH, folder and name, as shells
do; a remembered path that no longer works is looked up once more.

With a gate, the command is started by a small shell that waits for one line
on its stdin (see `process.Attempt`) before it execs the command, with stdin
from /dev/null, so the gate's descriptor does not reach the command. When the
gate closes without a line, the command never starts. The shell exports PWD,
which the command must not see unless the step's environment sets it.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

MAX_ARG_STRLEN = 32 * 4096
"""Linux's limit on one argument or one NAME=value string given to exec."""
SHELL = "/bin/sh"
_GATE_SCRIPT = 'read -r _ || exit 125; exec "$@" </dev/null'
_GATE_SCRIPT_NO_PWD = 'read -r _ || exit 125; unset PWD; exec "$@" </dev/null'
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Python ignores these; a step gets them at their default, as from a shell."""

Command = str | tuple[str, ...]


class CannotStart(Exception):
    """The command cannot be started: a permanent failure of the step.

    The message names the program (or the script's start), the folder, and
    what is wrong.
    """


@dataclass(frozen=True)
class Child:
    """A started process and the parent's ends of its pipes."""

    pid: int
    stdout: int
    stderr: int
    gate: int
    """The write end of the gate, or -1 when the command started at once."""


def start(command: Command, cwd: str, env: Mapping[str, str], *, gated: bool) -> Child:
    """Start `command` in `cwd` with exactly `env`; raise CannotStart."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC) if gated else (-1, -1)
    try:
        pid = _spawn(command, cwd, env, (gate_r, out_w, err_w))
    except BaseException:
        for fd in (out_r, err_r, gate_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        # The child holds its ends now; EOF comes when no process has them.
        for fd in (out_w, err_w, gate_r):
            if fd >= 0:
                os.close(fd)
    return Child(pid, out_r, err_r, gate_w)


_LOCK = threading.Lock()
_FOUND: dict[tuple[str, str, str], str] = {}
"""Program lookups: (PATH, folder, name) -> the path found."""
_STALE = (errno.ENOENT, errno.EACCES, errno.ENOTDIR)


class _Process:
    """What this process opens once for all its spawns."""

    home = -1
    """A descriptor of the working directory, to go back to after a spawn."""
    devnull = -1


def _spawn(
    command: Command, cwd: str, env: Mapping[str, str], fds: tuple[int, int, int]
) -> int:
    gated = fds[0] >= 0
    with _LOCK:
        _prepare_process()
        stdin = fds[0] if gated else _Process.devnull
        actions = [
            (os.POSIX_SPAWN_DUP2, fd, target)
            for target, fd in enumerate((stdin, *fds[1:]))
        ]
        _enter(command, cwd)
        try:
            try:
                return _exec(command, cwd, env, gated, actions, fresh=gated)
            except OSError as error:
                if gated or error.errno not in _STALE or _named_by_path(command):
                    raise
                # The remembered program moved since it was looked up.
                return _exec(command, cwd, env, gated, actions, fresh=True)
        except (OSError, ValueError) as error:
            problem = _spawn_problem(error, command, env)
            raise CannotStart(_cannot_start(command, cwd, problem)) from error
        finally:
            os.fchdir(_Process.home)


def _exec(
    command: Command,
    cwd: str,
    env: Mapping[str, str],
    gated: bool,
    actions: list[tuple[int, int, int]],
    *,
    fresh: bool,
) -> int:
    path, argv = _argv(command, cwd, env, gated, fresh=fresh)
    return os.posix_spawn(
        path,
        argv,
        env,
        file_actions=actions,
        setsid=True,
        setsigdef=_DEFAULT_SIGNALS,
        setsigmask=(),
    )


def _prepare_process() -> None:
    """Once per process: standard descriptors open, inherited ones not passed on."""
    if _Process.home >= 0:
        return
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free: this one
            if opened != fd:
                os.close(opened)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with suppress(OSError):  # the listing's own, closed by now
                os.set_inheritable(fd, False)
    _Process.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    _Process.home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _enter(command: Command, cwd: str) -> None:
    """Make `cwd` the working directory, or say why the command cannot start."""
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        raise CannotStart(_cannot_start(command, cwd, "no such folder")) from None
    except (OSError, ValueError):
        reason = "not an accessible folder"
        raise CannotStart(_cannot_start(command, cwd, reason)) from None


def _named_by_path(command: Command) -> bool:
    return isinstance(command, str) or not command or "/" in command[0]


def _argv(
    command: Command, cwd: str, env: Mapping[str, str], gated: bool, *, fresh: bool
) -> tuple[str, list[str]]:
    """The program to exec and its argv; raises CannotStart."""
    if isinstance(command, str):
        path, argv = SHELL, [SHELL, "-c", command]
    else:
        path, name = _find_program(command, cwd, env, fresh=fresh)
        argv = [name, *command[1:]]
    if not gated:
        return path, argv
    script = _GATE_SCRIPT if "PWD" in env else _GATE_SCRIPT_NO_PWD
    return SHELL, [SHELL, "-c", script, "runner-gate", *argv]


def _find_program(
    command: tuple[str, ...], cwd: str, env: Mapping[str, str], *, fresh: bool
) -> tuple[str, str]:
    """The program's path, checked to be executable, and its argv[0].

    The gate's shell would report a missing program as exit 127, which a
    program may also return; checking first makes it a spawn error. The name
    is passed on as given, so argv[0] is what the workflow says, unless there
    is no PATH, where shells disagree on the default and the path found is
    passed instead. The working directory is `cwd` here (see `_spawn`).
    """
    if not command:
        raise CannotStart(_cannot_start(command, cwd, "empty command"))
    program = command[0]
    if "/" in program:
        problem = _exec_problem(program)
        if problem:
            raise CannotStart(_cannot_start(command, cwd, os.strerror(problem)))
        return program, program

    search = env.get("PATH", os.defpath)
    key = (search, cwd, program)
    found = None if fresh else _FOUND.get(key)
    if found is None:
        found = _FOUND[key] = _search(command, cwd, search)
    return found, (program if "PATH" in env else found)


def _search(command: tuple[str, ...], cwd: str, search: str) -> str:
    problems = []
    for folder in search.split(":"):
        candidate = str(Path(cwd, folder or ".", command[0]))
        problem = _exec_problem(candidate)
        if not problem:
            return candidate
        problems.append(problem)

    # Like execvp: a found but unusable file says more than "not found".
    worst = errno.EACCES if errno.EACCES in problems else errno.ENOENT
    raise CannotStart(_cannot_start(command, cwd, os.strerror(worst)))


def _exec_problem(path: str) -> int:
    """0 when `path` is an executable file, else the errno exec would give."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return errno.ENOENT
    if stat.S_ISDIR(mode) or not os.access(path, os.X_OK):
        return errno.EACCES
    return 0


# What went wrong.


def _spawn_problem(
    error: OSError | ValueError, command: Command, env: Mapping[str, str]
) -> str:
    """Why the program could not be started, naming the value at fault."""
    strings = _exec_strings(command, env)
    if isinstance(error, ValueError):
        with_nul = [label for label, text in strings if b"\0" in text]
        if with_nul:
            return f"{with_nul[0]} contains a NUL byte, which a program cannot receive"
        return str(error)
    if error.errno != errno.E2BIG:
        return error.strerror or str(error)

    size, label = max((len(text) + 1, label) for label, text in strings)
    if size > MAX_ARG_STRLEN:
        return (
            f"{label} is {size:,} bytes, over the {MAX_ARG_STRLEN:,} that one "
            "argument or variable may hold (E2BIG); pass a large value in a file"
        )
    total = sum(len(text) + 1 for _, text in strings)
    return (
        f"the command and its environment take {total:,} bytes, more than the "
        "system allows (E2BIG); pass large values in files"
    )


def _exec_strings(command: Command, env: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """What exec copies for the command: its argv and NAME=value strings."""
    if isinstance(command, str):
        strings = [("the command text", os.fsencode(command))]
    else:
        strings = [(f"argument {i}", os.fsencode(a)) for i, a in enumerate(command)]
    strings += [
        (f"variable {name}", os.fsencode(f"{name}={value}"))
        for name, value in env.items()
    ]
    return strings


def _cannot_start(command: Command, cwd: str, reason: str) -> str:
    if isinstance(command, str):
        first = command.splitlines()[0] if command else ""
        name = first if first == command and len(first) <= 60 else first[:57] + "..."
    else:
        name = command[0] if command else ""
    return f"cannot start {name!r} in {cwd}: {reason}"
