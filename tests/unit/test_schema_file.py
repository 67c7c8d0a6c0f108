"""The JSON Schema of the workflow file: valid draft-07, closed, documented."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

SCHEMA_PATH = Path(__file__).parents[2] / "schemas" / "workflow.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))

SPEC_EXAMPLE = """\
# yaml-language-server: $schema=../schemas/workflow.schema.json
version: 1
name: nightly-cleanup
description: Remove stale build caches and tell the dispatcher.

params:                       # typed inputs: `runner run FILE -p days=3`
  days: {type: integer, default: 7}
  target: {type: string}      # no default, so required

env:                          # environment for every command
  CACHE_DIR: /var/cache/ci

defaults:                     # inherited by every step
  timeout: 5m
  retry:
    max_attempts: 3
    backoff: {initial: 1s, multiplier: 2, max: 30s, jitter: full}

classify:                     # tried before the built-in rules
  - {pattern: "quota exceeded", class: intermittent}
  - {exit_codes: [75], class: transient}

circuits:                     # shared by every run on the same state store
  dispatch-api: {failure_threshold: 3, half_open_after: 60s, success_threshold: 2}

pools:                        # bulkheads
  api: {concurrency: 1}

steps:
  find-stale:
    run: find "$CACHE_DIR" -mtime +${{ params.days }} -print > stale.txt
  archive:
    needs: [find-stale]
    run: [tar, czf, archive.tgz, --files-from, stale.txt]   # a list is argv, no shell
    compensate: rm -f archive.tgz
  delete:
    needs: [archive]
    run: xargs -r rm -f < stale.txt
    check: test ! -s stale.txt          # exit 0 means already done: step skipped
  notify:
    needs: [delete]
    if: ${{ steps.find-stale.status == 'succeeded' && params.target != '' }}
    run: curl -fsS -X POST "$DISPATCH_URL" -d "target=${{ params.target }}"
    circuit: dispatch-api
    pool: api
    retry: {max_attempts: 5}
"""

SUBSCHEMA_KEYS = ("additionalProperties", "items", "propertyNames")


def walk(schema: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema inside `schema`, with its JSON pointer; not examples."""
    if not isinstance(schema, dict):
        return
    yield pointer, schema

    for group in ("properties", "definitions"):
        for name, sub in schema.get(group, {}).items():
            yield from walk(sub, f"{pointer}/{group}/{name}")
    for key in SUBSCHEMA_KEYS:
        yield from walk(schema.get(key), f"{pointer}/{key}")


def types_of(schema: dict[str, Any]) -> list[str]:
    """The schema's `type` keyword as a list."""
    declared = schema.get("type", [])
    return [declared] if isinstance(declared, str) else declared


def minimal(**step: Any) -> dict[str, Any]:
    """A valid one-step workflow whose step `a` also has the keys given."""
    return {"version": 1, "name": "w", "steps": {"a": {"run": "true", **step}}}


def errors_of(document: Any) -> list[tuple[str, list[str | int]]]:
    """Each schema error of `document` as (keyword, path to the bad node)."""
    errors = Draft7Validator(SCHEMA).iter_errors(document)
    return sorted((e.validator, list(e.absolute_path)) for e in errors)


def test_schema_is_valid_draft_07() -> None:
    """The schema file is itself a valid draft-07 schema."""
    Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_spec_example_workflow_is_valid() -> None:
    """The example workflow of SPEC section 1 passes the schema."""
    assert errors_of(yaml.safe_load(SPEC_EXAMPLE)) == []


def test_every_object_forbids_unknown_keys() -> None:
    """Objects with named keys are closed; maps restrict their key names."""
    for pointer, schema in walk(SCHEMA):
        if "object" not in types_of(schema):
            continue
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, pointer
        else:
            assert "pattern" in schema.get("propertyNames", {}), pointer
            assert isinstance(schema.get("additionalProperties"), dict), pointer


def test_every_property_has_a_description() -> None:
    """Each property and each map value carries a description for editors."""
    for pointer, schema in walk(SCHEMA):
        for name, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{pointer}/properties/{name}"
        if isinstance(schema.get("additionalProperties"), dict):
            assert schema["additionalProperties"].get("description"), pointer


def test_every_example_in_the_schema_is_valid() -> None:
    """The `examples` shown in editors pass the schema they illustrate."""
    registry = Registry().with_resource(SCHEMA["$id"], DRAFT7.create_resource(SCHEMA))
    checked = 0
    for pointer, schema in walk(SCHEMA):
        validator = Draft7Validator(
            {"$ref": f"{SCHEMA['$id']}#{pointer}"}, registry=registry
        )
        for example in schema.get("examples", []):
            assert list(validator.iter_errors(example)) == [], (pointer, example)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(minimal(needs="b", **{"if": True}), id="one-need-and-constant-if"),
        pytest.param(minimal(run=["sleep", "1"], timeout=90), id="argv-and-seconds"),
        pytest.param(
            minimal(compensate={"run": ["rm", "x"], "timeout": "1m30s"}),
            id="compensate-map",
        ),
        pytest.param(
            minimal(compensate=["rm", "x"], on_exhausted="compensate"),
            id="compensate-argv",
        ),
        pytest.param(
            minimal(classify=[{"signals": ["SIGKILL"], "class": "transient"}]),
            id="signal-rule",
        ),
        pytest.param(
            minimal(env={"N": 3, "ON": True, "S": "${{ params.x }}"}),
            id="scalar-env",
        ),
    ],
)
def test_accepts_each_documented_form(document: dict[str, Any]) -> None:
    """Shorthands the SPEC allows (one need, argv, maps, numbers) are valid."""
    assert errors_of(document) == []


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            minimal(need=["b"]),
            ("additionalProperties", ["steps", "a"]),
            id="unknown-step-key",
        ),
        pytest.param(
            minimal(retry={"max_attempts": 0}),
            ("minimum", ["steps", "a", "retry", "max_attempts"]),
            id="zero-attempts",
        ),
        pytest.param(
            minimal(timeout="5 minutes"),
            ("pattern", ["steps", "a", "timeout"]),
            id="bad-duration",
        ),
        pytest.param(
            {"version": 1, "name": "w", "steps": {"a": {"needs": "b"}}},
            ("required", ["steps", "a"]),
            id="step-without-run",
        ),
        pytest.param(
            minimal(on_crash="maybe"),
            ("enum", ["steps", "a", "on_crash"]),
            id="bad-on-crash",
        ),
        pytest.param(
            minimal(**{"if": "x == 1"}),
            ("pattern", ["steps", "a", "if"]),
            id="if-without-braces",
        ),
        pytest.param(
            minimal(classify=[{"class": "transient"}]),
            ("minProperties", ["steps", "a", "classify", 0]),
            id="rule-without-matcher",
        ),
        pytest.param(
            {"version": 2, "name": "w", "steps": {"a": {"run": "true"}}},
            ("const", ["version"]),
            id="version-2",
        ),
        pytest.param(
            {"version": 1, "name": "w", "steps": {}},
            ("minProperties", ["steps"]),
            id="no-steps",
        ),
    ],
)
def test_rejects_invalid_document_at_the_bad_node(
    document: dict[str, Any], expected: tuple[str, list[str | int]]
) -> None:
    """Each invalid document gives exactly one error, at the offending node."""
    assert errors_of(document) == [expected]
