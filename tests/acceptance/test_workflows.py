"""The shipped workflows, run for real: stale files, orphan processes, dispatch."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Cli, processes_with, wait_gone

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
EXAMPLES = REPO / "examples"
SERVICE = Path(__file__).with_name("dispatch_service.py")
DAY = 24 * 3600


def run_workflow(
    runner: Cli, name: str, run_id: str, *params: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    args = [f"-p{param}" for param in params]
    path = str(WORKFLOWS / f"{name}.yml")
    return runner("run", path, "--run-id", run_id, *args, **kwargs)


def outputs(runner: Cli, run_id: str, step: str) -> dict[str, str]:
    found: dict[str, str] = runner.steps(run_id)[step]["outputs"]
    return found


# Validation -------------------------------------------------------------------


def test_every_shipped_workflow_and_example_is_strictly_valid(runner):
    """`validate --strict` finds no error and no warning in workflows/ and examples/."""
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(EXAMPLES.glob("*.yml"))
    assert len(files) >= 9

    done = runner("validate", "--strict", "-o", "json", *map(str, files))

    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)["files"]
    assert [entry["problems"] for entry in report] == [[]] * len(files)


# cleanup-stale-files ---------------------------------------------------------


@pytest.fixture
def stale_tree(tmp_path: Path) -> dict[str, list[Path]]:
    """A folder with files ten days old (one in a subfolder) and fresh ones."""
    root = tmp_path / "data"
    (root / "sub dir").mkdir(parents=True)
    old = [root / "old.log", root / "sub dir" / "old with spaces.bin"]
    fresh = [root / "fresh.log", root / "sub dir" / "new.txt"]
    past = time.time() - 10 * DAY
    for path in old + fresh:
        path.write_text(path.name)
    for path in old:
        os.utime(path, (past, past))
    return {"old": old, "fresh": fresh}


def test_stale_files_are_archived_then_deleted(runner, tmp_path, stale_tree):
    """Files older than `days` go into an archive and are deleted; fresh ones stay."""
    root = tmp_path / "data"
    env = {"TMPDIR": str(tmp_path)}

    done = run_workflow(
        runner, "cleanup-stale-files", "stale-1", f"root={root}", "days=7", env=env
    )

    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in stale_tree["old"])
    assert all(path.exists() for path in stale_tree["fresh"])
    archive = root / ".archive" / "stale-stale-1.tgz"
    with tarfile.open(archive) as tar:
        names = sorted(Path("/", name).name for name in tar.getnames())
    assert names == ["old with spaces.bin", "old.log"]
    assert outputs(runner, "stale-1", "find-stale")["count"] == "2"
    assert list(tmp_path.glob("runner-stale.*")) == []


def test_stale_files_dry_run_reports_and_keeps_everything(runner, tmp_path, stale_tree):
    """With dry_run nothing is archived or deleted, and the count is reported."""
    root = tmp_path / "data"

    done = run_workflow(
        runner,
        "cleanup-stale-files",
        "stale-dry",
        f"root={root}",
        "dry_run=true",
        env={"TMPDIR": str(tmp_path)},
    )

    assert done.returncode == 0, done.stderr
    assert all(p.exists() for p in stale_tree["old"] + stale_tree["fresh"])
    assert not (root / ".archive").exists()
    steps = runner.steps("stale-dry")
    assert steps["find-stale"]["outputs"]["count"] == "2"
    assert [steps[s]["status"] for s in ("archive", "delete", "verify")] == [
        "skipped"
    ] * 3


# cleanup-orphan-processes ----------------------------------------------------

SLEEPER = "import time; time.sleep(1000)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "time.sleep(1000)"
)
SUBREAPER = (
    "import ctypes, os, subprocess, time\n"
    "ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)\n"
    "subprocess.run(['sh', '-c', os.environ['ORPHAN_COMMAND']], check=True)\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.05)\n"
)


def ppid_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


class Processes:
    """Processes a test starts, each tagged with a marker; all killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.markers: list[str] = []

    def orphan_command(self, marker: str, code: str = SLEEPER, argv0: str = "") -> str:
        """A shell command leaving a python process in a new session, orphaned."""
        self.markers.append(marker)
        exec_as = f"exec -a {argv0} " if argv0 else "exec "
        inner = f"{exec_as}{PY} -c '{code}' {marker} {self.tmp_path}"
        return f'setsid bash -c "{inner}" </dev/null >/dev/null 2>&1 & exit 0'

    def orphan(self, marker: str, code: str = SLEEPER, argv0: str = "") -> int:
        subprocess.run(
            ["sh", "-c", self.orphan_command(marker, code, argv0)], check=True
        )
        pid = self.wait_for(marker)
        deadline = time.monotonic() + 10
        while ppid_of(pid) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        if ppid_of(pid) != 1:
            pytest.skip("orphans are not re-parented to pid 1 here (a subreaper above)")
        return pid

    def child(self, marker: str) -> int:
        """A matching process whose parent (this test) is alive."""
        self.markers.append(marker)
        started = subprocess.Popen([PY, "-c", SLEEPER, marker, str(self.tmp_path)])
        return started.pid

    def subreaper(self, marker: str, orphan_marker: str) -> int:
        """A reaper process whose grandchild, once orphaned, is re-parented to it."""
        self.markers.append(marker)
        command = self.orphan_command(orphan_marker)
        subprocess.Popen(
            [PY, "-c", SUBREAPER, marker, str(self.tmp_path)],
            env={**os.environ, "ORPHAN_COMMAND": command},
            start_new_session=True,
        )
        return self.wait_for(marker)

    def wait_for(self, marker: str) -> int:
        deadline = time.monotonic() + 10
        while not (found := processes_with(marker)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(found) == 1, f"{marker}: {found}"
        return found[0]

    def alive(self, marker: str) -> bool:
        return bool(processes_with(marker))

    def kill_all(self) -> None:
        for marker in self.markers:
            for pid in processes_with(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.kill_all()


def marker() -> str:
    return f"orphan{uuid.uuid4().hex[:12]}"


def test_orphans_are_ended_and_everything_else_survives(runner, procs):
    """Old matching orphans end (TERM, then KILL); protected or other ones stay."""
    tag = marker()
    victim = procs.orphan(f"{tag}-victim")
    stubborn = procs.orphan(f"{tag}-stubborn", STUBBORN)
    procs.orphan(f"{tag}-denied")
    procs.orphan(f"{tag}-login", argv0=f"-{tag}-login")
    procs.child(f"{tag}-child")
    procs.orphan(f"other{tag[6:]}-unmatched")
    time.sleep(1.1)

    done = run_workflow(
        runner,
        "cleanup-orphan-processes",
        "orphans-1",
        f"pattern={tag}-",
        "min_age=1",
        f"deny={tag}-denied",
        "grace=1",
        "dry_run=false",
    )

    assert done.returncode == 0, done.stderr
    assert wait_gone(f"{tag}-victim") == []
    assert wait_gone(f"{tag}-stubborn") == []
    for survivor in ("denied", "login", "child"):
        assert procs.alive(f"{tag}-{survivor}"), survivor
    assert procs.alive(f"other{tag[6:]}-unmatched")
    report = outputs(runner, "orphans-1", "report")
    assert report["count"] == "2"
    assert sorted(report["pids"].split()) == sorted([str(victim), str(stubborn)])
    assert outputs(runner, "orphans-1", "end")["killed"] == str(stubborn)


def test_orphans_dry_run_is_the_default_and_honours_the_age(runner, procs):
    """By default orphans are only listed; younger than min_age they are not."""
    tag = marker()
    pid = procs.orphan(f"{tag}-dry")
    time.sleep(1.1)

    listed = run_workflow(
        runner, "cleanup-orphan-processes", "dry-1", f"pattern={tag}", "min_age=1"
    )
    too_young = run_workflow(
        runner, "cleanup-orphan-processes", "dry-2", f"pattern={tag}", "min_age=3600"
    )

    assert listed.returncode == 0, listed.stderr
    assert too_young.returncode == 0, too_young.stderr
    assert procs.alive(f"{tag}-dry")
    assert outputs(runner, "dry-1", "report") == {
        "count": "1",
        "pids": str(pid),
        "dry_run": "true",
    }
    assert runner.steps("dry-1")["end"]["status"] == "skipped"
    assert outputs(runner, "dry-2", "find")["count"] == "0"


def test_orphans_of_a_named_reaper_are_ended(runner, procs):
    """A process re-parented to a subreaper counts as orphaned only with `reaper`."""
    tag = marker()
    reaper = procs.subreaper(f"{tag}-reaper", f"{tag}-orphan")
    orphan = procs.wait_for(f"{tag}-orphan")
    deadline = time.monotonic() + 10
    while ppid_of(orphan) != reaper and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.1)
    params = (f"pattern={tag}-orphan", "min_age=1", "dry_run=false")

    ignored = run_workflow(runner, "cleanup-orphan-processes", "reaper-1", *params)
    assert ignored.returncode == 0, ignored.stderr
    assert procs.alive(f"{tag}-orphan")

    done = run_workflow(
        runner, "cleanup-orphan-processes", "reaper-2", *params, f"reaper={tag}-reaper"
    )
    assert done.returncode == 0, done.stderr
    assert wait_gone(f"{tag}-orphan") == []
    assert procs.alive(f"{tag}-reaper")
    assert outputs(runner, "reaper-2", "report")["pids"] == str(orphan)


def test_orphans_never_include_the_runner_itself(runner, procs, tmp_path):
    """An orphaned runner whose command line matches, with no deny list, lives on."""
    tag = marker()
    procs.orphan(f"{tag}-victim")
    run_id = f"{tag}-self"
    argv = runner.argv(
        (
            "run",
            str(WORKFLOWS / "cleanup-orphan-processes.yml"),
            "--run-id",
            run_id,
            f"-ppattern={tag}",
            "-pmin_age=0",
            "-pdeny=",
            "-pdry_run=false",
        ),
        None,
    )
    log = tmp_path / "runner.log"
    subprocess.run(
        ["sh", "-c", 'setsid "$@" >"$0" 2>&1 </dev/null & exit 0', str(log), *argv],
        env=runner.environment(None),
        cwd=tmp_path,
        check=True,
    )

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and processes_with(run_id):
        time.sleep(0.05)

    assert runner.status(run_id)["status"] == "succeeded", log.read_text()
    report = outputs(runner, run_id, "report")
    assert report["count"] == "1", log.read_text()
    assert wait_gone(f"{tag}-victim") == []


# dispatch-tasks ----------------------------------------------------------------


class Service:
    """The local dispatch service (tests/acceptance/dispatch_service.py)."""

    def __init__(self, tmp_path: Path) -> None:
        self.control_file = tmp_path / "service.control"
        self.state_file = tmp_path / "service.json"
        self.process = subprocess.Popen(
            [
                PY,
                str(SERVICE),
                "--state",
                str(self.state_file),
                "--control",
                str(self.control_file),
                "--lifetime",
                "120",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.url = f"http://127.0.0.1:{line.split()[-1]}"

    def control(self, **order: Any) -> None:
        request = urllib.request.Request(
            f"{self.url}/_control", data=json.dumps(order).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def log(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.state_file.read_text())
        return record

    def dispatches(self) -> list[dict[str, Any]]:
        return [r for r in self.log()["requests"] if r["path"] == "/tasks"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    started = Service(tmp_path)
    yield started
    started.stop()


def tasks_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "tasks.txt"
    lines = ["# nightly tasks", ""] + [f"task-{n}" for n in range(1, count + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def dispatch_args(service: Service, tmp_path: Path, count: int) -> list[str]:
    return [
        "run",
        str(WORKFLOWS / "dispatch-tasks.yml"),
        f"-ptasks={tasks_file(tmp_path, count)}",
        f"-purl={service.url}",
        f"-pworkdir={tmp_path / 'work'}",
    ]


FAST = {"PYTHON": PY}


def test_dispatch_sends_each_task_once_under_its_own_key(runner, service, tmp_path):
    """Each task is POSTed once with `RUN:dispatch:DIGEST` as Idempotency-Key."""
    args = dispatch_args(service, tmp_path, 3)

    done = runner(*args, "--run-id", "d-ok", env=FAST)

    assert done.returncode == 0, done.stderr
    sent = service.dispatches()
    assert [r["body"] for r in sent] == ["task-1", "task-2", "task-3"]
    assert [r["status"] for r in sent] == [201] * 3
    keys = [r["key"] for r in sent]
    assert len(set(keys)) == 3
    assert all(re.fullmatch(r"d-ok:dispatch:[0-9a-f]{16}", key) for key in keys)
    ids = [service.log()["tasks"][key]["id"] for key in keys]
    assert outputs(runner, "d-ok", "dispatch") == {"count": "3", "ids": " ".join(ids)}
    assert outputs(runner, "d-ok", "confirm") == {"confirmed": "3"}
    ledger = (tmp_path / "work" / "d-ok" / "dispatched.tsv").read_text()
    assert [line.split("\t")[:2] for line in ledger.splitlines()] == [
        list(pair) for pair in zip(keys, ids, strict=True)
    ]


def test_dispatch_retries_throttling_with_the_same_key(runner, service, tmp_path):
    """503 then 429 are intermittent: retried, resent under the same key, one task."""
    service.control(script=[503, 429])

    done = runner(*dispatch_args(service, tmp_path, 2), "--run-id", "d-503", env=FAST)

    assert done.returncode == 0, done.stderr
    sent = service.dispatches()
    assert [(r["body"], r["status"]) for r in sent] == [
        ("task-1", 503),
        ("task-1", 429),
        ("task-1", 201),
        ("task-2", 201),
    ]
    assert len({r["key"] for r in sent[:3]}) == 1
    assert len(service.log()["tasks"]) == 2
    dispatch = runner.steps("d-503")["dispatch"]
    assert dispatch["attempts"] == 3
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert stats["retries_by_class"]["intermittent"] == 2


def test_dispatch_permanent_error_cancels_what_was_dispatched(
    runner, service, tmp_path
):
    """A 403 is permanent: no retry, and the tasks already sent are cancelled."""
    service.control(fail=[{"match": "task-3", "status": 403}])

    done = runner(*dispatch_args(service, tmp_path, 4), "--run-id", "d-403", env=FAST)

    assert done.returncode == 1, done.stderr
    document = runner.status("d-403")
    assert document["status"] == "compensated"
    steps = {step["name"]: step for step in document["steps"]}
    assert steps["dispatch"]["status"] == "failed"
    assert steps["dispatch"]["error_class"] == "permanent"
    assert steps["dispatch"]["attempts"] == 1
    assert steps["prepare"]["status"] == "compensated"
    assert steps["confirm"]["status"] == "cancelled"
    record = service.log()
    assert [r["body"] for r in service.dispatches()] == ["task-1", "task-2", "task-3"]
    accepted = {key: task["id"] for key, task in record["tasks"].items()}
    assert record["cancellations"] == [
        {"key": key, "id": task_id} for key, task_id in accepted.items()
    ]
    assert [t["task"] for t in record["tasks"].values()] == ["task-1", "task-2"]
    assert all(t["status"] == "cancelled" for t in record["tasks"].values())


def test_dispatch_service_down_opens_the_circuit(runner, service, tmp_path):
    """Refused connections open the circuit; the step parks until it is reset."""
    service.control_file.write_text("down")
    time.sleep(0.2)
    args = dispatch_args(service, tmp_path, 2)
    started = runner.start(*args, "--run-id", "d-down", env=FAST)
    try:
        circuit = wait_for_circuit(runner, "dispatch-api", "OPEN", timeout=40)
        assert circuit["opened_at"] is not None
        assert runner.steps("d-down")["dispatch"]["status"] == "waiting"
        # The step's retry comes due while the circuit is open: it is refused.
        wait_for_stat(runner, "circuit_refused", timeout=40)
        service.control_file.write_text("up")
        time.sleep(0.2)
        reset = runner("circuits", "reset", "dispatch-api")
        assert reset.returncode == 0, reset.stderr
        started.wait(timeout=40)
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()

    assert started.returncode == 0, started.stderr.read() if started.stderr else ""
    steps = runner.steps("d-down")
    assert steps["dispatch"]["status"] == "succeeded"
    assert steps["dispatch"]["attempts"] == 5
    stats = json.loads(runner("stats", "-o", "json").stdout)
    assert stats["circuit_opened"] == 1
    assert stats["circuit_refused"] >= 1
    assert [r["body"] for r in service.dispatches()] == ["task-1", "task-2"]


def wait_for_stat(runner: Cli, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.loads(runner("stats", "-o", "json").stdout)[key] >= 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"stats never counted {key}")


def wait_for_circuit(runner: Cli, name: str, state: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = runner("circuits", "show", name, "-o", "json")
        if shown.returncode == 0 and json.loads(shown.stdout)["state"] == state:
            return json.loads(shown.stdout)
        time.sleep(0.2)
    raise AssertionError(f"circuit {name} never became {state}")


def test_dispatch_service_deduplicates_by_key(service):
    """The test service answers a repeated key with the id it gave the first time."""

    def post(key: str, body: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{service.url}/tasks",
            data=body.encode(),
            headers={"Idempotency-Key": key},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())

    first = post("k-1", "a")
    again = post("k-1", "a")
    other = post("k-2", "b")

    assert first[0] == 201
    assert again == (200, {**first[1], "duplicate": True})
    assert other[1]["id"] != first[1]["id"]
