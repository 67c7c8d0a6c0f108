"""The published JSON Schema, and its errors mapped back to YAML positions."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from runner.spec.problems import PathPart, Problem, did_you_mean, format_path
from runner.spec.yamlload import MapNode, locate

_SOURCE_SCHEMA = Path(__file__).parents[2] / "schemas" / "workflow.schema.json"
_PACKAGED_SCHEMA = Path(__file__).with_name("workflow.schema.json")

_TYPE_NAMES = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}


def schema_text() -> str:
    """The schema as published: from the package, or the source tree."""
    path = _PACKAGED_SCHEMA if _PACKAGED_SCHEMA.exists() else _SOURCE_SCHEMA
    return path.read_text(encoding="utf-8")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


def schema_problems(root: MapNode, data: Any) -> list[Problem]:
    """Every schema violation in `data`, each at the offending node."""
    if _accepted(data):
        return []
    problems: list[Problem] = []
    for error in _validator().iter_errors(data):
        problems.extend(_to_problems(root, error))
    return problems


def _accepted(data: Any) -> bool:
    """Whether the schema compiled to Python (schemas/generate_fast_check.py)
    finds `data` valid: a few microseconds a step, and no jsonschema to import.

    It only ever says yes. A refusal, or any error of the compiled code on
    data it did not foresee, leaves the verdict and the messages to jsonschema,
    so where the two disagree jsonschema's word stands unless the compiled
    check is the laxer one; tests/unit/test_schema_fast.py looks for that.
    """
    from runner.spec import _schema_fast

    check: Callable[[Any], object] = _schema_fast.validate  # generated, untyped
    try:
        check(data)
    except Exception:  # refused, or not foreseen: jsonschema decides
        return False
    return True


@cache
def _validator() -> Any:
    """A draft-07 validator of the schema with its `$ref`s inlined.

    Resolving a `$ref` per step costs more than the rest of validating the step
    (a 10,000-step file spends a quarter of its time there); the schema has no
    recursive reference, so inlining is exact.
    """
    from jsonschema import Draft7Validator

    published = schema()
    return Draft7Validator(_inline(published, published["definitions"]))


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:  # draft-07: keys beside a `$ref` are ignored
        return _inline(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    return {key: _inline(value, definitions) for key, value in node.items()}


def _to_problems(root: MapNode, error: Any) -> Iterator[Problem]:
    path: tuple[PathPart, ...] = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        yield from _unknown_keys(root, path, error)
    elif kind == "required":
        yield _at(root, path, f"{_where(path)}missing required key {_missing(error)}")
    elif kind == "propertyNames" or "propertyNames" in error.relative_schema_path:
        yield from _bad_names(root, path, error)
    elif kind == "uniqueItems":
        yield _repeated_item(root, path, error.instance)
    else:
        yield _at(root, path, _where(path) + _message(error))


def _at(
    root: MapNode, path: tuple[PathPart, ...], message: str, *, key: bool = False
) -> Problem:
    node = locate(root, path, key=key)
    return Problem("error", node.line, node.column, format_path(path), message)


def _where(path: tuple[PathPart, ...]) -> str:
    return f"{format_path(path)}: " if path else ""


def _missing(error: Any) -> str:
    return "'" + str(error.message).split("'")[1] + "'"


def _unknown_keys(
    root: MapNode, path: tuple[PathPart, ...], error: Any
) -> Iterator[Problem]:
    known = list(error.schema.get("properties", {}))
    for name in error.instance:
        if name in known:
            continue
        hint = did_you_mean(name, known) or (
            f"; known keys: {', '.join(known)}" if known else ""
        )
        yield _at(
            root,
            (*path, name),
            f"{_where(path)}unknown key '{name}'{hint}",
            key=True,
        )


def _bad_names(
    root: MapNode, path: tuple[PathPart, ...], error: Any
) -> Iterator[Problem]:
    name = error.instance
    rule = error.schema.get("pattern") or error.schema.get("propertyNames", {}).get(
        "pattern", ""
    )
    yield _at(
        root,
        (*path, name),
        f"{_where(path)}{_show(name)} is not a valid name (it must match {rule})",
        key=True,
    )


def _repeated_item(root: MapNode, path: tuple[PathPart, ...], items: Any) -> Problem:
    """At the second occurrence of the first item a list repeats."""
    for index, item in enumerate(items):
        if any(type(seen) is type(item) and seen == item for seen in items[:index]):
            return _at(
                root,
                (*path, index),
                f"{_where(path)}lists {_show(item)} twice; remove the repeat",
            )
    return _at(root, path, f"{_where(path)}lists the same item twice")


def _message(error: Any) -> str:
    kind, value, rule = error.validator, error.instance, error.validator_value
    if kind == "type":
        return _type_message(value, rule)
    if kind == "enum":
        choices = ", ".join(f"'{choice}'" for choice in rule)
        return f"{_show(value)} is not one of {choices}" + did_you_mean(
            str(value), [str(choice) for choice in rule]
        )
    if kind == "const":
        return f"must be {_show(rule)}, got {_show(value)}"
    if kind == "pattern":
        return _pattern_message(value, rule, error)
    if kind in ("minimum", "exclusiveMinimum", "maximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "more than"}.get(
            kind, "at most"
        )
        return f"must be {word} {rule}, got {_show(value)}"
    if kind == "minItems":
        return "must not be an empty list"
    if kind == "minLength":
        return "must not be empty"
    if kind == "minProperties":
        return _min_properties_message(rule)
    return str(error.message)


def _type_message(value: Any, rule: Any) -> str:
    wanted = [rule] if isinstance(rule, str) else list(rule)
    names = " or ".join(_TYPE_NAMES.get(name, name) for name in wanted)
    message = f"expected {names}, got {_kind(value)}"
    if isinstance(value, bool) and "string" in wanted:
        message += " (quote it if you meant text)"
    return message


def _pattern_message(value: Any, rule: str, error: Any) -> str:
    if "\\{\\{" in rule:
        return (
            f"{_show(value)} is not an expression; write ${{{{ ... }}}} or true/false"
        )
    if "ms|s|m|h" in rule:
        return (
            f"{_show(value)} is not a duration; write 250ms, 30s, 5m, 1h30m "
            "or a number of seconds"
        )
    last = error.path[-1] if error.path else None
    what = error.schema.get("title") or (last if isinstance(last, str) else "value")
    return f"{_show(value)} is not a valid {what} (it must match {rule})"


def _min_properties_message(rule: int) -> str:
    if rule == 1:
        return "must not be empty"
    return "needs a class and at least one of exit_codes, signals, timeout, pattern"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"text {_show(value)}"
    return "a list" if isinstance(value, list) else "a mapping"


def _show(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"'{shown}'"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if value is None else str(value)
