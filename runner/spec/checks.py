"""Semantic checks a JSON Schema cannot make.

They run on the plain data and the positioned tree together, after (and
whatever the outcome of) the schema check, so they guard every shape they
read: a schema error must never become a crash here.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from runner.spec import expressions
from runner.spec.durations import parse_duration
from runner.spec.problems import PathPart, Problem, Severity, did_you_mean, format_path
from runner.spec.yamlload import Document, Scalar, locate

SHELL_FIELDS = ("run", "check")
PARAM_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


@dataclass
class _Context:
    doc: Document
    data: dict[str, Any]
    problems: list[Problem]

    def report(
        self,
        path: tuple[PathPart, ...],
        message: str,
        *,
        severity: Severity = "error",
        key: bool = False,
        offset: int | None = None,
    ) -> None:
        node = locate(self.doc.root, path, key=key)
        line, column = node.line, node.column
        if offset is not None and isinstance(node, Scalar):
            column += self._inline_offset(node, offset)
        self.problems.append(
            Problem(severity, line, column, format_path(path), message)
        )

    def _inline_offset(self, node: Scalar, offset: int) -> int:
        """Columns from a scalar's start to `offset` in its value, when on one line."""
        if "\n" in node.text:
            return 0
        lines = self.doc.text.splitlines()
        source = lines[node.line - 1] if node.line <= len(lines) else ""
        quoted = source[node.column - 1 : node.column] in ("'", '"')
        return offset + (1 if quoted else 0)


def semantic_problems(doc: Document, data: Any) -> list[Problem]:
    """Problems of references, the graph, expressions, regexes and values."""
    if not isinstance(data, dict):
        return []
    context = _Context(doc, data, [])
    steps = _steps(data)
    graph = {name: _needs(step) for name, step in steps.items()}

    _check_needs(context, steps)
    _check_cycles(context, graph)
    _check_names(context, steps)
    _check_expressions(context, steps, graph)
    _check_regexes(context, steps)
    _check_params(context)
    _check_retries(context, steps)
    _check_unused(context, steps)
    _check_nul(context, steps)
    return context.problems


