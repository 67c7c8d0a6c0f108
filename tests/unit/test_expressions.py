"""The `${{ }}` expression language: parsing, evaluation, templates, shell safety."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runner.spec.expressions import (
    MAX_DEPTH,
    Context,
    EvaluationError,
    ExpressionError,
    Reference,
    StepView,
    Template,
    Value,
    find_templates,
    parse,
    render,
    render_shell,
    single_quoted_templates,
    to_text,
)

CONTEXT = Context(
    params={"days": 7, "target": "prod", "ratio": 1.5, "dry": False},
    env={"HOME": "/home/ci", "EMPTY": ""},
    steps={
        "find-stale": StepView("succeeded", {"count": "3", "out-file": "stale.txt"}),
        "build": StepView("failed", {}),
        "1st": StepView("skipped", {}),
    },
)


def evaluate(source: str, context: Context = CONTEXT) -> Value:
    """Parse and evaluate `source` in `context`."""
    return parse(source).evaluate(context)


def same(left: Any, right: Any) -> bool:
    """Equal values of the same types all the way down, so `True` is not `1`."""
    if isinstance(left, list) and isinstance(right, list):
        pairs = zip(left, right, strict=False)
        return len(left) == len(right) and all(same(a, b) for a, b in pairs)
    return type(left) is type(right) and left == right


# Literals and operators


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("42", 42),
        ("-7", -7),
        ("- 7", -7),
        ("0x1F", 31),
        ("010", 10),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("2.5E-1", 0.25),
        ("'single'", "single"),
        ('"double"', "double"),
        ("''", ""),
        ("'it\\'s'", "it's"),
        (r"'\n\t\r\\\"\'\?\`\a\b\f\v'", "\n\t\r\\\"'?`\a\b\f\v"),
        (r"'\x41\X42\101\u00e9\U0001F600'", "ABAé\U0001f600"),
        (r"r'\n\x'", "\\n\\x"),
        (r'R"\d+"', "\\d+"),
        ("'''a'b\nc'''", "a'b\nc"),
        ('"""a"b"""', 'a"b'),
        ("'${{ }}'", "${{ }}"),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[]", []),
        ("[1, 'a', true, null, 1.5]", [1, "a", True, None, 1.5]),
        ("[1, [2, [3]],]", [1, [2, [3]]]),
        (" \t\n(\r 1 \f) ", 1),
    ],
)
def test_literals(source: str, expected: Value) -> None:
    """Every literal form evaluates to its value, with its type."""
    assert same(evaluate(source), expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 == 1", True),
        ("1 == 1.0", True),
        ("1 != 2", True),
        ("'a' == 'a'", True),
        ("1 == '1'", False),
        ("true == 1", False),
        ("null == false", False),
        ("null == null", True),
        ("[1, 'a'] == [1.0, 'a']", True),
        ("[1] == [true]", False),
        ("[1] == [1, 2]", False),
        ("[] != 'a'", True),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2.5 >= 3", False),
        ("'a' < 'b'", True),
        ("'B' < 'a'", True),
        ("'ab' > 'a'", True),
        ("false < true", True),
        ("true >= true", True),
        ("1 in [1, 2]", True),
        ("1 in [1.0]", True),
        ("'x' in ['a', 1]", False),
        ("null in [null]", True),
        ("[] in [[]]", True),
        ("1 in []", False),
        ("true && true", True),
        ("true && false", False),
        ("false || true", True),
        ("false || false", False),
        ("!true", False),
        ("!!true", True),
        ("!(1 < 2)", False),
        ("9007199254740993 == 9007199254740992.0", False),
    ],
)
def test_operators(source: str, expected: Value) -> None:
    """Comparison, membership and logic follow CEL's strict typing."""
    assert evaluate(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true || false && false", True),
        ("(true || false) && false", False),
        ("!false == true", True),
        ("1 < 2 == true", True),
        ("1 == 1 == true", True),
        ("1 in [1] == true", True),
        ("1 < 2 && 'b' > 'a' || false", True),
    ],
)
def test_precedence(source: str, expected: bool) -> None:
    """`!` binds tightest, then relations (grouping left), then `&&`, then `||`."""
    assert evaluate(source) is expected


def test_logic_short_circuits() -> None:
    """The right side of `&&` and `||` is not evaluated once the left decides."""
    assert evaluate("false && params.missing") is False
    assert evaluate("true || steps.gone.status == 'x'") is True
    assert evaluate("true && false && 1") is False


