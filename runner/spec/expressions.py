"""The `${{ ... }}` expression language: a strict subset of CEL syntax.

An expression reads `params.NAME`, `env.NAME`, `steps.NAME.status` and
`steps.NAME.outputs.KEY` (or the index forms `steps['NAME']`, `params['NAME']`),
and combines literals with `== != < <= > >= in && || !` and parentheses.

The parser is our own rather than a CEL library's: CEL cannot read dashed step
names (`steps.find-stale.status`), the libraries accept calls and macros that
SPEC section 1 forbids, importing them costs a noticeable part of start-up, and
validation needs exact offsets for its `FILE:LINE:COL` messages.

Evaluation follows CEL's typing: `==` between different types is false, ints
and doubles compare by value (exactly, even beyond 2**53), ordering different
types is an error, `&&` and `||` take bools and short-circuit left to right
(unlike CEL, an error on the left is not absorbed by the right), `!` takes a
bool, and `in` looks for a value in a list. `env.NAME` of an unset variable is
the empty string, as in GitHub Actions; an unset param, a step with no result
and an output the step did not write are errors.
"""

from __future__ import annotations

import difflib
import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

Value: TypeAlias = "str | int | float | bool | list[Value] | None"

MAX_SOURCE = 4096
MAX_DEPTH = 32
MAX_TEMPLATES = 64
ROOTS = ("params", "env", "steps")
STEP_FIELDS = ("status", "outputs")

_WHITESPACE = " \t\n\r\f"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DASHED_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NUMBER = re.compile(
    r"0x[0-9A-Fa-f]+|[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+(?:[eE][+-]?[0-9]+)?"
)
_LEADING_DOT_NUMBER = re.compile(r"\.[0-9]")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE = re.compile(
    r"\\(?:([\\?\"'`abfnrtv])|[xX]([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})"
    r"|U([0-9A-Fa-f]{8})|([0-3][0-7]{2}))"
)
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"
}  # fmt: skip
# Longest first, so that `<=` is not read as `<` then `=`. The operators after
# `.` are not in the language; they are read so the parser can say so.
_OPERATORS = (
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",",
    ".", "+", "-", "*", "/", "%", "?", ":", "{", "}", "=", "&", "|",
)  # fmt: skip
_RELATIONS = ("==", "!=", "<", "<=", ">", ">=", "in")
_MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})
_DID_YOU_MEAN = {"=": "==", "&": "&&", "|": "||", "and": "&&", "or": "||", "not": "!"}
_ROOT_SYNONYMS = {"inputs": "params", "vars": "params", "needs": "steps"}
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1


class ExpressionError(Exception):
    """A bad expression: `message` is one line, `offset` is 0-based in the source."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def shifted(self, delta: int) -> ExpressionError:
        """The same error with its offset moved, to point into an enclosing text."""
        return type(self)(self.message, self.offset + delta)


class EvaluationError(ExpressionError):
    """An expression that parsed but cannot be evaluated in this context."""


@dataclass(frozen=True)
class Reference:
    root: str
    """`params`, `env` or `steps`."""
    name: str
    """The param, environment variable or step named."""
    field: str | None
    """For steps: `status` or `outputs`; else None."""
    key: str | None
    """For `steps.NAME.outputs.KEY`: KEY; else None."""
    offset: int
    """Where the reference starts in the expression's source."""

    @property
    def path(self) -> str:
        """The reference in dotted form, for messages: `steps.build.outputs.url`."""
        parts = (self.root, self.name, self.field, self.key)
        return ".".join(part for part in parts if part is not None)


@dataclass(frozen=True)
class StepView:
    """What an expression may see of a step that has finished."""

    status: str
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The values references resolve to."""

    params: Mapping[str, Value] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    """The environment the step's command would get."""
    steps: Mapping[str, StepView] = field(default_factory=dict)


class _Node(Protocol):
    @property
    def offset(self) -> int: ...

    def evaluate(self, context: Context) -> Value: ...

    def references(self) -> Iterator[Reference]: ...


