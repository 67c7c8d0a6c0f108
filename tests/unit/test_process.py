"""Attempts run real processes: groups, logs, timeouts, interrupts, leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.engine import procinfo
from runner.engine.process import (
    TRACKING_VAR,
    Attempt,
    AttemptResult,
    AttemptSpec,
    ProcessIdentity,
    kill_leftover,
)

PATH = os.environ.get("PATH", os.defpath)
MIB = 1024 * 1024


def make_spec(
    tmp_path: Path, command: str | tuple[str, ...], **changes: Any
) -> AttemptSpec:
    spec = AttemptSpec(
        command=command,
        cwd=str(tmp_path),
        env={"PATH": PATH},
        timeout=None,
        kill_grace=1.0,
        stdout_path=str(tmp_path / "stdout.log"),
        stderr_path=str(tmp_path / "stderr.log"),
    )
    return replace(spec, **changes)


def run(
    tmp_path: Path,
    command: str | tuple[str, ...],
    on_started: Callable[[ProcessIdentity], None] | None = None,
    **changes: Any,
) -> AttemptResult:
    return Attempt(make_spec(tmp_path, command, **changes), on_started).run()


def stdout_of(tmp_path: Path) -> bytes:
    return _log(tmp_path / "stdout.log")


def stderr_of(tmp_path: Path) -> bytes:
    return _log(tmp_path / "stderr.log")


def _log(path: Path) -> bytes:
    """A log's bytes; a stream that printed nothing has no file."""
    return path.read_bytes() if path.exists() else b""


def live_members(pgid: int) -> list[int]:
    """What `pgrep -g PGID` would list, zombies left out."""
    return [p.pid for p in procinfo.group_members(pgid) if p.alive]