# References


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("params.days", 7),
        ("params['target']", "prod"),
        ('params["ratio"]', 1.5),
        ("params.dry", False),
        ("env.HOME", "/home/ci"),
        ("env['HOME']", "/home/ci"),
        ("env.EMPTY", ""),
        ("env.NOT_SET", ""),
        ("steps.find-stale.status", "succeeded"),
        ("steps['find-stale'].status", "succeeded"),
        ("steps['find-stale']['status']", "succeeded"),
        ("steps . find-stale . status", "succeeded"),
        ("steps.find-stale.outputs.count", "3"),
        ("steps.find-stale.outputs.out-file", "stale.txt"),
        ("steps.find-stale.outputs['out-file']", "stale.txt"),
        ("steps['find-stale'].outputs.out-file", "stale.txt"),
        ("steps.1st.status", "skipped"),
        ("steps.build.status != 'succeeded'", True),
        ("steps.find-stale.status == 'succeeded' && params.target != ''", True),
        ("params.days in [7, 14]", True),
    ],
)
def test_references_resolve(source: str, expected: Value) -> None:
    """References read params, env and steps; step names and keys may hold `-`."""
    assert same(evaluate(source), expected)


def test_references_are_listed_in_source_order() -> None:
    """references() finds every reference, nested ones too, with its offset."""
    source = (
        "!(params.days > 3 && [env.HOME, steps['find-stale'].outputs.count] "
        "== []) || steps.b-2.status in ['x']"
    )

    found = parse(source).references()

    assert found == (
        Reference("params", "days", None, None, 2),
        Reference("env", "HOME", None, None, 22),
        Reference("steps", "find-stale", "outputs", "count", 32),
        Reference("steps", "b-2", "status", None, 77),
    )
    assert [reference.path for reference in found] == [
        "params.days",
        "env.HOME",
        "steps.find-stale.outputs.count",
        "steps.b-2.status",
    ]


def test_expression_without_references() -> None:
    """A literal expression has no references."""
    assert parse("[1, 'params.x']").references() == ()


# Errors