@dataclass(frozen=True)
class Expression:
    """A parsed expression; build it with `parse`."""

    source: str
    _tree: _Node = field(repr=False, compare=False)

    def references(self) -> tuple[Reference, ...]:
        """Every reference, in source order; offsets are into `source`."""
        return tuple(self._tree.references())

    def evaluate(self, context: Context) -> Value:
        """The expression's value; raises EvaluationError."""
        return self._tree.evaluate(context)


@dataclass(frozen=True)
class Template:
    """One `${{ ... }}` in a string."""

    start: int
    """Offset of the `$`."""
    end: int
    """Offset just past the closing `}}`."""
    source: str
    """The expression inside, without surrounding whitespace."""
    inner_offset: int
    """Offset of `source` in the string."""

    def parse(self) -> Expression:
        """The parsed expression; an error's offset points into the string."""
        try:
            return parse(self.source)
        except ExpressionError as error:
            raise error.shifted(self.inner_offset) from None


# Tokens and tree nodes are NamedTuples: as frozen dataclasses they would add
# several milliseconds to every start of the command line.


class _Token(NamedTuple):
    kind: str
    """`int`, `double`, `string`, `name`, `op` or `end`."""
    text: str
    offset: int
    value: Value = None

    @property
    def end(self) -> int:
        return self.offset + len(self.text)

    def is_(self, text: str) -> bool:
        return self.kind in ("op", "name") and self.text == text


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = _skip_space(source, 0)
    while pos < len(source):
        tokens.append(_next_token(source, pos, tokens))
        pos = _skip_space(source, tokens[-1].end)
    tokens.append(_Token("end", "", len(source)))
    return tokens


def _skip_space(source: str, pos: int) -> int:
    while pos < len(source) and source[pos] in _WHITESPACE:
        pos += 1
    return pos


def _next_token(source: str, pos: int, before: list[_Token]) -> _Token:
    # Step names and output keys may contain `-` and start with a digit, so the
    # word after `steps.` or `outputs.` is read by the step-name rule.
    if _after_dashed_root(before) and (match := _DASHED_NAME.match(source, pos)):
        return _Token("name", match.group(), pos)
    if source[pos] in "'\"":
        return _string_token(source, pos, pos)
    if _starts_number(source, pos, before):
        return _number_token(source, pos)
    if match := _NAME.match(source, pos):
        return _name_token(source, pos, match.group())
    for text in _OPERATORS:
        if source.startswith(text, pos):
            return _Token("op", text, pos)
    raise ExpressionError(f"unexpected character {source[pos]!r}", pos)


def _after_dashed_root(before: list[_Token]) -> bool:
    return (
        len(before) >= 2
        and before[-1].is_(".")
        and before[-2].kind == "name"
        and before[-2].text in ("steps", "outputs")
    )


def _starts_number(source: str, pos: int, before: list[_Token]) -> bool:
    if source[pos].isascii() and source[pos].isdigit():
        return True

    # `.5` is a number, but in `x.5` the dot selects a field.
    after_value = bool(before) and (before[-1].kind != "op" or before[-1].text in ")]")
    return not after_value and bool(_LEADING_DOT_NUMBER.match(source, pos))


def _number_token(source: str, pos: int) -> _Token:
    match = _NUMBER.match(source, pos)
    assert match is not None  # _starts_number saw a digit
    text, end = match.group(), match.end()
    if end < len(source) and source[end] in "uU":
        message = f"unsigned integers are not supported: {text + 'u'!r}"
        raise ExpressionError(message, pos)
    if tail := _NAME.match(source, end):
        raise ExpressionError(f"invalid number {text + tail.group()!r}", pos)

    if text.startswith("0x"):
        return _Token("int", text, pos, int(text, 16))
    if any(char in text for char in ".eE"):
        return _double_token(text, pos)
    return _Token("int", text, pos, int(text))