def _steps(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = data.get("steps")
    if not isinstance(steps, dict):
        return {}
    return {name: step for name, step in steps.items() if isinstance(step, dict)}


def _needs(step: dict[str, Any]) -> list[str]:
    needs = step.get("needs", [])
    if isinstance(needs, str):
        return [needs]
    return (
        [name for name in needs if isinstance(name, str)]
        if isinstance(needs, list)
        else []
    )


def _needs_path(step: dict[str, Any], name: str, index: int) -> tuple[PathPart, ...]:
    needs = step.get("needs")
    return ("steps", name, "needs") + ((index,) if isinstance(needs, list) else ())


def _check_needs(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    for name, step in steps.items():
        for index, needed in enumerate(_needs(step)):
            if needed in steps or needed == name:
                continue
            context.report(
                _needs_path(step, name, index),
                f"step '{name}' needs unknown step '{needed}'"
                + did_you_mean(needed, steps),
            )


def _check_cycles(context: _Context, graph: dict[str, list[str]]) -> None:
    """Name each cycle once, as `a -> b -> c -> a`, each needed by the next."""
    known = {name: [n for n in needs if n in graph] for name, needs in graph.items()}
    if not _has_cycle(known):
        return

    import networkx as nx

    order = {name: index for index, name in enumerate(graph)}
    digraph = nx.DiGraph()
    digraph.add_nodes_from(graph)
    digraph.add_edges_from((n, name) for name, needs in known.items() for n in needs)
    for component in nx.strongly_connected_components(digraph):
        first = min(component, key=order.__getitem__)
        if len(component) == 1 and not digraph.has_edge(first, first):
            continue
        cycle = [first, *_cycle_from(digraph.subgraph(component), first)]
        closing = cycle[-2]
        step = context.data["steps"][first]
        index = _needs(step).index(closing)
        context.report(
            _needs_path(step, first, index),
            f"dependency cycle: {' -> '.join(cycle)}; remove one of these needs",
        )


def _has_cycle(graph: dict[str, list[str]]) -> bool:
    """Kahn's algorithm: cheap, so networkx is imported only to name a cycle."""
    waiting = {name: len(needs) for name, needs in graph.items()}
    dependents: dict[str, list[str]] = {name: [] for name in graph}
    for name, needs in graph.items():
        for needed in needs:
            dependents[needed].append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    done = 0
    while ready:
        name = ready.pop()
        done += 1
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return done < len(graph)


def _cycle_from(component: Any, first: str) -> list[str]:
    """The steps after `first` along a shortest cycle back to it."""
    import networkx as nx

    if component.has_edge(first, first):
        return [first]
    paths = [nx.shortest_path(component, s, first) for s in component.successors(first)]
    shortest: list[str] = min(paths, key=len)
    return shortest


def _check_names(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    circuits = _names(context.data.get("circuits"))
    pools = _names(context.data.get("pools"))
    places: list[tuple[tuple[PathPart, ...], Any]] = [
        (("defaults",), context.data.get("defaults"))
    ]
    places += [(("steps", name), step) for name, step in steps.items()]
    for path, holder in places:
        if not isinstance(holder, dict):
            continue
        for field, known in (("circuit", circuits), ("pool", pools)):
            value = holder.get(field)
            if isinstance(value, str) and value not in known:
                context.report(
                    (*path, field),
                    f"unknown {field} '{value}'"
                    + (did_you_mean(value, known) or f"; declare it under '{field}s'"),
                )


def _names(section: Any) -> list[str]:
    return list(section) if isinstance(section, dict) else []


def _ancestors(graph: dict[str, list[str]], name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.get(name, []))
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(graph.get(current, []))
    return seen


def _check_expressions(
    context: _Context, steps: dict[str, dict[str, Any]], graph: dict[str, list[str]]
) -> None:
    params = _names(context.data.get("params"))
    for path, text, _shell in _workflow_texts(context.data):
        for reference, offset in _references(context, path, text):
            if reference.root == "steps":
                context.report(
                    path,
                    "workflow-level values cannot use steps; move it to a step's env",
                    offset=offset,
                )
            elif reference.root == "params":
                _check_param(context, path, reference, params, offset)
    for name, step in steps.items():
        for path, text, shell in _step_texts(name, step):
            visible = _Visible(graph, name, itself=path[2] == "compensate")
            _check_step_text(context, path, text, shell, steps, visible, params)


class _Visible:
    """The steps a step's text may read; its ancestors are walked only when asked.

    Most references name a direct need, so a 10,000-step chain is not walked
    10,000 times.
    """

    def __init__(self, graph: dict[str, list[str]], name: str, *, itself: bool) -> None:
        self.graph = graph
        self.name = name
        self.itself = itself
        self.ancestors: set[str] | None = None

    def __contains__(self, other: object) -> bool:
        if self.itself and other == self.name:
            return True
        if other in self.graph.get(self.name, ()):
            return True
        if self.ancestors is None:
            self.ancestors = _ancestors(self.graph, self.name)
        return other in self.ancestors


def _check_step_text(
    context: _Context,
    path: tuple[PathPart, ...],
    text: str,
    shell: bool,
    steps: dict[str, dict[str, Any]],
    visible: Container[str],
    params: list[str],
) -> None:
    step = path[1]
    for reference, offset in _references(context, path, text):
        if reference.root == "params":
            _check_param(context, path, reference, params, offset)
        elif reference.root == "steps" and reference.name not in steps:
            context.report(
                path,
                f"unknown step '{reference.name}' in an expression"
                + did_you_mean(reference.name, steps),
                offset=offset,
            )
        elif reference.root == "steps" and reference.name == step not in visible:
            context.report(
                path,
                f"step '{step}' cannot read its own status or outputs before it "
                "ends; only its compensate can",
                offset=offset,
            )
        elif reference.root == "steps" and reference.name not in visible:
            context.report(
                path,
                f"step '{step}' uses steps.{reference.name}, which it does not need "
                f"(directly or through its needs); add '{reference.name}' to needs",
                offset=offset,
            )
    if shell and "'" in text:  # no single quote, nothing single-quoted
        try:
            quoted = expressions.single_quoted_templates(text)
        except expressions.ExpressionError:
            quoted = []  # already reported by _references
        for template in quoted:
            context.report(
                path,
                "expression inside single quotes: the shell will not expand it; "
                "use double quotes",
                severity="warning",
                offset=template.start,
            )


def _check_param(
    context: _Context,
    path: tuple[PathPart, ...],
    reference: expressions.Reference,
    params: list[str],
    offset: int,
) -> None:
    if reference.name in params:
        return
    hint = did_you_mean(reference.name, params) or "; declare it under 'params'"
    context.report(path, f"unknown parameter '{reference.name}'{hint}", offset=offset)


def _references(
    context: _Context, path: tuple[PathPart, ...], text: str
) -> Iterator[tuple[expressions.Reference, int]]:
    """The references of every expression in `text`, with their offsets."""
    is_if = path[-1] == "if"
    try:
        templates = expressions.find_templates(text)
    except expressions.ExpressionError as error:
        context.report(path, f"expression: {error.message}", offset=error.offset)
        return
    if is_if and not templates:
        templates = [expressions.Template(0, len(text), text.strip(), 0)]
    elif is_if and (
        len(templates) > 1
        or text.strip() != text[templates[0].start : templates[0].end]
    ):
        context.report(path, "'if' must be one expression: ${{ ... }}", offset=0)
        return
    for template in templates:
        try:
            parsed = expressions.parse(template.source)
        except expressions.ExpressionError as error:
            context.report(
                path,
                f"expression: {error.message}",
                offset=template.inner_offset + error.offset,
            )
            continue
        for reference in parsed.references():
            yield reference, template.inner_offset + reference.offset


def _workflow_texts(
    data: dict[str, Any],
) -> Iterator[tuple[tuple[PathPart, ...], str, bool]]:
    env = data.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, str):
                yield ("env", key), value, False


def _step_texts(
    name: str, step: dict[str, Any]
) -> Iterator[tuple[tuple[PathPart, ...], str, bool]]:
    base: tuple[PathPart, ...] = ("steps", name)
    if isinstance(step.get("if"), str):
        yield (*base, "if"), step["if"], False
    for field in SHELL_FIELDS:
        yield from _command_texts((*base, field), step.get(field))
    compensate = step.get("compensate")
    if isinstance(compensate, dict):
        yield from _command_texts((*base, "compensate", "run"), compensate.get("run"))
    else:
        yield from _command_texts((*base, "compensate"), compensate)
    env = step.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, str):
                yield (*base, "env", key), value, False


def _command_texts(
    path: tuple[PathPart, ...], command: Any
) -> Iterator[tuple[tuple[PathPart, ...], str, bool]]:
    if isinstance(command, str):
        yield path, command, True
    elif isinstance(command, list):
        for index, item in enumerate(command):
            if isinstance(item, str):
                yield (*path, index), item, False


def _check_nul(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    """A "\\0" escape puts a NUL in a value no command or variable can carry."""
    texts = list(_workflow_texts(context.data))
    for name, step in steps.items():
        texts += _step_texts(name, step)
        if isinstance(step.get("cwd"), str):
            texts.append((("steps", name, "cwd"), step["cwd"], False))
    params = context.data.get("params")
    for name, param in (params if isinstance(params, dict) else {}).items():
        if isinstance(param, dict) and isinstance(param.get("default"), str):
            texts.append((("params", name, "default"), param["default"], False))
    for path, text, _shell in texts:
        if "\0" in text:
            context.report(
                path,
                f"{format_path(path)}: contains a NUL byte (a \\0 escape), which no "
                "command can receive; remove it",
            )


def _check_regexes(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    holders: list[tuple[tuple[PathPart, ...], Any]] = [
        (("classify",), context.data.get("classify"))
    ]
    holders += [(("steps", n, "classify"), s.get("classify")) for n, s in steps.items()]
    for path, rules in holders:
        if not isinstance(rules, list):
            continue
        for index, rule in enumerate(rules):
            pattern = rule.get("pattern") if isinstance(rule, dict) else None
            if not isinstance(pattern, str):
                continue
            try:
                re.compile(pattern)
            except re.error as error:
                context.report(
                    (*path, index, "pattern"),
                    f"pattern '{pattern}' is not a valid regular expression: {error}",
                )


def _check_params(context: _Context) -> None:
    params = context.data.get("params")
    if not isinstance(params, dict):
        return
    for name, param in params.items():
        if not isinstance(param, dict) or "default" not in param:
            continue
        wanted = PARAM_TYPES.get(param.get("type", ""))
        value = param["default"]
        if wanted is None:
            continue
        fits = isinstance(value, wanted) and (
            (bool not in wanted and not isinstance(value, bool)) or bool in wanted
        )
        if not fits:
            context.report(
                ("params", name, "default"),
                f"default {_literal(value)} of parameter '{name}' is not of type "
                f"{param['type']}",
            )


def _literal(value: Any) -> str:
    """A value as the YAML file writes it: `true`, not Python's `True`."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def merged_retry(defaults: Any, own: Any) -> dict[str, Any]:
    """`defaults.retry` under a step's `retry`, key by key, `backoff` too."""
    base = dict(defaults) if isinstance(defaults, dict) else {}
    mine = own if isinstance(own, dict) else {}
    merged = {**base, **mine}
    backoffs = [part.get("backoff") for part in (base, mine)]
    if any(isinstance(b, dict) for b in backoffs):
        merged["backoff"] = {
            **(backoffs[0] if isinstance(backoffs[0], dict) else {}),
            **(backoffs[1] if isinstance(backoffs[1], dict) else {}),
        }
    return merged


def _check_retries(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    defaults = context.data.get("defaults")
    default_retry = defaults.get("retry") if isinstance(defaults, dict) else None
    places: list[tuple[tuple[PathPart, ...], Any]] = [
        (("defaults", "retry"), default_retry)
    ]
    for name, step in steps.items():
        if isinstance(step.get("retry"), dict):
            merged = merged_retry(default_retry, step["retry"])
            places.append((("steps", name, "retry"), merged))
        compensate = step.get("compensate")
        if isinstance(compensate, dict):
            places.append(
                (("steps", name, "compensate", "retry"), compensate.get("retry"))
            )
    for path, retry in places:
        if isinstance(retry, dict):
            _check_retry(context, path, retry)


def _check_retry(
    context: _Context, path: tuple[PathPart, ...], retry: dict[str, Any]
) -> None:
    retry_on = retry.get("retry_on")
    if isinstance(retry_on, list) and "permanent" in retry_on:
        context.report(
            (*path, "retry_on", retry_on.index("permanent")),
            "'permanent' in retry_on has no effect: permanent failures are never "
            "retried",
            severity="warning",
        )
    try:
        elapsed = (
            parse_duration(retry["max_elapsed"]) if "max_elapsed" in retry else None
        )
        backoff = retry.get("backoff")
        backoff = backoff if isinstance(backoff, dict) else {}
        first = min(
            parse_duration(backoff.get("initial", 1)),
            parse_duration(backoff.get("max", 30)),
        )
    except ValueError:
        return
    if elapsed is not None and elapsed < first:
        context.report(
            (*path, "max_elapsed"),
            f"max_elapsed ({retry['max_elapsed']}) is shorter than the first backoff "
            f"({first:g}s), so no retry can start",
            severity="warning",
        )


def _check_unused(context: _Context, steps: dict[str, dict[str, Any]]) -> None:
    holders = [context.data.get("defaults"), *steps.values()]
    for section, field in (("circuits", "circuit"), ("pools", "pool")):
        used = {
            h[field]
            for h in holders
            if isinstance(h, dict) and isinstance(h.get(field), str)
        }
        for name in _names(context.data.get(section)):
            if name not in used:
                context.report(
                    (section, name),
                    f"{field} '{name}' is declared but no step uses it",
                    severity="warning",
                    key=True,
                )