@pytest.mark.parametrize(
    ("source", "message", "offset"),
    [
        ("size(x)", "function calls are not allowed in expressions: 'size(...)'", 0),
        ("params.x.size()", "function calls are not allowed", 9),
        ("params.x (1)", "function calls are not allowed in expressions: '('", 9),
        (
            "params.items.all(i, i > 0)",
            "macros are not allowed in expressions: 'all'",
            13,
        ),
        ("[1].exists(x, x > 0)", "macros are not allowed", 4),
        ("has(params.x)", "macros are not allowed in expressions: 'has'", 0),
        ("1 + 2", "arithmetic is not supported: '+'", 2),
        ("params.days * 2 > 3", "arithmetic is not supported: '*'", 12),
        ("params.a - 1", "arithmetic is not supported: '-'", 9),
        ("-params.a", "arithmetic is not supported: '-'; only a number", 0),
        ("params.my-name", "quote it: params['my-name']", 9),
        ("steps.x.status-1", "arithmetic is not supported", 14),
        ("true ? 1 : 2", "the conditional operator '? :' is not supported", 5),
        ("{'a': 1}", "map literals are not supported", 0),
        ("foo.bar", "unknown name 'foo'; expected params, env or steps", 0),
        ("1 == parms.x", "unknown name 'parms'; did you mean 'params'?", 5),
        ("inputs.x", "did you mean 'params'?", 0),
        ("params", "'params' must be followed by a name, like params.NAME", 0),
        ("env == ''", "'env' must be followed by a name", 0),
        ("params.", "unexpected end of expression; expected a name", 7),
        ("params.1", "unexpected '1'; expected a name", 7),
        (
            "1 == steps.x",
            "'steps.x' must be followed by '.status' or '.outputs.KEY'",
            5,
        ),
        ("steps['x'] == 1", "'steps.x' must be followed by", 0),
        ("steps.x.outputs", "'steps.x.outputs' must be followed by a key", 0),
        ("steps.x.outputs == 1", "must be followed by a key", 0),
        ("steps.x.stat", "unknown field 'stat' of steps.x; did you mean 'status'?", 8),
        ("steps.x['output']", "did you mean 'outputs'?", 8),
        ("steps.x.name", "expected 'status' or 'outputs'", 8),
        ("steps.x.status.y", "unexpected '.y' after 'steps.x.status'", 14),
        ("params.x['y']", "unexpected '[' after 'params.x'", 8),
        ("params[1]", "an index must be a quoted string, like params['NAME']", 7),
        ("steps[params.x]", "an index must be a quoted string", 6),
        ("(1).x", "field access and indexing are only allowed", 3),
        ("[1][0]", "field access and indexing are only allowed", 3),
        ("'abc", 'unterminated string; expected a closing "\'"', 0),
        ('1 == "abc', "unterminated string; expected a closing '\"'", 5),
        ("'a\nb'", "unterminated string", 0),
        ("'''abc''", "unterminated string; expected a closing \"'''\"", 0),
        ("'a\\qb'", "invalid escape '\\\\q' in string", 2),
        ("'\\x4'", "invalid escape", 1),
        ("'\\400'", "invalid escape", 1),
        ("'\\ud800'", "invalid code point in escape", 1),
        ("'\\U00110000'", "invalid code point in escape", 1),
        ("b'x'", "bytes literals are not supported", 0),
        ("1 # comment", "unexpected character '#'", 2),
        ("params.x == é", "unexpected character 'é'", 12),
        ("1 = 1", "unexpected '='; did you mean '=='?", 2),
        ("true & false", "did you mean '&&'?", 5),
        ("params.a and params.b", "unexpected 'and'; did you mean '&&'?", 9),
        ("not true", "unexpected 'not'; did you mean '!'?", 0),
        ("1 2", "unexpected '2'; expected an operator or the end", 2),
        ("(1 == 1", "unexpected end of expression; expected ')'", 7),
        ("1 == 1)", "unexpected ')'; expected an operator or the end", 6),
        ("[1, 2", "unexpected end of expression; expected ',' or ']'", 5),
        ("[1 2]", "unexpected '2'; expected ',' or ']'", 3),
        ("1 ==", "unexpected end of expression; expected a value", 4),
        ("== 1", "unexpected '=='; expected a value", 0),
        ("", "empty expression; expected a value", 0),
        (" \n ", "empty expression", 0),
        ("9223372036854775808", "integer literal out of range", 0),
        ("-9223372036854775809", "integer literal out of range", 0),
        ("0xFFFFFFFFFFFFFFFF", "integer literal out of range", 0),
        ("1e999", "double literal out of range: '1e999'", 0),
        ("1u", "unsigned integers are not supported: '1u'", 0),
        ("12abc", "invalid number '12abc'", 0),
        ("x" * 4097, "expression is longer than 4096 characters", 4096),
    ],
)
def test_syntax_errors(source: str, message: str, offset: int) -> None:
    """Bad syntax raises ExpressionError with a clear message at its offset."""
    with pytest.raises(ExpressionError) as caught:
        parse(source)

    assert type(caught.value) is ExpressionError
    assert message in caught.value.message
    assert caught.value.offset == offset
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    "source",
    [
        "(" * 5000 + "1" + ")" * 5000,
        "[" * 4000,
        "!" * 4000 + "true",
        "(!" * 2000 + "true",
        "- " * 2000 + "1",
    ],
)
def test_deep_nesting_is_an_error_not_a_recursion_error(source: str) -> None:
    """Nesting beyond the limit is an ExpressionError, however deep the input."""
    with pytest.raises(ExpressionError):
        parse(source)