def _double_token(text: str, pos: int) -> _Token:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ExpressionError(f"double literal out of range: {text!r}", pos)
    return _Token("double", text, pos, value)


def _name_token(source: str, pos: int, name: str) -> _Token:
    quoted = source[pos + len(name) : pos + len(name) + 1] in ("'", '"')
    if quoted and name in ("r", "R"):
        return _string_token(source, pos, pos + 1)
    if quoted and name.lower() in ("b", "rb", "br"):
        raise ExpressionError("bytes literals are not supported; use a string", pos)
    return _Token("name", name, pos)


def _string_token(source: str, start: int, quote_at: int) -> _Token:
    value, end = _scan_string(source, quote_at, raw=quote_at > start)
    return _Token("string", source[start:end], start, value)


def _scan_string(source: str, start: int, *, raw: bool) -> tuple[str, int]:
    """The value of the string literal opening at `start`, and where it ends."""
    quote = source[start]
    if source.startswith(quote * 3, start):
        quote *= 3

    chars: list[str] = []
    pos = start + len(quote)
    while not source.startswith(quote, pos):
        if pos >= len(source) or (len(quote) == 1 and source[pos] in "\r\n"):
            message = f"unterminated string; expected a closing {quote!r}"
            raise ExpressionError(message, start)
        if source[pos] == "\\" and not raw:
            char, pos = _escape(source, pos)
        else:
            char, pos = source[pos], pos + 1
        chars.append(char)
    return "".join(chars), pos + len(quote)


def _escape(source: str, pos: int) -> tuple[str, int]:
    match = _ESCAPE.match(source, pos)
    if match is None:
        message = (
            f"invalid escape {source[pos : pos + 2]!r} in string; expected one of"
            r" \n \t \r \\ \' \" \xHH \uHHHH \UHHHHHHHH"
        )
        raise ExpressionError(message, pos)

    simple, hex2, hex4, hex8, octal = match.groups()
    if simple:
        return _SIMPLE_ESCAPES.get(simple, simple), match.end()
    code = int(octal, 8) if octal else int(hex2 or hex4 or hex8, 16)
    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        raise ExpressionError(f"invalid code point in escape {match.group()!r}", pos)
    return chr(code), match.end()


# Syntax tree


class _Literal(NamedTuple):
    value: Value
    offset: int

    def evaluate(self, context: Context) -> Value:
        return self.value

    def references(self) -> Iterator[Reference]:
        return iter(())


class _List(NamedTuple):
    items: tuple[_Node, ...]
    offset: int

    def evaluate(self, context: Context) -> Value:
        return [item.evaluate(context) for item in self.items]

    def references(self) -> Iterator[Reference]:
        for item in self.items:
            yield from item.references()


class _Ref(NamedTuple):
    reference: Reference

    @property
    def offset(self) -> int:
        return self.reference.offset

    def evaluate(self, context: Context) -> Value:
        return _resolve(self.reference, context)

    def references(self) -> Iterator[Reference]:
        yield self.reference


class _Not(NamedTuple):
    operand: _Node
    offset: int

    def evaluate(self, context: Context) -> Value:
        return not _boolean(self.operand, context, "!")

    def references(self) -> Iterator[Reference]:
        return self.operand.references()


class _Logic(NamedTuple):
    operator: str
    """`&&` or `||`; a chain of one operator is one node, so no deep trees."""
    operands: tuple[_Node, ...]
    offset: int

    def evaluate(self, context: Context) -> Value:
        decisive = self.operator == "||"
        for operand in self.operands:
            if _boolean(operand, context, self.operator) is decisive:
                return decisive
        return not decisive

    def references(self) -> Iterator[Reference]:
        for operand in self.operands:
            yield from operand.references()


class _Relation(NamedTuple):
    """`a < b == c`: CEL's relations share one level and group to the left."""

    first: _Node
    rest: tuple[tuple[_Token, _Node], ...]
    offset: int

    def evaluate(self, context: Context) -> Value:
        value = self.first.evaluate(context)
        for token, operand in self.rest:
            value = _relate(token, value, operand.evaluate(context))
        return value

    def references(self) -> Iterator[Reference]:
        yield from self.first.references()
        for _, operand in self.rest:
            yield from operand.references()


