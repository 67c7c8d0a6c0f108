"""Steps that misbehave, and values no command can take (FAULTS D1-D7, G2).

Each test drives the real CLI on real processes: floods of output, binary
bytes, timeouts with grandchildren, escaped processes, deaths by signal,
commands that cannot start, values above the kernel's argument limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import processes_with

PY = sys.executable
CAP = 64 * 1024 * 1024
"""The default cap on each stream's log (docs/operating.md)."""
MAX_ARG_STRLEN = 32 * 4096


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


def one_step(step: dict, name: str = "only") -> dict:
    return {"version": 1, "name": "faults", "steps": {name: step}}


def sleeper(tmp_path: Path, tag: str) -> str:
    """A process that sleeps, recognisable by `tag` and the test's folder."""
    return f"{PY} -c 'import time; time.sleep(1000)' {tmp_path}/{tag}"


def max_rss_of_run(runner, *args: str) -> tuple[int, int]:
    """Exit code and peak RSS (KiB) of `runner ARGS`, measured by wait4."""
    process = runner.start(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss


# Output floods and pipes (D1, D2) -------------------------------------------------


def flood_workflow(size: int) -> dict:
    return {
        "version": 1,
        "name": "flood",
        "steps": {
            "lines": {"run": f"yes | head -c {size}"},
            "one-line": {"run": f"head -c {size} /dev/zero | tr '\\0' x"},
        },
    }


def assert_capped(runner, size: int) -> None:
    logs = runner.state / "logs" / "r1"
    marker = f"\n[truncated {size - CAP} bytes]\n".encode()
    for step in ("lines", "one-line"):
        log = logs / f"{step}.1.run.stdout"
        assert log.stat().st_size == CAP + len(marker), step
        with log.open("rb") as file:
            file.seek(-len(marker), os.SEEK_END)
            assert file.read() == marker
    tails = sqlite3_rows(runner.state / "state.db", "SELECT length(tail) FROM attempts")
    assert tails and all(length <= 2048 for (length,) in tails)


def sqlite3_rows(db: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return c.execute(sql).fetchall()


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(100_000_000, id="100MB"),
        pytest.param(1 << 30, marks=pytest.mark.stress, id="1GiB"),
    ],
)
def test_a_flood_of_output_succeeds_with_capped_logs_and_a_small_runner(
    runner, workflow, size
):
    """Lines or one endless line: exit 0, logs capped with a marker, RSS small."""
    path = workflow(flood_workflow(size))

    code, peak_kib = max_rss_of_run(runner, "run", str(path), "--run-id", "r1")

    assert code == 0
    assert peak_kib < 100 * 1024, f"runner peak RSS {peak_kib} KiB"
    assert_capped(runner, size)
    recorded = runner("status", "r1", "-o", "json")
    assert len(recorded.stdout) < 64 * 1024  # the store keeps short tails only


def test_a_step_filling_both_pipes_finishes_at_once(runner, workflow):
    """1 MB to stderr, then 1 MB to stdout: no pipe-fill deadlock."""
    step = {"run": "head -c 1000000 /dev/zero >&2; head -c 1000000 /dev/zero"}
    path = workflow(one_step(step))
    started = time.monotonic()

    done = runner("run", str(path), "--run-id", "r1", timeout=30)

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    for stream in ("stdout", "stderr"):
        log = runner.state / "logs" / "r1" / f"only.1.run.{stream}"
        assert log.stat().st_size == 1_000_000


# Binary output (D3) -----------------------------------------------------------------