def test_nesting_limit() -> None:
    """Exactly MAX_DEPTH levels parse; one more is refused at the extra opener."""
    assert evaluate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) == 1
    assert evaluate("!" * MAX_DEPTH + "true") is True

    with pytest.raises(ExpressionError) as caught:
        parse("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert caught.value.offset == MAX_DEPTH
    assert "nested more than 32 levels deep" in caught.value.message


def test_long_flat_chains_evaluate() -> None:
    """Long `&&` and `==` chains stay flat, so evaluating them cannot recurse."""
    assert evaluate(" && ".join(["true"] * 500)) is True
    assert evaluate("1 == 1" + " == true" * 500) is True


@pytest.mark.parametrize(
    ("source", "message", "offset"),
    [
        ("1 < 'a'", "cannot compare int with string using '<'", 2),
        ("'a' >= 1.5", "cannot compare string with double using '>='", 4),
        ("true < 1", "cannot compare bool with int using '<'", 5),
        ("[1] < [2]", "list values have no order", 4),
        ("null <= null", "null values have no order", 5),
        ("'a' in 'abc'", "'in' needs a list on its right, got string", 4),
        ("!1", "'!' needs a bool, got int", 1),
        ("1 && true", "'&&' needs a bool, got int", 0),
        ("false || 'x'", "'||' needs a bool, got string", 9),
        ("params.nope == 1", "params.nope is not set", 0),
        ("steps.gone.status", "steps.gone has not run", 0),
    ],
)
def test_evaluation_errors(source: str, message: str, offset: int) -> None:
    """Type errors and missing values raise EvaluationError naming the problem."""
    with pytest.raises(EvaluationError) as caught:
        evaluate(source)

    assert message in caught.value.message
    assert caught.value.offset == offset


def test_error_offset_can_be_shifted() -> None:
    """shifted() keeps the class and message and moves the offset."""
    error = EvaluationError("steps.x has not run", 3).shifted(10)

    assert isinstance(error, EvaluationError)
    assert (error.message, error.offset, str(error)) == (
        "steps.x has not run",
        13,
        "steps.x has not run",
    )


# Templates


def test_find_templates() -> None:
    """Each `${{ }}` is found with its span and its stripped inner source."""
    text = "a ${{ params.days }}b${{steps.x.status}} ${{\n 1 }}"

    assert find_templates(text) == [
        Template(2, 20, "params.days", 6),
        Template(21, 40, "steps.x.status", 24),
        Template(41, 50, "1", 46),
    ]


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ("${{ params.a == '}}' }}", "params.a == '}}'"),
        ('${{ "a}}" }}', '"a}}"'),
        ("${{ 'it\\'s }}' }}", "'it\\'s }}'"),
        ("${{ r'\\' }}", "r'\\'"),
        ("${{ '''}}'''}}", "'''}}'''"),
    ],
)
def test_template_end_skips_strings(text: str, source: str) -> None:
    """A `}}` inside a string literal does not close the template."""
    assert [template.source for template in find_templates(text)] == [source]


def test_text_without_templates() -> None:
    """Plain text, single braces and `$VAR` hold no templates."""
    assert find_templates("echo $HOME ${X} {{ y }} $ {{") == []


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("echo ${{ params.a", "unterminated '${{'; expected '}}' to close it", 5),
        ("${{ 1 }} ${{ 2 }", "unterminated '${{'", 9),
        ("x ${{ 'abc }}", "unterminated string", 6),
        ("${{ '\\q' }}", "invalid escape", 5),
        ("${{ 1 }}" * 65, "more than 64 expressions in one string", 64 * 8),
    ],
)
def test_find_templates_errors(text: str, message: str, offset: int) -> None:
    """Unterminated templates and too many of them are errors at their offset."""
    with pytest.raises(ExpressionError) as caught:
        find_templates(text)

    assert message in caught.value.message
    assert caught.value.offset == offset


def test_template_parse_errors_point_into_the_text() -> None:
    """A template's parse error offset counts from the start of the whole text."""
    (template,) = find_templates("echo ${{  1 + 2 }}")

    with pytest.raises(ExpressionError) as caught:
        template.parse()
    assert caught.value.offset == 12


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (42, "42"),
        (-3, "-3"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (1.5, "1.5"),
        (2.0, "2.0"),
        ("a b", "a b"),
        ([1, "a", True, None, [1.5]], '[1, "a", true, null, [1.5]]'),
        (["é"], '["é"]'),
    ],
)
def test_to_text(value: Value, text: str) -> None:
    """Values become text as SPEC section 1 says; lists as JSON."""
    assert to_text(value) == text


def test_render() -> None:
    """render() pastes each value's text in place, for argv items and env."""
    text = "--days=${{ params.days }} ${{ params.dry }}${{ env.NOT_SET }}!"

    assert render(text, CONTEXT) == "--days=7 false!"
    assert render("no templates", CONTEXT) == "no templates"


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("x=${{ 1 < 'a' }}", "cannot compare int with string", 8),
        ("${{ '\\000' }}", "NUL character", 4),
    ],
)
def test_render_errors_point_into_the_text(
    text: str, message: str, offset: int
) -> None:
    """Evaluation errors from render() carry offsets into the whole text."""
    with pytest.raises(EvaluationError) as caught:
        render(text, CONTEXT)

    assert message in caught.value.message
    assert caught.value.offset == offset


