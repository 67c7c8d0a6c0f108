"""How fast `runner` starts and validates, side by side, on this machine.

Measures, in one run:
- `runner --help` wall time (target <= 150 ms);
- `runner validate` of a small workflow against `check-jsonschema --schemafile
  schemas/workflow.schema.json` on the same file (target: ratio <= 1.0);
- validation of generated chains and wide fan-outs of 1,000, 3,000 and 10,000
  steps, in process (`check_file`) and through the CLI (target <= 2 s at
  10,000 steps, growing linearly from 1,000).

Run it with `.venv/bin/python bench/validate.py`; the table goes to stdout and
the figures to bench/out/validate.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BIN = Path(sys.executable).parent
SCHEMA = ROOT / "schemas" / "workflow.schema.json"
SMALL = ROOT / "tests" / "data" / "valid" / "spec_example.yml"
SIZES = (1_000, 3_000, 10_000)

HELP_TARGET = 0.150
RATIO_TARGET = 1.0
LARGE_TARGET = 2.0


def chain(size: int) -> str:
    """`size` steps, each needing the one before and reading its output."""
    lines = ["version: 1", f"name: chain-{size}", "steps:"]
    lines += ["  s0:", '    run: echo "n=0" >> "$RUNNER_OUTPUT"']
    for index in range(1, size):
        lines += [
            f"  s{index}:",
            f"    needs: [s{index - 1}]",
            f'    run: echo "n=${{{{ steps.s{index - 1}.outputs.n }}}}"',
        ]
    return "\n".join(lines) + "\n"


def fan_out(size: int) -> str:
    """One root step and `size - 1` steps that all need it, using a param."""
    lines = [
        "version: 1",
        f"name: fan-out-{size}",
        "params:",
        "  region: {type: string, default: eu}",
        "steps:",
        "  root:",
        "    run: echo root",
    ]
    for index in range(1, size):
        lines += [
            f"  s{index}:",
            "    needs: root",
            f'    run: [echo, "${{{{ params.region }}}}", "{index}"]',
        ]
    return "\n".join(lines) + "\n"


SHAPES: dict[str, Callable[[int], str]] = {"chain": chain, "fan-out": fan_out}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `command`, which must exit 0."""
    cpu, started = children_cpu(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout!r}")
    return elapsed, children_cpu() - cpu


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return (
        statistics.median(wall for wall, _ in samples),
        statistics.median(cpu for _, cpu in samples),
    )


def median_run(command: list[str], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `runs` runs, after one warm-up run."""
    timed(command)
    return medians([timed(command) for _ in range(runs)])


def in_process(path: Path, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds `check_file` takes on `path`, in process."""
    from runner.spec.validate import check_file

    samples = []
    for _ in range(runs):
        gc.collect()  # the previous run's garbage is not this run's cost
        cpu, started = time.process_time(), time.perf_counter()
        report = check_file(str(path))
        samples.append((time.perf_counter() - started, time.process_time() - cpu))
        if report.has_errors():
            sys.exit(f"{path} does not validate: {report.problems[0]}")
        del report
    return medians(samples)


def measure_startup(runs: int) -> dict[str, Any]:
    runner = str(BIN / "runner")
    help_time = median_run([runner, "--help"], runs)
    ours = median_run([runner, "validate", str(SMALL)], runs)
    theirs = median_run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), str(SMALL)],
        runs,
    )
    return {
        "help_s": help_time[0],
        "help_cpu_s": help_time[1],
        "validate_small_s": ours[0],
        "validate_small_cpu_s": ours[1],
        "check_jsonschema_small_s": theirs[0],
        "check_jsonschema_small_cpu_s": theirs[1],
        "ratio": ours[0] / theirs[0],
        "ratio_cpu": ours[1] / theirs[1],
    }


