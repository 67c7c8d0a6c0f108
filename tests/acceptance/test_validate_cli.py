"""`runner validate`, `graph`, `schema` and a refused `run`, through the real CLI.

The invalid corpus (tests/data/invalid) pairs every file with its exact output
lines in expected.txt; the whole corpus goes through one `runner validate`
call, since it reports every file in one pass, and each file is then compared
on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"
INVALID = DATA / "invalid"
VALID = DATA / "valid"
SCHEMA = ROOT / "schemas" / "workflow.schema.json"

INVALID_FILES = sorted(path.name for path in INVALID.glob("*.yml"))
VALID_FILES = sorted(path.name for path in VALID.glob("*.yml"))
WARNING_FILES = [name for name in INVALID_FILES if name.startswith("warn_")]


def run_cli(*args: str, cwd: Path = INVALID) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner ARGS`; no command may ever print a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    return result


def by_file(output: str) -> dict[str, list[str]]:
    """Output lines grouped by the FILE before their first colon."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for line in output.splitlines():
        grouped[line.split(":", 1)[0]].append(line)
    return grouped


@cache
def expected() -> dict[str, list[str]]:
    """The expected lines of every invalid file, from expected.txt."""
    return by_file((INVALID / "expected.txt").read_text(encoding="utf-8"))


@cache
def corpus_run() -> subprocess.CompletedProcess[str]:
    """`runner validate` of the whole invalid corpus, once per test process."""
    return run_cli("validate", *INVALID_FILES)


def test_corpus_is_large_enough() -> None:
    """At least 45 invalid workflows, each with expected lines."""
    assert len(INVALID_FILES) >= 45
    assert set(expected()) == set(INVALID_FILES)


@pytest.mark.parametrize("name", INVALID_FILES)
def test_invalid_workflow_reports_exact_lines(name: str) -> None:
    """Each file's problems: exact message, line and column, in order."""
    assert by_file(corpus_run().stdout)[name] == expected()[name]


def test_corpus_run_exits_2_with_output_on_stdout_only() -> None:
    """Invalid files exit 2; validate prints problems to stdout, nothing else."""
    result = corpus_run()
    assert result.returncode == 2
    assert result.stderr == ""


@pytest.mark.parametrize("name", INVALID_FILES)
def test_expected_lines_name_their_file_and_severity(name: str) -> None:
    """expected.txt lines have the `FILE:LINE:COL: SEVERITY: MESSAGE` form."""
    for line in expected()[name]:
        file, line_no, column, severity, message = line.split(":", 4)
        assert file == name
        assert int(line_no) >= 1
        assert int(column) >= 1
        assert severity in (" error", " warning")
        assert message.startswith(" ")
        if name not in WARNING_FILES:
            assert severity == " error"


def test_valid_workflows_pass_strict_validation() -> None:
    """Every valid example passes `--strict` silently, with exit 0."""
    assert len(VALID_FILES) >= 8
    result = run_cli("validate", "--strict", *VALID_FILES, cwd=VALID)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_warnings_alone_do_not_fail() -> None:
    """Without `--strict` a file with only warnings is valid: exit 0."""
    result = run_cli("validate", *WARNING_FILES)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        line for name in WARNING_FILES for line in expected()[name]
    ]


def test_strict_turns_warnings_into_errors() -> None:
    """`--strict` prints the same lines as errors and exits 2."""
    result = run_cli("validate", "--strict", *WARNING_FILES)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        line.replace(": warning: ", ": error: ", 1)
        for name in WARNING_FILES
        for line in expected()[name]
    ]


def test_one_invalid_file_fails_the_whole_call() -> None:
    """Valid and invalid files together: all reported, exit 2."""
    result = run_cli("validate", "../valid/minimal.yml", "cycle.yml")
    assert result.returncode == 2
    assert result.stdout.splitlines() == expected()["cycle.yml"]


def test_file_is_named_as_given() -> None:
    """FILE in each line is the path exactly as given on the command line."""
    result = run_cli("validate", "./../invalid/self_need.yml", cwd=VALID)
    [line] = result.stdout.splitlines()
    assert line == "./../invalid/" + expected()["self_need.yml"][0]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.yml", "cannot read the file: No such file or directory"),
        (".", "cannot read the file: Is a directory"),
        ("/dev/null", "not a regular file; give the path of a .yml file"),
    ],
)
def test_unreadable_path_is_reported_not_raised(name: str, message: str) -> None:
    """A path that cannot be read is a problem line and exit 2."""
    result = run_cli("validate", name)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"{name}:1:1: error: {message}"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    """A file over 10 MiB is refused by size, without being parsed."""
    path = tmp_path / "huge.yml"
    with path.open("wb") as file:
        file.truncate(10 * 1024 * 1024 + 1)
    result = run_cli("validate", "huge.yml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "huge.yml:1:1: error: workflow file is 10,485,761 bytes "
        "(limit 10,485,760); split it"
    ]


