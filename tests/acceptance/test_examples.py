"""Every example in examples/ runs and does what its header says."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import Cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RUNNER_EXAMPLES = sorted(EXAMPLES.glob("*.yml"))


def run_example(
    runner: Cli, tmp_path: Path, name: str, run_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`runner run examples/NAME.yml`, with TMPDIR (the examples' scratch) in tmp."""
    path = str(EXAMPLES / f"{name}.yml")
    env = {"TMPDIR": str(tmp_path)}
    return runner("run", path, "--run-id", run_id, *extra, env=env)


def stats(runner: Cli) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(runner("stats", "-o", "json").stdout)
    return document


def scratch(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / f"runner-example-{run_id}"


@pytest.mark.parametrize("path", RUNNER_EXAMPLES, ids=lambda path: path.name)
def test_example_is_strictly_valid_and_says_how_to_run_it(runner, path):
    """Each runner example validates with --strict and its header shows a command."""
    done = runner("validate", "--strict", str(path))

    assert done.returncode == 0, done.stdout
    header = path.read_text().split("\nversion:")[0]
    assert f"runner run examples/{path.name}" in header


def test_retries_and_jitter(runner, tmp_path):
    """`flaky` succeeds on attempt 3 (intermittent), `tempfail` on 2 (transient)."""
    done = run_example(runner, tmp_path, "retries-and-jitter", "retries-1")

    assert done.returncode == 0, done.stderr
    steps = runner.steps("retries-1")
    assert steps["flaky"]["attempts"] == 3
    assert steps["tempfail"]["attempts"] == 2
    totals = stats(runner)
    assert totals["succeeded_after_retry"] == 2
    assert totals["retries_by_class"] == {
        "transient": 1,
        "intermittent": 2,
        "permanent": 0,
    }


def test_circuit_breaker_opens_half_opens_and_closes(runner, tmp_path):
    """Two failures open the circuit; the probe after 1 s succeeds and closes it."""
    done = run_example(runner, tmp_path, "circuit-breaker", "circuit-1")

    assert done.returncode == 0, done.stderr
    assert "parked: circuit example-dependency is OPEN" in done.stdout + done.stderr
    assert runner.steps("circuit-1")["call"]["attempts"] == 3
    totals = stats(runner)
    assert totals["circuit_opened"] == 1
    assert totals["circuit_closed"] == 1
    assert totals["circuit_refused"] >= 1
    shown = runner("circuits", "show", "example-dependency", "-o", "json")
    assert json.loads(shown.stdout)["state"] == "CLOSED"
    assert not scratch(tmp_path, "circuit-1").exists()


def test_compensation_undoes_in_reverse_order(runner, tmp_path):
    """A 403 in `ship` cancels `notify` and compensates `charge`, then `reserve`."""
    done = run_example(runner, tmp_path, "compensation", "saga-1")

    assert done.returncode == 1, done.stderr
    document = runner.status("saga-1")
    assert document["status"] == "compensated"
    assert {step["name"]: step["status"] for step in document["steps"]} == {
        "reserve": "compensated",
        "charge": "compensated",
        "ship": "failed",
        "notify": "cancelled",
    }
    work = scratch(tmp_path, "saga-1")
    assert (work / "journal").read_text().splitlines() == [
        "reserve",
        "charge",
        "undo charge (refund)",
        "undo reserve",
    ]
    assert sorted(path.name for path in work.iterdir()) == ["journal"]


def test_compensation_example_succeeds_when_told_not_to_fail(runner, tmp_path):
    """With `-p fail=false` every step runs and nothing is undone."""
    done = run_example(runner, tmp_path, "compensation", "saga-2", "-p", "fail=false")

    assert done.returncode == 0, done.stderr
    journal = (scratch(tmp_path, "saga-2") / "journal").read_text().splitlines()
    assert journal == ["reserve", "charge", "ship", "notify"]


def test_crash_and_resume_finishes_the_work_once(runner, tmp_path):
    """SIGKILL mid-step, then resume: `prepare` stays done, every item done once."""
    path = str(EXAMPLES / "crash-and-resume.yml")
    env = {"TMPDIR": str(tmp_path)}
    args = ("-p", "items=20", "-p", "pause=0.1")
    started = runner.start("run", path, "--run-id", "crash-1", *args, env=env)
    done_file = scratch(tmp_path, "crash-1") / "done"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and count_lines(done_file) < 5:
        time.sleep(0.02)
    started.send_signal(signal.SIGKILL)
    started.communicate()
    assert runner.status("crash-1")["status"] == "interrupted"

    resumed = runner("resume", "crash-1", env=env)

    assert resumed.returncode == 0, resumed.stderr
    items = done_file.read_text().split()
    assert sorted(items, key=int) == [str(n) for n in range(1, 21)]
    journal = (scratch(tmp_path, "crash-1") / "journal").read_text().splitlines()
    assert journal.count("prepare") == 1
    assert journal[-1] == "report"
    assert runner.steps("crash-1")["report"]["status"] == "succeeded"


def count_lines(path: Path) -> int:
    try:
        return len(path.read_text().split())
    except FileNotFoundError:
        return 0


def test_outputs_and_params(runner, tmp_path):
    """Params reach commands as data; outputs flow to later steps; `if` decides."""
    name = "Ada $(touch PWNED) 'Lovelace'"
    extra = ("-p", f"name={name}", "-p", "times=3", "-p", "loud=true")

    done = run_example(runner, tmp_path, "outputs-and-params", "outputs-1", *extra)

    assert done.returncode == 0, done.stderr
    message = f"Hello, {name}!"
    steps = runner.steps("outputs-1")
    assert steps["greet"]["outputs"] == {
        "message": message,
        "length": str(len(message)),
    }
    assert steps["shout"]["outputs"] == {"shouted": message.upper()}
    assert steps["summary"]["outputs"] == {"shout_status": "succeeded"}
    repeated = runner("logs", "outputs-1", "repeat").stdout
    assert repeated.count(message) == 3
    assert list(REPO.rglob("PWNED")) == []
    assert list(tmp_path.rglob("PWNED")) == []


def test_outputs_and_params_skips_the_shout_by_default(runner, tmp_path):
    """Without `-p loud=true` the `shout` step is skipped and its outputs are empty."""
    done = run_example(runner, tmp_path, "outputs-and-params", "outputs-2")

    assert done.returncode == 0, done.stderr
    steps = runner.steps("outputs-2")
    assert steps["shout"]["status"] == "skipped"
    assert steps["summary"]["outputs"] == {"shout_status": "skipped"}


def test_pools_run_their_steps_one_at_a_time(runner, tmp_path):
    """The three uploads never overlap, even with room for four steps at once."""
    done = run_example(runner, tmp_path, "pools", "pools-1", "--concurrency", "4")

    assert done.returncode == 0, done.stderr
    steps = runner.steps("pools-1")
    spans = sorted(
        (when(steps[name]["started_at"]), when(steps[name]["ended_at"]))
        for name in ("upload-a", "upload-b", "upload-c")
    )
    for (_, ended), (began, _) in itertools.pairwise(spans):
        assert ended <= began
    assert not scratch(tmp_path, "pools-1").exists()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_retry_in_shell_script(runner, tmp_path):
    """The shell script's `runner retry` calls retry, fail for good, and pass."""
    script = EXAMPLES / "retry-in-shell.sh"
    bin_dir = str(Path(sys.executable).parent)
    env = runner.environment(
        {"RUNNER_STATE": str(runner.state), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )

    done = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "fetched: setting=42",
        "delete-remote failed for good (404), not retried",
        "circuit example-api admits calls",
    ]
    runs = {run["run_id"]: run["status"] for run in runner.status()["runs"]}
    assert runs == {
        "fetch-config": "succeeded",
        "delete-remote": "compensated",
        "ping-api": "succeeded",
    }
    assert runner.steps("fetch-config")["task"]["attempts"] == 3


def test_ci_examples_use_the_published_hook_and_github_output(runner):
    """The CI snippets are YAML, not runner workflows, and call what exists."""
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    config = yaml.safe_load((EXAMPLES / "ci" / "pre-commit-config.yaml").read_text())
    used = [hook["id"] for repo in config["repos"] for hook in repo["hooks"]]
    assert used == ["runner-validate"]
    assert "runner-validate" in [hook["id"] for hook in hooks]

    actions = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    commands = [
        step.get("run", "") for job in actions["jobs"].values() for step in job["steps"]
    ]
    validate = next(c for c in commands if c.startswith("runner validate"))
    assert validate.endswith("-o github workflows/*.yml")

    files = sorted(str(path) for path in REPO.glob("workflows/*.yml"))
    done = runner("validate", "--strict", "-o", "github", *files)
    assert (done.returncode, done.stdout) == (0, "")
