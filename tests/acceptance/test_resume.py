"""Resume after signals and crashes; one driver per run; changed workflows."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from support import Ledger, processes_with, wait_gone

from runner.spec.validate import checker_id

LEASE = {"RUNNER_LEASE_SECONDS": "1"}


def slow_until_flagged(ledger, step: str, flag: Path, slow_ms: int = 30_000) -> str:
    """A ledger step that works `slow_ms` until `flag` exists, then 50 ms."""
    argv = ledger.argv(step, 0)
    head = shlex.join(argv[:-2])
    return (
        f"if [ -e {shlex.quote(str(flag))} ]; then ms=50; else ms={slow_ms}; fi; "
        f'{head} "$ms" 0'
    )


def three_steps(ledger, flag: Path, slow_ms: int = 30_000, **slow: object) -> dict:
    """first -> slow -> last; `slow` works long until `flag` exists."""
    return {
        "version": 1,
        "name": "three",
        "steps": {
            "first": {"run": ledger.command("first", 10)},
            "slow": {
                "needs": ["first"],
                "run": slow_until_flagged(ledger, "slow", flag, slow_ms),
                **slow,
            },
            "last": {"needs": ["slow"], "run": ledger.command("last", 10)},
        },
    }


def crash(runner, *args: str, point: str = "step.after_spawn:1") -> None:
    """Run `args` with a crash point armed; the runner must die by SIGKILL."""
    done = runner(*args, env={"RUNNER_CRASHPOINT": point})
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def finish(process: subprocess.Popen, timeout: float = 30) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


# Signals (FAULTS A5) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_a_signal_interrupts_the_run_and_resume_completes_it(
    runner, workflow, ledger, tmp_path, signum, code
):
    """SIGTERM/SIGINT: exit 143/130, step interrupted, no leftovers; resume ends it."""
    flag = tmp_path / "fast"
    path = workflow(three_steps(ledger, flag))
    process = runner.start("run", str(path), "--run-id", "r1", start_new_session=True)
    ledger.wait_for("slow")

    if signum == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C would
    else:
        os.kill(process.pid, signum)
    returncode, output = finish(process)

    assert returncode == code, output
    assert "Traceback" not in output
    document = runner.status("r1")
    assert document["status"] == "interrupted"
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["first"]["status"] == "succeeded"
    assert steps["slow"]["status"] == "interrupted"
    assert steps["last"]["status"] == "pending"
    assert ledger.of("slow", "end") == []
    assert ledger.entries()[-1].event == "start"
    assert processes_left(ledger) == []

    flag.touch()
    done = runner("resume", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "succeeded"
    assert ledger.count("first") == 1
    assert ledger.count("slow") == 2
    assert len(ledger.of("slow", "end")) == 1
    assert ledger.count("last") == 1
    assert ledger.overlaps() == []


def processes_left(ledger) -> list[int]:
    return wait_gone(str(ledger.path), timeout=2)


def test_resume_of_a_finished_run_has_nothing_to_do(runner, workflow, ledger):
    """`resume` of a succeeded run exits 0, says so, and runs nothing again."""
    path = workflow(
        {"version": 1, "name": "done", "steps": {"a": {"run": ledger.command("a", 1)}}}
    )
    assert runner("run", str(path), "--run-id", "r1").returncode == 0

    done = runner("resume", "r1")
    newest = runner("resume")

    assert done.returncode == 0, done.stderr
    assert "nothing to do" in (done.stdout + done.stderr).lower()
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.strip() == (
        "no running or compensating or interrupted run to continue; nothing to do"
    )
    assert ledger.count("a") == 1


# Changed workflows (FAULTS B5) -------------------------------------------------


def _edited(workflow, tmp_path: Path, runner) -> Path:
    """A run that crashed before any step worked, then its file edited."""
    document = {
        "version": 1,
        "name": "edit",
        "steps": {
            "build": {"run": "echo build >> trace.txt"},
            "deploy": {"needs": ["build"], "run": "echo deploy-old >> trace.txt"},
        },
    }
    path = workflow(document)
    crash(runner, "run", str(path), "--run-id", "r1", point="step.after_start_commit")
    document["steps"]["deploy"]["run"] = "echo deploy-new >> trace.txt"
    workflow(document)
    return tmp_path / "trace.txt"


def test_resume_refuses_an_edited_workflow_with_exit_5(runner, workflow, tmp_path):
    """An edited file stops resume with exit 5, naming the step that differs."""
    trace = _edited(workflow, tmp_path, runner)

    done = runner("resume", "r1")

    assert done.returncode == 5, done.stdout + done.stderr
    assert "deploy" in done.stderr
    assert "build" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not trace.exists()


@pytest.mark.parametrize(
    ("option", "deployed"),
    [("--accept-changes", "deploy-new"), ("--original", "deploy-old")],
)
def test_resume_proceeds_with_the_chosen_definition(
    runner, workflow, tmp_path, option, deployed
):
    """`--accept-changes` runs the new file's steps, `--original` the stored copy."""
    trace = _edited(workflow, tmp_path, runner)

    done = runner("resume", "r1", option)

    assert done.returncode == 0, done.stdout + done.stderr
    assert trace.read_text() == f"build\n{deployed}\n"


