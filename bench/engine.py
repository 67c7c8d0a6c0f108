"""Engine overhead: runner against make, xargs and doit on the same DAG (issue 3).

Every tool runs N steps of `true`, as a chain (each step needs the one before)
and as a fan-out (one root, then N-1 steps that need only the root), at
concurrency 2, each sample in a fresh temporary directory with a fresh runner
state directory. Reported per tool and shape: wall time (median of the
repeats), the per-step cost (the slope between 100 and 1,000 steps), start-up
(the slope line's intercept, and a measured one-step run) and peak memory.

The full run adds the peak memory of a 10,000-step fan-out and the resume
test: a 10,000-step run is SIGKILLed once 9,000 steps have succeeded, then
`runner resume` is timed from its launch until its first pending step starts.

    .venv/bin/python bench/engine.py            # full: 3 repeats, 10,000 steps
    .venv/bin/python bench/engine.py --quick    # 100 and 1,000 steps, 1 repeat

Results go to bench/out/engine.json; a table is printed.

How each tool is measured:
- wall time: `time.perf_counter` around spawning the tool and waiting for it;
- peak memory: `ru_maxrss` from `wait4` on the tool's process, which covers
  the tool and every descendant it waited for (the largest one, not a sum),
  the same figure as GNU time's `%M`;
- stdout and stderr go to files, so a tool's printing costs what it costs
  on a pipe-less run and never blocks.

The commands:
- runner: `runner run FILE --state DIR --concurrency 2`, with `run: "true"`
  (through `/bin/sh -c`) and with `run: ["true"]` (argv, no shell);
- make: `make -s -j2`, phony targets, each recipe `true` (make executes a
  recipe without shell syntax directly, with no shell); no durability at all;
- xargs: `xargs -n1 -P2 true` over N lines, the raw floor of spawning; a
  chain runs with `-P1`, since its steps cannot overlap;
- floor: bench/engine_floor.py, the least a durable engine in Python must do
  per step (one WAL commit with synchronous=FULL before each start, then
  posix_spawn, pipes, a pidfd, one epoll), with no validation, model or
  reporting: the gap between runner and floor is runner's own overhead, the
  gap between floor and make the price of a durable journal in Python;
- doit: `doit run -n 2 -P thread` with a fresh `--db-file`, tasks
  `actions: ["true"]`, verbosity 0, chained through `task_dep`; threads are
  doit's fastest parallel mode here. `doit-serial` (no `-n`) is shown too,
  because on a chain doit runs faster without its parallel machinery; the
  comparison with doit uses whichever of the two is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
OUT = REPO / "bench" / "out" / "engine.json"
PYCACHE = REPO / "bench" / "out" / "pycache"
GNU_TIME = "/usr/bin/time"
CONCURRENCY = 2
SHAPES = ("chain", "fanout")
SMALL, LARGE, HUGE = 100, 1_000, 10_000
RESUME_DONE = 9_000
KILL_DELAY = 0.5
"""How long the crashing step waits before it kills the runner, so that the
step running beside it has ended and its end is committed."""

TARGETS = {
    "slope_vs_make": 1.25,
    "wall_vs_make": 1.6,
    "wall_vs_doit": 0.7,
    "one_step_s": 0.25,
    "rss_10k_mb": 200.0,
    "resume_first_step_s": 1.0,
}


# The same DAG in each tool ----------------------------------------------------


def need_of(shape: str, index: int) -> str | None:
    """The one step that step `index` needs, or None for the root."""
    if index == 0:
        return None
    return f"s{index - 1}" if shape == "chain" else "s0"


def runner_workflow(shape: str, steps: int, *, argv: bool) -> str:
    run = '["true"]' if argv else '"true"'
    lines = ["version: 1", f"name: bench-{shape}", "steps:"]
    for index in range(steps):
        lines.append(f"  s{index}:")
        need = need_of(shape, index)
        if need is not None:
            lines.append(f"    needs: {need}")
        lines.append(f"    run: {run}")
    return "\n".join(lines) + "\n"


def makefile(shape: str, steps: int) -> str:
    names = [f"s{index}" for index in range(steps)]
    goals = names[-1:] if shape == "chain" or steps == 1 else names[1:]
    lines = [f".PHONY: all {' '.join(names)}", f"all: {' '.join(goals)}"]
    for index, name in enumerate(names):
        need = need_of(shape, index)
        lines += [f"{name}:{' ' + need if need else ''}", "\ttrue"]
    return "\n".join(lines) + "\n"


def dodo(shape: str, steps: int) -> str:
    return f"""DOIT_CONFIG = {{"verbosity": 0}}