def members_left(pgid: int, settle: float = 2.0) -> list[int]:
    """Live members once a SIGKILL already sent has had time to land.

    A killed process closes its files before it becomes a zombie, so for a
    moment after the pipes close it still reads as running.
    """
    deadline = time.monotonic() + settle
    while (left := live_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def is_alive(pid: int) -> bool:
    stat = procinfo.read_stat(pid)
    return stat is not None and stat.alive


def fd_count() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def my_zombies() -> list[int]:
    me = os.getpid()
    return [p.pid for p in procinfo.iter_processes() if p.ppid == me and not p.alive]


def wait_until(condition: Callable[[], bool], limit: float = 5.0) -> bool:
    due = time.monotonic() + limit
    while not condition():
        if time.monotonic() > due:
            return False
        time.sleep(0.01)
    return True


class Recorder:
    """An on_started callback that keeps the identity it was given."""

    def __init__(self) -> None:
        self.identity: ProcessIdentity | None = None

    def __call__(self, identity: ProcessIdentity) -> None:
        self.identity = identity

    @property
    def pgid(self) -> int:
        assert self.identity is not None
        return self.identity.pgid


# Exit statuses and signals (D7).


def test_exit_code_is_reported(tmp_path: Path) -> None:
    """A plain exit status comes back as exit_code, with no signal."""
    result = run(tmp_path, "exit 3")

    assert result.exit_code == 3
    assert result.signal is None
    assert not result.timed_out and not result.interrupted
    assert result.spawn_error is None


def test_death_by_signal_is_named(tmp_path: Path) -> None:
    """A step killed by a signal has no exit code and the signal's name."""
    result = run(tmp_path, "kill -SEGV $$")

    assert result.exit_code is None
    assert result.signal == "SIGSEGV"


# Shell strings and argv.


def test_argv_runs_without_a_shell(tmp_path: Path) -> None:
    """A tuple is argv: metacharacters and spaces reach the program as is."""
    result = run(tmp_path, ("printf", "%s|", "a b", "$HOME;`x`", "*"))

    assert result.exit_code == 0
    assert stdout_of(tmp_path) == b"a b|$HOME;`x`|*|"


def test_string_runs_with_sh(tmp_path: Path) -> None:
    """A string runs with /bin/sh -c, expansions and all."""
    result = run(tmp_path, "echo $((1 + 2)) >&2; echo out")

    assert result.exit_code == 0
    assert stderr_of(tmp_path) == b"3\n"
    assert stdout_of(tmp_path) == b"out\n"


def test_environment_is_exactly_the_given_one(tmp_path: Path) -> None:
    """The child sees the given environment and nothing of the runner's."""
    env = {"PATH": PATH, "GREETING": "hello world", "EMPTY": ""}
    result = run(tmp_path, ("env",), env=env, track_escapees=False)

    assert result.exit_code == 0
    lines = set(stdout_of(tmp_path).decode().splitlines())
    assert lines == {f"PATH={PATH}", "GREETING=hello world", "EMPTY="}


def test_tracking_mark_is_added_to_the_environment(tmp_path: Path) -> None:
    """With escapee tracking on, the child's environment carries the mark."""
    result = run(tmp_path, f'printf %s "${TRACKING_VAR}"')

    assert result.exit_code == 0
    assert len(stdout_of(tmp_path)) == 32


def test_cwd_is_applied(tmp_path: Path) -> None:
    """The command runs in the given folder, for strings and argv alike."""
    work = tmp_path / "work"
    work.mkdir()

    run(tmp_path, "pwd", cwd=str(work))
    assert stdout_of(tmp_path) == f"{work}\n".encode()

    script = work / "tool.sh"
    script.write_text("#!/bin/sh\npwd\n")
    script.chmod(0o755)
    result = run(tmp_path, ("./tool.sh",), cwd=str(work))
    assert result.exit_code == 0
    assert stdout_of(tmp_path) == f"{work}\n".encode()


def test_stdin_is_empty(tmp_path: Path) -> None:
    """The command reads /dev/null, not the gate the wrapper waited on."""
    result = run(tmp_path, ("cat",))

    assert result.exit_code == 0
    assert stdout_of(tmp_path) == b""


def test_only_standard_fds_reach_the_command(tmp_path: Path) -> None:
    """No descriptor of the runner or of the gate leaks into the command."""
    result = run(tmp_path, ("ls", "/proc/self/fd"))

    assert result.exit_code == 0
    assert sorted(stdout_of(tmp_path).split()) == [b"0", b"1", b"2", b"3"]


# Spawn errors (D7).


def test_missing_program_is_a_spawn_error(tmp_path: Path) -> None:
    """An argv program that is nowhere on PATH fails to start, no exception."""
    result = run(tmp_path, ("does-not-exist", "--flag"))

    expected = f"cannot start 'does-not-exist' in {tmp_path}: No such file or directory"
    assert result.spawn_error == expected
    assert result.exit_code is None and result.signal is None


def test_missing_cwd_is_a_spawn_error(tmp_path: Path) -> None:
    """A folder that does not exist is named in the spawn error."""
    missing = tmp_path / "gone"
    result = run(tmp_path, "true", cwd=str(missing))

    assert result.spawn_error == f"cannot start 'true' in {missing}: no such folder"


def test_non_executable_script_is_a_spawn_error(tmp_path: Path) -> None:
    """A script without the execute bit gives EACCES, as exec would."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)

    result = run(tmp_path, (str(script),))

    assert (
        result.spawn_error
        == f"cannot start '{script}' in {tmp_path}: Permission denied"
    )
    assert stdout_of(tmp_path) == b""


def test_missing_command_in_a_shell_string_exits_127(tmp_path: Path) -> None:
    """In a shell string the shell starts, so a missing command is exit 127."""
    result = run(tmp_path, "does-not-exist")

    assert result.spawn_error is None
    assert result.exit_code == 127
    assert b"not found" in result.stderr_tail


@pytest.mark.parametrize("gated", [False, True], ids=["direct", "gated"])
@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (("echo", "x" * 200_000), {}, "argument 1 is 200,001 bytes"),
        ("echo " + "x" * 200_000, {}, "the command text is 200,006 bytes"),
        (("echo",), {"BIG": "x" * 200_000}, "variable BIG is 200,005 bytes"),
    ],
    ids=["argv-item", "shell-text", "env-value"],
)
def test_a_string_over_the_kernel_limit_is_a_spawn_error_naming_it(
    tmp_path: Path,
    gated: bool,
    command: str | tuple[str, ...],
    env: dict[str, str],
    named: str,
) -> None:
    """exec's E2BIG names the argument or variable that is too long, and its size."""
    on_started = Recorder() if gated else None
    result = run(tmp_path, command, on_started, env={"PATH": PATH, **env})

    shown = "echo " + "x" * 52 + "..." if isinstance(command, str) else "echo"
    assert result.spawn_error == (
        f"cannot start {shown!r} in {tmp_path}: {named}, over the 131,072 that one "
        "argument or variable may hold (E2BIG); pass a large value in a file"
    )
    assert result.exit_code is None


def test_a_nul_in_the_environment_is_a_spawn_error_naming_it(tmp_path: Path) -> None:
    """A NUL byte no program can receive names the variable that holds it."""
    result = run(tmp_path, "true", env={"PATH": PATH, "X": "a\0b"})

    assert result.spawn_error == (
        f"cannot start 'true' in {tmp_path}: variable X contains a NUL byte, which "
        "a program cannot receive"
    )


# Output (D1-D3).


def test_both_streams_drain_without_deadlock(tmp_path: Path) -> None:
    """2 MB to stderr, then 2 MB to stdout: both drained at once, no stall."""
    command = f"head -c {2 * MIB} /dev/zero >&2; head -c {2 * MIB} /dev/zero"
    result = run(tmp_path, command, timeout=20)

    assert result.exit_code == 0
    assert result.duration < 5
    assert result.stdout_bytes == result.stderr_bytes == 2 * MIB
    assert len(stdout_of(tmp_path)) == len(stderr_of(tmp_path)) == 2 * MIB


def test_binary_output_is_kept_exactly(tmp_path: Path) -> None:
    """Invalid UTF-8 and NUL bytes reach the logs and tails unchanged."""
    noise = os.urandom(MIB)
    (tmp_path / "noise").write_bytes(noise)

    result = run(tmp_path, r"printf '\377\376\000'; cat noise; cat noise >&2; exit 4")

    assert result.exit_code == 4
    assert stdout_of(tmp_path) == b"\xff\xfe\x00" + noise
    assert stderr_of(tmp_path) == noise
    assert result.stdout_tail == noise[-64 * 1024 :]


def test_log_is_capped_with_a_marker(tmp_path: Path) -> None:
    """Past max_log_bytes output is counted, not kept, and a marker ends it."""
    result = run(tmp_path, "head -c 5000 /dev/zero | tr '\\0' x", max_log_bytes=1000)

    assert result.exit_code == 0
    assert result.stdout_bytes == 5000
    assert stdout_of(tmp_path) == b"x" * 1000 + b"\n[truncated 4000 bytes]\n"


def test_tail_keeps_the_last_bytes(tmp_path: Path) -> None:
    """The in-memory tail is the end of the stream, at most tail_bytes long."""
    result = run(tmp_path, "seq 1 100000 >&2", tail_bytes=20)

    assert result.stderr_tail == b"\n99998\n99999\n100000\n"[-20:]
    assert result.stdout_tail == b""


def test_log_files_are_private(tmp_path: Path) -> None:
    """Log files are 0600, even when a looser file was there before."""
    (tmp_path / "stdout.log").write_bytes(b"old")
    (tmp_path / "stdout.log").chmod(0o644)

    run(tmp_path, "echo new; echo err >&2")

    for name in ("stdout.log", "stderr.log"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert stdout_of(tmp_path) == b"new\n"


def test_a_silent_stream_makes_no_log_file(tmp_path: Path) -> None:
    """No output, no file: most steps print nothing, and files cost time."""
    result = run(tmp_path, "echo out")

    assert result.exit_code == 0
    assert (tmp_path / "stdout.log").exists()
    assert not (tmp_path / "stderr.log").exists()


def test_output_of_50_mb_keeps_rss_small(tmp_path: Path) -> None:
    """Draining 50 MB raises the runner's peak RSS by only a few MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = peak_rss_kib()

    result = run(tmp_path, f"head -c {50 * MIB} /dev/zero | tr '\\0' x", timeout=60)

    assert result.exit_code == 0
    assert result.stdout_bytes == 50 * MIB
    assert peak_rss_kib() - before < 16 * 1024


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.stress
@pytest.mark.skipif(os.environ.get("RUNNER_STRESS") != "1", reason="RUNNER_STRESS=1")
@pytest.mark.parametrize(
    "command",
    ["yes | head -c 1G", "head -c 1G /dev/zero | tr '\\0' x"],
    ids=["lines", "one-line"],
)
def test_output_of_1_gb_is_capped_with_small_rss(tmp_path: Path, command: str) -> None:
    """1 GB of output succeeds, keeps the log capped and the runner small."""
    Path("/proc/self/clear_refs").write_text("5")
    before = peak_rss_kib()

    result = run(tmp_path, command, timeout=600)

    assert result.exit_code == 0
    assert result.stdout_bytes == 1024 * MIB
    peak = peak_rss_kib()  # before reading the log, which is 64 MiB
    assert peak - before < 32 * 1024
    marker = f"\n[truncated {1024 * MIB - 64 * MIB} bytes]\n".encode()
    log = tmp_path / "stdout.log"
    assert log.stat().st_size == 64 * MIB + len(marker)
    with log.open("rb") as file:
        file.seek(-len(marker), os.SEEK_END)
        assert file.read() == marker
    print(f"1 GB {command!r}: {result.duration:.2f} s, peak RSS +{peak - before} KiB")


# Timeouts and leftovers (D4, D5).


def test_timeout_kills_grandchildren_holding_the_pipes(tmp_path: Path) -> None:
    """A timeout ends the whole group, background children included."""
    recorder = Recorder()
    result = run(
        tmp_path, "sleep 1000 & sleep 1000", recorder, timeout=0.5, kill_grace=0.5
    )

    assert result.timed_out
    assert result.signal == "SIGTERM"
    assert result.group_signals == ("SIGTERM",)
    assert 0.5 <= result.duration < 0.5 + 0.5 + 0.3
    assert members_left(recorder.pgid) == []


def test_term_ignoring_step_is_killed_after_grace(tmp_path: Path) -> None:
    """A step that ignores SIGTERM gets SIGKILL once kill_grace has passed."""
    recorder = Recorder()
    command = "trap '' TERM; sleep 100 & sleep 100"
    result = run(tmp_path, command, recorder, timeout=0.3, kill_grace=0.5)

    assert result.timed_out
    assert result.signal == "SIGKILL"
    assert result.group_signals == ("SIGTERM", "SIGKILL")
    assert 0.8 <= result.duration < 0.8 + 0.3
    assert members_left(recorder.pgid) == []


def test_background_leftovers_die_with_the_leader(tmp_path: Path) -> None:
    """Processes a step leaves in its group are killed when its leader exits."""
    recorder = Recorder()
    result = run(tmp_path, "sleep 1000 & echo done", recorder)

    assert result.exit_code == 0
    assert result.duration < 1
    assert stdout_of(tmp_path) == b"done\n"
    assert members_left(recorder.pgid) == []


def test_escaped_process_is_found_and_killed(tmp_path: Path) -> None:
    """A process that left the group with setsid is killed by its mark."""
    command = "setsid sleep 1000 & setsid sh -c 'sleep 1000 & wait' & sleep 0.2"
    result = run(tmp_path, command)

    assert result.exit_code == 0
    assert len(result.escaped) >= 3
    assert not any(is_alive(pid) for pid in result.escaped)


def test_subreaper_leaves_no_zombies() -> None:
    """As a subreaper, the runner reaps the orphans and escapees it kills."""
    script = textwrap.dedent(
        """
        import os, sys, tempfile
        from runner.engine import procinfo
        from runner.engine.process import Attempt, AttemptSpec, enable_subreaper
        assert enable_subreaper()
        folder = tempfile.mkdtemp()
        spec = AttemptSpec(
            "sleep 100 & setsid sleep 100 & sleep 0.2", folder, dict(os.environ),
            None, 1.0, folder + "/out", folder + "/err")
        result = Attempt(spec).run()
        assert result.exit_code == 0 and len(result.escaped) == 1, result
        me = os.getpid()
        left = [p for p in procinfo.iter_processes() if p.ppid == me]
        assert left == [], left
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_yes_into_head_exits_at_once(tmp_path: Path) -> None:
    """Children keep SIGPIPE at its default, so `yes | head -n1` ends at once."""
    result = run(tmp_path, "yes | head -n1", timeout=10)

    assert result.exit_code == 0
    assert result.duration < 2
    assert stdout_of(tmp_path) == b"y\n"


# Interrupts (A5).


def test_interrupt_from_another_thread(tmp_path: Path) -> None:
    """interrupt() signals the group; the result says interrupted, not failed."""
    recorder = Recorder()
    attempt = Attempt(make_spec(tmp_path, "sleep 100"), recorder)
    threading.Timer(0.3, attempt.interrupt, (signal.SIGINT,)).start()

    result = attempt.run()

    assert result.interrupted and not result.timed_out
    assert result.signal == "SIGINT"
    assert result.group_signals == ("SIGINT",)
    assert result.duration < 1.5
    assert members_left(recorder.pgid) == []


def test_interrupting_many_running_attempts(tmp_path: Path) -> None:
    """Interrupts from one thread stop 8 attempts running in 8 others."""
    recorders = [Recorder() for _ in range(8)]
    attempts = []
    for index, recorder in enumerate(recorders):
        folder = tmp_path / str(index)
        folder.mkdir()
        attempts.append(Attempt(make_spec(folder, "sleep 100 & wait"), recorder))

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(attempt.run) for attempt in attempts]
        assert wait_until(lambda: all(r.identity for r in recorders))
        for attempt in attempts:
            attempt.interrupt(signal.SIGTERM)
        results = [future.result(timeout=10) for future in futures]

    assert all(r.interrupted and r.signal == "SIGTERM" for r in results)
    assert all(members_left(r.pgid) == [] for r in recorders)


def test_interrupt_escalates_to_kill_after_grace(tmp_path: Path) -> None:
    """A step that ignores the forwarded signal is killed after kill_grace."""
    spec = make_spec(tmp_path, "trap '' INT TERM; sleep 100", kill_grace=0.4)
    attempt = Attempt(spec)
    threading.Timer(0.2, attempt.interrupt, (signal.SIGTERM,)).start()

    result = attempt.run()

    assert result.interrupted
    assert result.signal == "SIGKILL"
    assert result.group_signals == ("SIGTERM", "SIGKILL")
    assert 0.6 <= result.duration < 0.6 + 0.4


def test_interrupt_before_run_starts_nothing(tmp_path: Path) -> None:
    """An attempt interrupted before it runs never starts its command."""
    attempt = Attempt(make_spec(tmp_path, "touch started"))
    attempt.interrupt(signal.SIGTERM)

    result = attempt.run()

    assert result.interrupted
    assert result.exit_code is None and result.signal is None
    assert not (tmp_path / "started").exists()


class _InterruptedWhileSpawning(Attempt):
    """Interrupts itself in the window after the check, before the group exists."""

    def _spawn(self) -> Any:
        self.interrupt(signal.SIGTERM)
        return super()._spawn()


def test_interrupt_while_the_command_is_being_started_still_stops_it(
    tmp_path: Path,
) -> None:
    """A signal asked for before the group existed is sent once it does."""
    attempt = _InterruptedWhileSpawning(make_spec(tmp_path, "sleep 30"))

    result = attempt.run()

    assert result.interrupted
    assert result.group_signals == ("SIGTERM",)
    assert result.duration < 5


def test_interrupt_after_the_end_does_nothing(tmp_path: Path) -> None:
    """interrupt() on a finished attempt neither fails nor signals anything."""
    attempt = Attempt(make_spec(tmp_path, "true"))
    result = attempt.run()

    attempt.interrupt(signal.SIGTERM)

    assert result.exit_code == 0 and not result.interrupted


# The start gate (A4).


def test_on_started_runs_before_the_command(tmp_path: Path) -> None:
    """on_started gets a correct identity while the command still waits."""
    marker = tmp_path / "marker"
    seen: list[ProcessIdentity] = []

    def on_started(identity: ProcessIdentity) -> None:
        assert not marker.exists()
        time.sleep(0.2)
        assert not marker.exists()

        stat = procinfo.read_stat(identity.pid)
        assert stat is not None
        assert identity.pgid == identity.pid == stat.pgrp == stat.session
        assert identity.start_time == stat.start_time
        assert identity.boot_id == procinfo.boot_id()
        seen.append(identity)

    result = run(tmp_path, "touch marker; echo ran", on_started)

    assert result.exit_code == 0
    assert marker.exists() and stdout_of(tmp_path) == b"ran\n"
    assert len(seen) == 1
    assert result.duration >= 0.2


def test_failing_on_started_keeps_the_command_from_running(tmp_path: Path) -> None:
    """When on_started raises, run re-raises and the command never ran."""
    recorder = Recorder()

    def on_started(identity: ProcessIdentity) -> None:
        recorder(identity)
        raise OSError("store is full")

    with pytest.raises(OSError, match="store is full"):
        run(tmp_path, "touch marker", on_started)

    assert not (tmp_path / "marker").exists()
    assert members_left(recorder.pgid) == []


# Leftovers of a dead runner (A4).


def start_detached(command: str) -> tuple[subprocess.Popen[bytes], ProcessIdentity]:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], start_new_session=True, stdin=subprocess.DEVNULL
    )
    assert wait_until(lambda: len(live_members(proc.pid)) >= 2)
    stat = procinfo.read_stat(proc.pid)
    assert stat is not None
    identity = ProcessIdentity(proc.pid, proc.pid, stat.start_time, procinfo.boot_id())
    return proc, identity


