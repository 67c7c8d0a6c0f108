"""Safe YAML loading with positions: YAML 1.2 core semantics, hard limits.

PyYAML's own loaders resolve YAML 1.1 types (`on`, `yes`, `NO` become
booleans, `010` is eight), keep the last of duplicate keys silently, expand
aliases without bound and recurse per nesting level. So we read PyYAML's event
stream (the C parser where it is installed) and build the tree ourselves, in
one iterative pass that:

- counts nodes as aliases would expand them, and stops counting-only once the
  budget is spent, so a "billion laughs" file is refused before anything walks
  the data;
- refuses nesting past a depth limit before it can recurse anywhere;
- resolves plain scalars by the YAML 1.2 core schema and refuses other tags;
- reports duplicate keys with the line of the first occurrence;
- merges `<<` keys, explicit keys winning.

Every node keeps its 1-based line and column for error messages.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from runner.spec.problems import PathPart, Problem

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

CORE = "tag:yaml.org,2002:"
_CORE_TAGS = {f"{CORE}{name}" for name in ("str", "int", "float", "bool", "null")}
_COLLECTION_TAGS = {f"{CORE}map", f"{CORE}seq", "!"}
_SCALAR_TAGS = _CORE_TAGS | {"!"}

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_CORE_STARTS = frozenset("~nNtTfF+-.0123456789")  # first characters of the above


@dataclass(eq=False)
class Node:
    line: int
    column: int


@dataclass(eq=False)
class Scalar(Node):
    value: Any = None
    text: str = ""
    plain: bool = False  # unquoted and untagged: only a plain `<<` merges


@dataclass(eq=False)
class Entry:
    key: Scalar
    value: Node


@dataclass(eq=False)
class MapNode(Node):
    entries: dict[str, Entry] = field(default_factory=dict)


@dataclass(eq=False)
class SeqNode(Node):
    items: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    path: str
    text: str
    root: MapNode


class LoadError(Exception):
    """The file cannot be read as one workflow document; one problem says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _fail(line: int, column: int, message: str) -> LoadError:
    return LoadError(Problem("error", line, column, "", message))


def load_file(path: str) -> Document:
    """Read, decode and parse `path`; raise LoadError with the first problem."""
    text = decode(read_bounded(path))
    return Document(path, text, parse(text))


def read_bounded(path: str) -> bytes:
    """The file's bytes, refusing what is not a regular file or is too large."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before the check.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _fail(1, 1, "not a regular file; give the path of a .yml file")
            if info.st_size > MAX_FILE_BYTES:
                raise _fail(1, 1, _too_large(info.st_size))
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise _fail(1, 1, f"cannot read the file: {error.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _fail(1, 1, _too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return f"workflow file is {size:,} bytes (limit {MAX_FILE_BYTES:,}); split it"


def decode(data: bytes) -> str:
    """UTF-8 text, a leading BOM dropped; other encodings are refused."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _fail(1, 1, "file is UTF-16, not UTF-8; save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise _fail(
            line,
            column,
            f"not valid UTF-8 at byte {error.start}; save the file as UTF-8",
        ) from None