# Parser


def parse(source: str) -> Expression:
    """Parse an expression (the text inside `${{ }}`); raises ExpressionError."""
    if len(source) > MAX_SOURCE:
        message = f"expression is longer than {MAX_SOURCE} characters"
        raise ExpressionError(message, MAX_SOURCE)
    if not source.strip(_WHITESPACE):
        raise ExpressionError("empty expression; expected a value", 0)

    parser = _Parser(_tokenize(source))
    tree = parser.expression()
    parser.expect_end()
    return Expression(source, tree)


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def expect(self, text: str, expected: str) -> _Token:
        if not self.peek().is_(text):
            raise self.unexpected(self.peek(), expected)
        return self.take()

    def expect_end(self) -> None:
        if self.peek().kind != "end":
            raise self.unexpected(self.peek(), "an operator or the end")

    @contextmanager
    def nested(self, token: _Token) -> Iterator[None]:
        # Bounding the depth here keeps parsing and evaluation far from
        # Python's recursion limit whatever the input.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            message = f"expression is nested more than {MAX_DEPTH} levels deep"
            raise ExpressionError(message, token.offset)
        yield
        self.depth -= 1

    def expression(self) -> _Node:
        return self.logic("||", lambda: self.logic("&&", self.relation))

    def logic(self, symbol: str, operand: Callable[[], _Node]) -> _Node:
        operands = [operand()]
        while self.peek().is_(symbol):
            self.take()
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return _Logic(symbol, tuple(operands), operands[0].offset)

    def relation(self) -> _Node:
        first = self.unary()
        rest: list[tuple[_Token, _Node]] = []
        while any(self.peek().is_(text) for text in _RELATIONS):
            token = self.take()
            rest.append((token, self.unary()))
        return _Relation(first, tuple(rest), first.offset) if rest else first

    def unary(self) -> _Node:
        token = self.peek()
        if token.is_("!"):
            self.take()
            with self.nested(token):
                return _Not(self.unary(), token.offset)
        if token.is_("-"):
            return self.after_value(self.negative(self.take()))
        return self.after_value(self.primary())

    def negative(self, minus: _Token) -> _Node:
        # `-5` is a literal, as in JSON; anything else after `-` is arithmetic.
        if self.peek().kind not in ("int", "double"):
            message = "arithmetic is not supported: '-'; only a number can be negative"
            raise ExpressionError(message, minus.offset)
        return _number(self.take(), minus)

    def primary(self) -> _Node:
        token = self.take()
        if token.kind in ("int", "double"):
            return _number(token, None)
        if token.kind == "string":
            return _Literal(token.value, token.offset)
        if token.is_("("):
            return self.parenthesized(token)
        if token.is_("["):
            return self.list_literal(token)
        if token.kind == "name":
            return self.name(token)
        raise self.unexpected(token, "a value")

    def parenthesized(self, opening: _Token) -> _Node:
        with self.nested(opening):
            inner = self.expression()
            self.expect(")", "')'")
        return inner

    def list_literal(self, opening: _Token) -> _Node:
        items: list[_Node] = []
        with self.nested(opening):
            while not self.peek().is_("]"):
                items.append(self.expression())
                if not self.peek().is_(","):
                    break
                self.take()
            self.expect("]", "',' or ']'")
        return _List(tuple(items), opening.offset)

    def name(self, token: _Token) -> _Node:
        literals: dict[str, Value] = {"true": True, "false": False, "null": None}
        if token.text in literals:
            return _Literal(literals[token.text], token.offset)
        if self.peek().is_("("):
            raise _call_error(token)
        if token.text in ROOTS:
            return _Ref(self.reference(token))
        raise _unknown_name(token)

    def reference(self, root: _Token) -> Reference:
        if root.text != "steps":
            name = self.selector(root, root.text, "a name, like {}.NAME")
            return Reference(root.text, name, None, None, root.offset)

        step = self.selector(root, "steps", "a step name, like steps.NAME")
        path = f"steps.{step}"
        field_token = self.peek(1)
        kind = self.selector(root, path, "'.status' or '.outputs.KEY'")
        if kind not in STEP_FIELDS:
            raise _unknown_field(field_token, kind, path)
        if kind == "status":
            return Reference("steps", step, kind, None, root.offset)
        key = self.selector(root, f"{path}.outputs", "a key, like {}.KEY")
        return Reference("steps", step, kind, key, root.offset)

    def selector(self, root: _Token, path: str, expected: str) -> str:
        """The name in `.NAME` or `['NAME']` after `path`."""
        expected = expected.format(path)
        if self.peek().is_("["):
            self.take()
            return self.index_key(path)
        if not self.peek().is_("."):
            message = f"'{path}' must be followed by {expected}"
            raise ExpressionError(message, root.offset)

        self.take()
        name = self.take()
        if name.kind != "name":
            raise self.unexpected(name, expected)
        return name.text

    def index_key(self, path: str) -> str:
        key = self.take()
        if key.kind != "string":
            message = f"an index must be a quoted string, like {path}['NAME']"
            raise ExpressionError(message, key.offset)
        self.expect("]", "']'")
        assert isinstance(key.value, str)
        return key.value

    def after_value(self, node: _Node) -> _Node:
        token = self.peek()
        if not (token.is_(".") or token.is_("[")):
            return node
        if token.is_(".") and self.peek(1).kind == "name" and self.peek(2).is_("("):
            raise _call_error(self.peek(1))
        shown = token.text + (self.peek(1).text if self.peek(1).kind == "name" else "")
        if isinstance(node, _Ref):
            message = f"unexpected {shown!r} after '{node.reference.path}'"
            raise ExpressionError(f"{message}; the reference is complete", token.offset)
        message = "field access and indexing are only allowed on params, env and steps"
        raise ExpressionError(f"{message}: {shown!r}", token.offset)

    def dash_hint(self, token: _Token) -> str:
        """A hint for `params.my-name`, where `-` reads as a subtraction."""
        index = self.tokens.index(token)
        before = self.tokens[index - 1] if index else None
        if token.text != "-" or not before or before.end != token.offset:
            return ""
        return "; to name something with '-' in it, quote it: params['my-name']"

    def unexpected(self, token: _Token, expected: str) -> ExpressionError:
        if token.kind == "end":
            message = f"unexpected end of expression; expected {expected}"
            return ExpressionError(message, token.offset)
        if token.kind == "op" and token.text in _REFUSED:
            message = f"{_REFUSED[token.text]}: {token.text!r}{self.dash_hint(token)}"
            return ExpressionError(message, token.offset)
        if token.kind in ("op", "name") and token.text in _DID_YOU_MEAN:
            hint = _DID_YOU_MEAN[token.text]
            message = f"unexpected {token.text!r}; did you mean {hint!r}?"
            return ExpressionError(message, token.offset)
        message = f"unexpected {token.text!r}; expected {expected}"
        return ExpressionError(message, token.offset)


