"""Build the immutable model from a document that passed every check."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from runner.spec.checks import merged_retry
from runner.spec.durations import parse_duration
from runner.spec.model import (
    DEFAULT_KILL_GRACE,
    Backoff,
    CircuitPolicy,
    ClassifyRule,
    Command,
    Compensation,
    OnCrash,
    OnExhausted,
    Param,
    RetryPolicy,
    Step,
    Workflow,
    frozen_map,
)


def build_workflow(data: dict[str, Any], path: str, source: str) -> Workflow:
    """The model of a valid document; `path` is the file as given."""
    base = os.path.dirname(os.path.abspath(path))
    defaults = data.get("defaults", {})
    workflow_rules = build_rules(data.get("classify", []), "classify")
    steps = {
        name: _build_step(name, step, defaults, workflow_rules, base)
        for name, step in data["steps"].items()
    }
    return Workflow(
        name=data["name"],
        description=data.get("description", ""),
        steps=frozen_map(steps),
        params=frozen_map(
            {name: _build_param(name, p) for name, p in data.get("params", {}).items()}
        ),
        env=frozen_map(_text_map(data.get("env", {}))),
        circuits=frozen_map(
            {n: build_circuit_policy(c) for n, c in data.get("circuits", {}).items()}
        ),
        pools=frozen_map(
            {n: p["concurrency"] for n, p in data.get("pools", {}).items()}
        ),
        path=path,
        source=source,
    )


def _build_step(
    name: str,
    step: dict[str, Any],
    defaults: dict[str, Any],
    workflow_rules: tuple[ClassifyRule, ...],
    base: str,
) -> Step:
    def inherited(key: str) -> Any:
        return step.get(key, defaults.get(key))

    own_rules = build_rules(step.get("classify", []), f"steps.{name}.classify")
    timeout, grace = inherited("timeout"), inherited("kill_grace")
    return Step(
        name=name,
        run=_command(step["run"]),
        needs=tuple(
            [step["needs"]]
            if isinstance(step.get("needs"), str)
            else step.get("needs", [])
        ),
        if_=_condition(step.get("if")),
        env=frozen_map(_text_map(step.get("env", {}))),
        cwd=os.path.normpath(os.path.join(base, inherited("cwd") or ".")),
        timeout=None if timeout is None else parse_duration(timeout),
        kill_grace=DEFAULT_KILL_GRACE if grace is None else parse_duration(grace),
        retry=build_retry(merged_retry(defaults.get("retry"), step.get("retry"))),
        classify=own_rules + workflow_rules,
        circuit=inherited("circuit"),
        pool=inherited("pool"),
        check=_command(step["check"]) if "check" in step else None,
        compensate=_compensation(step.get("compensate")),
        on_exhausted=OnExhausted(step.get("on_exhausted", "redrive")),
        on_crash=OnCrash(step.get("on_crash", "rerun")),
    )


def _command(value: str | list[str]) -> Command:
    return value if isinstance(value, str) else tuple(value)


def _condition(value: Any) -> str | None:
    """The `if` expression without its `${{ }}`; booleans become literals."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    if text.startswith("${{") and text.endswith("}}"):
        return text[3:-2].strip()
    return text


def _compensation(value: Any) -> Compensation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return Compensation(_command(value), None, RetryPolicy())
    timeout = value.get("timeout")
    return Compensation(
        run=_command(value["run"]),
        timeout=None if timeout is None else parse_duration(timeout),
        retry=build_retry(value.get("retry", {})),
    )


def build_retry(retry: Mapping[str, Any]) -> RetryPolicy:
    backoff = retry.get("backoff", {})
    defaults = Backoff()
    max_elapsed = retry.get("max_elapsed")
    return RetryPolicy(
        max_attempts=retry.get("max_attempts", 3),
        backoff=Backoff(
            initial=parse_duration(backoff.get("initial", defaults.initial)),
            multiplier=float(backoff.get("multiplier", defaults.multiplier)),
            max=parse_duration(backoff.get("max", defaults.max)),
            jitter=backoff.get("jitter", defaults.jitter),
        ),
        transient_delay=parse_duration(retry.get("transient_delay", 0)),
        max_elapsed=None if max_elapsed is None else parse_duration(max_elapsed),
        retry_on=frozenset(retry.get("retry_on", ("transient", "intermittent"))),
    )


def build_rules(rules: list[dict[str, Any]], origin: str) -> tuple[ClassifyRule, ...]:
    return tuple(
        ClassifyRule(
            error_class=rule["class"],
            exit_codes=frozenset(rule.get("exit_codes", ())),
            signals=frozenset(rule.get("signals", ())),
            timeout=bool(rule.get("timeout", False)),
            pattern=rule.get("pattern"),
            origin=f"{origin}[{index}]",
        )
        for index, rule in enumerate(rules)
    )


def build_circuit_policy(policy: Mapping[str, Any]) -> CircuitPolicy:
    defaults = CircuitPolicy()
    return CircuitPolicy(
        failure_threshold=policy.get("failure_threshold", defaults.failure_threshold),
        half_open_after=parse_duration(
            policy.get("half_open_after", defaults.half_open_after)
        ),
        success_threshold=policy.get("success_threshold", defaults.success_threshold),
        half_open_max_calls=policy.get(
            "half_open_max_calls", defaults.half_open_max_calls
        ),
    )


def _build_param(name: str, param: dict[str, Any]) -> Param:
    return Param(
        name=name,
        type=param["type"],
        default=param.get("default"),
        has_default="default" in param,
        description=param.get("description", ""),
    )


def _text_map(values: dict[str, Any]) -> dict[str, str]:
    return {key: to_env_text(value) for key, value in values.items()}


def to_env_text(value: Any) -> str:
    """Integers decimal, booleans `true`/`false`, null empty (SPEC section 1)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
