"""The safe YAML loader: YAML 1.2 core values, positions, limits, no crashes."""

from __future__ import annotations

import codecs
import json
import os
import string
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.spec.problems import Problem
from runner.spec.validate import Report, check_file, check_text
from runner.spec.yamlload import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    LoadError,
    MapNode,
    Scalar,
    SeqNode,
    decode,
    locate,
    parse,
    to_data,
)

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"


def value_of(text: str) -> Any:
    """The loaded value of `v` in a one-key document `v: TEXT`."""
    return to_data(parse(f"v: {text}\n"))["v"]


def problem_of(text: str) -> Problem:
    """The problem parse() raises for `text`."""
    with pytest.raises(LoadError) as caught:
        parse(text)
    return caught.value.problem


@pytest.mark.parametrize(
    "text", ["on", "off", "yes", "no", "NO", "Yes", "y", "n", "On", "OFF"]
)
def test_yaml_1_1_booleans_stay_strings(text: str) -> None:
    """`on`, `yes`, `NO` and friends are text under YAML 1.2, not booleans."""
    assert value_of(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("TRUE", True), ("false", False)],
)
def test_only_true_and_false_are_booleans(text: str, expected: bool) -> None:
    """The core schema's booleans, in its three spellings."""
    assert value_of(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("010", 10),
        ("0o10", 8),
        ("0x1F", 31),
        ("-7", -7),
        ("+3", 3),
        ("0755", 755),
    ],
)
def test_integers_follow_the_core_schema(text: str, expected: int) -> None:
    """A leading zero is decimal; octal needs `0o`, hex `0x`."""
    value = value_of(text)
    assert value == expected
    assert type(value) is int


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.10", 1.1), ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("-.inf", -1e999)],
)
def test_floats_follow_the_core_schema(text: str, expected: float) -> None:
    """Version-like `1.10` is the float 1.1, as YAML 1.2 says too."""
    value = value_of(text)
    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize("text", ["~", "null", "Null", "NULL", ""])
def test_null_spellings_are_none(text: str) -> None:
    """Every core null spelling, the empty value included, is None."""
    assert value_of(text) is None


@pytest.mark.parametrize(
    "text", ["12:30", "2001-12-14", "0b101", "1_000", "'true'", '"10"', "!!str 10"]
)
def test_other_scalars_are_strings(text: str) -> None:
    """Sexagesimals, dates, binary, underscores and quoted values stay text."""
    assert isinstance(value_of(text), str)


@pytest.mark.parametrize(
    ("text", "expected"), [("!!int '7'", 7), ("!!float 1", 1.0), ("!!bool true", True)]
)
def test_core_tags_convert_their_value(text: str, expected: Any) -> None:
    """An explicit core tag gives the value of its type."""
    value = value_of(text)
    assert value == expected
    assert type(value) is type(expected)


def test_core_tag_with_a_wrong_value_is_refused() -> None:
    """`!!int x` names the tag and the bad text."""
    problem = problem_of("v: !!int x\n")
    assert (problem.line, problem.column) == (1, 4)
    assert problem.message == "'x' is not a valid !!int"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "v: !!python/object/apply:os.system [ls]\n",
            "!!python/object/apply:os.system",
        ),
        ("v: !!python/name:os.system\n", "!!python/name:os.system"),
        ("v: !!binary aGVsbG8=\n", "!!binary"),
        ("v: !custom {a: 1}\n", "!custom"),
        ("v: !!set {a, b}\n", "!!set"),
    ],
)
def test_non_core_tags_are_refused_at_the_tag(text: str, shown: str) -> None:
    """Python tags and every tag outside the core schema are errors."""
    problem = problem_of(text)
    assert (problem.line, problem.column) == (1, 4)
    assert problem.message == (
        f"unsupported tag '{shown}'; only YAML core tags are allowed"
    )


def test_merge_keys_let_explicit_keys_win() -> None:
    """`<<: *base` fills in keys the mapping does not set itself."""
    text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n"
    assert to_data(parse(text))["use"] == {"y": 3, "x": 1}