def test_binary_output_is_logged_raw_and_shown_escaped(runner, workflow, tmp_path):
    """1 MiB of random bytes on each stream: logs keep the bytes, status escapes."""
    script = (
        "head -c 1048576 /dev/urandom > out.bin; head -c 1048576 /dev/urandom > "
        "err.bin; printf '\\377\\376\\000' >> out.bin; printf '\\377\\376\\000' >> "
        "err.bin; cat out.bin; cat err.bin >&2; echo 'quota exceeded' >&2; exit 3"
    )
    step = {
        "run": script,
        "classify": [{"pattern": "quota exceeded", "class": "permanent"}],
    }
    path = workflow(one_step(step))

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    no_traceback(done)
    logs = runner.state / "logs" / "r1"
    assert (logs / "only.1.run.stdout").read_bytes() == (
        tmp_path / "out.bin"
    ).read_bytes()
    err = (tmp_path / "err.bin").read_bytes() + b"quota exceeded\n"
    assert (logs / "only.1.run.stderr").read_bytes() == err
    step_json = runner.steps("r1")["only"]
    assert step_json["history"][0]["exit_code"] == 3
    assert (step_json["error_class"], step_json["attempts"]) == ("permanent", 1)
    (tail,) = sqlite3_rows(runner.state / "state.db", "SELECT tail FROM attempts")[0]
    assert tail.endswith("quota exceeded\n")  # decoded with backslashreplace
    assert "\\x" in tail
    shown = runner("status", "r1")
    assert shown.returncode == 0
    no_traceback(shown)
    printed = subprocess.run(
        runner.argv(("logs", "r1", "only"), None),
        cwd=runner.cwd,
        env=runner.environment(None),
        capture_output=True,
        check=False,
    )
    assert printed.returncode == 0
    assert (tmp_path / "out.bin").read_bytes() in printed.stdout


# Timeouts, grandchildren, escapees (D4, D5) ------------------------------------------


def test_a_timeout_ends_a_term_ignoring_tree_within_timeout_and_grace(
    runner, workflow, tmp_path
):
    """timeout 0.5s, grace 0.3s, SIGTERM ignored: each attempt ends by 0.8 s + e."""
    tree = f"trap '' TERM; {sleeper(tmp_path, 'child')} & {sleeper(tmp_path, 'main')}"
    step = {
        "run": tree,
        "timeout": "500ms",
        "kill_grace": "300ms",
        "retry": {"max_attempts": 2, "backoff": {"initial": "10ms", "jitter": "none"}},
    }
    path = workflow(one_step(step))
    started = time.monotonic()

    done = runner("run", str(path), "--run-id", "r1")
    took = time.monotonic() - started

    assert done.returncode == 1, done.stderr
    assert took < 2 * 0.8 + 2.5
    assert processes_with(str(tmp_path / "child")) == []
    assert processes_with(str(tmp_path / "main")) == []
    step_json = runner.steps("r1")["only"]
    assert [a["status"] for a in step_json["history"]] == ["timed_out", "timed_out"]
    assert step_json["error_class"] == "transient"
    assert step_json["message"] == "attempts exhausted (2 of 2)"
    for attempt in step_json["history"]:
        assert attempt["signal"] == "SIGKILL"


def test_an_escaped_process_holding_the_output_dies_with_its_step(
    runner, workflow, tmp_path
):
    """`setsid` leaves the step's group; the runner still finds and ends it."""
    step = {"run": f"setsid {sleeper(tmp_path, 'escapee')} & sleep 0.3; echo done"}
    path = workflow(one_step(step))

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    assert processes_with(str(tmp_path / "escapee")) == []


# Zombies, descriptors, SIGPIPE (D6) ---------------------------------------------------


PROBE = (
    "import json, os, sys\n"
    "parent = os.getppid()\n"
    "fds = len(os.listdir(f'/proc/{parent}/fd'))\n"
    "children = []\n"
    "for task in os.listdir(f'/proc/{parent}/task'):\n"
    "    with open(f'/proc/{parent}/task/{task}/children') as file:\n"
    "        children += [int(pid) for pid in file.read().split()]\n"
    "def state(pid):\n"
    "    with open(f'/proc/{pid}/stat') as file:\n"
    "        return file.read().rsplit(')', 1)[1].split()[0]\n"
    "others = [state(p) for p in children if p != os.getpid()]\n"
    "json.dump({'fds': fds, 'others': others}, open(sys.argv[1], 'w'))\n"
)