_REFUSED = {
    "+": "arithmetic is not supported",
    "-": "arithmetic is not supported",
    "*": "arithmetic is not supported",
    "/": "arithmetic is not supported",
    "%": "arithmetic is not supported",
    "?": "the conditional operator '? :' is not supported",
    ":": "the conditional operator '? :' is not supported",
    "(": "function calls are not allowed in expressions",
    "{": "map literals are not supported",
}


def _number(token: _Token, minus: _Token | None) -> _Literal:
    value = token.value
    assert isinstance(value, int | float)
    if minus is not None:
        value = -value
    if token.kind == "int" and not _MIN_INT <= value <= _MAX_INT:
        text = ("-" if minus else "") + token.text
        message = f"integer literal out of range: {text!r}"
        raise ExpressionError(message, (minus or token).offset)
    return _Literal(value, (minus or token).offset)


def _call_error(name: _Token) -> ExpressionError:
    if name.text in _MACROS:
        message = f"macros are not allowed in expressions: {name.text!r}"
    else:
        message = f"function calls are not allowed in expressions: '{name.text}(...)'"
    return ExpressionError(message, name.offset)


def _unknown_name(token: _Token) -> ExpressionError:
    if token.text in _DID_YOU_MEAN:
        hint = _DID_YOU_MEAN[token.text]
        message = f"unexpected {token.text!r}; did you mean {hint!r}?"
        return ExpressionError(message, token.offset)

    close = _ROOT_SYNONYMS.get(token.text) or _closest(token.text, ROOTS)
    message = f"unknown name {token.text!r}; expected params, env or steps"
    if close:
        message = f"unknown name {token.text!r}; did you mean {close!r}?"
    return ExpressionError(message, token.offset)