def test_merge_list_prefers_earlier_sources() -> None:
    """In `<<: [*a, *b]` a key of `a` wins over the same key of `b`."""
    text = "a: &a {k: a}\nb: &b {k: b, j: b}\nuse: {<<: [*a, *b]}\n"
    assert to_data(parse(text))["use"] == {"k": "a", "j": "b"}


def test_merge_of_a_scalar_is_refused() -> None:
    """Only mappings can be merged."""
    problem = problem_of("s: &s text\nuse: {<<: *s}\n")
    assert problem.message == "'<<' merges mappings only; give an alias to a mapping"
    assert (problem.line, problem.column) == (2, 7)


@pytest.mark.parametrize("key", ["'<<'", '"<<"', "!!str <<"])
def test_quoted_or_tagged_merge_key_is_an_ordinary_key(key: str) -> None:
    """Only a plain `<<` merges; quoted, it is just a key."""
    assert to_data(parse(f"a: {{{key}: 1}}\n")) == {"a": {"<<": 1}}


def test_aliases_share_the_anchored_value() -> None:
    """An alias reads the anchored node's value."""
    assert to_data(parse("a: &x [1, 2]\nb: *x\n")) == {"a": [1, 2], "b": [1, 2]}


def test_keys_and_values_keep_their_positions() -> None:
    """Lines and columns are 1-based, for keys, values and list items."""
    root = parse("version: 1\nsteps:\n  build:\n    needs: [a, b]\n")
    key = locate(root, ("steps", "build"), key=True)
    value = locate(root, ("steps", "build"))
    item = locate(root, ("steps", "build", "needs", 1))
    assert (key.line, key.column) == (3, 3)
    assert (value.line, value.column) == (4, 5)
    assert (item.line, item.column) == (4, 16)


def test_locate_stops_at_the_deepest_node_found() -> None:
    """A missing key resolves to the mapping that lacks it."""
    root = parse("steps:\n  build:\n    run: make\n")
    node = locate(root, ("steps", "build", "needs", 0))
    assert isinstance(node, MapNode)
    assert (node.line, node.column) == (3, 5)


def test_scalars_keep_their_source_text() -> None:
    """A scalar remembers how it was written, not only its value."""
    node = locate(parse("v: 010\n"), ("v",))
    assert isinstance(node, Scalar)
    assert (node.value, node.text) == (10, "010")


@pytest.mark.parametrize(
    ("text", "where", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", (3, 1), 1),
        ("s:\n  run: x\n  t: 1\n  run: y\n", (4, 3), 2),
        ("p: {c: 1, c: 2}\n", (1, 11), 1),
        ("l:\n  - {k: 1}\n  - {k: 1, k: 2}\n", (3, 12), 3),
    ],
)
def test_duplicate_keys_name_the_first_line(
    text: str, where: tuple[int, int], first: int
) -> None:
    """Duplicates anywhere are errors at the second key, naming the first."""
    problem = problem_of(text)
    assert (problem.line, problem.column) == where
    assert problem.message.endswith(f"(first defined on line {first})")


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """MAX_DEPTH levels, the top mapping included, still load."""
    depth = MAX_DEPTH - 1
    root = parse("a: " + "[" * depth + "]" * depth + "\n")
    node: Any = root.entries["a"].value
    for _ in range(depth - 1):
        assert isinstance(node, SeqNode)
        node = node.items[0]


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n", 3 + MAX_DEPTH),
        ("[" * 10_000, MAX_DEPTH + 1),
        ("{a: " * 10_000, 4 * MAX_DEPTH + 1),
        ("- " * 10_000 + "x\n", 2 * MAX_DEPTH + 1),
    ],
)
def test_nesting_past_the_limit_is_refused_where_it_happens(
    text: str, column: int
) -> None:
    """The first level past the limit is named, even 10,000 levels deep."""
    problem = problem_of(text)
    assert (problem.line, problem.column) == (1, column)
    assert problem.message == "nesting deeper than 64 levels; flatten the file"


def test_deep_block_mappings_are_refused() -> None:
    """Indented mappings count as levels too."""
    text = "".join(" " * level + "a:\n" for level in range(200))
    problem = problem_of(text)
    assert (problem.line, problem.column) == (MAX_DEPTH + 1, MAX_DEPTH + 1)