def task_steps():
    for index in range({steps}):
        if index == 0:
            needs = []
        else:
            needs = ["s%d" % (index - 1)] if {shape == "chain"} else ["s0"]
        yield {{"basename": "s%d" % index, "actions": ["true"], "task_dep": needs}}
"""


# Tools: write the DAG into a folder, return the command that runs it ----------

Prepare = Callable[[Path, str, int], list[str]]


def prepare_runner(argv: bool) -> Prepare:
    def prepare(folder: Path, shape: str, steps: int) -> list[str]:
        path = folder / "workflow.yaml"
        path.write_text(runner_workflow(shape, steps, argv=argv))
        state = folder / "state"
        return [
            str(BIN / "runner"),
            "run",
            str(path),
            "--state",
            str(state),
            "--concurrency",
            str(CONCURRENCY),
        ]

    return prepare


def prepare_make(folder: Path, shape: str, steps: int) -> list[str]:
    (folder / "Makefile").write_text(makefile(shape, steps))
    return ["make", "-s", f"-j{CONCURRENCY}", "-f", str(folder / "Makefile")]


def prepare_xargs(folder: Path, shape: str, steps: int) -> list[str]:
    (folder / "lines").write_text("x\n" * steps)
    parallel = 1 if shape == "chain" else CONCURRENCY
    return ["xargs", "-a", str(folder / "lines"), "-n1", f"-P{parallel}", "true"]


def prepare_doit(parallel: bool) -> Prepare:
    def prepare(folder: Path, shape: str, steps: int) -> list[str]:
        (folder / "dodo.py").write_text(dodo(shape, steps))
        command = [
            str(BIN / "doit"),
            "run",
            "-f",
            str(folder / "dodo.py"),
            "--db-file",
            str(folder / "doit.db"),
        ]
        if parallel:
            command += ["-n", str(CONCURRENCY), "-P", "thread"]
        return command

    return prepare


def prepare_floor(argv: bool) -> Prepare:
    def prepare(folder: Path, shape: str, steps: int) -> list[str]:
        command = [
            str(BIN / "python"),
            str(REPO / "bench" / "engine_floor.py"),
            "--shape",
            shape,
            "--steps",
            str(steps),
            "--once",
            str(folder),
        ]
        return [*command, "--argv"] if argv else command

    return prepare


@dataclass(frozen=True)
class Tool:
    name: str
    prepare: Prepare
    durable: bool


TOOLS = (
    Tool("runner-sh", prepare_runner(argv=False), durable=True),
    Tool("runner-argv", prepare_runner(argv=True), durable=True),
    Tool("floor-sh", prepare_floor(argv=False), durable=True),
    Tool("floor-argv", prepare_floor(argv=True), durable=True),
    Tool("make", prepare_make, durable=False),
    Tool("xargs", prepare_xargs, durable=False),
    Tool("doit", prepare_doit(parallel=True), durable=True),
    Tool("doit-serial", prepare_doit(parallel=False), durable=True),
)
RUNNERS = ("runner-sh", "runner-argv")
DOITS = ("doit", "doit-serial")


# Measuring --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wall: float
    rss_kb: int
    cpu: float
    """User and system time of the tool and every process it waited for."""
    others: float
    """Share of the machine's CPU time that other processes used meanwhile."""