def stored(runner, run_id: str) -> tuple[str, str]:
    """The run's stored workflow copy and the id of the validator that checked it."""
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        row = connection.execute(
            "SELECT source, checked_by FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    return row[0], row[1]


def test_the_stored_copy_names_the_validator_that_checked_it(
    runner, workflow, tmp_path
):
    """Run and `--accept-changes` record this validator's id with the copy."""
    _edited(workflow, tmp_path, runner)
    source, checked_by = stored(runner, "r1")
    assert checked_by == checker_id()
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE runs SET checked_by = 'older' WHERE run_id = 'r1'")

    done = runner("resume", "r1", "--accept-changes")

    assert done.returncode == 0, done.stdout + done.stderr
    new_source, checked_by = stored(runner, "r1")
    assert new_source != source
    assert checked_by == checker_id()


def test_a_copy_another_validator_checked_is_checked_again(runner, workflow, tmp_path):
    """A copy stored by another runner is validated before use: a bad one, exit 2."""
    _edited(workflow, tmp_path, runner)
    source, _ = stored(runner, "r1")
    broken = source.replace("deploy:", "deploy:\n    nedds: [build]", 1)
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "UPDATE runs SET source = ?, checked_by = 'older' WHERE run_id = 'r1'",
            (broken,),
        )

    done = runner("resume", "r1", "--original")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "the stored copy of run r1 no longer validates" in done.stderr
    assert not (tmp_path / "trace.txt").exists()


def _cut_short_with_params(workflow, runner, params: dict | None = None) -> dict:
    """A run of `greet` cut short before its only step worked; its document."""
    document = {
        "version": 1,
        "name": "greet",
        "params": params or {"who": {"type": "string", "default": "world"}},
        "steps": {"greet": {"run": "echo hello ${{ params.who }} > greeting.txt"}},
    }
    path = workflow(document)
    crash(runner, "run", str(path), "--run-id", "r1", point="step.after_start_commit")
    return document


def test_a_param_an_accepted_change_adds_takes_its_default(
    runner, workflow, tmp_path
):
    """A new param with a default is set on resume; the given ones are kept."""
    document = _cut_short_with_params(workflow, runner)
    document["params"]["times"] = {"type": "integer", "default": 2}
    document["steps"]["greet"]["run"] = (
        "echo hello ${{ params.who }} ${{ params.times }} > greeting.txt"
    )
    workflow(document)

    done = runner("resume", "r1", "--accept-changes")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "greeting.txt").read_text() == "hello world 2\n"
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        (params,) = connection.execute("SELECT params FROM runs").fetchone()
    assert json.loads(params) == {"who": "world", "times": 2}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"target": {"type": "string"}},
            "the changed workflow adds parameter 'target' with no default",
        ),
        (
            {"who": {"type": "integer", "default": 1}},
            "the changed workflow makes parameter 'who' integer, but run r1 has "
            "'world'",
        ),
    ],
    ids=["required-param-added", "type-changed"],
)
def test_a_param_change_resume_cannot_honour_exits_2_and_changes_nothing(
    runner, workflow, tmp_path, change, words
):
    """A new required param, or a given value of the wrong type: exit 2, no trace."""
    document = _cut_short_with_params(workflow, runner)
    before = stored(runner, "r1")
    document["params"].update(change)
    workflow(document)

    done = runner("resume", "r1", "--accept-changes")

    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "greeting.txt").exists()
    assert stored(runner, "r1") == before
    assert runner("resume", "r1", "--original").returncode == 0


