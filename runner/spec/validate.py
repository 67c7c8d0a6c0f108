"""Load → schema → semantic checks → model: the one entry point to a workflow."""

from __future__ import annotations

import functools
import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UsageError
from runner.spec.model import Workflow
from runner.spec.problems import Problem


@dataclass(frozen=True)
class Report:
    """Everything `validate` found in one file, and the model when valid."""

    path: str
    problems: tuple[Problem, ...]
    workflow: Workflow | None

    def has_errors(self) -> bool:
        return any(problem.severity == "error" for problem in self.problems)


def check_file(path: str, *, strict: bool = False) -> Report:
    """Every problem of `path` in one pass; warnings become errors with `strict`."""
    from runner.spec.yamlload import LoadError, decode, read_bounded

    try:
        text = decode(read_bounded(path))
    except LoadError as error:
        return Report(path, (error.problem,), None)
    return check_text(path, text, strict=strict)


def read_source(path: str) -> str | None:
    """The text of `path` as check_file reads it; None when it cannot be read."""
    from runner.spec.yamlload import LoadError, decode, read_bounded

    try:
        return decode(read_bounded(path))
    except LoadError:
        return None


def check_text(path: str, text: str, *, strict: bool = False) -> Report:
    """As check_file, for the text of `path` (a run's stored copy, say)."""
    with _cycle_collection_paused():
        return _check_text(path, text, strict=strict)


@contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Checking builds many objects and few cycles: collect them once, after.

    Left on, the collector walks the growing node tree again and again, which
    made a 10,000-step file cost 13 times a 1,000-step one instead of 10.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_text(path: str, text: str, *, strict: bool) -> Report:
    from runner.spec.checks import semantic_problems
    from runner.spec.schema import schema_problems
    from runner.spec.yamlload import Document, LoadError, parse, to_data

    try:
        document = Document(path, text, parse(text))
    except LoadError as error:
        return Report(path, (error.problem,), None)

    data = to_data(document.root)
    problems = schema_problems(document.root, data)
    problems += semantic_problems(document, data)
    problems.sort(key=lambda p: (p.line, p.column))
    if strict:
        problems = [problem.as_error() for problem in problems]

    report = Report(path, tuple(problems), None)
    if report.has_errors():
        return report

    from runner.spec.build import build_workflow

    return Report(path, report.problems, build_workflow(data, path, document.text))


@functools.cache
def checker_id() -> str:
    """Names this validator: runner's version and a hash of the code and schema
    that check a workflow. Two equal ids give equal verdicts on equal text."""
    from runner import __version__
    from runner.spec.schema import schema_text

    digest = hashlib.sha256(schema_text().encode())
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def build_checked(path: str, text: str) -> Workflow:
    """The model of `text`, which this validator (`checker_id`) found valid.

    A run stores its workflow's text with the id of the validator that checked
    it; resume and redrive build an unchanged copy with the same validator
    without checking it again, which is most of the time a large file takes.
    """
    from runner.spec.build import build_workflow
    from runner.spec.yamlload import parse, to_data

    with _cycle_collection_paused():
        return build_workflow(to_data(parse(text)), path, text)


class InvalidWorkflow(UsageError):
    """A command was given a workflow that does not validate."""

    def __init__(self, report: Report) -> None:
        errors = [p for p in report.problems if p.severity == "error"]
        super().__init__("\n".join(format_problem(report.path, p) for p in errors))
        self.report = report


def load_workflow(path: str) -> Workflow:
    """The model of `path`, or InvalidWorkflow with every error."""
    report = check_file(path)
    if report.workflow is None:
        raise InvalidWorkflow(report)
    return report.workflow


def format_problem(path: str, problem: Problem) -> str:
    return (
        f"{path}:{problem.line}:{problem.column}: {problem.severity}: {problem.message}"
    )