# Shell strings

HOSTILE = [
    "'; touch PWNED #",
    '"; touch PWNED; echo "',
    "$(touch PWNED)",
    "`touch PWNED`",
    "x\ntouch PWNED",
    "${IFS}touch${IFS}PWNED",
    "a;touch PWNED&&b|touch PWNED",
    "\\'\\\"$HOME*",
    " leading and trailing ",
]


def run_shell(text: str, env: dict[str, str], cwd: Path) -> bytes:
    """Run `text` with /bin/sh -c in `cwd` and return its stdout."""
    done = subprocess.run(
        ["/bin/sh", "-c", text],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=10,
    )
    return done.stdout


@pytest.mark.parametrize("value", HOSTILE)
def test_render_shell_never_injects(value: str, tmp_path: Path) -> None:
    """A hostile value reaches the command as data, byte for byte, and runs nothing."""
    context = Context(params={"v": value})
    text = 'printf %s "${{ params.v }}"; x=${{ params.v }}; printf \'|%s\' "$x"'

    rendered, variables = render_shell(text, context, "RUNNER_EXPR")

    assert rendered == (
        'printf %s "${RUNNER_EXPR_0}"; x=${RUNNER_EXPR_1}; printf \'|%s\' "$x"'
    )
    assert variables == {"RUNNER_EXPR_0": value, "RUNNER_EXPR_1": value}
    output = run_shell(rendered, variables, tmp_path)
    assert output == f"{value}|{value}".encode()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("value", HOSTILE)
def test_render_shell_unquoted_runs_nothing(value: str, tmp_path: Path) -> None:
    """Even unquoted, a value is only split into words, never run as a command."""
    context = Context(params={"v": value})

    rendered, variables = render_shell(
        "echo ${{ params.v }} > out.txt", context, "RUNNER_EXPR"
    )

    run_shell(rendered, variables, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert (tmp_path / "out.txt").exists()


def test_render_shell_values_are_text() -> None:
    """Non-string values are passed as their text."""
    text = "echo ${{ params.days }} ${{ params.dry }} ${{ [1, 'a'] }}"

    rendered, variables = render_shell(text, CONTEXT, "P")

    assert rendered == "echo ${P_0} ${P_1} ${P_2}"
    assert variables == {"P_0": "7", "P_1": "false", "P_2": '[1, "a"]'}


def test_render_shell_refuses_a_bad_prefix() -> None:
    """The prefix must be a shell variable name."""
    with pytest.raises(ValueError, match="not a shell variable name"):
        render_shell("echo", CONTEXT, "1-bad")


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("echo '${{ params.a }}'", ["params.a"]),
        ('echo "${{ params.a }}" ${{ params.b }}', []),
        ("echo \"'${{ params.a }}'\"", []),
        ("echo \\'${{ params.a }}\\'", []),
        ("echo 'it''s ${{ params.a }}' ${{ params.b }}", ["params.a"]),
        ("echo '\\' ${{ params.a }}", []),
        ('echo "\\"" \'${{ params.a }}\'', ["params.a"]),
        ("echo '${{ params.a == 'x' }}' ${{ params.b }}", ["params.a == 'x'"]),
        ("echo '${{ params.a }}${{ params.b }}'", ["params.a", "params.b"]),
    ],
)
def test_single_quoted_templates(text: str, quoted: list[str]) -> None:
    """Templates inside shell single quotes are found; quotes in them are ignored."""
    found = single_quoted_templates(text)

    assert [template.source for template in found] == quoted


# Properties

TOKENS = [
    "params", "env", "steps", "outputs", "status", ".", "-", "[", "]", "(", ")",
    "'a'", '"b', "'", "\\", "r", "b", "1", "0x", ".5", "e9", " ", "\n", "!",
    "&&", "||", "==", "<", "in", "true", "null", ",", "}}", "${{", "x-y", "?",
    "size", "all", "+", "'\\u12'", "'''", "é", "{", "#",
]  # fmt: skip
soup = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), soup))
def test_parse_raises_only_expression_error(source: str) -> None:
    """Any text either parses and evaluates or raises ExpressionError."""
    with contextlib.suppress(ExpressionError):
        parse(source).evaluate(CONTEXT)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), soup).map(lambda text: "${{ " + text))