def cpu_ticks() -> tuple[int, int]:
    """Busy and total CPU time of the machine so far, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_idle(limit: float, busy_at_most: float = 0.15) -> float:
    """Wait up to `limit` seconds for a quiet machine; the last busy share."""
    deadline = time.monotonic() + limit
    while True:
        busy, total = cpu_ticks()
        time.sleep(2)
        busy_after, total_after = cpu_ticks()
        share = (busy_after - busy) / max(1, total_after - total)
        if share <= busy_at_most or time.monotonic() >= deadline:
            return share
        progress(f"machine {share:.0%} busy; waiting for it to quiet down")


def clean_env() -> dict[str, str]:
    """The environment without runner settings, with bytecode cached.

    An installed package has its bytecode compiled; a checkout run with
    PYTHONDONTWRITEBYTECODE would compile runner's modules at every start.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def measure(command: list[str], folder: Path) -> Sample:
    """Run `command` in `folder`; its wall time and peak RSS; raise on failure.

    The command is started by GNU time when there is one: a child forked from
    this Python process would count this process's memory in its own peak.
    """
    rss_file = folder / "tool.rss"
    if os.path.exists(GNU_TIME):
        command = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *command]
    with open(folder / "tool.out", "wb") as out, open(folder / "tool.err", "wb") as err:
        busy, total = cpu_ticks()
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=clean_env(),
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        busy_after, total_after = cpu_ticks()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    others = (busy_after - busy - cpu * ticks) / max(1, total_after - total)

    if process.returncode != 0:
        detail = (folder / "tool.err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{command} exited {process.returncode}: {detail}")
    rss = (
        int(rss_file.read_text().split()[-1]) if rss_file.exists() else usage.ru_maxrss
    )
    return Sample(wall, rss, cpu, max(0.0, others))


@contextmanager
def fresh_folder(root: str | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="runner-bench-", dir=root) as folder:
        yield Path(folder)


def sample(tool: Tool, shape: str, steps: int, root: str | None) -> Sample:
    with fresh_folder(root) as folder:
        command = tool.prepare(folder, shape, steps)
        return measure(command, folder)


@dataclass
class Cell:
    """All samples of one tool, shape and number of steps."""

    tool: str
    shape: str
    steps: int
    walls: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.walls.append(sample.wall)
        self.rss_kb.append(sample.rss_kb)
        self.cpus.append(sample.cpu)
        self.others.append(sample.others)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    @property
    def peak_kb(self) -> int:
        return max(self.rss_kb)


def measure_grid(
    tools: tuple[Tool, ...], sizes: tuple[int, ...], repeats: int, root: str | None
) -> dict[tuple[str, str, int], Cell]:
    """Every tool x shape x size, repeats interleaved so drift hits all alike."""
    cells: dict[tuple[str, str, int], Cell] = {}
    for tool in tools:
        sample(tool, "fanout", 1, root)  # warm the page cache, not counted
    for repeat in range(repeats):
        for tool in tools:
            for shape in SHAPES:
                for steps in sizes:
                    got = sample(tool, shape, steps, root)
                    key = (tool.name, shape, steps)
                    cell = cells.setdefault(key, Cell(tool.name, shape, steps))
                    cell.add(got)
                    progress(
                        f"[{repeat + 1}/{repeats}] {tool.name} {shape} "
                        f"{steps}: {got.wall:.3f}s cpu {got.cpu:.3f}s "
                        f"{got.rss_kb // 1024} MB, others used {got.others:.0%}"
                    )
    return cells


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Derived figures --------------------------------------------------------------


def summarize(cells: dict[tuple[str, str, int], Cell]) -> list[dict[str, Any]]:
    """Per tool and shape: walls, slope, intercept, and ratios to make and doit."""
    rows = []
    for (tool, shape, steps), cell in cells.items():
        if steps != LARGE:
            continue
        small_cell = cells[(tool, shape, SMALL)]
        small = small_cell.wall
        slope = (cell.wall - small) / (LARGE - SMALL)
        cpu_slope = (cell.cpu - small_cell.cpu) / (LARGE - SMALL)
        one = cells.get((tool, shape, 1))
        others = [o for c in (cell, small_cell) for o in c.others]
        rows.append(
            {
                "tool": tool,
                "shape": shape,
                "wall_1": one.wall if one else None,
                "wall_100": small,
                "wall_1000": cell.wall,
                "slope_ms": slope * 1000,
                "startup_ms": (small - SMALL * slope) * 1000,
                "peak_rss_mb_1000": cell.peak_kb / 1024,
                "cpu_slope_ms": cpu_slope * 1000,
                "others_cpu": statistics.median(others),
            }
        )
    for row in rows:
        add_ratios(row, rows)
    return rows


