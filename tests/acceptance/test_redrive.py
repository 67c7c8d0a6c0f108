"""`runner redrive` of failed workflow runs (SPEC 2, 3, 5; FAULTS I3, B5, C1).

A step that fails "until fixed" fails while a flag file is missing, so a test
exhausts its retries, fixes it by creating the flag, and redrives. Ledgers
(FAULTS T3) count what the steps really ran, whatever the store recorded.
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Cli, Ledger, wait_gone

Workflow = Callable[..., Path]
FAST_RETRY = {"max_attempts": 2, "backoff": {"initial": "10ms", "jitter": "none"}}


def until_fixed(
    ledger: Ledger, step: str, flag: Path, fixed_ms: int = 10, gate: Path | None = None
) -> str:
    """A ledger step that fails (503) while `flag` is missing, then works `fixed_ms`.

    Fixed and given a `gate`, it first waits for the gate file to exist: a test
    holds the step running for as long as it needs, with no timing guess.
    """
    head = shlex.join(ledger.argv(step, 0)[:-2])
    flag_q = shlex.quote(str(flag))
    wait = ""
    if gate is not None:
        wait = f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.01; done; "
    return (
        f"if [ -e {flag_q} ]; then {wait}ms={fixed_ms}; code=0; "
        "else ms=1; code=1; echo 'HTTP/1.1 503 Service Unavailable' >&2; fi; "
        f'{head} "$ms" "$code"'
    )


def pipeline(
    ledger: Ledger, flag: Path, fixed_ms: int = 10, gate: Path | None = None
) -> dict[str, Any]:
    """source -> flaky -> after, and side -> side2 beside them."""
    return {
        "version": 1,
        "name": "pipeline",
        "steps": {
            "source": {
                "run": f"{ledger.command('source', 1)} && "
                'echo "token=$$-$(date +%s%N)" >> "$RUNNER_OUTPUT"'
            },
            "flaky": {
                "needs": ["source"],
                "run": until_fixed(ledger, "flaky", flag, fixed_ms, gate),
                "retry": FAST_RETRY,
            },
            "after": {
                "needs": ["flaky"],
                "env": {"LEDGER_IN": "${{ steps.source.outputs.token }}"},
                "run": ledger.command("after", 1),
            },
            "side": {"run": ledger.command("side", 1)},
            "side2": {"needs": ["side"], "run": ledger.command("side2", 1)},
        },
    }


def failed_run(runner: Cli, path: Path, run_id: str, **kwargs: Any) -> None:
    done = runner("run", str(path), "--run-id", run_id, **kwargs)
    assert done.returncode == 1, done.stdout + done.stderr
    assert runner.status(run_id)["status"] == "failed"


def crash(runner: Cli, *args: str, point: str, **env: str) -> None:
    """Run `args` with a crash point armed; the runner must die by SIGKILL."""
    done = runner(*args, env={"RUNNER_CRASHPOINT": point, **env})
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def pending_redrive(runner: Cli) -> int:
    done = runner("stats", "-o", "json")
    assert done.returncode == 0, done.stderr
    count: int = json.loads(done.stdout)["pending_redrive"]
    return count


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def first_to_exit(
    processes: list[subprocess.Popen[str]], timeout: float = 20
) -> subprocess.Popen[str]:
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if process.poll() is not None:
                return process
        assert time.monotonic() < deadline, "no process exited"
        time.sleep(0.01)


def wait_until_running(runner: Cli, run_id: str, step: str) -> None:
    deadline = time.monotonic() + 20
    while runner.steps(run_id)[step]["status"] != "running":
        assert time.monotonic() < deadline, f"step {step} never ran"
        time.sleep(0.02)


def wait_for_third_start(ledger: Ledger, step: str) -> None:
    """Wait until `step` started a third time: the redrive's execution."""
    deadline = time.monotonic() + 20
    while len(ledger.of(step)) < 3:
        assert time.monotonic() < deadline, ledger.entries()
        time.sleep(0.01)


def attempts_seen(ledger: Ledger, step: str) -> list[int]:
    """RUNNER_ATTEMPT of each execution of `step`, in order."""
    return [entry.attempt for entry in ledger.of(step)]