def alias_bomb(levels: int, width: int) -> str:
    """A "billion laughs" document: each level repeats the one before."""
    items = ", ".join(["lol"] * width)
    lines = [f"l0: &l0 [{items}]"]
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly() -> None:
    """9 levels of 9 aliases expand to 490 million nodes; refused at once."""
    started = time.perf_counter()
    problem = problem_of(alias_bomb(9, 9))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert problem.message == (
        "document expands to 490,329,064 nodes through aliases "
        "(limit 100,000); use fewer aliases"
    )
    assert (problem.line, problem.column) == (6, 10)


def test_alias_expansion_within_the_limit_loads() -> None:
    """Aliases are fine while the expanded document stays under the limit."""
    root = parse(alias_bomb(4, 9))
    assert len(to_data(root)["l3"]) == 9


def test_node_limit_counts_expanded_aliases() -> None:
    """A document just past MAX_NODES through aliases is refused."""
    width = 1000
    items = ", ".join(["x"] * width)
    copies = MAX_NODES // (width + 1) + 1
    text = f"a: &a [{items}]\nb: [{', '.join(['*a'] * copies)}]\n"
    assert "through aliases" in problem_of(text).message


def test_undefined_alias_is_named() -> None:
    """An alias to no anchor says which."""
    problem = problem_of("a: *nowhere\n")
    assert problem.message == "undefined alias '*nowhere'"
    assert (problem.line, problem.column) == (1, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "workflow file is empty; start with 'version: 1'"),
        ("# just a comment\n", "workflow file is empty; start with 'version: 1'"),
        ("~\n", "workflow file is empty; start with 'version: 1'"),
        (
            "- a\n",
            "the top level must be a mapping with 'version', 'name' and 'steps'",
        ),
        (
            "text\n",
            "the top level must be a mapping with 'version', 'name' and 'steps'",
        ),
    ],
)
def test_document_shape_is_checked(text: str, message: str) -> None:
    """Empty files and non-mapping documents are refused at the top."""
    problem = problem_of(text)
    assert (problem.line, problem.column, problem.message) == (1, 1, message)


def test_second_document_is_refused_where_it_starts() -> None:
    """A `---` starting a second document is an error at that line."""
    problem = problem_of("a: 1\n---\nb: 2\n")
    assert (problem.line, problem.column) == (2, 1)
    assert problem.message.startswith("expected exactly one YAML document")


def test_tab_indentation_is_named() -> None:
    """A tab where indentation goes gets its own message."""
    problem = problem_of("a:\n\tb: 1\n")
    assert (problem.line, problem.column) == (2, 1)
    assert problem.message == "a tab cannot indent YAML; use spaces"


def test_syntax_error_says_where_the_construct_started() -> None:
    """An unclosed quote is reported at the end, naming where it opened."""
    problem = problem_of('a: "open\nb: 1\n')
    assert (problem.line, problem.column) == (3, 1)
    assert problem.message == (
        "YAML syntax: while scanning a quoted scalar at line 1, column 4, "
        "found unexpected end of stream"
    )


def test_nul_character_is_refused_at_its_position() -> None:
    """Control characters are not YAML."""
    problem = problem_of("a: 1\nb: x\x00y\n")
    assert (problem.line, problem.column) == (2, 5)
    assert problem.message == "character U+0000 is not allowed in YAML"


def test_utf8_byte_order_mark_is_dropped() -> None:
    """A UTF-8 BOM is allowed and not part of the text."""
    assert decode(codecs.BOM_UTF8 + b"a: 1\n") == "a: 1\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_is_refused(encoding: str) -> None:
    """UTF-16, with its BOM, is named rather than decoded as garbage."""
    data = "a: 1\n".encode(encoding)
    if encoding != "utf-16":
        bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
        data = bom + data
    with pytest.raises(LoadError) as caught:
        decode(data)
    assert caught.value.problem.message == "file is UTF-16, not UTF-8; save it as UTF-8"


def test_invalid_utf8_names_the_byte_and_its_position() -> None:
    """The offset of the first bad byte, and its line and column."""
    with pytest.raises(LoadError) as caught:
        decode(b"a: 1\nb: caf\xe9\n")
    problem = caught.value.problem
    assert (problem.line, problem.column) == (2, 7)
    assert problem.message == "not valid UTF-8 at byte 11; save the file as UTF-8"


