"""The immutable model of a validated workflow, every default resolved.

This is the one object every command after `validate` uses. It is built only
from a document that passed the schema and the semantic checks
(`runner.spec.build`), so its fields hold plain, checked values: durations in
seconds, names that exist, expressions already parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Literal, TypeVar

ErrorClass = Literal["transient", "intermittent", "permanent"]
ERROR_CLASSES: tuple[ErrorClass, ...] = ("transient", "intermittent", "permanent")
Jitter = Literal["full", "equal", "add", "none"]
ParamType = Literal["string", "integer", "number", "boolean"]
Command = str | tuple[str, ...]
"""A string runs with `/bin/sh -c`; a tuple is argv, run with no shell."""

DEFAULT_KILL_GRACE = 5.0
K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V] | None = None) -> Mapping[K, V]:
    """A read-only view of a copy of `items`, for fields of frozen models."""
    return MappingProxyType(dict(items or {}))


class OnExhausted(str, Enum):
    REDRIVE = "redrive"
    COMPENSATE = "compensate"


class OnCrash(str, Enum):
    RERUN = "rerun"
    FAIL = "fail"


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 30.0
    jitter: Jitter = "full"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    transient_delay: float = 0.0
    max_elapsed: float | None = None
    retry_on: frozenset[ErrorClass] = frozenset({"transient", "intermittent"})


@dataclass(frozen=True)
class ClassifyRule:
    """Matches when any of its conditions does; the first matching rule wins."""

    error_class: ErrorClass
    exit_codes: frozenset[int] = frozenset()
    signals: frozenset[str] = frozenset()
    timeout: bool = False
    pattern: str | None = None
    ignore_case: bool = False
    origin: str = ""
    """Where the rule came from, for `status`: `steps.x.classify[0]`, `builtin`…"""


@dataclass(frozen=True)
class CircuitPolicy:
    failure_threshold: int = 3
    half_open_after: float = 60.0
    success_threshold: int = 2
    half_open_max_calls: int = 1


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: str | int | float | bool | None = None
    has_default: bool = False
    description: str = ""


@dataclass(frozen=True)
class Compensation:
    run: Command
    timeout: float | None
    retry: RetryPolicy


@dataclass(frozen=True)
class Step:
    name: str
    run: Command
    needs: tuple[str, ...] = ()
    if_: str | None = None
    """The `if` expression's source, without its `${{ }}` wrapper."""
    env: Mapping[str, str] = field(default_factory=frozen_map)
    cwd: str = "."
    """Absolute after building: relative paths are resolved against the
    workflow file's folder."""
    timeout: float | None = None
    kill_grace: float = DEFAULT_KILL_GRACE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    classify: tuple[ClassifyRule, ...] = ()
    """The step's rules, then the workflow's: built-ins come after these."""
    circuit: str | None = None
    pool: str | None = None
    check: Command | None = None
    compensate: Compensation | None = None
    on_exhausted: OnExhausted = OnExhausted.REDRIVE
    on_crash: OnCrash = OnCrash.RERUN


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: Mapping[str, Step]
    """In file order."""
    description: str = ""
    params: Mapping[str, Param] = field(default_factory=frozen_map)
    env: Mapping[str, str] = field(default_factory=frozen_map)
    circuits: Mapping[str, CircuitPolicy] = field(default_factory=frozen_map)
    pools: Mapping[str, int] = field(default_factory=frozen_map)
    """Pool name to its concurrency."""
    path: str = ""
    """The file as given on the command line."""
    source: str = ""
    """The file's text: stored with a run so resume can detect changes."""