def _unknown_field(token: _Token, kind: str, path: str) -> ExpressionError:
    close = _closest(kind, STEP_FIELDS)
    hint = f"did you mean {close!r}?" if close else "expected 'status' or 'outputs'"
    return ExpressionError(f"unknown field {kind!r} of {path}; {hint}", token.offset)


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1)
    return matches[0] if matches else None


# Evaluation


def _resolve(reference: Reference, context: Context) -> Value:
    if reference.root == "params":
        if reference.name not in context.params:
            raise EvaluationError(f"{reference.path} is not set", reference.offset)
        return context.params[reference.name]
    if reference.root == "env":
        return context.env.get(reference.name, "")

    step = context.steps.get(reference.name)
    if step is None:
        message = f"steps.{reference.name} has not run"
        raise EvaluationError(message, reference.offset)
    if reference.field == "status":
        return step.status
    # An output a step did not write (or a skipped step's) is null, shown as
    # empty text, as GitHub Actions does: `if` can test it, commands get "".
    return step.outputs.get(reference.key or "")


def _boolean(node: _Node, context: Context, symbol: str) -> bool:
    value = node.evaluate(context)
    if not isinstance(value, bool):
        message = f"{symbol!r} needs a bool, got {_type_name(value)}"
        raise EvaluationError(message, node.offset)
    return value


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _relate(token: _Token, left: Value, right: Value) -> bool:
    if token.text == "==":
        return _equal(left, right)
    if token.text == "!=":
        return not _equal(left, right)
    if token.text == "in":
        return _contains(token, left, right)

    if _type_name(left) != _type_name(right) and not _both_numbers(left, right):
        left_type, right_type = _type_name(left), _type_name(right)
        message = f"cannot compare {left_type} with {right_type} using {token.text!r}"
        raise EvaluationError(message, token.offset)
    if isinstance(left, list) or left is None:
        message = f"{_type_name(left)} values have no order; {token.text!r} needs"
        raise EvaluationError(f"{message} numbers, strings or bools", token.offset)
    return _ORDERINGS[token.text](left, right)


def _contains(token: _Token, item: Value, collection: Value) -> bool:
    if not isinstance(collection, list):
        message = f"'in' needs a list on its right, got {_type_name(collection)}"
        raise EvaluationError(message, token.offset)
    return any(_equal(item, element) for element in collection)


def _equal(left: Value, right: Value) -> bool:
    if _both_numbers(left, right):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        pairs = zip(left, right, strict=False)
        return len(left) == len(right) and all(_equal(a, b) for a, b in pairs)
    return _type_name(left) == _type_name(right) and left == right


def _both_numbers(left: Value, right: Value) -> bool:
    return {_type_name(left), _type_name(right)} <= {"int", "double"}