def parse(text: str) -> MapNode:
    """Build the positioned tree of the one document in `text`."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    builder = _Builder()
    try:
        for event in yaml.parse(text, Loader=loader):
            builder.feed(event)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        if mark is not None and "nesting depth" in (error.problem or ""):
            _find_depth_limit(text, mark.index)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise _fail(line, column, _syntax_message(error, text)) from None
    except yaml.reader.ReaderError as error:
        line, column = _position(text, error.position)
        char = error.character
        code = char if isinstance(char, int) else ord(char)
        raise _fail(
            line, column, f"character U+{code:04X} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as error:
        raise _fail(1, 1, f"YAML error: {error}") from None
    return builder.finish()


def _find_depth_limit(text: str, stop: int) -> None:
    """Raise our depth error where it belongs, not where libyaml gave up.

    libyaml's scanner can read far ahead (to its own limit, 1000 levels) before
    the first event reaches the builder, so re-read the text up to that point
    with the pure-Python parser, which hands over events as it goes.
    """
    if stop > 65536:
        return
    builder = _Builder()
    try:
        for event in yaml.parse(text[:stop], Loader=yaml.SafeLoader):
            builder.feed(event)
    except yaml.YAMLError:
        return


def _syntax_message(error: yaml.MarkedYAMLError, text: str) -> str:
    problem = error.problem or ""
    if "nesting depth" in problem:
        return f"nesting deeper than {MAX_DEPTH} levels; flatten the file"
    mark = error.problem_mark
    if mark is not None and text[mark.index : mark.index + 1] == "\t":
        return "a tab cannot indent YAML; use spaces"
    context = error.context
    start = error.context_mark
    if context and start is not None and mark is not None and start.line != mark.line:
        context += f" at line {start.line + 1}, column {start.column + 1}"
    parts = [part for part in (context, problem) if part]
    return "YAML syntax: " + ", ".join(parts) if parts else "YAML syntax error"


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


@dataclass(eq=False)
class _Frame:
    node: MapNode | SeqNode
    size: int = 1
    key: Scalar | None = None
    merges: list[tuple[Scalar, Node]] = field(default_factory=list)
    anchor: str | None = None


class _Builder:
    """Turns parser events into nodes, enforcing the limits as it goes."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Node, int]] = {}
        self.expanded = 0
        self.documents = 0
        self.root: Node | None = None
        self.first_over: tuple[int, int] | None = None

    def feed(self, event: yaml.Event) -> None:
        mark = event.start_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if isinstance(event, yaml.ScalarEvent):  # the most common, tested first
            self._scalar(event, line, column)
        elif isinstance(event, yaml.DocumentStartEvent):
            self._document(line, column)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event, line, column)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self._start(event, line, column)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self._end()

    def _document(self, line: int, column: int) -> None:
        self.documents += 1
        if self.documents > 1:
            raise _fail(
                line,
                column,
                "expected exactly one YAML document, found a second one; "
                "remove the '---' or split the file",
            )

    def _count(self, size: int, line: int, column: int) -> None:
        self.expanded += size
        if self.expanded > MAX_NODES and self.first_over is None:
            self.first_over = (line, column)

    def _scalar(self, event: yaml.ScalarEvent, line: int, column: int) -> None:
        _check_tag(event.tag, line, column, _SCALAR_TAGS)
        plain = event.implicit[0] and event.style in (None, "")
        node = Scalar(
            line, column, resolve(event.value, event.tag, plain, line, column)
        )
        node.text = event.value
        node.plain = bool(plain)
        self._count(1, line, column)
        self._add(node, 1, event.anchor)

    def _alias(self, event: yaml.AliasEvent, line: int, column: int) -> None:
        if event.anchor not in self.anchors:
            raise _fail(line, column, f"undefined alias '*{event.anchor}'")
        node, size = self.anchors[event.anchor]
        self._count(size, line, column)
        self._add(node, size, None)

    def _start(self, event: Any, line: int, column: int) -> None:
        _check_tag(event.tag, line, column, _COLLECTION_TAGS)
        if len(self.stack) >= MAX_DEPTH:
            raise _fail(
                line,
                column,
                f"nesting deeper than {MAX_DEPTH} levels; flatten the file",
            )
        mapping = isinstance(event, yaml.MappingStartEvent)
        node: MapNode | SeqNode = (
            MapNode(line, column) if mapping else SeqNode(line, column)
        )
        self._count(1, line, column)
        self.stack.append(_Frame(node, anchor=event.anchor))

    def _end(self) -> None:
        frame = self.stack.pop()
        if isinstance(frame.node, MapNode):
            _apply_merges(frame.node, frame.merges)
        self._add(frame.node, frame.size, frame.anchor)

    def _add(self, node: Node, size: int, anchor: str | None) -> None:
        if anchor is not None:
            self.anchors[anchor] = (node, size)
        if not self.stack:
            self.root = node
            return
        parent = self.stack[-1]
        parent.size += size
        if self.first_over is not None:
            return  # over budget: only counting from here on
        if isinstance(parent.node, SeqNode):
            parent.node.items.append(node)
        elif parent.key is None:
            parent.key = _as_key(node)
        else:
            self._set_entry(parent, parent.key, node)
            parent.key = None

    @staticmethod
    def _set_entry(parent: _Frame, key: Scalar, value: Node) -> None:
        assert isinstance(parent.node, MapNode)
        if key.plain and key.text == "<<":
            parent.merges.append((key, value))
            return
        first = parent.node.entries.get(key.text)
        if first is not None:
            raise _fail(
                key.line,
                key.column,
                f"duplicate key '{key.text}' (first defined on line {first.key.line})",
            )
        parent.node.entries[key.text] = Entry(key, value)

    def finish(self) -> MapNode:
        if self.first_over is not None:
            line, column = self.first_over
            raise _fail(
                line,
                column,
                f"document expands to {self.expanded:,} nodes through aliases "
                f"(limit {MAX_NODES:,}); use fewer aliases",
            )
        root = self.root
        if root is None or (isinstance(root, Scalar) and root.value is None):
            raise _fail(1, 1, "workflow file is empty; start with 'version: 1'")
        if not isinstance(root, MapNode):
            raise _fail(
                root.line,
                root.column,
                "the top level must be a mapping with 'version', 'name' and 'steps'",
            )
        return root