def test_templates_raise_only_expression_error(text: str) -> None:
    """Any text renders or raises ExpressionError; so do the shell helpers."""
    for call in (
        lambda: render(text, CONTEXT),
        lambda: render_shell(text, CONTEXT, "P"),
        lambda: single_quoted_templates(text),
    ):
        with contextlib.suppress(ExpressionError):
            call()


# A generated expression: its source and the precedence of its outermost
# operator (1 `||`, 2 `&&`, 3 relations, 4 atoms), to know when to add parens.
Generated = tuple[str, int]


def cel_string(text: str, quote: str) -> str:
    """`text` as a CEL string literal."""
    chars = [
        "\\" + char
        if char in ("\\", quote)
        else char
        if char.isprintable()
        else f"\\U{ord(char):08x}"
        for char in text
    ]
    return quote + "".join(chars) + quote


numbers = st.one_of(
    st.integers(-(2**53), 2**53).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
strings = st.builds(cel_string, st.text(max_size=6), st.sampled_from("'\""))


@st.composite
def operand(draw: st.DrawFn, child: Generated, at_least: int) -> str:
    """`child`'s source, in parentheses when needed or when hypothesis likes."""
    source, precedence = child
    if precedence < at_least or draw(st.booleans()):
        return f"({source})"
    return source


@st.composite
def booleans(draw: st.DrawFn, depth: int) -> Generated:
    """A well-typed boolean expression."""
    kinds = ["literal"] + (["not", "logic", "equal", "order", "in"] if depth else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "literal":
        return draw(st.sampled_from(["true", "false"])), 4
    if kind == "not":
        return "!" + draw(operand(draw(booleans(depth - 1)), 4)), 4
    if kind == "logic":
        symbol, precedence = draw(st.sampled_from([("||", 1), ("&&", 2)]))
        pair = [draw(booleans(depth - 1)) for _ in range(2)]
        return draw(binary(pair, symbol, precedence)), precedence
    if kind == "in":
        pair = [draw(values(depth - 1)), draw(lists(depth - 1))]
        return draw(binary(pair, "in", 3)), 3
    if kind == "equal":
        pair = [draw(values(depth - 1)) for _ in range(2)]
        return draw(binary(pair, draw(st.sampled_from(["==", "!="])), 3)), 3
    same_kind = draw(
        st.sampled_from([numbers.map(atom), strings.map(atom), booleans(depth - 1)])
    )
    pair = [draw(same_kind) for _ in range(2)]
    symbol = draw(st.sampled_from(["<", "<=", ">", ">="]))
    return draw(binary(pair, symbol, 3)), 3


def atom(source: str) -> Generated:
    """A literal's source, which never needs parentheses."""
    return source, 4


@st.composite
def binary(draw: st.DrawFn, pair: list[Generated], symbol: str, precedence: int) -> str:
    """`left SYMBOL right`, grouping to the left as CEL does."""
    left = draw(operand(pair[0], precedence))
    right = draw(operand(pair[1], precedence + 1))
    return f"{left} {symbol} {right}"


@st.composite
def lists(draw: st.DrawFn, depth: int) -> Generated:
    """A list literal of any values."""
    items = draw(st.lists(values(depth), max_size=3))
    return "[" + ", ".join(source for source, _ in items) + "]", 4


def values(depth: int) -> st.SearchStrategy[Generated]:
    """Any well-typed expression."""
    literals = st.one_of(numbers, strings, st.just("null")).map(atom)
    if depth <= 0:
        return st.one_of(literals, booleans(0))
    return st.one_of(literals, booleans(depth), lists(depth - 1))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values(3))
def test_evaluation_matches_cel(generated: Generated) -> None:
    """Our evaluator agrees with the CEL library on well-typed expressions."""
    import cel

    source, _ = generated
    try:
        expected = cel.evaluate(source)
    except (ValueError, TypeError, RuntimeError):
        assume(False)

    assert same(evaluate(source), expected), source


def test_an_output_a_step_did_not_write_is_null() -> None:
    """A missing output evaluates to null and renders as empty text."""
    assert parse("steps.build.outputs.url == null").evaluate(CONTEXT) is True
    assert render("x=${{ steps.build.outputs.url }}", CONTEXT) == "x="