def _type_name(value: Value) -> str:
    """CEL's name for the type of `value`; bool is not an int here."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "list"


# Templates and rendering


def find_templates(text: str) -> list[Template]:
    """Every `${{ ... }}` in `text`, in order; raises ExpressionError."""
    templates: list[Template] = []
    start = text.find("${{")
    while start != -1:
        if len(templates) == MAX_TEMPLATES:
            message = f"more than {MAX_TEMPLATES} expressions in one string"
            raise ExpressionError(message, start)
        templates.append(_template_at(text, start))
        start = text.find("${{", templates[-1].end)
    return templates


def _template_at(text: str, start: int) -> Template:
    end = _template_end(text, start)
    inner = text[start + 3 : end - 2]
    source = inner.strip(_WHITESPACE)
    leading = len(inner) - len(inner.lstrip(_WHITESPACE))
    return Template(start, end, source, start + 3 + leading)


def _template_end(text: str, start: int) -> int:
    # A `}}` inside a string literal does not close the template.
    pos = start + 3
    while pos < len(text):
        if text.startswith("}}", pos):
            return pos + 2
        pos = _skip_part(text, pos)
    message = "unterminated '${{'; expected '}}' to close it"
    raise ExpressionError(message, start)


def _skip_part(text: str, pos: int) -> int:
    if text[pos] in "'\"":
        return _scan_string(text, pos, raw=False)[1]
    match = _NAME.match(text, pos)
    if match is None:
        return pos + 1
    quote = text[match.end() : match.end() + 1]
    if match.group() in ("r", "R") and quote and quote in "'\"":
        return _scan_string(text, match.end(), raw=True)[1]
    return match.end()


def to_text(value: Value) -> str:
    """A value as command text: ints decimal, `true`/`false`, null empty, lists JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(text: str, context: Context) -> str:
    """`text` with each `${{ }}` replaced by its value as text (argv items, env)."""
    return _substitute(text, lambda _, template: _value_text(template, context))


def render_shell(
    text: str, context: Context, prefix: str
) -> tuple[str, dict[str, str]]:
    """A shell string with each `${{ }}` replaced by `${PREFIX_N}`, and those vars.

    No value is ever pasted as shell text, so none can inject syntax; the user's
    own quotes still apply to the reference.
    """
    if not _SHELL_NAME.fullmatch(prefix):
        raise ValueError(f"not a shell variable name: {prefix!r}")

    variables: dict[str, str] = {}

    def reference(index: int, template: Template) -> str:
        name = f"{prefix}_{index}"
        variables[name] = _value_text(template, context)
        return "${" + name + "}"

    return _substitute(text, reference), variables


def _substitute(text: str, replace: Callable[[int, Template], str]) -> str:
    if "${{" not in text:
        return text  # most commands and values: nothing to look for
    parts: list[str] = []
    last = 0
    for index, template in enumerate(find_templates(text)):
        parts += [text[last : template.start], replace(index, template)]
        last = template.end
    parts.append(text[last:])
    return "".join(parts)


def _value_text(template: Template, context: Context) -> str:
    expression = template.parse()
    try:
        text = to_text(expression.evaluate(context))
    except ExpressionError as error:
        raise error.shifted(template.inner_offset) from None
    if "\0" in text:
        message = "the value contains a NUL character, which a command cannot receive"
        raise EvaluationError(message, template.inner_offset)
    return text


def single_quoted_templates(text: str) -> list[Template]:
    """Templates inside '...' in a shell string, where `${VAR}` would not expand."""
    templates = find_templates(text)
    starts = {template.start: template for template in templates}
    found: list[Template] = []
    quote = ""
    pos = 0
    while pos < len(text):
        if pos in starts:
            if quote == "'":
                found.append(starts[pos])
            pos = starts[pos].end
            continue
        quote, pos = _shell_step(text, pos, quote)
    return found


def _shell_step(text: str, pos: int, quote: str) -> tuple[str, int]:
    """The quote state after the character at `pos`, and the next position."""
    char = text[pos]
    if char == "\\" and quote != "'":
        return quote, pos + 2
    if char == quote:
        return "", pos + 1
    if not quote and char in "'\"":
        return char, pos + 1
    return quote, pos + 1