def test_many_short_steps_leave_no_zombie_and_no_descriptor(runner, workflow, tmp_path):
    """150 `true` steps at concurrency 16: fds back to baseline, no <defunct>."""
    steps: dict = {"before": {"run": [PY, "-c", PROBE, str(tmp_path / "before")]}}
    names = [f"t{n}" for n in range(150)]
    steps |= {name: {"needs": ["before"], "run": "true"} for name in names}
    steps["piped"] = {"needs": ["before"], "run": "yes | head -n1"}
    steps["after"] = {
        "needs": [*names, "piped"],
        "run": [PY, "-c", PROBE, str(tmp_path / "after")],
    }
    path = workflow({"version": 1, "name": "many", "steps": steps})

    done = runner("run", str(path), "--concurrency", "16", timeout=120)

    assert done.returncode == 0, done.stderr
    before = json.loads((tmp_path / "before").read_text())
    after = json.loads((tmp_path / "after").read_text())
    assert after["fds"] == before["fds"]
    assert after["others"] == []  # no other child, and so no zombie


def test_a_descriptor_the_runner_inherited_does_not_reach_steps(
    runner, workflow, tmp_path
):
    """An fd its parent left open in the runner is not passed on to any step."""
    inherited = 50  # above what the shell itself uses for redirections
    check = f"test -e /proc/$$/fd/{inherited} && echo leaked || echo closed"
    path = workflow(one_step({"run": f"{check} > seen.txt"}))
    read_end, write_end = os.pipe()
    os.dup2(write_end, inherited)
    try:
        done = subprocess.run(
            runner.argv(("run", str(path)), None),
            cwd=tmp_path,
            env=runner.environment(None),
            pass_fds=(inherited,),
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        for fd in (read_end, write_end, inherited):
            os.close(fd)

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "seen.txt").read_text() == "closed\n"