def test_valid_workflow_keeps_yaml_1_1_words_as_env_text() -> None:
    """`on`, `NO`, `yes` reach the environment as written."""
    report = check_file(str(DATA / "valid" / "yaml12_scalars.yml"))
    assert report.problems == ()
    assert report.workflow is not None
    env = dict(report.workflow.env)
    assert (env["TRIGGER"], env["COUNTRY"], env["ENABLED"]) == ("on", "NO", "yes")
    assert (env["DISABLED"], env["AT"], env["MODE"]) == ("off", "12:30", "755")
    assert (env["OCTAL"], env["QUOTED_TRUE"], env["FLAG"]) == ("8", "true", "true")
    assert "on" in report.workflow.steps


def test_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    """A file over 10 MiB is refused before it is read."""
    path = tmp_path / "huge.yml"
    with path.open("wb") as file:
        file.write(b"# " + b"x" * (MAX_FILE_BYTES - 2) + b"\n")
    report = check_file(str(path))
    assert [p.message for p in report.problems] == [
        "workflow file is 10,485,761 bytes (limit 10,485,760); split it"
    ]


def test_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    """Exactly 10 MiB is still read (and here found empty of content)."""
    path = tmp_path / "big.yml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES - 1) + b"\n")
    report = check_file(str(path))
    assert [p.message for p in report.problems] == [
        "workflow file is empty; start with 'version: 1'"
    ]


def test_device_is_not_read() -> None:
    """`/dev/zero` is refused, neither hanging nor filling memory."""
    report = check_file("/dev/zero")
    assert [p.message for p in report.problems] == [
        "not a regular file; give the path of a .yml file"
    ]


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Opening a FIFO does not block until something writes to it."""
    fifo = tmp_path / "pipe.yml"
    os.mkfifo(fifo)
    reports: list[Report] = []
    worker = threading.Thread(target=lambda: reports.append(check_file(str(fifo))))
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # release the blocked open so the test run can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
    assert [p.message for p in reports[0].problems] == [
        "not a regular file; give the path of a .yml file"
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.yml", "cannot read the file: No such file or directory"),
        (".", "cannot read the file: Is a directory"),
    ],
)
def test_unreadable_paths_are_one_problem(
    tmp_path: Path, name: str, message: str
) -> None:
    """A missing path or a directory is a problem, not a traceback."""
    report = check_file(str(tmp_path / name))
    assert [(p.line, p.column, p.message) for p in report.problems] == [(1, 1, message)]


# Property-based: whatever the input, a clean result or a LoadError.

SAFE_LETTERS = string.ascii_letters + " _-."
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(alphabet=SAFE_LETTERS, max_size=12)
)
any_scalars = scalars | st.text(max_size=20) | st.floats()
keys = st.text(alphabet=SAFE_LETTERS, max_size=12)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nested lists and string-keyed mappings over `leaves`."""
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(keys | st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=25,
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_of_any_text_returns_or_raises_load_error(text: str) -> None:
    """Arbitrary text never escapes as anything but LoadError."""
    try:
        root = parse(text)
    except LoadError as error:
        assert error.problem.line >= 1
        assert error.problem.column >= 1
    else:
        assert isinstance(root, MapNode)


@settings(max_examples=200, deadline=None)
@given(trees(any_scalars))
def test_parse_of_any_yaml_returns_or_raises_load_error(data: Any) -> None:
    """Every structure PyYAML can dump loads, or is refused cleanly."""
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        to_data(parse(text))
    except LoadError as error:
        assert error.problem.message


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, trees(scalars), min_size=1, max_size=5))
def test_plain_yaml_round_trips(data: dict[str, Any]) -> None:
    """Text PyYAML dumps for 1.1 reads back the same under 1.2 core rules."""
    assert to_data(parse(yaml.safe_dump(data))) == data


