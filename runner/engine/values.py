"""Values between steps: params, outputs, expressions, the command environment.

In a shell string an expression is never pasted as shell text: it becomes a
bare `${RUNNER_EXPR_N}` reference to an environment variable that holds its
value, so no parameter or output can inject shell syntax. In argv items and
`env` values the value is inserted as it is (SPEC section 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from runner.errors import UsageError
from runner.spec import expressions
from runner.spec.build import to_env_text
from runner.spec.model import Command, Step, Workflow

EXPR_PREFIX = "RUNNER_EXPR"
MAX_OUTPUT_FILE = 1024 * 1024


def parse_params(workflow: Workflow, given: Mapping[str, str]) -> dict[str, Any]:
    """Typed parameter values from `-p K=V`, defaults filled in."""
    values: dict[str, Any] = {}
    for name in given:
        if name not in workflow.params:
            known = ", ".join(workflow.params) or "none"
            raise UsageError(f"unknown parameter '{name}' (declared: {known})")
    for name, param in workflow.params.items():
        if name in given:
            values[name] = _typed(name, param.type, given[name])
        elif param.has_default:
            values[name] = param.default
        else:
            raise UsageError(f"parameter '{name}' is required; pass -p {name}=VALUE")
    return values


def carried_params(
    workflow: Workflow, given: Mapping[str, Any], run_id: str
) -> dict[str, Any]:
    """A run's parameter values for `workflow`, which may be a changed file.

    Values the run was given are kept; a parameter the change added takes its
    default; one it removed is dropped. A new parameter without a default, or
    a kept value the change gave another type, cannot be set on resume: that
    is refused (exit 2) before anything is recorded.
    """
    values: dict[str, Any] = {}
    for name, param in workflow.params.items():
        if name in given:
            if not _has_type(given[name], param.type):
                raise UsageError(
                    f"the changed workflow makes parameter '{name}' {param.type}, "
                    f"but run {run_id} has {given[name]!r}; use --original, "
                    "or keep its type"
                )
            values[name] = given[name]
        elif param.has_default:
            values[name] = param.default
        else:
            raise UsageError(
                f"the changed workflow adds parameter '{name}' with no default, "
                f"which run {run_id} was never given; give it a default, or "
                "use --original"
            )
    return values


def _has_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (kind == "number" and isinstance(value, float))


def _typed(name: str, kind: str, text: str) -> Any:
    if "\x00" in text:
        raise UsageError(f"parameter '{name}' contains a NUL byte")
    try:
        if kind == "integer":
            return int(text, 10)
        if kind == "number":
            return float(text)
    except ValueError:
        raise UsageError(f"parameter '{name}' must be {kind}, got '{text}'") from None
    if kind == "boolean":
        if text not in ("true", "false"):
            raise UsageError(f"parameter '{name}' must be true or false, got '{text}'")
        return text == "true"
    return text


def parse_param_args(pairs: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"-p '{pair}': write -p NAME=VALUE")
        values[name] = value
    return values


def parse_outputs(path: str) -> dict[str, str]:
    """`key=value` lines of a step's $RUNNER_OUTPUT file (later lines win)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_OUTPUT_FILE)
    except FileNotFoundError:
        return {}
    outputs: dict[str, str] = {}
    for line in data.decode("utf-8", errors="backslashreplace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            outputs[key.strip()] = value
    return outputs


class Renderer:
    """Evaluates a workflow's expressions for one run."""

    def __init__(self, workflow: Workflow, params: Mapping[str, Any]) -> None:
        self.workflow = workflow
        self.params = params
        base = dict(os.environ)
        context = self._context(base, {})
        base.update(
            {k: expressions.render(v, context) for k, v in workflow.env.items()}
        )
        self.base_env = base

    def _context(
        self, env: Mapping[str, str], steps: Mapping[str, expressions.StepView]
    ) -> expressions.Context:
        return expressions.Context(params=self.params, env=env, steps=steps)

    def step_env(
        self, step: Step, steps: Mapping[str, expressions.StepView]
    ) -> dict[str, str]:
        """The environment a step's commands get, before the RUNNER_* values."""
        env = dict(self.base_env)
        context = self._context(env, steps)
        env.update({k: expressions.render(v, context) for k, v in step.env.items()})
        return env

    def condition(
        self,
        step: Step,
        env: Mapping[str, str],
        steps: Mapping[str, expressions.StepView],
    ) -> bool:
        if step.if_ is None:
            return True
        value = expressions.parse(step.if_).evaluate(self._context(env, steps))
        if not isinstance(value, bool):
            raise expressions.ExpressionError(
                f"'if' of step '{step.name}' gave {to_env_text(value)!r}, "
                "not true or false",
                0,
            )
        return value

    def command(
        self,
        command: Command,
        env: Mapping[str, str],
        steps: Mapping[str, expressions.StepView],
    ) -> tuple[Command, dict[str, str]]:
        """The command to run and the extra variables its expressions need."""
        context = self._context(env, steps)
        if isinstance(command, str):
            return expressions.render_shell(command, context, EXPR_PREFIX)
        return tuple(expressions.render(item, context) for item in command), {}
