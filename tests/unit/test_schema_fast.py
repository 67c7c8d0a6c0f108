"""The schema compiled to Python: up to date, and never laxer than jsonschema.

runner/spec/_schema_fast.py only ever says "valid"; whatever it refuses,
jsonschema judges. So the one disagreement that would matter is the compiled
check accepting a document jsonschema refuses: these tests look for it on
every workflow the project has, on hostile values, and on generated documents.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from runner.spec import _schema_fast
from runner.spec.validate import check_file

REPO = Path(__file__).parents[2]
SCHEMA = json.loads((REPO / "schemas" / "workflow.schema.json").read_text())
JSONSCHEMA = Draft7Validator(SCHEMA)
VALID_FILES = sorted(
    [
        *(REPO / "tests" / "data" / "valid").glob("*.y*ml"),
        *(REPO / "workflows").glob("*.yml"),
        *(REPO / "examples").glob("*.yml"),
    ]
)
INVALID_FILES = sorted((REPO / "tests" / "data" / "invalid").glob("*.y*ml"))


def fast_accepts(document: Any) -> bool:
    try:
        _schema_fast.validate(document)
    except Exception:
        return False
    return True


def jsonschema_accepts(document: Any) -> bool:
    return not any(True for _ in JSONSCHEMA.iter_errors(document))


def data_of(path: Path) -> Any:
    """The document as runner reads it (YAML 1.2 core), or None if it cannot."""
    from runner.spec.yamlload import LoadError, decode, parse, read_bounded, to_data

    try:
        return to_data(parse(decode(read_bounded(str(path)))))
    except LoadError:
        return None


def test_the_compiled_check_is_generated_from_the_current_schema() -> None:
    """Regenerating gives the committed file: run the script after a schema change."""
    spec = importlib.util.spec_from_file_location(
        "generate_fast_check", REPO / "schemas" / "generate_fast_check.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)

    committed = (REPO / "runner" / "spec" / "_schema_fast.py").read_text()

    assert generator.generated_source() == committed, (
        "runner/spec/_schema_fast.py is stale: run schemas/generate_fast_check.py"
    )


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_every_valid_workflow_takes_the_fast_path(path: Path) -> None:
    """The project's own workflows are accepted without jsonschema."""
    data = data_of(path)

    assert jsonschema_accepts(data)
    assert fast_accepts(data)


@pytest.mark.parametrize(
    "path", [p for p in INVALID_FILES if data_of(p) is not None], ids=lambda p: p.name
)
def test_no_invalid_workflow_is_accepted_by_the_fast_path_alone(path: Path) -> None:
    """On the invalid corpus (what gets past the loader), a fast "valid" always
    agrees with jsonschema."""
    data = data_of(path)

    if fast_accepts(data):
        assert jsonschema_accepts(data)
        assert check_file(str(path)).problems  # refused or warned for another reason


def minimal(**step: Any) -> dict[str, Any]:
    return {"version": 1, "name": "w", "steps": {"a": {"run": "true", **step}}}


@pytest.mark.parametrize(
    "document",
    [
        minimal(retry={"max_attempts": True}),
        minimal(retry={"max_attempts": 1.5}),
        minimal(retry={"backoff": {"multiplier": math.nan}}),
        minimal(retry={"backoff": {"multiplier": True}}),
        minimal(timeout=math.inf),
        minimal(timeout=-math.inf),
        minimal(timeout=math.nan),
        minimal(timeout=-1),
        minimal(timeout=False),
        minimal(classify=[{"exit_codes": [1, True], "class": "transient"}]),
        minimal(classify=[{"exit_codes": [1, 1.0], "class": "transient"}]),
        minimal(classify=[{"exit_codes": [256], "class": "transient"}]),
        minimal(needs=["b", "b"]),
        minimal(needs="b\n"),
        minimal(needs=""),
        minimal(run=[]),
        minimal(run=""),
        minimal(run=[1]),
        minimal(run=None),
        minimal(env={"A": None}),
        minimal(env={"A": [1]}),
        minimal(env={"1A": "x"}),
        minimal(compensate={}),
        minimal(compensate={"run": "x", "extra": 1}),
        minimal(**{"if": "x"}),
        minimal(**{"if": 1}),
        {"version": True, "name": "w", "steps": {"a": {"run": "true"}}},
        {"version": 1.0, "name": "w", "steps": {"a": {"run": "true"}}},
        {"version": 1, "name": "w\n", "steps": {"a": {"run": "true"}}},
        {"version": 1, "name": "w", "steps": {"a\n": {"run": "true"}}},
        {**minimal(), "pools": {"p": {}}},
        {"version": 1, "name": "w", "steps": []},
        [],
        None,
    ],
)
def test_hostile_values_are_never_accepted_by_the_fast_path_alone(
    document: Any,
) -> None:
    """Booleans for numbers, NaN, infinities, newlines before `$`, wrong types."""
    if fast_accepts(document):
        assert jsonschema_accepts(document)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["", "true", "5m", "1h30m", "b", "b\n", "SIGKILL", "${{ true }}", "full"]
    ),
)
KEYS = st.sampled_from(
    [
        "run", "needs", "if", "env", "cwd", "timeout", "kill_grace", "retry",
        "classify", "circuit", "pool", "check", "compensate", "on_exhausted",
        "on_crash", "max_attempts", "backoff", "initial", "multiplier", "max",
        "jitter", "exit_codes", "signals", "class", "pattern", "concurrency",
        "type", "default", "unknown",
    ]
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(KEYS, VALUES, max_size=4), top=VALUES)
def test_generated_documents_are_never_accepted_by_the_fast_path_alone(
    changes: dict[str, Any], top: Any
) -> None:
    """Random keys and values in a step, and in the top level, agree."""
    for document in (
        minimal(**changes),
        {**minimal(), "defaults": changes},
        {**minimal(), "pools": {"p": changes}},
        {**minimal(), "params": {"p": changes}},
        {**minimal(), "circuits": {"c": changes}},
        {**minimal(), "classify": [changes]},
        {**minimal(), "env": top},
    ):
        if fast_accepts(document):
            assert jsonschema_accepts(document), document