SCHEMA = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())
STEP_KEYS = sorted(SCHEMA["definitions"]["step"]["properties"])
TOP_KEYS = sorted(set(SCHEMA["properties"]) - {"steps", "version", "name"})
EXPRESSIONS = st.sampled_from(
    [
        "${{ steps.a.status == 'succeeded' }}",
        "${{ params.p }}",
        "echo '${{ steps.b.outputs.x }}'",
        "${{ env.HOME",
        "${{ steps['a'].outputs.y && !params.q }}",
        "${{ (( }}",
    ]
)
step_values = trees(scalars | EXPRESSIONS | st.sampled_from(["a", "b", "1s", "x"]))
step_maps = st.dictionaries(st.sampled_from(STEP_KEYS), step_values, max_size=6)
runnable_steps = st.builds(
    lambda step, run: {**step, "run": run}, step_maps, EXPRESSIONS | st.just("make")
)
steps = st.dictionaries(
    st.sampled_from(["a", "b", "c", "bad name"]),
    runnable_steps | step_maps | step_values,
    max_size=4,
)
workflows = st.fixed_dictionaries(
    {"version": st.just(1), "name": st.just("wf"), "steps": steps},
    optional=dict.fromkeys(TOP_KEYS, step_values),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows | trees(any_scalars))
def test_check_text_of_any_document_reports_cleanly(data: Any) -> None:
    """Validation of any document returns a report with positioned problems."""
    report = check_text("wf.yml", yaml.safe_dump(data, allow_unicode=True))
    assert isinstance(report, Report)
    for problem in report.problems:
        assert problem.severity in ("error", "warning")
        assert problem.line >= 1
        assert problem.column >= 1
        assert problem.message
    assert (report.workflow is None) == report.has_errors()


GOOD_STEP_VALUES: dict[str, list[Any]] = {
    "run": ["make", ["echo", "${{ params.p }}"], 'echo "${{ env.HOME }}"'],
    "needs": ["a", ["a", "b"], []],
    "if": ["${{ params.p == 'x' }}", True, "${{ steps.a.status == 'succeeded' }}"],
    "env": [{"A": "1"}, {"B": 2, "C": "${{ params.p }}"}],
    "cwd": ["sub", "/tmp"],
    "timeout": ["5s", 3, 0.5, "1h30m"],
    "kill_grace": ["1s", 0],
    "retry": [{}, {"max_attempts": 2, "backoff": {"initial": "1s"}}],
    "classify": [[{"exit_codes": [3], "class": "permanent"}], []],
    "circuit": ["c1"],
    "pool": ["p1"],
    "check": ["test -f done", ["test", "-f", "done"]],
    "compensate": ["undo", ["undo"], {"run": "undo", "timeout": "1m"}],
    "on_exhausted": ["redrive", "compensate"],
    "on_crash": ["rerun", "fail"],
}
good_steps = st.fixed_dictionaries(
    {"run": st.sampled_from(GOOD_STEP_VALUES["run"])},
    optional={
        key: st.sampled_from(values)
        for key, values in GOOD_STEP_VALUES.items()
        if key != "run"
    },
)
good_workflows = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "name": st.just("wf"),
        "steps": st.dictionaries(
            st.sampled_from(["a", "b", "c"]), good_steps, min_size=1
        ),
    },
    optional={
        "params": st.just({"p": {"type": "string", "default": "x"}}),
        "circuits": st.just({"c1": {"failure_threshold": 2}}),
        "pools": st.just({"p1": {"concurrency": 1}}),
        "env": st.just({"E": "${{ params.p }}"}),
        "defaults": st.just({"timeout": "1m", "retry": {"max_attempts": 3}}),
        "classify": st.just([{"pattern": "(?i)busy", "class": "transient"}]),
    },
)


@settings(max_examples=200, deadline=None)
@given(good_workflows)
def test_near_valid_workflows_build_or_report(data: dict[str, Any]) -> None:
    """Mostly valid documents either build a model or say why they cannot."""
    report = check_text("wf.yml", yaml.safe_dump(data, sort_keys=False))
    if report.workflow is not None:
        assert list(report.workflow.steps) == list(data["steps"])
    else:
        assert report.has_errors()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_check_text_of_any_text_reports_cleanly(text: str) -> None:
    """Arbitrary text gives a report, never an exception."""
    assert isinstance(check_text("wf.yml", text), Report)