# Crashes (FAULTS A4, A8, V7) ------------------------------------------------------


def test_resume_kills_the_leftover_tree_of_a_killed_runner_before_rerunning(
    runner, workflow, ledger, tmp_path
):
    """SIGKILLed runner: resume ends the step's leftover processes, then re-runs."""
    flag = tmp_path / "fast"
    document = three_steps(ledger, flag)
    slow = document["steps"]["slow"]
    slow["run"] = f"{slow['run']}; echo tree-done"  # sh stays as the parent
    path = workflow(document)
    process = runner.start("run", str(path), "--run-id", "r1")
    leftover = ledger.wait_for("slow").pid
    process.kill()
    process.wait()
    tree = processes_with(str(ledger.path))
    assert leftover in tree
    assert len(tree) == 2  # the step's shell and its child

    flag.touch()
    done = runner("resume", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert all(_gone(pid) for pid in tree)
    assert ledger.overlaps() == []
    starts = ledger.of("slow")
    assert starts[0].pid == leftover
    assert len(starts) == 2
    assert [entry.pid for entry in ledger.of("slow", "end")] == [starts[1].pid]
    assert ledger.count("last") == 1
    assert runner.status("r1")["status"] == "succeeded"


def _gone(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def test_a_crash_during_backoff_resumes_with_the_next_attempt(
    runner, workflow, tmp_path
):
    """Killed after a retry was scheduled: resume runs attempt 2, after the delay."""
    path = workflow(
        {
            "version": 1,
            "name": "backoff",
            "steps": {
                "flaky": {
                    "run": 'echo "$RUNNER_ATTEMPT $(date +%s.%N)" >> tries.txt; '
                    'test "$RUNNER_ATTEMPT" -gt 1',
                    "retry": {
                        "max_attempts": 3,
                        "backoff": {"initial": "1500ms", "jitter": "none"},
                    },
                }
            },
        }
    )
    crash(
        runner, "run", str(path), "--run-id", "r1", point="retry.after_schedule_commit"
    )
    assert runner.steps("r1")["flaky"]["status"] == "waiting"

    done = runner("resume", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    tries = [line.split() for line in (tmp_path / "tries.txt").read_text().splitlines()]
    assert [attempt for attempt, _ in tries] == ["1", "2"]
    assert float(tries[1][1]) - float(tries[0][1]) >= 1.5
    assert runner.steps("r1")["flaky"]["attempts"] == 2


def test_a_crash_loop_ends_the_run_failed_after_max_recoveries(
    runner, workflow, ledger
):
    """A crash point hit by every resume: after 2 recoveries the run is failed."""
    path = workflow(
        {"version": 1, "name": "loop", "steps": {"a": {"run": ledger.command("a", 1)}}}
    )
    # Before the spawn: a kill just after it may race the step's first write.
    crash(runner, "run", str(path), "--run-id", "r1", point="step.after_start_commit")
    env = {"RUNNER_CRASHPOINT": "resume.after_reconcile", "RUNNER_MAX_RECOVERIES": "2"}
    codes = [runner("resume", "r1", env=env).returncode for _ in range(3)]

    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 1]
    document = runner.status("r1")
    assert document["status"] == "failed"
    assert "max recovery attempts exceeded" in document["reason"]
    assert runner("resume", "r1").returncode == 1
    assert runner.status("r1")["status"] == "failed"
    assert ledger.count("a") == 0


def test_on_crash_fail_step_is_failed_not_rerun_after_a_crash(
    runner, workflow, ledger, tmp_path
):
    """`on_crash: fail`: the cut-short attempt ends the step failed; it ran once."""
    flag = tmp_path / "fast"
    path = workflow(three_steps(ledger, flag, on_crash="fail"))
    process = runner.start("run", str(path), "--run-id", "r1")
    ledger.wait_for("slow")
    process.kill()
    process.wait()

    flag.touch()
    done = runner("resume", "r1")

    assert done.returncode == 1, done.stdout + done.stderr
    assert processes_left(ledger) == []
    steps = runner.steps("r1")
    assert steps["slow"]["status"] == "failed"
    assert steps["last"]["status"] == "pending"
    assert ledger.count("slow") == 1
    assert ledger.count("last") == 0


def test_a_resume_never_ends_another_stores_run_of_the_same_id(
    runner, workflow, tmp_path
):
    """Two state directories, one run id and step: resume leaves the other alone."""
    mine, theirs = Ledger(tmp_path / "mine.txt"), Ledger(tmp_path / "theirs.txt")
    steps = {"slow": {"run": theirs.command("slow", 3000)}}
    other = workflow({"version": 1, "name": "twin", "steps": steps}, "other.yaml")
    steps = {"slow": {"run": mine.command("slow", 10)}}
    path = workflow({"version": 1, "name": "twin", "steps": steps})
    alive = runner.start("run", str(other), "--run-id", "r1", state=tmp_path / "s2")
    theirs.wait_for("slow")
    crash(runner, "run", str(path), "--run-id", "r1", point="step.after_start_commit")

    resumed = runner("resume", "r1")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    code, output = finish(alive)
    assert code == 0, output
    assert [entry.event for entry in theirs.entries()] == ["start", "end"]
    assert mine.count("slow") == 1


# One driver per run (FAULTS C1-C3) ------------------------------------------------


@pytest.mark.parametrize("attempt", range(2))
def test_two_resumes_at_once_one_proceeds_the_other_exits_4(
    runner, workflow, ledger, tmp_path, attempt
):
    """Two `resume` started together: exactly one drives the run, one exits 4."""
    path = workflow(three_steps(ledger, tmp_path / "never", slow_ms=3000))
    crash(runner, "run", str(path), "--run-id", "r1")

    both = [runner.start("resume", "r1") for _ in range(2)]
    results = sorted(finish(process) for process in both)

    codes = [code for code, _ in results]
    assert codes == [0, 4], results
    assert "Traceback" not in results[1][1]
    assert ledger.count("slow") == 1
    assert ledger.overlaps() == []
    assert runner.status("r1")["status"] == "succeeded"


def test_resume_while_the_run_is_alive_exits_4(runner, workflow, ledger, tmp_path):
    """A healthy running `run` is never recovered by a second process."""
    path = workflow(three_steps(ledger, tmp_path / "never", slow_ms=4000))
    process = runner.start("run", str(path), "--run-id", "r1")
    ledger.wait_for("slow")

    done = runner("resume", "r1")

    assert done.returncode == 4, done.stdout + done.stderr
    assert str(process.pid) in done.stderr
    code, output = finish(process)
    assert code == 0, output
    assert ledger.count("slow") == 1
    assert runner.status("r1")["status"] == "succeeded"


def test_a_paused_owner_loses_the_run_and_writes_nothing_when_it_wakes(
    runner, workflow, ledger, tmp_path
):
    """SIGSTOPped owner, lease expired: resume takes over; the old one exits 4."""
    flag = tmp_path / "fast"
    path = workflow(three_steps(ledger, flag))
    owner = runner.start("run", str(path), "--run-id", "r1", env=LEASE)
    ledger.wait_for("slow")
    os.kill(owner.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        flag.touch()
        done = runner("resume", "r1", env=LEASE)
        after_resume = runner.status("r1")
        lines = len(ledger.entries())
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    code, output = finish(owner)

    assert done.returncode == 0, done.stdout + done.stderr
    assert code == 4, output
    assert "Traceback" not in output
    assert runner.status("r1") == after_resume
    assert after_resume["status"] == "succeeded"
    assert len(ledger.entries()) == lines
    assert ledger.overlaps() == []
    assert ledger.count("slow") == 2
    assert ledger.count("last") == 1