def test_kill_leftover_ends_a_detached_group() -> None:
    """A live group with a matching leader is terminated, members and all."""
    proc, identity = start_detached("sleep 100 & sleep 100")

    assert kill_leftover(identity, grace=1.0)

    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert members_left(identity.pgid) == []


def test_kill_leftover_ends_members_whose_leader_is_gone() -> None:
    """With the leader gone, members of its group in its session still die."""
    proc, identity = start_detached("sleep 100 & sleep 100 & exec sleep 0.2")
    proc.wait(timeout=5)
    assert live_members(identity.pgid)

    assert kill_leftover(identity, grace=1.0)

    assert members_left(identity.pgid) == []


def test_kill_leftover_escalates_to_kill() -> None:
    """A leftover that ignores SIGTERM is killed after the grace period."""
    proc, identity = start_detached("trap '' TERM; sleep 100 & wait")
    started = time.monotonic()

    assert kill_leftover(identity, grace=0.3)

    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 2
    assert members_left(identity.pgid) == []


@pytest.mark.parametrize(
    "change",
    [{"start_time": 1}, {"boot_id": "00000000-0000-0000-0000-000000000000"}],
    ids=["other-start-time", "other-boot"],
)
def test_kill_leftover_refuses_a_different_process(change: dict[str, Any]) -> None:
    """Nothing is killed when the start time or the boot id does not match."""
    proc, identity = start_detached("sleep 100 & sleep 100")
    if "start_time" in change:
        change = {"start_time": identity.start_time + change["start_time"]}
    try:
        assert not kill_leftover(replace(identity, **change), grace=0.2)
        assert len(live_members(identity.pgid)) == 3
    finally:
        os.killpg(identity.pgid, signal.SIGKILL)
        proc.wait(timeout=5)


def test_kill_leftover_of_a_finished_group_is_false(tmp_path: Path) -> None:
    """A group that ended on its own leaves nothing to kill."""
    recorder = Recorder()
    run(tmp_path, "true", recorder)

    assert recorder.identity is not None
    assert not kill_leftover(recorder.identity, grace=0.2)


# Hygiene (D6).


def test_fds_and_zombies_return_to_baseline(tmp_path: Path) -> None:
    """After 200 attempts, 8 at a time, no fd is leaked and no zombie is left."""
    run(tmp_path, "true")  # imports and caches settle first
    baseline = fd_count()

    def one(index: int) -> AttemptResult:
        folder = tmp_path / str(index)
        folder.mkdir()
        return run(folder, "echo $$; echo err >&2")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(200)))

    assert all(r.exit_code == 0 for r in results)
    assert fd_count() == baseline
    assert my_zombies() == []


def test_an_attempt_runs_only_once(tmp_path: Path) -> None:
    """Running the same Attempt twice is a programming error."""
    attempt = Attempt(make_spec(tmp_path, "true"))
    attempt.run()

    with pytest.raises(RuntimeError):
        attempt.run()