# Deaths and spawn errors (D7) --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "exit_code", "signal_name"),
    [
        ("kill -SEGV $$", None, "SIGSEGV"),
        ("sh -c 'kill -9 $$'", 137, None),
        (f"prlimit --as=200000000 {PY} -c 'bytearray(10**9)'", 1, None),
    ],
    ids=["segv", "child-killed-137", "out-of-memory"],
)
def test_a_step_that_dies_is_recorded_and_the_runner_carries_on(
    runner, workflow, tmp_path, command, exit_code, signal_name
):
    """Killed by a signal or out of memory: recorded as such; other steps run."""
    path = workflow(
        {
            "version": 1,
            "name": "dies",
            "steps": {
                "dies": {"run": command, "retry": {"max_attempts": 1}},
                "fine": {"run": "touch fine.txt"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    no_traceback(done)
    attempt = runner.steps("r1")["dies"]["history"][0]
    assert (attempt["exit_code"], attempt["signal"]) == (exit_code, signal_name)
    assert (tmp_path / "fine.txt").exists()


def _missing_cwd(tmp_path: Path) -> tuple[dict, str]:
    return {"run": "true", "cwd": "nowhere"}, (
        f"cannot start 'true' in {tmp_path / 'nowhere'}: no such folder"
    )


def _not_executable(tmp_path: Path) -> tuple[dict, str]:
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    return {"run": ["./tool.sh"]}, (
        f"cannot start './tool.sh' in {tmp_path}: Permission denied"
    )


def _missing_program(tmp_path: Path) -> tuple[dict, str]:
    return {"run": ["no-such-program-4711", "--x"]}, (
        f"cannot start 'no-such-program-4711' in {tmp_path}: No such file or directory"
    )


@pytest.mark.parametrize(
    "case",
    [_missing_cwd, _not_executable, _missing_program],
    ids=["missing-cwd", "not-executable", "missing-program"],
)
def test_a_step_that_cannot_start_is_permanent_and_named(
    runner, workflow, tmp_path, case
):
    """ENOENT or EACCES: no retry, the message names the command and the folder."""
    step, message = case(tmp_path)
    step["retry"] = {"max_attempts": 3}
    path = workflow(one_step(step))

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    no_traceback(done)
    recorded = runner.steps("r1")["only"]
    assert (recorded["error_class"], recorded["attempts"]) == ("permanent", 1)
    assert recorded["rule"] == f"builtin: command could not be started ({message})"


# Values no command can take (G2) ----------------------------------------------------


def big_output_step() -> dict:
    """Writes `big=` and 200 KiB of text as its output."""
    return {"run": 'printf "big=%0204800d\\n" 0 >> "$RUNNER_OUTPUT"'}


@pytest.mark.parametrize(
    ("step", "what", "size"),
    [
        ({"run": ["echo", "${{ steps.make.outputs.big }}"]}, "argument 1", 204_801),
        (
            {"env": {"BIG": "${{ steps.make.outputs.big }}"}, "run": "true"},
            "variable BIG",
            len("BIG=") + 204_801,
        ),
        (
            {"run": 'echo "${{ steps.make.outputs.big }}" | wc -c'},
            "variable RUNNER_EXPR_0",
            len("RUNNER_EXPR_0=") + 204_801,
        ),
    ],
    ids=["argv-item", "env-value", "shell-expression"],
)
def test_a_value_above_the_argument_limit_fails_naming_it(
    runner, workflow, step, what, size
):
    """200 KiB in one argument or variable (E2BIG): permanent, named, no traceback."""
    document = {
        "version": 1,
        "name": "e2big",
        "steps": {
            "make": big_output_step(),
            "use": {"needs": ["make"], "retry": {"max_attempts": 3}, **step},
        },
    }

    done = runner("run", str(workflow(document)), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    no_traceback(done)
    used = runner.steps("r1")["use"]
    assert (used["error_class"], used["attempts"]) == ("permanent", 1)
    assert used["rule"].endswith(
        f"{what} is {size:,} bytes, over the {MAX_ARG_STRLEN:,} that one argument "
        "or variable may hold (E2BIG); pass a large value in a file)"
    )


def test_an_environment_above_the_total_limit_fails_naming_the_total(runner, workflow):
    """20 variables of 110 KiB: each fits, together they pass ARG_MAX (E2BIG)."""
    make = {"run": 'printf "big=%0112640d\n" 0 >> "$RUNNER_OUTPUT"'}
    env = {f"V{n}": "${{ steps.make.outputs.big }}" for n in range(20)}
    use = {"needs": ["make"], "env": env, "run": "true"}
    path = workflow(
        {"version": 1, "name": "e2big", "steps": {"make": make, "use": use}}
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    no_traceback(done)
    recorded = runner.steps("r1")["use"]
    assert recorded["error_class"] == "permanent"
    assert recorded["rule"].endswith(
        "bytes, more than the system allows (E2BIG); pass large values in files)"
    )


def test_a_nul_in_a_parameter_default_exits_2_and_records_nothing(
    runner, workflow, tmp_path
):
    """A default with "\\0" (YAML's NUL escape): exit 2, one line, no run recorded."""
    path = workflow(
        'version: 1\nname: nul\nparams:\n  v: {type: string, default: "a\\0b"}\n'
        'steps:\n  s: {run: "touch ran.txt; echo \\"${{ params.v }}\\""}\n'
    )

    done = runner("run", str(path))

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"{path}:4:30: error: params.v.default: contains a NUL byte (a \\0 escape), "
        "which no command can receive; remove it"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert runner.status()["runs"] == []


def test_a_nul_in_an_env_value_is_refused_by_validation(runner, workflow, tmp_path):
    """An env value with "\\0" fails validation (exit 2) instead of at spawn."""
    path = workflow(
        'version: 1\nname: nul\nenv: {X: "p\\0q"}\nsteps:\n  s: {run: touch ran.txt}\n'
    )

    checked = runner("validate", str(path))
    done = runner("run", str(path))

    assert checked.returncode == 2
    assert "NUL" in checked.stdout
    assert done.returncode == 2
    assert runner.status()["runs"] == []