# The redrive itself (SPEC 3, 5) ----------------------------------------------------


def test_redrive_gives_the_exhausted_step_a_fresh_budget_and_keeps_its_history(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """Attempts restart at 1 with a full budget; old attempts stay in logs/status."""
    counter = tmp_path / "count"
    keys = tmp_path / "keys.txt"
    command = (
        f"echo \"$RUNNER_ATTEMPT $RUNNER_IDEMPOTENCY_KEY\" >> '{keys}'; "
        f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); "
        f"echo $n > '{counter}'; echo \"call $n\"; "
        "if [ $n -le 3 ]; then echo 'HTTP/1.1 503' >&2; exit 1; fi"
    )
    path = workflow(
        {
            "version": 1,
            "name": "budget",
            "steps": {
                "flaky": {"run": command, "retry": FAST_RETRY},
                "other": {"run": f"echo \"$RUNNER_IDEMPOTENCY_KEY\" >> '{keys}'"},
            },
        }
    )
    failed_run(runner, path, "r1")
    assert runner.steps("r1")["flaky"]["attempts"] == 2
    assert pending_redrive(runner) == 1

    done = runner("redrive", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    flaky = runner.steps("r1")["flaky"]
    assert (flaky["status"], flaky["attempts"]) == ("succeeded", 2)
    assert [(a["number"], a["status"]) for a in flaky["history"]] == [
        (1, "failed"),
        (2, "failed"),
        (1, "failed"),
        (2, "succeeded"),
    ]
    lines = runner("logs", "r1", "flaky").stdout.splitlines()
    heads = [
        "redrive mark" if line.startswith("== redrive 1 at ") else line.split("(")[0]
        for line in lines
        if line.startswith("==")
    ]
    assert heads == [
        "== flaky run attempt 1 ",
        "== flaky run attempt 2 ",
        "redrive mark",
        "== flaky run attempt 1 ",
        "== flaky run attempt 2 ",
    ]
    assert any(line.endswith(": attempts counted from 1 again ==") for line in lines)
    assert [line for line in lines if line.startswith("call")] == [
        f"call {n}" for n in range(1, 5)
    ]
    seen = keys.read_text().splitlines()
    flaky_seen = [line.split() for line in seen if " " in line]
    assert [attempt for attempt, _ in flaky_seen] == ["1", "2", "1", "2"]
    assert {key for _, key in flaky_seen} == {"r1:flaky"}
    assert [line for line in seen if " " not in line] == ["r1:other"]
    assert pending_redrive(runner) == 0


def test_redrive_runs_the_waiting_dependents_and_never_reruns_succeeded_steps(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """Dependents run after the redrive with outputs recorded before; no re-runs."""
    flag = tmp_path / "fixed"
    path = workflow(pipeline(ledger, flag))
    failed_run(runner, path, "r1")
    before = runner.steps("r1")
    assert {name: step["status"] for name, step in before.items()} == {
        "source": "succeeded",
        "flaky": "failed",
        "after": "pending",
        "side": "succeeded",
        "side2": "succeeded",
    }
    recorded = before["source"]["outputs"]
    token = recorded["token"]
    assert ledger.count("after") == 0

    flag.touch()
    done = runner("redrive", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    steps = runner.steps("r1")
    assert all(step["status"] == "succeeded" for step in steps.values()), steps
    assert steps["source"]["outputs"] == recorded
    assert steps["after"]["outputs"] == {"out": f"after<{token}>"}
    assert {name: ledger.count(name) for name in steps} == {
        "source": 1,
        "flaky": 3,
        "after": 1,
        "side": 1,
        "side2": 1,
    }
    assert attempts_seen(ledger, "flaky") == [1, 2, 1]
    assert ledger.of("after")[0].at > ledger.of("flaky", "end")[-1].at
    assert "step source" not in done.stdout
    assert "step side" not in done.stdout


def test_redrive_reruns_every_failed_branch_in_one_go(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """Two independent failed branches are both redriven; each dependent runs once."""
    flag = tmp_path / "fixed"
    steps: dict[str, Any] = {}
    for branch in ("a", "b"):
        steps[f"{branch}1"] = {
            "run": until_fixed(ledger, f"{branch}1", flag),
            "retry": FAST_RETRY,
        }
        steps[f"{branch}2"] = {
            "needs": [f"{branch}1"],
            "run": ledger.command(f"{branch}2", 1),
        }
    path = workflow({"version": 1, "name": "branches", "steps": steps})
    failed_run(runner, path, "r1")
    assert pending_redrive(runner) == 2

    flag.touch()
    done = runner("redrive", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "succeeded"
    counts = {name: ledger.count(name) for name in steps}
    assert counts == {"a1": 3, "a2": 1, "b1": 3, "b2": 1}
    assert pending_redrive(runner) == 0


def test_a_step_that_fails_again_after_redrive_waits_for_the_next_one(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """Still broken: the redrive spends a full new budget, exits 1, queues it again."""
    flag = tmp_path / "fixed"
    path = workflow(pipeline(ledger, flag))
    failed_run(runner, path, "r1")

    again = runner("redrive", "r1")

    assert again.returncode == 1, again.stdout + again.stderr
    assert runner.status("r1")["status"] == "failed"
    assert attempts_seen(ledger, "flaky") == [1, 2, 1, 2]
    assert pending_redrive(runner) == 1
    flag.touch()
    assert runner("redrive", "r1").returncode == 0
    assert ledger.count("after") == 1
    assert ledger.count("source") == 1


# Choosing runs --------------------------------------------------------------------


def test_redrive_all_redrives_every_failed_run_and_nothing_else(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """--all: failed runs, oldest first; succeeded and interrupted runs untouched."""
    flag = tmp_path / "fixed"
    trace = tmp_path / "trace.txt"
    command = f"echo \"$RUNNER_RUN_ID\" >> '{trace}'; test -e '{flag}'"
    step = {"run": command, "retry": {"max_attempts": 1}}
    path = workflow({"version": 1, "name": "many", "steps": {"only": step}})
    ok = workflow(
        {"version": 1, "name": "ok", "steps": {"only": {"run": "true"}}}, "ok.yaml"
    )
    failed_run(runner, path, "f1")
    assert runner("run", str(ok), "--run-id", "s1").returncode == 0
    failed_run(runner, path, "f2")
    crash(runner, "run", str(path), "--run-id", "i1", point="step.after_start_commit")
    trace.write_text("")

    flag.touch()
    done = runner("redrive", "--all")

    assert done.returncode == 0, done.stdout + done.stderr
    assert trace.read_text().split() == ["f1", "f2"]
    assert done.stdout.index("redriven (f1)") < done.stdout.index("redriven (f2)")
    statuses = {run["run_id"]: run["status"] for run in runner.status()["runs"]}
    assert statuses == {
        "f1": "succeeded",
        "s1": "succeeded",
        "f2": "succeeded",
        "i1": "interrupted",
    }
    nothing = runner("redrive", "--all")
    assert nothing.returncode == 0, nothing.stderr
    assert "nothing to do" in nothing.stdout
    assert trace.read_text().split() == ["f1", "f2"]


def test_redrive_all_goes_on_past_a_refused_run_and_exits_with_the_worst_code(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """--all: a run whose file changed is refused (5); the other is still redriven."""
    flag = tmp_path / "fixed"
    step = {"run": f"test -e '{flag}'", "retry": {"max_attempts": 1}}
    edited = workflow({"version": 1, "name": "e", "steps": {"x": step}}, "e.yaml")
    kept = workflow({"version": 1, "name": "k", "steps": {"y": step}}, "k.yaml")
    failed_run(runner, edited, "e1")
    failed_run(runner, kept, "k1")
    workflow({"version": 1, "name": "e", "steps": {"x": {"run": "true"}}}, "e.yaml")

    flag.touch()
    done = runner("redrive", "--all")

    assert done.returncode == 5, done.stdout + done.stderr
    assert "steps that differ: x" in done.stderr
    assert runner.status("e1")["status"] == "failed"
    assert runner.status("k1")["status"] == "succeeded"


def test_redrive_without_run_id_picks_the_newest_failed_run(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """No RUN_ID: only the newest failed run is redriven, a newer success ignored."""
    flag = tmp_path / "fixed"
    step = {"run": f"test -e '{flag}'", "retry": {"max_attempts": 1}}
    path = workflow({"version": 1, "name": "pick", "steps": {"only": step}})
    failed_run(runner, path, "old")
    failed_run(runner, path, "new")
    flag.touch()
    assert runner("run", str(path), "--run-id", "newest-ok").returncode == 0

    done = runner("redrive")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "redriven (new)" in done.stdout
    assert runner.status("new")["status"] == "succeeded"
    assert runner.status("old")["status"] == "failed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ok",), "run ok is succeeded; only failed or compensation_failed runs"),
        (("nope",), "no run 'nope' in this state store"),
        (("ok", "--all"), "give a RUN_ID or --all, not both"),
    ],
    ids=["succeeded", "unknown", "both"],
)
def test_redrive_of_a_run_it_cannot_take_exits_2_with_one_line(
    runner: Cli, workflow: Workflow, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """Succeeded or unknown run: exit 2, one line, nothing run, nothing recorded."""
    trace = tmp_path / "trace.txt"
    document: dict[str, Any] = {
        "version": 1,
        "name": "ok",
        "steps": {"only": {"run": f"echo ran >> '{trace}'"}},
    }
    path = workflow(document)
    assert runner("run", str(path), "--run-id", "ok").returncode == 0
    document["steps"]["only"]["run"] = "echo edited"  # changed, yet 2 and not 5
    workflow(document)
    before = runner.status("ok")

    done = runner("redrive", *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert message in done.stderr
    assert runner.status("ok") == before
    assert trace.read_text() == "ran\n"


def test_redrive_with_no_failed_run_has_nothing_to_do(
    runner: Cli, workflow: Workflow
) -> None:
    """No RUN_ID and nothing in the queue: exit 0, 'nothing to do' (SPEC: 0)."""
    path = workflow({"version": 1, "name": "ok", "steps": {"only": {"run": "true"}}})
    assert runner("run", str(path)).returncode == 0

    done = runner("redrive")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "no failed or compensation_failed run to redrive; nothing to do"
    )


# One redrive at a time (FAULTS I3, C1) ------------------------------------------


@pytest.mark.parametrize("repeat", range(2))
def test_two_redrives_at_once_one_proceeds_the_other_exits_4(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path, repeat: int
) -> None:
    """Started together: exactly one redrives, the other exits 4; no overlap."""
    flag, gate = tmp_path / "fixed", tmp_path / "gate"
    path = workflow(pipeline(ledger, flag, gate=gate))
    failed_run(runner, path, "r1")
    flag.touch()

    both = [runner.start("redrive", "r1") for _ in range(2)]
    loser = first_to_exit(both)  # the winner's step waits at the gate meanwhile
    gate.touch()
    (winner,) = [process for process in both if process is not loser]
    lost, won = finish(loser), finish(winner)

    assert (lost[0], won[0]) == (4, 0), (lost, won)
    assert "run r1 is driven by pid" in lost[1]
    assert "Traceback" not in lost[1]
    assert ledger.count("flaky") == 3
    assert ledger.count("after") == 1
    assert ledger.overlaps() == []
    assert runner.status("r1")["status"] == "succeeded"


def test_a_redrive_or_resume_while_a_redrive_runs_exits_4(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """While the redriven step works, a second redrive and a resume both exit 4."""
    flag, gate = tmp_path / "fixed", tmp_path / "gate"
    path = workflow(pipeline(ledger, flag, gate=gate))
    failed_run(runner, path, "r1")
    flag.touch()
    first = runner.start("redrive", "r1")
    wait_until_running(runner, "r1", "flaky")

    second = runner("redrive", "r1")
    resumed = runner("resume", "r1")
    gate.touch()

    assert second.returncode == 4, second.stdout + second.stderr
    assert f"driven by pid {first.pid}" in second.stderr
    assert resumed.returncode == 4, resumed.stdout + resumed.stderr
    code, output = finish(first)
    assert code == 0, output
    assert ledger.count("flaky") == 3
    assert ledger.overlaps() == []


# Changed workflows (FAULTS B5, I3) ----------------------------------------------


def _edited(runner: Cli, workflow: Workflow, tmp_path: Path) -> Path:
    """A failed run whose `deploy` step was then edited; returns the trace file."""
    trace = tmp_path / "trace.txt"
    flag = tmp_path / "fixed"
    document: dict[str, Any] = {
        "version": 1,
        "name": "edit",
        "steps": {
            "build": {"run": f"echo build >> '{trace}'"},
            "deploy": {
                "needs": ["build"],
                "run": f"echo deploy-old >> '{trace}'; test -e '{flag}'",
                "retry": {"max_attempts": 1},
            },
        },
    }
    path = workflow(document)
    failed_run(runner, path, "r1")
    document["steps"]["deploy"]["run"] = f"echo deploy-new >> '{trace}'"
    document["steps"]["notify"] = {
        "needs": ["deploy"],
        "run": f"echo notify >> '{trace}'",
    }
    workflow(document)
    flag.touch()
    return trace


def test_redrive_refuses_an_edited_workflow_with_exit_5(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """An edited file stops redrive with exit 5, naming the steps; nothing runs."""
    trace = _edited(runner, workflow, tmp_path)

    done = runner("redrive", "r1")

    assert done.returncode == 5, done.stdout + done.stderr
    assert "workflow changed since run r1 started" in done.stderr
    assert "steps that differ: deploy, notify;" in done.stderr
    assert "Traceback" not in done.stderr
    assert trace.read_text() == "build\ndeploy-old\n"
    assert runner.status("r1")["status"] == "failed"
    assert pending_redrive(runner) == 1


@pytest.mark.parametrize(
    ("option", "ran"),
    [
        ("--accept-changes", "deploy-new\nnotify\n"),
        ("--original", "deploy-old\n"),
    ],
)
def test_redrive_proceeds_with_the_chosen_definition(
    runner: Cli, workflow: Workflow, tmp_path: Path, option: str, ran: str
) -> None:
    """`--accept-changes` runs the new file (an added step too); `--original` not."""
    trace = _edited(runner, workflow, tmp_path)

    done = runner("redrive", "r1", option)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert trace.read_text() == "build\ndeploy-old\n" + ran
    assert runner.status("r1")["status"] == "succeeded"


def test_a_redrive_with_accepted_changes_sets_the_params_they_add(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """The changed file's new param takes its default in the redriven steps."""
    document: dict[str, Any] = {
        "version": 1,
        "name": "edit",
        "steps": {"deploy": {"run": "exit 1", "retry": {"max_attempts": 1}}},
    }
    failed_run(runner, workflow(document), "r1")
    document["params"] = {"region": {"type": "string", "default": "eu"}}
    document["steps"]["deploy"]["run"] = "echo ${{ params.region }} > region.txt"
    workflow(document)

    done = runner("redrive", "r1", "--accept-changes")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "region.txt").read_text() == "eu\n"


def test_accepted_changes_become_the_copy_later_commands_compare_with(
    runner: Cli, workflow: Workflow, tmp_path: Path
) -> None:
    """After `--accept-changes`, a plain redrive of the same file is not refused."""
    trace = _edited(runner, workflow, tmp_path)
    (tmp_path / "fixed").unlink()
    document = {
        "version": 1,
        "name": "edit",
        "steps": {
            "build": {"run": f"echo build >> '{trace}'"},
            "deploy": {
                "needs": ["build"],
                "run": f"echo deploy-new >> '{trace}'; test -e '{tmp_path}/fixed'",
                "retry": {"max_attempts": 1},
            },
        },
    }
    workflow(document)
    assert runner("redrive", "r1", "--accept-changes").returncode == 1

    (tmp_path / "fixed").touch()
    done = runner("redrive", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert trace.read_text() == "build\ndeploy-old\ndeploy-new\ndeploy-new\n"


# Crashes during a redrive (FAULTS I3, A4) -----------------------------------------


def test_a_redrive_killed_after_reopening_is_finished_by_resume(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """SIGKILL at redrive.after_reopen: redrive points to resume, which finishes it."""
    flag = tmp_path / "fixed"
    path = workflow(pipeline(ledger, flag))
    failed_run(runner, path, "r1")
    flag.touch()
    crash(runner, "redrive", "r1", point="redrive.after_reopen")
    assert runner.status("r1")["status"] == "interrupted"
    assert runner.steps("r1")["flaky"]["status"] == "pending"

    again = runner("redrive", "r1")
    assert again.returncode == 2, again.stdout + again.stderr
    assert "finish it with 'runner resume r1'" in again.stderr
    done = runner("resume", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "succeeded"
    counts = {name: ledger.count(name) for name in ("source", "side", "side2")}
    assert counts == {"source": 1, "side": 1, "side2": 1}
    assert attempts_seen(ledger, "flaky") == [1, 2, 1]
    assert ledger.count("after") == 1
    assert pending_redrive(runner) == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_a_redrive_killed_mid_step_is_finished_by_resume(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path, seed: int
) -> None:
    """The redriving runner SIGKILLed at a random instant mid-step: resume ends it."""
    flag = tmp_path / "fixed"
    path = workflow(pipeline(ledger, flag, fixed_ms=1000))
    failed_run(runner, path, "r1")
    flag.touch()
    process = runner.start("redrive", "r1")
    wait_for_third_start(ledger, "flaky")
    # A random kill instant inside the step's 1 s, not a wait for anything.
    time.sleep(random.Random(seed).uniform(0, 0.5))
    process.kill()
    process.wait()

    done = runner("resume", "r1")

    assert done.returncode == 0, f"seed {seed}: " + done.stdout + done.stderr
    assert wait_gone(str(ledger.path), timeout=2) == []
    assert ledger.overlaps() == []
    assert attempts_seen(ledger, "flaky") == [1, 2, 1, 1]
    assert ledger.count("after") == 1
    assert ledger.count("source") == 1
    assert runner.steps("r1")["flaky"]["attempts"] == 1


def test_an_on_crash_fail_step_cut_short_by_a_crash_is_redrivable(
    runner: Cli, workflow: Workflow, ledger: Ledger, tmp_path: Path
) -> None:
    """`on_crash: fail`: resume leaves it failed in the queue; redrive runs it again."""
    flag = tmp_path / "fixed"
    head = shlex.join(ledger.argv("once", 0)[:-2])
    slow = f"if [ -e '{flag}' ]; then ms=10; else ms=30000; fi; {head} \"$ms\" 0"
    path = workflow(
        {
            "version": 1,
            "name": "once",
            "steps": {
                "once": {"run": slow, "on_crash": "fail"},
                "next": {"needs": ["once"], "run": ledger.command("next", 1)},
            },
        }
    )
    process = runner.start("run", str(path), "--run-id", "r1")
    ledger.wait_for("once")
    process.kill()
    process.wait()
    resumed = runner("resume", "r1")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert runner.steps("r1")["once"]["status"] == "failed"
    assert pending_redrive(runner) == 1

    flag.touch()
    done = runner("redrive", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert attempts_seen(ledger, "once") == [1, 1]
    assert ledger.count("next") == 1
    assert pending_redrive(runner) == 0


def test_a_run_failed_by_the_crash_loop_limit_gets_a_fresh_limit_on_redrive(
    runner: Cli, workflow: Workflow, ledger: Ledger
) -> None:
    """After 'max recovery attempts exceeded', a redrive may crash and resume once."""
    path = workflow(
        {"version": 1, "name": "loop", "steps": {"a": {"run": ledger.command("a", 1)}}}
    )
    limit = {"RUNNER_MAX_RECOVERIES": "1"}
    crash(runner, "run", str(path), "--run-id", "r1", point="step.after_start_commit")
    crash(runner, "resume", "r1", point="resume.after_reconcile", **limit)
    gave_up = runner("resume", "r1", env=limit)
    assert gave_up.returncode == 1, gave_up.stdout + gave_up.stderr
    assert "max recovery attempts exceeded" in runner.status("r1")["reason"]

    crash(runner, "redrive", "r1", point="redrive.after_reopen", **limit)
    done = runner("resume", "r1", env=limit)

    assert done.returncode == 0, done.stdout + done.stderr
    assert runner.status("r1")["status"] == "succeeded"
    assert ledger.count("a") == 1