def _as_key(node: Node) -> Scalar:
    if not isinstance(node, Scalar):
        raise _fail(node.line, node.column, "a mapping key must be plain text")
    return node


def _apply_merges(node: MapNode, merges: list[tuple[Scalar, Node]]) -> None:
    """`<<: *base` and `<<: [*a, *b]`: explicit keys win, then earlier sources."""
    for key, value in merges:
        sources = value.items if isinstance(value, SeqNode) else [value]
        for source in sources:
            if not isinstance(source, MapNode):
                # An alias's node sits at its anchor, before the merge: name the key.
                at = (
                    source
                    if (source.line, source.column) > (key.line, key.column)
                    else key
                )
                raise _fail(
                    at.line,
                    at.column,
                    f"'{key.text}' merges mappings only; give an alias to a mapping",
                )
            for name, entry in source.entries.items():
                node.entries.setdefault(name, entry)


def _check_tag(tag: str | None, line: int, column: int, allowed: set[str]) -> None:
    if tag is None or tag in allowed:
        return
    shown = "!!" + tag[len(CORE) :] if tag.startswith(CORE) else tag
    raise _fail(
        line, column, f"unsupported tag '{shown}'; only YAML core tags are allowed"
    )


def resolve(text: str, tag: str | None, plain: bool, line: int, column: int) -> Any:
    """The value of a scalar under the YAML 1.2 core schema."""
    if (tag is None and not plain) or tag in ("!", f"{CORE}str"):
        return text
    value = _core_value(text)
    if tag is None:
        return value
    wanted = {
        f"{CORE}int": int,
        f"{CORE}float": float,
        f"{CORE}bool": bool,
        f"{CORE}null": type(None),
    }[tag]
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not wanted:
        name = tag[len(CORE) :]
        raise _fail(line, column, f"'{text}' is not a valid !!{name}")
    return value


def _core_value(text: str) -> Any:
    if text and text[0] not in _CORE_STARTS:
        return text  # most plain text: no core pattern can match
    if _NULL.match(text):
        return None
    if _BOOL.match(text):
        return text.lower() == "true"
    if _INT10.match(text):
        return int(text, 10)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


def to_data(node: Node) -> Any:
    """Plain Python data (dicts, lists, scalars) for schema validation."""
    if isinstance(node, Scalar):
        return node.value
    if isinstance(node, SeqNode):
        return [to_data(item) for item in node.items]
    assert isinstance(node, MapNode)
    return {name: to_data(entry.value) for name, entry in node.entries.items()}


def locate(root: Node, path: tuple[PathPart, ...], *, key: bool = False) -> Node:
    """The node at `path` (or its key node, with `key`), or the deepest found."""
    node: Node = root
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, MapNode) and isinstance(part, str) and part in node.entries:
            entry = node.entries[part]
            node = entry.key if key and last else entry.value
        elif (
            isinstance(node, SeqNode)
            and isinstance(part, int)
            and part < len(node.items)
        ):
            node = node.items[part]
        else:
            break
    return node
