"""`runner run`: outputs, params, hostile values, skips, limits, failures, state."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from datetime import datetime
from pathlib import Path

import pytest

PY = sys.executable
HOSTILE = [
    "'; touch PWNED #",
    '"; touch PWNED #',
    "$(touch PWNED)",
    "`touch PWNED`",
    "x\ntouch PWNED",
    "${IFS}touch${IFS}PWNED",
    "a;touch${IFS}PWNED&&echo",
    "$((0))|touch PWNED",
    "-n \\ * ?",
]


def pwned(tmp_path: Path) -> list[Path]:
    return list(tmp_path.rglob("PWNED"))


def iso(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def no_traceback(done) -> None:
    assert "Traceback" not in done.stderr + done.stdout


# Succeeding runs ------------------------------------------------------------


def test_run_succeeds_and_status_json_has_the_documented_shape(runner, workflow):
    """A two-step run exits 0 and `status -o json` shows runs and steps as SPEC 2."""
    path = workflow(
        {
            "version": 1,
            "name": "shape",
            "steps": {
                "first": {"run": 'echo n=1 >> "$RUNNER_OUTPUT"'},
                "second": {"needs": ["first"], "run": "true"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    listing = runner.status()
    assert [run["run_id"] for run in listing["runs"]] == ["r1"]
    assert set(listing["runs"][0]) >= {
        "run_id",
        "workflow",
        "status",
        "started_at",
        "ended_at",
    }
    document = runner.status("r1")
    assert document["run_id"] == "r1"
    assert document["workflow"] == "shape"
    assert document["status"] == "succeeded"
    assert iso(document["started_at"]) <= iso(document["ended_at"])
    steps = document["steps"]
    assert [step["name"] for step in steps] == ["first", "second"]
    for step in steps:
        assert set(step) >= {
            "name",
            "status",
            "attempts",
            "error_class",
            "started_at",
            "ended_at",
            "outputs",
        }
        assert step["status"] == "succeeded"
        assert step["attempts"] == 1
        assert step["error_class"] is None
        assert iso(step["started_at"]) <= iso(step["ended_at"])
    assert steps[0]["outputs"] == {"n": "1"}
    assert steps[1]["outputs"] == {}


def test_outputs_flow_between_steps(runner, workflow, tmp_path):
    """A step's `key=value` outputs reach later steps in shell, argv and env."""
    path = workflow(
        {
            "version": 1,
            "name": "outputs",
            "steps": {
                "make": {
                    "run": "printf 'greeting=hello  world\\ncount=3\\n' "
                    '>> "$RUNNER_OUTPUT"'
                },
                "use": {
                    "needs": ["make"],
                    "env": {"GOT": "${{ steps.make.outputs.count }} items"},
                    "run": "printf '%s|%s' \"${{ steps.make.outputs.greeting }}\" "
                    '"$GOT" > shell.txt',
                },
                "argv": {
                    "needs": "make",
                    "run": [
                        PY,
                        "-c",
                        "import sys; open('argv.txt', 'w').write(sys.argv[1])",
                        "${{ steps.make.outputs.greeting }}",
                    ],
                },
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "shell.txt").read_text() == "hello  world|3 items"
    assert (tmp_path / "argv.txt").read_text() == "hello  world"
    make = runner.steps("r1")["make"]
    assert make["outputs"] == {"greeting": "hello  world", "count": "3"}


# Parameters -------------------------------------------------------------------

PARAMS_WORKFLOW = {
    "version": 1,
    "name": "params",
    "params": {
        "name": {"type": "string"},
        "count": {"type": "integer", "default": 2},
        "ratio": {"type": "number", "default": 0.5},
        "flag": {"type": "boolean", "default": False},
    },
    "steps": {
        "show": {
            "run": "printf '%s|%s|%s|%s' \"${{ params.name }}\" "
            '"${{ params.count }}" "${{ params.ratio }}" "${{ params.flag }}" '
            "> params.txt"
        },
        "big": {
            "if": "${{ params.count >= 10 }}",
            "run": "touch big.txt",
        },
    },
}


def test_params_are_typed_and_defaults_fill_in(runner, workflow, tmp_path):
    """Defaults apply, values are typed: 9 >= 10 is false for an integer param."""
    path = workflow(PARAMS_WORKFLOW)

    done = runner("run", str(path), "-p", "name=ada", "-p", "count=9")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "params.txt").read_text() == "ada|9|0.5|false"
    assert not (tmp_path / "big.txt").exists()


def test_given_params_override_defaults(runner, workflow, tmp_path):
    """Every type takes a value from `-p`, integers compare as numbers."""
    path = workflow(PARAMS_WORKFLOW)

    done = runner(
        "run",
        str(path),
        "-p",
        "name=x y",
        "-p",
        "count=10",
        "-p",
        "ratio=2.25",
        "-p",
        "flag=true",
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "params.txt").read_text() == "x y|10|2.25|true"
    assert (tmp_path / "big.txt").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-p", "count=3"], "name"),
        (["-p", "name=a", "-p", "colour=red"], "colour"),
        (["-p", "name=a", "-p", "count=many"], "count"),
        (["-p", "name=a", "-p", "flag=yes"], "flag"),
        (["-p", "name"], "name"),
    ],
    ids=["required-missing", "undeclared", "bad-integer", "bad-boolean", "no-equals"],
)
def test_bad_params_exit_2_and_record_nothing(runner, workflow, tmp_path, args, words):
    """A missing, undeclared or mistyped parameter: exit 2, no run, nothing ran."""
    path = workflow(PARAMS_WORKFLOW)

    done = runner("run", str(path), *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr
    no_traceback(done)
    assert not (tmp_path / "params.txt").exists()
    assert runner.status()["runs"] == []


# Hostile values (FAULTS G1-G3) -------------------------------------------------


def test_hostile_params_reach_shell_steps_byte_for_byte(runner, workflow, tmp_path):
    """Shell syntax in a parameter is data: each step gets it exactly, runs nothing."""
    params = {f"v{n}": {"type": "string"} for n in range(len(HOSTILE))}
    steps = {}
    for n in range(len(HOSTILE)):
        value = f"${{{{ params.v{n} }}}}"
        steps[f"quoted{n}"] = {"run": f"printf '%s' \"{value}\" > quoted{n}.bin"}
        steps[f"bare{n}"] = {"run": f"echo {value} > bare{n}.txt"}
        steps[f"env{n}"] = {
            "env": {"V": value},
            "run": f"printf '%s' \"$V\" > env{n}.bin",
        }
    path = workflow({"version": 1, "name": "hostile", "params": params, "steps": steps})
    given = [arg for n, v in enumerate(HOSTILE) for arg in ("-p", f"v{n}={v}")]

    done = runner("run", str(path), *given)

    assert done.returncode == 0, done.stderr
    for n, value in enumerate(HOSTILE):
        assert (tmp_path / f"quoted{n}.bin").read_bytes() == value.encode(), value
        assert (tmp_path / f"env{n}.bin").read_bytes() == value.encode(), value
    assert pwned(tmp_path) == []


def test_hostile_upstream_outputs_reach_the_next_step_byte_for_byte(
    runner, workflow, tmp_path
):
    """An output holding shell syntax (a file name, say) is data to its reader."""
    values = [v for v in HOSTILE if "\n" not in v]
    lines = "".join(f"file{n}={v}\n" for n, v in enumerate(values))
    (tmp_path / "payload.txt").write_text(lines)
    steps: dict = {"produce": {"run": 'cat payload.txt >> "$RUNNER_OUTPUT"'}}
    for n in range(len(values)):
        value = f"${{{{ steps.produce.outputs.file{n} }}}}"
        steps[f"consume{n}"] = {
            "needs": ["produce"],
            "run": f"printf '%s' \"{value}\" > got{n}.bin; echo {value} > bare{n}",
        }
    path = workflow({"version": 1, "name": "hostile-output", "steps": steps})

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    for n, value in enumerate(values):
        assert (tmp_path / f"got{n}.bin").read_bytes() == value.encode(), value
    outputs = runner.steps("r1")["produce"]["outputs"]
    assert outputs == {f"file{n}": v for n, v in enumerate(values)}
    assert pwned(tmp_path) == []


@pytest.mark.parametrize(
    "value", ["--upload-pack=touch PWNED", "two words", "-rf /", "$(touch PWNED)"]
)
def test_argv_items_keep_a_value_as_one_element(runner, workflow, tmp_path, value):
    """In an argv list a value stays exactly one argument, never split or run."""
    path = workflow(
        {
            "version": 1,
            "name": "argv",
            "params": {"v": {"type": "string"}},
            "steps": {
                "args": {
                    "run": [
                        PY,
                        "-c",
                        "import json, sys; "
                        "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))",
                        "${{ params.v }}",
                        "--",
                        "x${{ params.v }}",
                    ]
                }
            },
        }
    )

    done = runner("run", str(path), "-p", f"v={value}")

    assert done.returncode == 0, done.stderr
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == [value, "--", "x" + value]
    assert pwned(tmp_path) == []


@pytest.mark.parametrize("value", ["${{ secrets.TOKEN }}", "{{ 7*7 }}", "${{ 1 }}"])
def test_template_text_in_a_value_arrives_literally(runner, workflow, tmp_path, value):
    """Templates are rendered once: a value that looks like one is not evaluated."""
    path = workflow(
        {
            "version": 1,
            "name": "literal",
            "params": {"v": {"type": "string"}},
            "steps": {
                "shell": {"run": "printf '%s' \"${{ params.v }}\" > shell.txt"},
                "env": {
                    "env": {"V": "${{ params.v }}"},
                    "run": "printf '%s' \"$V\" > env.txt",
                },
                "argv": {
                    "run": [
                        PY,
                        "-c",
                        "import sys; open('argv.txt', 'w').write(sys.argv[1])",
                        "${{ params.v }}",
                    ]
                },
            },
        }
    )

    done = runner("run", str(path), "-p", f"v={value}")

    assert done.returncode == 0, done.stderr
    for name in ("shell.txt", "env.txt", "argv.txt"):
        assert (tmp_path / name).read_text() == value


# Skips ------------------------------------------------------------------------


def test_false_if_skips_the_step_and_dependents_still_run(runner, workflow, tmp_path):
    """`if` false makes a step `skipped`; a skipped need counts as done."""
    path = workflow(
        {
            "version": 1,
            "name": "skip",
            "params": {"go": {"type": "boolean", "default": False}},
            "steps": {
                "first": {"run": "true"},
                "maybe": {
                    "needs": ["first"],
                    "if": "${{ params.go }}",
                    "run": "touch maybe.txt",
                },
                "after": {"needs": ["maybe"], "run": "touch after.txt"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    steps = runner.steps("r1")
    assert steps["maybe"]["status"] == "skipped"
    assert steps["after"]["status"] == "succeeded"
    assert not (tmp_path / "maybe.txt").exists()
    assert (tmp_path / "after.txt").exists()


def test_check_exit_0_skips_the_step(runner, workflow, tmp_path):
    """A `check` that exits 0 says the work is done: the step is skipped."""
    (tmp_path / "done.flag").touch()
    path = workflow(
        {
            "version": 1,
            "name": "check",
            "steps": {
                "done": {"check": "test -e done.flag", "run": "touch ran-done.txt"},
                "todo": {"check": "test -e todo.flag", "run": "touch ran-todo.txt"},
                "after": {"needs": ["done", "todo"], "run": "touch after.txt"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    steps = runner.steps("r1")
    assert steps["done"]["status"] == "skipped"
    assert steps["todo"]["status"] == "succeeded"
    assert steps["after"]["status"] == "succeeded"
    assert not (tmp_path / "ran-done.txt").exists()
    assert (tmp_path / "ran-todo.txt").exists()


# Limits -----------------------------------------------------------------------


def test_concurrency_limit_is_never_exceeded(runner, workflow, ledger):
    """With --concurrency 2, never more than two steps work at once."""
    steps = {f"s{n}": {"run": ledger.command(f"s{n}", 150)} for n in range(6)}
    path = workflow({"version": 1, "name": "limit", "steps": steps})

    done = runner("run", str(path), "--concurrency", "2")

    assert done.returncode == 0, done.stderr
    assert all(ledger.count(name) == 1 for name in steps)
    assert ledger.max_parallel() == 2


def test_pools_limit_their_steps_across_the_run(runner, workflow, ledger):
    """A pool of concurrency 1 runs its steps one by one; others run beside them."""
    steps = {
        f"api{n}": {"run": ledger.command(f"api{n}", 100), "pool": "api"}
        for n in range(4)
    }
    steps |= {f"free{n}": {"run": ledger.command(f"free{n}", 100)} for n in range(3)}
    path = workflow(
        {
            "version": 1,
            "name": "pools",
            "pools": {"api": {"concurrency": 1}},
            "steps": steps,
        }
    )

    done = runner("run", str(path), "--concurrency", "4")

    assert done.returncode == 0, done.stderr
    assert ledger.max_parallel({f"api{n}" for n in range(4)}) == 1
    assert 2 <= ledger.max_parallel() <= 4


# Failures ---------------------------------------------------------------------


def test_exhausted_retries_fail_the_step_and_keep_dependents_pending(
    runner, workflow, tmp_path
):
    """Retries run out: exit 1, step `failed` after 2 attempts, others go on."""
    path = workflow(
        {
            "version": 1,
            "name": "exhausted",
            "steps": {
                "flaky": {
                    "run": "echo try >> tries.txt; exit 1",
                    "retry": {"max_attempts": 2, "backoff": {"initial": "10ms"}},
                },
                "after": {"needs": ["flaky"], "run": "touch after.txt"},
                "other": {"run": "touch other.txt"},
                "other2": {"needs": ["other"], "run": "touch other2.txt"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    document = runner.status("r1")
    assert document["status"] == "failed"
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["flaky"]["status"] == "failed"
    assert steps["flaky"]["attempts"] == 2
    assert steps["flaky"]["error_class"] == "intermittent"
    assert steps["after"]["status"] == "pending"
    assert steps["other"]["status"] == "succeeded"
    assert steps["other2"]["status"] == "succeeded"
    assert (tmp_path / "tries.txt").read_text() == "try\ntry\n"
    assert not (tmp_path / "after.txt").exists()


def test_a_step_waiting_for_redrive_shows_its_history_and_output_tail(
    runner, workflow
):
    """`status` shows the failed step's attempts, last output and the redrive."""
    path = workflow(
        {
            "version": 1,
            "name": "queue",
            "steps": {
                "flaky": {
                    "run": "echo try; echo 'HTTP/1.1 503' >&2; exit 1",
                    "retry": {"max_attempts": 2, "backoff": {"initial": "10ms"}},
                },
                "fine": {"run": "echo fine"},
            },
        }
    )
    assert runner("run", str(path), "--run-id", "q1").returncode == 1

    steps = runner.steps("q1")
    text = runner("status", "q1").stdout

    flaky = steps["flaky"]
    assert [(a["kind"], a["number"], a["status"]) for a in flaky["history"]] == [
        ("run", 1, "failed"),
        ("run", 2, "failed"),
    ]
    assert {a["exit_code"] for a in flaky["history"]} == {1}
    assert flaky["tail"] == "HTTP/1.1 503\n"
    assert steps["fine"]["tail"] is None
    assert "history: run 1 failed (intermittent), run 2 failed (intermittent)" in text
    assert "      | HTTP/1.1 503" in text
    assert "waiting for: runner redrive q1" in text
    assert text.count("history:") == 1
    assert (flaky["redrive"], steps["fine"]["redrive"]) == (True, False)


def test_a_compensated_runs_failed_step_is_not_shown_waiting_for_redrive(
    runner, workflow
):
    """A permanent failure compensates: nothing of the run waits for redrive."""
    path = workflow(
        {
            "version": 1,
            "name": "turned",
            "steps": {"call": {"run": "echo 'HTTP/1.1 403 Forbidden'; exit 1"}},
        }
    )
    assert runner("run", str(path), "--run-id", "c1").returncode == 1

    step = runner.steps("c1")["call"]
    text = runner("status", "c1").stdout

    assert (step["status"], step["redrive"], step["tail"]) == ("failed", False, None)
    assert "waiting for" not in text
    assert "reason: step call failed (permanent:" in text


@pytest.mark.parametrize(
    "missing",
    ["definitely-not-a-command-4711", ["/nonexistent/definitely-not-a-command"]],
    ids=["shell-127", "argv-spawn-error"],
)
def test_permanent_failure_compensates_in_reverse_order(
    runner, workflow, tmp_path, missing
):
    """A command that cannot start: no retry, succeeded steps undone last-first."""
    path = workflow(
        {
            "version": 1,
            "name": "permanent",
            "steps": {
                "create": {"run": "true", "compensate": "echo create >> undo.txt"},
                "fill": {
                    "needs": ["create"],
                    "run": "true",
                    "compensate": "echo fill >> undo.txt",
                },
                "plain": {"needs": ["create"], "run": "true"},
                "broken": {
                    "needs": ["fill", "plain"],
                    "run": missing,
                    "retry": {"max_attempts": 3, "backoff": {"initial": "10ms"}},
                },
                "never": {"needs": ["broken"], "run": "touch never.txt"},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 1, done.stderr
    document = runner.status("r1")
    assert document["status"] == "compensated"
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["broken"]["status"] == "failed"
    assert steps["broken"]["attempts"] == 1
    assert steps["broken"]["error_class"] == "permanent"
    assert steps["fill"]["status"] == "compensated"
    assert steps["create"]["status"] == "compensated"
    assert steps["plain"]["status"] == "succeeded"
    assert steps["never"]["status"] == "cancelled"
    assert (tmp_path / "undo.txt").read_text() == "fill\ncreate\n"
    assert not (tmp_path / "never.txt").exists()


def test_a_taken_run_id_exits_2_and_runs_nothing(runner, workflow, tmp_path):
    """`--run-id` of an existing run: exit 2, the workflow does not run again."""
    path = workflow(
        {"version": 1, "name": "taken", "steps": {"a": {"run": "echo x >> ran.txt"}}}
    )
    assert runner("run", str(path), "--run-id", "r1").returncode == 0

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 2
    assert "r1" in done.stderr
    no_traceback(done)
    assert (tmp_path / "ran.txt").read_text() == "x\n"
    assert len(runner.status()["runs"]) == 1


def test_logs_show_each_attempts_output(runner, workflow):
    """`runner logs RUN STEP` prints what the step wrote on stdout and stderr."""
    path = workflow(
        {
            "version": 1,
            "name": "logs",
            "steps": {
                "talk": {"run": "echo hello from talk; echo warning here >&2"},
                "quiet": {"run": "echo other step"},
            },
        }
    )
    assert runner("run", str(path), "--run-id", "r1").returncode == 0

    done = runner("logs", "r1", "talk")

    assert done.returncode == 0, done.stderr
    assert "hello from talk" in done.stdout
    assert "warning here" in done.stdout
    assert "other step" not in done.stdout


def test_runner_variables_reach_the_step_and_the_key_survives_retries(
    runner, workflow, tmp_path
):
    """RUNNER_RUN_ID, _STEP, _ATTEMPT and one IDEMPOTENCY_KEY across attempts."""
    path = workflow(
        {
            "version": 1,
            "name": "variables",
            "steps": {
                "once-flaky": {
                    "run": 'echo "$RUNNER_RUN_ID $RUNNER_STEP $RUNNER_ATTEMPT '
                    '$RUNNER_IDEMPOTENCY_KEY" >> env.txt; '
                    "test -e flag || { touch flag; exit 1; }",
                    "retry": {"max_attempts": 3, "backoff": {"initial": "10ms"}},
                },
                "other": {"run": 'echo "$RUNNER_IDEMPOTENCY_KEY" > other.txt'},
            },
        }
    )

    done = runner("run", str(path), "--run-id", "r1")

    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in (tmp_path / "env.txt").read_text().splitlines()]
    assert [line[:3] for line in lines] == [
        ["r1", "once-flaky", "1"],
        ["r1", "once-flaky", "2"],
    ]
    keys = {line[3] for line in lines}
    assert len(keys) == 1
    assert keys != {(tmp_path / "other.txt").read_text().strip()}


# The state store ----------------------------------------------------------------


def test_state_is_private_under_umask_022(runner, workflow, tmp_path):
    """The state dir is 0700 and state.db, -wal, -shm and logs are 0600 (H3)."""
    path = workflow(
        {"version": 1, "name": "private", "steps": {"a": {"run": "echo secret"}}}
    )
    old = os.umask(0o022)
    try:
        done = runner("run", str(path), "--run-id", "r1")
    finally:
        os.umask(old)

    assert done.returncode == 0, done.stderr
    state = runner.state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "state.db").exists()
    logs = [p for p in state.rglob("*") if p.is_file() and p.parent != state]
    assert logs, "no log files were written"
    for item in [state / "state.db", *state.rglob("*")]:
        if item.is_dir():
            assert stat.S_IMODE(item.stat().st_mode) == 0o700, item
        elif item.exists():
            assert stat.S_IMODE(item.stat().st_mode) == 0o600, item
    for suffix in ("-wal", "-shm"):
        companion = state / f"state.db{suffix}"
        if companion.exists():
            assert stat.S_IMODE(companion.stat().st_mode) == 0o600


def test_a_world_writable_state_dir_is_refused(runner, workflow, tmp_path):
    """An existing state dir others can write to: exit 3, nothing ran."""
    path = workflow(
        {"version": 1, "name": "unsafe", "steps": {"a": {"run": "touch ran.txt"}}}
    )
    shared = tmp_path / "shared-state"
    shared.mkdir()
    shared.chmod(0o777)

    done = runner("run", str(path), state=shared)

    assert done.returncode == 3
    assert "writable" in done.stderr
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert not (shared / "state.db").exists()


def _valid_db(runner, workflow) -> Path:
    path = workflow(
        {"version": 1, "name": "seed", "steps": {"a": {"run": "true"}}}, "seed.yaml"
    )
    assert runner("run", str(path)).returncode == 0
    db = runner.state / "state.db"
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def _garbage_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[:100] = b"\x5a" * 100
    db.write_bytes(bytes(data))


def _empty(db: Path) -> None:
    db.write_bytes(b"")


def _random_bytes(db: Path) -> None:
    db.write_bytes(os.urandom(3 * 4096))


def _truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: 4096 + 123])


@pytest.mark.parametrize(
    "damage",
    [_garbage_header, _empty, _random_bytes, _truncated],
    ids=["garbage-header", "zero-bytes", "random-bytes", "truncated"],
)
def test_a_corrupt_state_db_exits_3_and_runs_nothing(
    runner, workflow, tmp_path, damage
):
    """A damaged state.db is reported (exit 3), never recreated; no step runs."""
    db = _valid_db(runner, workflow)
    damage(db)
    before = db.read_bytes()
    path = workflow(
        {"version": 1, "name": "victim", "steps": {"a": {"run": "touch ran.txt"}}}
    )

    done = runner("run", str(path))

    assert done.returncode == 3, done.stdout + done.stderr
    assert "corrupt" in done.stderr
    assert str(db) in done.stderr
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


def test_a_newer_schema_exits_3(runner, workflow, tmp_path):
    """A state.db from a newer runner (user_version 99) is refused with exit 3."""
    db = _valid_db(runner, workflow)
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA user_version = 99")
    path = workflow(
        {"version": 1, "name": "victim", "steps": {"a": {"run": "touch ran.txt"}}}
    )

    done = runner("run", str(path))

    assert done.returncode == 3
    assert "newer" in done.stderr
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