def test_deeply_nested_mappings_are_refused(tmp_path: Path) -> None:
    """10,000 nested flow mappings stop at the 65th level, with no RecursionError."""
    (tmp_path / "deep.yml").write_text("{a: " * 10_000 + "1" + "}" * 10_000)
    result = run_cli("validate", "deep.yml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "deep.yml:1:257: error: nesting deeper than 64 levels; flatten the file"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],
        ["validate", "-o", "xml", "cycle.yml"],
        ["validate", "--no-such-option", "cycle.yml"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    """Missing files or bad options are usage errors: exit 2, message on stderr."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Usage: runner validate" in result.stderr


def test_json_output_has_the_documented_shape() -> None:
    """`-o json`: files as given, validity, and positioned problems with paths."""
    result = run_cli(
        "validate", "-o", "json", "unknown_needs.yml", "warn_unused_pool.yml"
    )
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "files": [
            {
                "file": "unknown_needs.yml",
                "valid": False,
                "problems": [
                    {
                        "severity": "error",
                        "line": 7,
                        "column": 13,
                        "path": "steps.deploy.needs[0]",
                        "message": "step 'deploy' needs unknown step 'biuld' "
                        "(did you mean 'build'?)",
                    }
                ],
            },
            {
                "file": "warn_unused_pool.yml",
                "valid": True,
                "problems": [
                    {
                        "severity": "warning",
                        "line": 4,
                        "column": 3,
                        "path": "pools.api",
                        "message": "pool 'api' is declared but no step uses it",
                    }
                ],
            },
        ]
    }


def test_json_output_of_the_corpus_matches_the_text_lines() -> None:
    """Every problem in JSON carries the same position and message as in text."""
    result = run_cli("validate", "-o", "json", *INVALID_FILES)
    files = json.loads(result.stdout)["files"]
    assert [entry["file"] for entry in files] == INVALID_FILES
    for entry in files:
        lines = [
            f"{entry['file']}:{p['line']}:{p['column']}: {p['severity']}: "
            f"{p['message']}"
            for p in entry["problems"]
        ]
        assert lines == expected()[entry["file"]]
        assert entry["valid"] == (entry["file"] in WARNING_FILES)
        assert all(
            set(p) == {"severity", "line", "column", "path", "message"}
            for p in entry["problems"]
        )


def test_json_output_of_valid_files_has_no_problems() -> None:
    """A valid file is listed with `valid: true` and an empty problem list."""
    result = run_cli("validate", "-o", "json", "minimal.yml", cwd=VALID)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "files": [{"file": "minimal.yml", "valid": True, "problems": []}]
    }


def test_github_output_annotates_every_problem() -> None:
    """`-o github`: one `::error` or `::warning` command per problem."""
    result = run_cli("validate", "-o", "github", *INVALID_FILES)
    assert result.returncode == 2
    annotations = []
    for name in INVALID_FILES:
        for line in expected()[name]:
            file, line_no, column, severity, message = line.split(":", 4)
            annotations.append(
                f"::{severity.strip()} file={file},line={line_no},col={column}::"
                + message[1:]
            )
    assert result.stdout.splitlines() == annotations


def test_installed_console_script_validates() -> None:
    """The `runner` script that packaging installs runs the same command."""
    script = Path(sys.executable).with_name("runner")
    if not script.exists():
        pytest.skip("no runner console script beside this Python")
    result = subprocess.run(
        [str(script), "validate", "cycle.yml", "../valid/minimal.yml"],
        cwd=INVALID,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout.splitlines() == expected()["cycle.yml"]


def test_schema_command_prints_the_published_schema() -> None:
    """`runner schema` prints JSON equal to schemas/workflow.schema.json."""
    result = run_cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads(SCHEMA.read_text("utf-8"))


@pytest.mark.parametrize(
    ("fmt", "output"),
    [
        (
            "text",
            [
                "  1  fetch",
                "  2  left  (needs fetch)",
                "  2  right  (needs fetch)",
                "  3  join  (needs left, right)",
            ],
        ),
        (
            "mermaid",
            [
                "flowchart TD",
                '  s0["fetch"]',
                '  s1["left"]',
                '  s2["right"]',
                '  s3["join"]',
                "  s0 --> s1",
                "  s0 --> s2",
                "  s1 --> s3",
                "  s2 --> s3",
            ],
        ),
        (
            "dot",
            [
                'digraph "diamond" {',
                "  rankdir=LR;",
                '  "fetch";',
                '  "left";',
                '  "right";',
                '  "join";',
                '  "fetch" -> "left";',
                '  "fetch" -> "right";',
                '  "left" -> "join";',
                '  "right" -> "join";',
                "}",
            ],
        ),
    ],
)
def test_graph_of_a_diamond(fmt: str, output: list[str]) -> None:
    """`runner graph` draws the diamond in each format."""
    result = run_cli("graph", "--format", fmt, "diamond.yml", cwd=VALID)
    assert result.returncode == 0
    assert result.stdout.splitlines() == output


@pytest.mark.parametrize("name", ["cycle.yml", "all_in_one_pass.yml"])
def test_graph_refuses_an_invalid_workflow(name: str) -> None:
    """`runner graph` prints validate's lines on stderr and exits 2."""
    result = run_cli("graph", name)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == expected()[name]


def test_graph_ignores_warnings() -> None:
    """Warnings alone do not stop `runner graph`."""
    result = run_cli("graph", "warn_unused_pool.yml")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (
        0,
        "1  build",
        "",
    )


def test_run_refuses_an_invalid_workflow_and_records_nothing(tmp_path: Path) -> None:
    """`runner run` of an invalid workflow: problem lines on stderr, exit 2, no run."""
    state = tmp_path / "state"
    result = run_cli("run", "--state", str(state), "all_in_one_pass.yml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == expected()["all_in_one_pass.yml"]
    assert not (state / "state.db").exists()

    status = run_cli("--state", str(state), "status", "-o", "json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["runs"] == []