def add_ratios(row: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    same = {r["tool"]: r for r in rows if r["shape"] == row["shape"]}
    make = same.get("make")
    doits = [same[name] for name in DOITS if name in same]
    if make:
        row["wall_vs_make"] = row["wall_1000"] / make["wall_1000"]
        row["slope_vs_make"] = row["slope_ms"] / make["slope_ms"]
    if doits:
        best = min(doits, key=lambda r: r["wall_1000"])
        row["wall_vs_doit"] = row["wall_1000"] / best["wall_1000"]
        row["doit_compared"] = best["tool"]


# Single measurements: one step, 10,000 steps, resume, one commit ---------------


def one_step(root: str | None, names: set[str]) -> dict[str, Any]:
    """`runner run` of a one-step workflow, median of 5, per command form."""
    result = {}
    for tool in TOOLS:
        if tool.name not in names:
            continue
        walls = [sample(tool, "fanout", 1, root).wall for _ in range(5)]
        result[tool.name] = {"walls": walls, "wall": statistics.median(walls)}
    return result


def huge_fanout(root: str | None, names: set[str]) -> dict[str, Any]:
    """Peak RSS and wall of one 10,000-step fan-out per tool."""
    result = {}
    for tool in TOOLS:
        if tool.name not in names:
            continue
        got = sample(tool, "fanout", HUGE, root)
        result[tool.name] = {"wall": got.wall, "peak_rss_mb": got.rss_kb / 1024}
        progress(
            f"{tool.name} fanout {HUGE}: {got.wall:.1f}s {got.rss_kb / 1024:.1f} MB"
        )
    return result


def resume_workflow(folder: Path) -> str:
    """10,000 steps: s0..s8999 (a fan-out), `crash`, then 999 that need it.

    `crash` needs only s0, so it starts after s1..s8999 have started; the first
    time, it waits until its neighbour has ended, then SIGKILLs the runner
    (its parent). Run again by resume, it writes the time it started.
    """
    mark, stamp = folder / "crashed", folder / "first-step-started"
    crash = (
        f"if [ -e {mark} ]; then date +%s.%N > {stamp}; "
        f"else : > {mark}; sleep {KILL_DELAY}; kill -9 $PPID; fi"
    )
    lines = ["version: 1", "name: bench-resume", "steps:", "  s0:", '    run: "true"']
    for index in range(1, RESUME_DONE):
        lines += [f"  s{index}:", "    needs: s0", '    run: "true"']
    lines += ["  crash:", "    needs: s0", f"    run: {json.dumps(crash)}"]
    for index in range(RESUME_DONE + 1, HUGE):
        lines += [f"  r{index}:", "    needs: crash", '    run: "true"']
    return "\n".join(lines) + "\n"


def runner_cli(folder: Path, *args: str) -> list[str]:
    return [str(BIN / "runner"), *args, "--state", str(folder / "state")]


def step_counts(folder: Path, run_id: str) -> dict[str, int]:
    """Steps by status, as `runner status -o json` reports them."""
    shown = subprocess.run(
        runner_cli(folder, "status", run_id, "-o", "json"),
        capture_output=True,
        check=True,
        env=clean_env(),
    )
    counts: dict[str, int] = {}
    for step in json.loads(shown.stdout)["steps"]:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    return counts


def resume_test(root: str | None) -> dict[str, Any]:
    """Crash a 10,000-step run after 9,000 successes; time resume's first step."""
    run_id = "bench-resume"
    with fresh_folder(root) as folder:
        path = folder / "workflow.yaml"
        path.write_text(resume_workflow(folder))
        command = runner_cli(
            folder,
            "run",
            str(path),
            "--run-id",
            run_id,
            "--concurrency",
            str(CONCURRENCY),
        )
        started = time.perf_counter()
        crashed = subprocess.run(
            command, stdout=subprocess.DEVNULL, env=clean_env(), check=False
        )
        first_wall = time.perf_counter() - started
        before = step_counts(folder, run_id)
        progress(
            f"crashed run: exit {crashed.returncode} after {first_wall:.1f}s, "
            f"steps {before}"
        )

        launched = time.time()
        resumed = measure(
            runner_cli(folder, "resume", run_id, "--concurrency", str(CONCURRENCY)),
            folder,
        )
        first_step = float((folder / "first-step-started").read_text()) - launched
        after = step_counts(folder, run_id)

    expected = {
        "succeeded": RESUME_DONE,
        "running": 1,
        "pending": HUGE - RESUME_DONE - 1,
    }
    return {
        "crash_as_planned": crashed.returncode == -signal.SIGKILL
        and before == expected,
        "crashed_run_exit": crashed.returncode,
        "crashed_run_wall": first_wall,
        "steps_before_resume": before,
        "steps_after_resume": after,
        "first_pending_step_s": first_step,
        "resume_wall": resumed.wall,
        "resume_peak_rss_mb": resumed.rss_kb / 1024,
    }


def commit_cost(root: str | None, commits: int = 300) -> float:
    """Milliseconds per one-row commit, WAL and synchronous=FULL, in `root`."""
    with fresh_folder(root) as folder:
        connection = sqlite3.connect(folder / "probe.db", isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("CREATE TABLE t (x INTEGER)")
        started = time.perf_counter()
        for value in range(commits):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t VALUES (?)", (value,))
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.close()
    return elapsed / commits * 1000


def machine() -> dict[str, Any]:
    make = subprocess.run(["make", "--version"], capture_output=True, check=True)
    doit = subprocess.run(
        [str(BIN / "doit"), "--version"], capture_output=True, check=True
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "make": make.stdout.decode().splitlines()[0],
        "doit": doit.stdout.decode().splitlines()[0],
        "sh": os.path.realpath("/bin/sh"),
        "runner_commit": _git("rev-parse", "HEAD"),
        "runner_changed_files": _git("status", "--short", "runner").splitlines(),
    }


def _git(*args: str) -> str:
    """Which code was measured: the checkout is edited while benchmarks run."""
    shown = subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=False)
    return shown.stdout.decode().strip()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


# Targets ----------------------------------------------------------------------


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3's targets, for each runner command form."""
    checks = []
    for row in results["summary"]:
        if row["tool"] not in RUNNERS:
            continue
        where = f"{row['tool']} {row['shape']}"
        for key in ("slope_vs_make", "wall_vs_make", "wall_vs_doit"):
            if key in row:
                checks.append(_check(f"{where} {key}", row[key], TARGETS[key]))
    for name, one in results.get("one_step", {}).items():
        checks.append(
            _check(f"{name} one-step wall s", one["wall"], TARGETS["one_step_s"])
        )
    for name, huge in results.get("fanout_10k", {}).items():
        if name in RUNNERS:
            value = huge["peak_rss_mb"]
            checks.append(
                _check(f"{name} 10k peak RSS MB", value, TARGETS["rss_10k_mb"])
            )
    if "resume" in results:
        value = results["resume"]["first_pending_step_s"]
        checks.append(
            _check("resume first step s", value, TARGETS["resume_first_step_s"])
        )
    return checks


def _check(name: str, value: float, limit: float) -> dict[str, Any]:
    return {"name": name, "value": value, "limit": limit, "ok": value <= limit}


# Output -----------------------------------------------------------------------


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        "tool",
        "shape",
        "1 step",
        "100",
        "1000",
        "ms/step",
        "cpu ms/step",
        "start ms",
        "RSS MB",
        "xmake",
        "xmake/step",
        "xdoit",
    )
    rows = [head]
    for row in sorted(summary, key=lambda r: (r["shape"], TOOL_ORDER[r["tool"]])):
        rows.append(
            (
                row["tool"],
                row["shape"],
                _num(row["wall_1"], 3),
                _num(row["wall_100"], 3),
                _num(row["wall_1000"], 3),
                _num(row["slope_ms"], 2),
                _num(row["cpu_slope_ms"], 2),
                _num(row["startup_ms"], 0),
                _num(row["peak_rss_mb_1000"], 1),
                _num(row.get("wall_vs_make"), 2),
                _num(row.get("slope_vs_make"), 2),
                _num(row.get("wall_vs_doit"), 2),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < LABELS else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


LABELS = 2
"""Table columns before this one are left-aligned labels; numbers follow."""
TOOL_ORDER = {tool.name: index for index, tool in enumerate(TOOLS)}


def _loads(results: dict[str, Any]) -> list[tuple[float, ...]]:
    return [results[key] for key in ("load_before", "load_after") if key in results]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(results: dict[str, Any]) -> str:
    lines = [
        f"wall seconds (median of {results['repeats']}), concurrency {CONCURRENCY}; "
        "ms/step = slope 100→1000; cpu ms/step = slope of user+system time "
        "(tool and children; robust to a busy machine); start ms = intercept; "
        "RSS at 1000 steps; xdoit against the faster doit mode",
        table(results["summary"]),
        f"one SQLite commit (WAL, synchronous=FULL): {results['commit_ms']:.3f} ms",
        "load average before/after the grid: "
        + " / ".join(f"{load[0]:.2f}" for load in _loads(results)),
        "CPU share other processes used during the samples (median): "
        + ", ".join(
            f"{r['tool']} {r['shape']} {r['others_cpu']:.0%}"
            for r in results["summary"]
        ),
    ]
    for name, one in results.get("one_step", {}).items():
        lines.append(f"{name} one-step run: {one['wall'] * 1000:.0f} ms")
    for name, huge in results.get("fanout_10k", {}).items():
        lines.append(
            f"{name} 10,000-step fan-out: {huge['wall']:.1f} s, "
            f"peak RSS {huge['peak_rss_mb']:.1f} MB"
        )
    if "resume" in results:
        resume = results["resume"]
        lines.append(
            f"resume after 9,000 of 10,000 ({resume['steps_before_resume']}): first "
            f"pending step started {resume['first_pending_step_s'] * 1000:.0f} ms "
            f"after launch; whole resume {resume['resume_wall']:.1f} s"
        )
    lines += floor_lines(results["summary"])
    for check in results["targets"]:
        verdict = "ok  " if check["ok"] else "MISS"
        lines.append(
            f"{verdict} {check['name']}: {check['value']:.3f} "
            f"(target ≤ {check['limit']})"
        )
    return "\n".join(lines)


def floor_lines(summary: list[dict[str, Any]]) -> list[str]:
    """Per-step slopes against the durable floor: what the design costs, and
    what runner adds to it."""
    slopes = {(r["tool"], r["shape"]): r["slope_ms"] for r in summary}
    lines = []
    for shape in SHAPES:
        for form in ("sh", "argv"):
            floor = slopes.get((f"floor-{form}", shape))
            runner = slopes.get((f"runner-{form}", shape))
            make = slopes.get(("make", shape))
            if floor is None or make is None:
                continue
            line = f"floor-{form} {shape}: slope {floor / make:.2f}x make's"
            if runner is not None:
                line += f"; runner-{form} {runner / floor:.2f}x the floor's"
            lines.append(line)
    return lines


# Main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 and 1,000 steps, 1 repeat; no 10,000-step runs",
    )
    parser.add_argument("--repeats", type=int, help="samples per cell (default 3)")
    parser.add_argument(
        "--tools", help="comma-separated subset of: " + ", ".join(t.name for t in TOOLS)
    )
    parser.add_argument("--tmp", help="where temporary folders go (default $TMPDIR)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be at most 15%% busy",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    chosen = set(args.tools.split(",")) if args.tools else {t.name for t in TOOLS}
    tools = tuple(t for t in TOOLS if t.name in chosen)
    sizes = (1, SMALL, LARGE)

    results: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    if args.wait_idle:
        results["busy_at_start"] = wait_idle(args.wait_idle)
    results.update(machine=machine(), repeats=repeats, concurrency=CONCURRENCY)
    results["commit_ms"] = commit_cost(args.tmp)
    results["load_before"] = os.getloadavg()
    cells = measure_grid(tools, sizes, repeats, args.tmp)
    results["load_after"] = os.getloadavg()
    results["cells"] = [asdict(cell) for cell in cells.values()]
    results["summary"] = summarize(cells)
    if chosen & set(RUNNERS):
        results["one_step"] = one_step(args.tmp, chosen & set(RUNNERS))
    if not args.quick:
        huge = chosen & {"runner-sh", "make", "doit"}
        results["fanout_10k"] = huge_fanout(args.tmp, huge)
        if chosen & set(RUNNERS):
            results["resume"] = resume_test(args.tmp)
    results["targets"] = check_targets(results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
