"""Starting a step's process: what it inherits, where it runs, how it is found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from runner.engine.process import Attempt, AttemptResult, AttemptSpec

REPO = Path(__file__).resolve().parents[2]


def attempt(
    tmp_path: Path, command: str | tuple[str, ...], cwd: Path | None = None, **env: str
) -> Attempt:
    spec = AttemptSpec(
        command=command,
        cwd=str(cwd or tmp_path),
        env={"PATH": os.environ.get("PATH", os.defpath), **env},
        timeout=10.0,
        kill_grace=1.0,
        stdout_path=str(tmp_path / "stdout.log"),
        stderr_path=str(tmp_path / "stderr.log"),
    )
    return Attempt(spec)


def stdout_of(tmp_path: Path) -> str:
    path = tmp_path / "stdout.log"
    return path.read_text() if path.exists() else ""


def test_the_step_starts_with_no_signal_blocked(tmp_path: Path) -> None:
    """A thread that blocks SIGTERM does not pass that on: a timeout's TERM lands."""
    results: list[AttemptResult] = []

    def blocked() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        command = ("grep", "SigBlk", "/proc/self/status")  # no shell: dash clears it
        results.append(attempt(tmp_path, command).run())

    thread = threading.Thread(target=blocked)
    thread.start()
    thread.join()

    assert results[0].exit_code == 0
    assert stdout_of(tmp_path).split() == ["SigBlk:", "0000000000000000"]


def test_sigpipe_is_back_at_its_default(tmp_path: Path) -> None:
    """Python ignores SIGPIPE; a step gets it at its default, so it can die of it."""
    result = attempt(tmp_path, "kill -PIPE $$; echo survived").run()

    assert result.signal == "SIGPIPE"
    assert stdout_of(tmp_path) == ""


def test_the_runner_keeps_its_own_working_directory(tmp_path: Path) -> None:
    """The step runs in its folder; the runner's stays where it was."""
    folder = tmp_path / "work"
    folder.mkdir()
    before = os.getcwd()

    result = attempt(tmp_path, ("pwd",), cwd=folder).run()

    assert result.exit_code == 0
    assert stdout_of(tmp_path).strip() == str(folder)
    assert os.getcwd() == before


def test_a_program_that_moved_is_found_again(tmp_path: Path) -> None:
    """A remembered lookup that no longer holds is looked up once more."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    program = first / "hello"
    program.write_text("#!/bin/sh\necho hello from $0\n")
    program.chmod(0o755)
    path = f"{first}:{second}"

    assert attempt(tmp_path, ("hello",), PATH=path).run().exit_code == 0
    program.rename(second / "hello")
    moved = attempt(tmp_path, ("hello",), PATH=path).run()
    (second / "hello").unlink()
    gone = attempt(tmp_path, ("hello",), PATH=path).run()

    assert moved.exit_code == 0
    assert moved.spawn_error is None
    assert gone.spawn_error == (
        f"cannot start 'hello' in {tmp_path}: No such file or directory"
    )


def test_closed_standard_descriptors_do_not_swallow_output(tmp_path: Path) -> None:
    """Started with stdin, stdout and stderr closed, a step's output is still kept."""
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from runner.engine.process import Attempt, AttemptSpec
spec = AttemptSpec(command="echo out; echo err >&2", cwd={str(tmp_path)!r},
    env={{"PATH": os.defpath}}, timeout=10.0, kill_grace=1.0,
    stdout_path={str(tmp_path / "stdout.log")!r},
    stderr_path={str(tmp_path / "stderr.log")!r})
for fd in (0, 1, 2):
    os.close(fd)
result = Attempt(spec).run()
os._exit(0 if result.exit_code == 0 else 1)
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=30, check=False)

    assert done.returncode == 0
    assert stdout_of(tmp_path) == "out\n"
    assert (tmp_path / "stderr.log").read_text() == "err\n"
