"""The docs keep up with the schema and the command line, and their links work."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from runner.cli import commands  # noqa: F401  (registers the commands)
from runner.cli.main import cli

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
SCHEMA: dict[str, Any] = json.loads(
    (ROOT / "schemas" / "workflow.schema.json").read_text(encoding="utf-8")
)
WORKFLOW_REFERENCE = (DOCS / "workflow-reference.md").read_text(encoding="utf-8")
COMMAND_REFERENCE = (DOCS / "command-reference.md").read_text(encoding="utf-8")
MARKDOWN_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def schema_keys(node: Any) -> Iterator[str]:
    """Every property name declared anywhere in the schema."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            yield from properties
        for value in node.values():
            yield from schema_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from schema_keys(item)


def cli_commands(
    group: click.Group, prefix: str = "runner"
) -> Iterator[tuple[str, click.Command]]:
    """Every command and subcommand, as `runner circuits list`."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from cli_commands(command, path)


def option_flags(command: click.Command) -> list[str]:
    """The command's own option flags, long and short; `--help` is click's."""
    flags: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option):
            flags += [*param.opts, *param.secondary_opts]
    return flags


def without_fences(text: str) -> str:
    return _FENCE.sub("", text)


def sections(text: str) -> dict[str, str]:
    """Heading text to the text under it, up to the next heading of any level."""
    text = without_fences(text)
    found = list(_HEADING.finditer(text))
    bodies: dict[str, str] = {}
    for index, match in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(text)
        bodies[match.group(2).strip("`")] = text[match.end() : end]
    return bodies


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation gone, `-` for spaces."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result: set[str] = set()
    for match in _HEADING.finditer(without_fences(path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(path: Path) -> Iterator[str]:
    for match in _LINK.finditer(without_fences(path.read_text(encoding="utf-8"))):
        target = match.group(1)
        if not _SCHEME.match(target):
            yield target


COMMAND_SECTIONS = sections(COMMAND_REFERENCE)
COMMANDS = list(cli_commands(cli))
LINKS = [(path, target) for path in MARKDOWN_FILES for target in relative_links(path)]


@pytest.mark.parametrize("key", sorted(set(schema_keys(SCHEMA))))
def test_every_schema_key_is_in_the_workflow_reference(key: str) -> None:
    """Each key the JSON Schema allows appears as a code span in the reference."""
    assert f"`{key}`" in WORKFLOW_REFERENCE, (
        f"schema key '{key}' is not documented in docs/workflow-reference.md"
    )


def test_the_schema_walk_finds_keys_at_every_level() -> None:
    """The walk reaches top-level, step, retry, backoff and compensate keys."""
    keys = set(schema_keys(SCHEMA))

    assert {"version", "steps", "on_crash", "retry_on", "jitter"} <= keys
    assert {"half_open_max_calls", "exit_codes", "concurrency", "kill_grace"} <= keys


@pytest.mark.parametrize("option", option_flags(cli), ids=str)
def test_every_global_option_is_documented(option: str) -> None:
    """Options of `runner` itself are in the global options section."""
    body = COMMAND_SECTIONS.get("Global options", "")

    assert f"`{option}" in body, f"runner {option} is not under 'Global options'"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_a_section(path: str, command: click.Command) -> None:
    """Each command and subcommand has its own heading, `runner NAME`."""
    assert path in COMMAND_SECTIONS, (
        f"docs/command-reference.md has no heading '{path}'"
    )


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_documented_under_its_command(
    path: str, command: click.Command
) -> None:
    """Each option of a command appears as a code span in that command's section."""
    body = COMMAND_SECTIONS.get(path, "")
    missing = [flag for flag in option_flags(command) if f"`{flag}`" not in body]

    assert not missing, f"'{path}' does not document {', '.join(missing)}"


def test_the_command_walk_finds_subcommands() -> None:
    """Nested groups are walked: circuits' subcommands are among the commands."""
    paths = {path for path, _ in COMMANDS}

    assert {"runner run", "runner retry", "runner circuits record-failure"} <= paths


@pytest.mark.parametrize(
    ("path", "target"), LINKS, ids=[f"{p.name}:{t}" for p, t in LINKS]
)
def test_every_relative_link_resolves(path: Path, target: str) -> None:
    """A relative link names an existing file, and an existing heading if any."""
    file_part, _, fragment = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path

    assert linked.exists(), f"{path.name} links to missing {file_part}"
    if fragment and linked.suffix == ".md":
        assert fragment in anchors(linked), (
            f"{path.name} links to #{fragment}, not a heading of {linked.name}"
        )


def test_the_docs_have_links_to_check() -> None:
    """The link check is not vacuous: README links to the docs."""
    assert any(path.name == "README.md" for path, _ in LINKS)