def measure_large(runs: int, cli_runs: int) -> dict[str, dict[str, Any]]:
    OUT.mkdir(parents=True, exist_ok=True)
    from runner.spec.validate import check_file

    check_file(str(SMALL))  # imports and the schema validator, once
    results: dict[str, dict[str, Any]] = {}
    for shape, generate in SHAPES.items():
        rows: dict[str, Any] = {}
        for size in SIZES:
            path = OUT / f"{shape}-{size}.yml"
            path.write_text(generate(size), encoding="utf-8")
            command = [str(BIN / "runner"), "validate", str(path)]
            inside = in_process(path, runs)
            cli = medians([timed(command) for _ in range(cli_runs)])
            rows[str(size)] = {
                "bytes": path.stat().st_size,
                "in_process_s": inside[0],
                "in_process_cpu_s": inside[1],
                "cli_s": cli[0],
                "cli_cpu_s": cli[1],
            }
        first, last = rows[str(SIZES[0])], rows[str(SIZES[-1])]
        rows["growth_in_process"] = last["in_process_cpu_s"] / first["in_process_cpu_s"]
        rows["growth_cli"] = last["cli_cpu_s"] / first["cli_cpu_s"]
        results[shape] = rows
    return results


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def row(
    label: str, wall: str, cpu: str = "", target: str = "", result: str = ""
) -> str:
    return f"{label:<44}{wall:>10}{cpu:>10}{target:>10}  {result}".rstrip()


def startup_rows(startup: dict[str, Any]) -> list[str]:
    def ms(key: str) -> str:
        return f"{startup[key] * 1000:.0f}ms"

    return [
        row(
            "runner --help",
            ms("help_s"),
            ms("help_cpu_s"),
            "<=150ms",
            verdict(startup["help_s"] <= HELP_TARGET),
        ),
        row(
            "runner validate small.yml",
            ms("validate_small_s"),
            ms("validate_small_cpu_s"),
        ),
        row(
            "check-jsonschema --schemafile ... small.yml",
            ms("check_jsonschema_small_s"),
            ms("check_jsonschema_small_cpu_s"),
        ),
        row(
            "ratio runner / check-jsonschema",
            f"{startup['ratio']:.2f}",
            f"{startup['ratio_cpu']:.2f}",
            "<=1.00",
            verdict(startup["ratio"] <= RATIO_TARGET),
        ),
    ]


def large_rows(shape: str, rows: dict[str, Any]) -> list[str]:
    lines = []
    for size in SIZES:
        last = size == SIZES[-1]
        for kind, key in (("check_file", "in_process"), ("CLI", "cli")):
            wall = rows[str(size)][f"{key}_s"]
            lines.append(
                row(
                    f"{shape} {size:>6,} steps, {kind}",
                    f"{wall:.2f}s",
                    f"{rows[str(size)][f'{key}_cpu_s']:.2f}s",
                    f"<={LARGE_TARGET:g}s" if last else "",
                    verdict(wall <= LARGE_TARGET) if last else "",
                )
            )
    for kind in ("in_process", "cli"):
        growth = rows[f"growth_{kind}"]
        label = f"{shape} growth 10k/1k (CPU), {kind.replace('_', ' ')}"
        lines.append(row(label, "", f"{growth:.1f}x", "~10x", verdict(growth <= 12.5)))
    return lines


def table(startup: dict[str, Any], large: dict[str, dict[str, Any]]) -> str:
    lines = [row("measure (median)", "wall", "CPU", "target", "result"), "-" * 78]
    lines += startup_rows(startup)
    for shape, rows in large.items():
        lines += large_rows(shape, rows)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per start-up")
    parser.add_argument("--large-runs", type=int, default=3, help="runs per DAG")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    startup = measure_startup(args.runs)
    large = measure_large(args.large_runs, args.large_runs)
    print(table(startup, large))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    record = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": load,
        "startup": startup,
        "large": large,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validate.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"\nload average {load:.2f} on {os.cpu_count()} CPUs; "
        f"figures in {OUT / 'validate.json'}"
    )


if __name__ == "__main__":
    main()
