"""A damaged, lost, full, locked or foreign state store (FAULTS B1-B4, C6, C7, H3).

Faults are real: bytes flipped and files truncated on disk, a file-size limit
set with `prlimit`, fsync errors injected with `strace`, capabilities dropped
with `setpriv` so that root obeys file modes, a read-only bind mount in a
private mount namespace, a write lock held by another SQLite connection.
Whatever the fault, the runner exits with a documented code and one line that
names the file and the fix, never with a traceback, and loses nothing that
was committed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import Cli, processes_with, wait_gone, write_workflow

from runner.store.sqlite import SCHEMA_VERSION

PY = sys.executable
FOREIGN_UID = 54321
NO_DAC = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
"""As root, drop the capabilities that bypass file modes, so chmod counts."""

BIT_FLIP_SEEDS = [
    *range(4),
    *(pytest.param(seed, marks=pytest.mark.stress) for seed in range(4, 200)),
]


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The runner's error line (progress lines may come before it)."""
    lines = done.stderr.strip().splitlines()
    assert lines, done.stdout
    return lines[-1]


def wrapped(
    runner: Cli, prefix: list[str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI under a tool such as prlimit, strace or setpriv."""
    return subprocess.run(
        [*prefix, *runner.argv(args, None)],
        cwd=runner.cwd,
        env=runner.environment(env),
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
        check=False,
    )


def query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows read straight from a database file (never creating it)."""
    uri = f"file:{db}?mode=rw"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as c:
        return c.execute(sql, args).fetchall()


def step_statuses(db: Path, run_id: str) -> dict[str, str]:
    rows = query(db, "SELECT name, status FROM steps WHERE run_id = ?", run_id)
    return {str(name): str(status) for name, status in rows}


def wait_for_step(db: Path, run_id: str, step: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            if step_statuses(db, run_id).get(step) == status:
                return
        time.sleep(0.02)
    raise AssertionError(f"step {step} of {run_id} never became {status}")


def sqlite_check(db: Path, scratch: Path) -> str:
    """What SQLite's own quick_check says of a copy of `db` ('ok' or a problem)."""
    scratch.mkdir(exist_ok=True)
    copy = scratch / "check.db"
    shutil.copyfile(db, copy)
    try:
        with contextlib.closing(sqlite3.connect(copy)) as connection:
            return str(connection.execute("PRAGMA quick_check").fetchone()[0])
    except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
        return str(error)
    finally:
        shutil.rmtree(scratch)


def gated(flag: Path, command: str) -> str:
    """`command`, once `flag` exists."""
    return f"while [ ! -e '{flag}' ]; do sleep 0.02; done; {command}"


def wait_until_waiting(flag: Path) -> None:
    """Until a `gated` step waits for `flag`: its start is committed by then.

    Looked for among processes, not in the store: a reader could keep the
    runner's checkpoint from copying the log into state.db.
    """
    deadline = time.monotonic() + 20
    while not processes_with(str(flag)):
        assert time.monotonic() < deadline, f"nothing waits for {flag}"
        time.sleep(0.02)


def victim(workflow) -> Path:
    """A workflow whose only step leaves ran.txt behind when it runs."""
    return workflow(
        {"version": 1, "name": "victim", "steps": {"a": {"run": "touch ran.txt"}}},
        "victim.yaml",
    )


# A damaged database (B1) ----------------------------------------------------------


@pytest.fixture(scope="module")
def golden_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A store with three finished runs (outputs, logs, a failure), checkpointed."""
    folder = tmp_path_factory.mktemp("golden")
    cli = Cli(folder)
    steps = {
        "a": {"run": 'echo "out=$(seq 1 200 | tr "\\n" " ")" >> "$RUNNER_OUTPUT"'},
        "b": {"needs": ["a"], "run": "echo '${{ steps.a.outputs.out }}'"},
        "c": {
            "needs": ["b"],
            "run": "echo oops >&2; exit 1",
            "retry": {"max_attempts": 2, "backoff": {"initial": "10ms"}},
        },
    }
    path = write_workflow(
        folder / "seed.yaml", {"version": 1, "name": "seed", "steps": steps}
    )
    for run_id in ("r1", "r2", "r3"):
        done = cli("run", str(path), "--run-id", run_id)
        assert done.returncode == 1, done.stderr
    db = cli.state / "state.db"
    assert not Path(f"{db}-wal").exists(), "the last runner did not checkpoint"
    return db.read_bytes()


def install(runner: Cli, data: bytes) -> Path:
    """Make `data` the state.db of the test's (private) state directory."""
    runner.state.mkdir(mode=0o700, exist_ok=True)
    db = runner.state / "state.db"
    db.write_bytes(data)
    db.chmod(0o600)
    return db


def truncated(data: bytes, size: int) -> bytes:
    return data[:size]


def header_overwritten(data: bytes) -> bytes:
    return b"\x5a" * 100 + data[100:]


def flipped(data: bytes, seed: int, bits: int = 100) -> bytes:
    """`data` with `bits` random bits flipped, as Jepsen's bitflip does."""
    rng = random.Random(seed)
    damaged = bytearray(data)
    for _ in range(bits):
        position = rng.randrange(len(damaged) * 8)
        damaged[position // 8] ^= 1 << (position % 8)
    return bytes(damaged)


DAMAGES = {
    "zero-bytes": lambda data: b"",
    "header-only": lambda data: truncated(data, 100),
    "4096x1+123": lambda data: truncated(data, 4096 + 123),
    "4096x4+123": lambda data: truncated(data, 4096 * 4 + 123),
    "4096x9+123": lambda data: truncated(data, 4096 * 9 + 123),
    "header-overwritten": header_overwritten,
}


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_state_db_is_refused_by_every_command(
    runner, workflow, tmp_path, golden_db, damage
):
    """Truncated or overwritten: status, resume, run, circuits exit 3; none writes."""
    db = install(runner, DAMAGES[damage](golden_db))
    before = db.read_bytes()
    if before:
        assert sqlite_check(db, tmp_path / "scratch") != "ok"
    path = victim(workflow)

    for args in (
        ("status", "r1", "-o", "json"),
        ("resume", "r1"),
        ("run", str(path)),
        ("circuits", "list"),
    ):
        done = runner(*args)

        assert done.returncode == 3, (args, done.stdout, done.stderr)
        line = one_line(done)
        assert f"state database {db} is corrupt or unreadable" in line, line
        assert "restore a backup or use another --state directory" in line
        no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


@pytest.mark.parametrize("seed", BIT_FLIP_SEEDS)
def test_random_bit_flips_are_refused_when_sqlite_can_see_them(
    runner, workflow, tmp_path, golden_db, seed
):
    """100 flipped bits: exit 3 and nothing run when quick_check fails; no traceback.

    Flips inside row text or index entries may be invisible to quick_check
    (SQLite keeps no page checksums); then the store is used as it reads.
    """
    db = install(runner, flipped(golden_db, seed))
    before = db.read_bytes()
    visible = sqlite_check(db, tmp_path / "scratch") != "ok"
    path = victim(workflow)

    status = runner("status", "-o", "json")
    run = runner("run", str(path))

    for done in (status, run):
        no_traceback(done)
        assert done.returncode in ((3,) if visible else (0, 3)), done.stderr
        if done.returncode == 3:
            assert f"state database {db}" in one_line(done)
    if visible:
        assert "corrupt" in one_line(run)
        assert not (tmp_path / "ran.txt").exists()
        assert db.read_bytes() == before
    elif status.returncode == 0:
        json.loads(status.stdout)


def test_a_state_db_without_the_runner_schema_is_refused_not_recreated(
    runner, workflow, tmp_path
):
    """An SQLite file with no runner tables is a lost store: exit 3, never filled."""
    runner.state.mkdir(mode=0o700)
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")  # what a lost -wal leaves
    db.chmod(0o600)
    before = db.read_bytes()

    done = runner("run", str(victim(workflow)))

    assert done.returncode == 3, done.stdout + done.stderr
    assert "holds no runner schema; was its -wal file deleted?" in one_line(done)
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


# An older schema (B4) ----------------------------------------------------------------


def schema_v1_store(runner, workflow, tmp_path: Path) -> Path:
    """A store as a runner of schema v1 left it: r1 succeeded, r2 was cut short."""
    path = workflow(
        {
            "version": 1,
            "name": "old",
            "steps": {
                "a": {"run": "echo a >> trace.txt"},
                "b": {"needs": ["a"], "run": "echo b >> trace.txt"},
            },
        },
        "old.yaml",
    )
    assert runner("run", str(path), "--run-id", "r1").returncode == 0
    cut = runner(
        "run",
        str(path),
        "--run-id",
        "r2",
        env={"RUNNER_CRASHPOINT": "step.after_start_commit:1"},
    )
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    (tmp_path / "trace.txt").unlink()
    db = runner.state / "state.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute("ALTER TABLE runs DROP COLUMN checked_by")
        connection.execute("PRAGMA user_version = 1")
    return db


def test_an_older_schema_is_backed_up_then_migrated(runner, workflow, tmp_path):
    """A v1 store: copied whole to state.db.v1-backup, then brought up to date."""
    db = schema_v1_store(runner, workflow, tmp_path)
    runs_before = query(db, "SELECT run_id, status FROM runs ORDER BY seq")

    done = runner("status", "-o", "json")

    assert done.returncode == 0, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)["runs"]] == ["r1", "r2"]
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    backup = Path(f"{db}.v1-backup")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert query(backup, "PRAGMA user_version") == [(1,)]
    assert query(backup, "SELECT run_id, status FROM runs ORDER BY seq") == runs_before
    assert query(backup, "PRAGMA integrity_check") == [("ok",)]


def test_a_run_cut_short_under_an_older_schema_resumes_after_migrating(
    runner, workflow, tmp_path
):
    """The v1 run's stored copy has no checker id: it is checked, then resumed."""
    schema_v1_store(runner, workflow, tmp_path)

    done = runner("resume", "r2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "trace.txt").read_text() == "a\nb\n"


def test_a_migration_that_cannot_back_up_changes_nothing(runner, workflow, tmp_path):
    """The backup cannot be put in place (a full disk): exit 3, still schema v1."""
    db = schema_v1_store(runner, workflow, tmp_path)
    before = db.read_bytes()
    full_at_link = ["strace", "-f", "-o", os.devnull, "-e", "inject=link:error=ENOSPC"]

    done = wrapped(runner, full_at_link, "status")

    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot back up state database {db}" in one_line(done)
    no_traceback(done)
    assert db.read_bytes() == before
    assert query(db, "PRAGMA user_version") == [(1,)]
    left = [p.name for p in runner.state.iterdir()]
    assert not [name for name in left if "backup" in name or name.startswith(".")]
    assert runner("status").returncode == 0  # the next start migrates


# Naive backups and a lost write-ahead log (B2) ----------------------------------------


def two_steps(ledger, flag: Path) -> dict:
    """a (quick), then b, which waits for `flag` and reads a's output."""
    return {
        "version": 1,
        "name": "pair",
        "steps": {
            "a": {"run": ledger.command("a", 10)},
            "b": {
                "needs": ["a"],
                "env": {"LEDGER_IN": "${{ steps.a.outputs.out }}"},
                "run": gated(flag, ledger.command("b", 10)),
            },
        },
    }


def test_a_plain_copy_taken_mid_run_restores_to_a_run_that_resumes(
    runner, workflow, ledger, tmp_path
):
    """`cp state.db` without -wal mid-run: the copy is sound, its run resumes whole.

    Steps whose completion was only in the log show as pending and run again,
    with their outputs; none shows as done without them.
    """
    flag = tmp_path / "go"
    path = workflow(two_steps(ledger, flag))
    db = runner.state / "state.db"
    process = runner.start("run", str(path), "--run-id", "r1")
    wait_until_waiting(flag)  # a's success is in the log only

    backup = tmp_path / "backup.db"
    shutil.copyfile(db, backup)
    flag.touch()
    assert process.wait(timeout=30) == 0
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copyfile(backup, restored / "state.db")
    (restored / "state.db").chmod(0o600)

    assert query(restored / "state.db", "PRAGMA integrity_check") == [("ok",)]
    assert step_statuses(restored / "state.db", "r1") == {
        "a": "pending",
        "b": "pending",
    }
    done = runner("resume", "r1", state=restored)

    assert done.returncode == 0, done.stdout + done.stderr
    steps = runner.steps("r1", state=restored)
    assert steps["a"]["outputs"] == {"out": "a<>"}
    assert steps["b"]["outputs"] == {"out": "b<a<>>"}
    assert ledger.count("a") == 2
    assert ledger.count("b") == 2


def test_a_deleted_wal_after_a_kill_loses_only_what_it_held(
    runner, workflow, ledger, tmp_path
):
    """SIGKILL, then `rm state.db-wal`: the run survives; lost steps run again."""
    flag = tmp_path / "go"
    path = workflow(two_steps(ledger, flag))
    db = runner.state / "state.db"
    process = runner.start("run", str(path), "--run-id", "r1")
    wait_until_waiting(flag)
    process.kill()
    process.wait()
    # A crash that takes the log usually takes the machine: no step survives.
    for pid in processes_with(str(flag)):
        os.kill(pid, signal.SIGKILL)
    assert wait_gone(str(flag)) == []
    Path(f"{db}-wal").unlink()

    status = runner.status("r1")
    flag.touch()
    done = runner("resume", "r1")

    assert status["status"] == "interrupted"
    assert [step["status"] for step in status["steps"]] == ["pending", "pending"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert runner.steps("r1")["b"]["outputs"] == {"out": "b<a<>>"}
    assert ledger.count("a") == 2
    assert ledger.count("b") == 1


# A full disk, a file-size limit, an fsync error (B3) ----------------------------------


def big_output_workflow(ledger) -> dict:
    """a -> big -> c; big's completion carries a 300 KB output into the store."""
    big = (
        # The limit is meant for the runner: the step lifts its own soft limit,
        # so that only the store's writes meet it.
        "ulimit -S -f unlimited; "
        f"{ledger.command('big', 10)} && "
        'printf "blob=%0300000d\\n" 0 >> "$RUNNER_OUTPUT"'
    )
    return {
        "version": 1,
        "name": "big",
        "steps": {
            "a": {"run": ledger.command("a", 10)},
            "big": {"needs": ["a"], "run": big},
            "c": {"needs": ["big"], "run": ledger.command("c", 10)},
        },
    }


def test_a_file_size_limit_stops_the_run_at_the_commit_that_does_not_fit(
    runner, workflow, ledger
):
    """prlimit --fsize: exit 3 naming the unrecorded change; resume re-runs only it."""
    assert runner("status").returncode == 0  # the store exists before the limit
    path = workflow(big_output_workflow(ledger))
    db = runner.state / "state.db"

    done = wrapped(
        runner,
        ["prlimit", "--fsize=200000:unlimited"],
        "run",
        str(path),
        "--run-id",
        "r1",
    )

    assert done.returncode == 3, done.stdout + done.stderr
    line = one_line(done)
    assert line.startswith("cannot record step big succeeded"), line
    assert f"in state database {db}: " in line
    assert "free the disk or fix the store, then resume" in line
    no_traceback(done)
    assert ledger.count("c") == 0
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert step_statuses(db, "r1") == {
        "a": "succeeded",
        "big": "running",
        "c": "pending",
    }

    resumed = runner("resume", "r1")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = runner.steps("r1")
    assert {name: step["attempts"] for name, step in steps.items()} == {
        "a": 1,
        "big": 1,
        "c": 1,
    }
    assert len(steps["big"]["outputs"]["blob"]) == 300_000
    assert (ledger.count("a"), ledger.count("big"), ledger.count("c")) == (1, 2, 1)


def test_progress_never_shows_a_change_that_was_not_recorded(runner, workflow, ledger):
    """When the commit of big's success fails, no line says big succeeded."""
    assert runner("status").returncode == 0
    path = workflow(big_output_workflow(ledger))

    done = wrapped(runner, ["prlimit", "--fsize=200000:unlimited"], "run", str(path))

    assert done.returncode == 3, done.stdout + done.stderr
    assert "step big: succeeded" not in done.stdout + done.stderr


FSYNC_FAILURES = [
    6,
    9,
    *(pytest.param(k, marks=pytest.mark.stress) for k in (1, 3, 4, 5, 7, 8, 10, 11)),
]
"""Which fdatasync of the run fails; 6 and 9 fall on step transitions."""


@pytest.mark.parametrize("nth", FSYNC_FAILURES)
def test_an_fsync_error_stops_the_run_and_loses_nothing_committed(
    runner, workflow, ledger, nth
):
    """EIO from the n-th fdatasync: exit 3; resume re-runs only unrecorded steps."""
    assert runner("status").returncode == 0
    names = ["a", "b", "c"]
    steps = {"a": {"run": ledger.command("a", 10)}}
    steps |= {
        n: {"needs": [p], "run": ledger.command(n, 10)}
        for p, n in itertools.pairwise(names)
    }
    path = workflow({"version": 1, "name": "chain", "steps": steps})
    db = runner.state / "state.db"
    inject = [
        "strace",
        "-f",
        "-o",
        os.devnull,
        "--seccomp-bpf",
        "-e",
        "trace=fdatasync",
        "-e",
        f"inject=fdatasync:error=EIO:when={nth}",
    ]

    done = wrapped(runner, inject, "run", str(path), "--run-id", "r1")

    assert done.returncode == 3, done.stdout + done.stderr
    assert "disk I/O error" in one_line(done)
    assert "then resume" in one_line(done)
    no_traceback(done)
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    recorded = step_statuses(db, "r1")
    if not recorded:
        # The run's own start was not recorded: there is nothing to resume.
        assert ledger.starts() == []
        return
    assert "failed" not in recorded.values()

    resumed = runner("resume", "r1")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all(step["attempts"] == 1 for step in runner.steps("r1").values())
    for name in names:
        # Once, or once more for a step whose success was not recorded.
        limit = 1 if recorded[name] == "succeeded" else 2
        assert 1 <= ledger.count(name) <= limit, (name, recorded)


def test_a_failed_commit_is_never_retried_on_the_same_connection(tmp_path):
    """After an fsync error the store refuses every later write; no byte follows."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    script = (
        "import json, sys\n"
        "from runner.errors import StoreError\n"
        "from runner.store.sqlite import Store\n"
        "store = Store(sys.argv[1])\n"
        "seen = []\n"
        "for n in range(3):\n"
        "    try:\n"
        "        with store.write() as txn:\n"
        "            txn.event('probe', None, None, n=n)\n"
        "        seen.append('ok')\n"
        "    except StoreError as error:\n"
        "        seen.append(error.message)\n"
        "print(json.dumps(seen))\n"
    )
    # The log's header, the folder, then one fdatasync per commit: the 4th
    # sync is the second commit's.
    trace = tmp_path / "trace.txt"
    create = "import sys; from runner.store.sqlite import Store; Store(sys.argv[1])"
    subprocess.run([PY, "-c", create, str(state)], check=True)

    done = subprocess.run(
        [
            "strace",
            "-f",
            "-y",
            "-o",
            str(trace),
            "-e",
            "trace=fdatasync,pwrite64",
            "-e",
            "inject=fdatasync:error=EIO:when=4",
            PY,
            "-c",
            script,
            str(state),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen[0] == "ok"
    assert seen[1].startswith("cannot record the change in state database")
    assert "disk I/O error" in seen[1]
    assert seen[2] == seen[1]
    lines = trace.read_text().splitlines()
    failed = next(i for i, line in enumerate(lines) if "(INJECTED)" in line)
    assert "state.db-wal" in lines[failed]
    written = [line for line in lines[failed + 1 :] if "pwrite64(" in line]
    assert not [line for line in written if "state.db-wal>" in line]


# A store that cannot be written, or is not ours (B4, H3) -----------------------------


def seeded(runner: Cli, workflow) -> Path:
    """A store holding one succeeded run, r0."""
    path = workflow(
        {"version": 1, "name": "seed", "steps": {"a": {"run": "true"}}}, "seed.yaml"
    )
    assert runner("run", str(path), "--run-id", "r0").returncode == 0
    return runner.state / "state.db"


def test_an_unwritable_state_dir_is_refused(runner, workflow, tmp_path):
    """`chmod 500` on the state dir (root's override dropped): exit 3, the fix."""
    db = seeded(runner, workflow)
    before = db.read_bytes()
    runner.state.chmod(0o500)
    try:
        done = wrapped(runner, NO_DAC, "run", str(victim(workflow)))
    finally:
        runner.state.chmod(0o700)

    assert done.returncode == 3, done.stdout + done.stderr
    assert one_line(done) == (
        f"state directory {runner.state} is not writable; "
        f"run 'chmod 700 {runner.state}'"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


def test_a_read_only_state_db_is_refused_before_anything_runs(
    runner, workflow, tmp_path
):
    """`chmod 400 state.db`: exit 3 saying how to fix it, not 'corrupt'."""
    db = seeded(runner, workflow)
    before = db.read_bytes()
    db.chmod(0o400)

    done = wrapped(runner, NO_DAC, "run", str(victim(workflow)))

    assert done.returncode == 3, done.stdout + done.stderr
    assert one_line(done) == (
        f"state database {db} is not readable and writable by you; run 'chmod 600 {db}'"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_state_file_owned_by_another_user_is_refused(
    runner, workflow, tmp_path, suffix
):
    """state.db (or a -wal/-shm a `sudo runner` left) of another uid: exit 3."""
    db = seeded(runner, workflow)
    target = Path(f"{db}{suffix}")
    if suffix:
        target.write_bytes(b"")
        target.chmod(0o600)
    os.chown(target, FOREIGN_UID, -1)
    before = db.read_bytes()

    done = runner("run", str(victim(workflow)))

    assert done.returncode == 3, done.stdout + done.stderr
    assert f"{target} is owned by uid {FOREIGN_UID}, not you" in one_line(done)
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert db.read_bytes() == before


def test_a_state_dir_on_a_read_only_file_system_is_refused(runner, workflow, tmp_path):
    """A read-only bind mount: exit 3 naming the file system, nothing run."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    seeded(runner, workflow)
    state = runner.state
    mount = (
        f"mount --bind '{state}' '{state}' && "
        f"mount -o remount,ro,bind '{state}' && exec \"$@\""
    )
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, "sh", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.strip()}")

    done = wrapped(
        runner, ["unshare", "-m", "sh", "-c", mount, "sh"], "run", str(victim(workflow))
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert one_line(done) == (
        f"state directory {state} is on a read-only file system; "
        "use another --state directory"
    )
    assert not (tmp_path / "ran.txt").exists()


def _world_writable(path: Path) -> None:
    path.mkdir(mode=0o700)
    path.chmod(0o777)


def _group_writable(path: Path) -> None:
    path.mkdir(mode=0o700)
    path.chmod(0o770)


def _foreign_owner(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chown(path, FOREIGN_UID, -1)


def _symlink(path: Path) -> None:
    (path.parent / "elsewhere").mkdir(mode=0o700)
    path.symlink_to(path.parent / "elsewhere")


def _a_file(path: Path) -> None:
    path.write_text("not a folder\n")


UNSAFE_DIRS = {
    "world-writable": (_world_writable, "is writable by others; run 'chmod 700"),
    "group-writable": (_group_writable, "is writable by others; run 'chmod 700"),
    "foreign-owner": (_foreign_owner, "is not owned by you; use your own"),
    "symlink": (_symlink, "is a symbolic link; give its target"),
    "a-file": (_a_file, "is not a directory"),
}


@pytest.mark.parametrize("kind", list(UNSAFE_DIRS), ids=list(UNSAFE_DIRS))
def test_an_unsafe_existing_state_dir_is_refused(runner, workflow, tmp_path, kind):
    """World- or group-writable, foreign, a symlink, a file: exit 3, nothing made."""
    make, words = UNSAFE_DIRS[kind]
    shared = tmp_path / "shared-state"
    make(shared)

    done = runner("run", str(victim(workflow)), state=shared)

    assert done.returncode == 3, done.stdout + done.stderr
    assert str(shared) in one_line(done)
    assert words in one_line(done)
    no_traceback(done)
    assert not (tmp_path / "ran.txt").exists()
    assert not (tmp_path / "elsewhere" / "state.db").exists()
    if shared.is_dir() and not shared.is_symlink():
        assert list(shared.iterdir()) == []


def test_a_symlinked_state_db_is_refused(runner, workflow, tmp_path):
    """state.db as a symlink (to a file of the user's or not): exit 3, untouched."""
    db = seeded(runner, workflow)
    real = tmp_path / "real.db"
    db.rename(real)
    db.symlink_to(real)
    before = real.read_bytes()

    done = runner("run", str(victim(workflow)))

    assert done.returncode == 3, done.stdout + done.stderr
    assert one_line(done) == (
        f"state database {db} is a symbolic link; runner uses only files"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert real.read_bytes() == before


def test_state_is_private_even_under_umask_000(runner, workflow, tmp_path):
    """With umask 000 the dir is still 0700 and every file in it 0600 (H3)."""
    flag = tmp_path / "go"
    step = {"run": gated(flag, "echo x; echo y >&2")}
    path = workflow({"version": 1, "name": "open", "steps": {"a": step}})
    old = os.umask(0)
    try:
        process = runner.start("run", str(path), "--run-id", "r1")
        wait_until_waiting(flag)  # -wal and -shm exist while the runner runs
        companions = [
            stat.S_IMODE(p.stat().st_mode) for p in runner.state.glob("state.db-*")
        ]
        flag.touch()
        assert process.wait(timeout=30) == 0
    finally:
        os.umask(old)

    assert stat.S_IMODE(runner.state.stat().st_mode) == 0o700
    assert companions and set(companions) == {0o600}
    for item in runner.state.rglob("*"):
        expected = 0o700 if item.is_dir() else 0o600
        assert stat.S_IMODE(item.stat().st_mode) == expected, item


def test_missing_parents_of_a_new_state_dir_are_made_private(runner, tmp_path):
    """--state a/b/state under umask 022: a, a/b and the state dir are all 0700."""
    state = tmp_path / "a" / "b" / "state"
    old = os.umask(0o022)
    try:
        done = runner("status", state=state)
    finally:
        os.umask(old)

    assert done.returncode == 0, done.stderr
    for folder in (tmp_path / "a", tmp_path / "a" / "b", state):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


# Contention for the write lock (C6) ---------------------------------------------------


def test_processes_starting_on_a_new_store_at_once_all_succeed(runner, tmp_path):
    """8 commands on a state dir with no database yet: none fails, none is lost."""
    for batch in range(2):
        state = tmp_path / f"fresh-{batch}"
        workers = [
            runner.start("circuits", "record-failure", "api", state=state)
            for _ in range(8)
        ]
        results = [(w.wait(timeout=60), w.stderr.read()) for w in workers]
        for worker in workers:
            worker.stdout.close()
            worker.stderr.close()

        assert results == [(0, "")] * 8
        opened = query(
            state / "state.db",
            "SELECT COUNT(*) FROM events WHERE kind = 'circuit.opened'",
        )
        assert opened == [(1,)]  # threshold 3 of 8 failures: opened exactly once
        assert sorted(p.name for p in state.iterdir()) == ["state.db"]


@contextlib.contextmanager
def write_lock(db: Path):
    """Hold the database's write lock from another connection until the block ends."""
    connection = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


QUICK_LOCK = {"RUNNER_LOCK_TIMEOUT": "1"}


def test_a_lock_held_past_the_timeout_at_start_exits_3_and_records_nothing(
    runner, workflow, tmp_path
):
    """Another process holds the write lock: exit 3 after the timeout, no run."""
    db = seeded(runner, workflow)
    with write_lock(db):
        started = time.monotonic()
        done = runner("run", str(victim(workflow)), env=QUICK_LOCK)
        waited = time.monotonic() - started

    assert done.returncode == 3, done.stdout + done.stderr
    assert one_line(done) == (
        f"state database {db} stayed locked by another process for 1s; nothing "
        f"more was run; find what holds it (fuser {db}), then try again"
    )
    assert 1 <= waited < 10
    assert not (tmp_path / "ran.txt").exists()
    assert [run["run_id"] for run in runner.status()["runs"]] == ["r0"]


def test_a_lock_held_past_the_timeout_mid_run_is_not_a_step_failure(
    runner, workflow, ledger, tmp_path
):
    """The lock is held when a step ends: exit 3, the step unfailed, resume ends it."""
    flag = tmp_path / "go"
    path = workflow(two_steps(ledger, flag) | {"name": "locked"})
    db = runner.state / "state.db"
    process = runner.start("run", str(path), "--run-id", "r1", env=QUICK_LOCK)
    wait_until_waiting(flag)

    with write_lock(db):
        flag.touch()
        ledger.wait_for("b", "end")
        code = process.wait(timeout=30)
        error = process.stderr.read()
    process.stdout.close()
    process.stderr.close()

    assert code == 3, error
    assert "stayed locked by another process for 1s" in error
    assert "Traceback" not in error
    assert step_statuses(db, "r1") == {"a": "succeeded", "b": "running"}
    done = runner("resume", "r1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert runner.steps("r1")["b"]["attempts"] == 1
    assert ledger.count("b") == 2


def test_a_lock_timeout_that_is_not_a_number_exits_2(runner, workflow, tmp_path):
    """RUNNER_LOCK_TIMEOUT=soon: exit 2 naming the variable, no store, no run."""
    done = runner("run", str(victim(workflow)), env={"RUNNER_LOCK_TIMEOUT": "soon"})

    assert done.returncode == 2, done.stdout + done.stderr
    assert one_line(done) == (
        "RUNNER_LOCK_TIMEOUT='soon' is not a number of seconds; unset it or give "
        "one such as 30"
    )
    assert not (runner.state / "state.db").exists()
    assert not (tmp_path / "ran.txt").exists()


# Readers under writes and kills; half-made stores (C7) ------------------------------


def test_status_json_stays_whole_while_runs_are_written_and_killed(
    runner, workflow, tmp_path
):
    """Two writers, one SIGKILLed and resumed, while a reader parses status JSON."""
    steps = {f"s{n}": {"run": "true"} for n in range(40)}
    for n in range(1, 40):
        steps[f"s{n}"]["needs"] = [f"s{n - 1}"]
    path = workflow({"version": 1, "name": "busy", "steps": steps})
    assert runner("status").returncode == 0
    problems: list[str] = []
    reads = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            for args in (("status", "-o", "json"), ("status", "w1", "-o", "json")):
                done = runner(*args)
                if done.returncode == 2 and "no run 'w1'" in done.stderr:
                    continue
                try:
                    assert done.returncode == 0, done.stderr
                    json.loads(done.stdout)
                except (AssertionError, json.JSONDecodeError) as error:
                    problems.append(f"{args}: {error}")
                reads += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        first = runner.start("run", str(path), "--run-id", "w1")
        second = runner.start("run", str(path), "--run-id", "w2")
        wait_for_step(runner.state / "state.db", "w1", "s3", "succeeded")
        time.sleep(random.Random(7).uniform(0.0, 0.3))
        first.kill()
        first.wait()
        assert second.wait(timeout=60) == 0
        assert runner("resume", "w1").returncode == 0
    finally:
        stop.set()
        reader.join()
        for process in (first, second):
            process.stdout.close()
            process.stderr.close()

    assert problems == []
    assert reads >= 4
    assert runner.status("w1")["status"] == "succeeded"
    assert not list(runner.state.glob(".state.db.new-*"))


def test_a_store_creation_killed_before_its_link_is_cleaned_up_next_time(runner):
    """Killed just before linking state.db: a temp is left; the next start clears it."""
    runner.state.mkdir(mode=0o700)
    kill_at_link = [
        "strace",
        "-f",
        "-o",
        os.devnull,
        "-e",
        "trace=link",
        "-e",
        "inject=link:signal=SIGKILL",
    ]

    killed = wrapped(runner, kill_at_link, "status")

    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    left = sorted(p.name for p in runner.state.iterdir())
    assert len(left) == 1 and left[0].startswith(".state.db.new-"), left

    done = runner("status")

    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in runner.state.iterdir()) == ["state.db"]
    assert query(runner.state / "state.db", "PRAGMA user_version") == [
        (SCHEMA_VERSION,)
    ]
