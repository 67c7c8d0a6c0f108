"""The `runner` command: options in, one call, an exit code out.

Commands import what they need when they run, so `runner --help` stays fast.
Every expected failure is a RunnerError: printed as its message on stderr and
mapped to its exit code here, in one place. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

import click

from runner import __version__
from runner.errors import ExitCode, RunnerError

STATE_HELP = (
    "State directory (or postgresql:// URL); default $RUNNER_STATE, "
    "else the user state directory."
)


class Group(click.Group):
    """Turns RunnerError into its message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunnerError as error:
            click.echo(error.message, err=True)
            sys.exit(int(error.exit_code))
        except KeyboardInterrupt:
            # Ctrl-C outside a run (a run handles SIGINT itself): nothing started.
            sys.exit(int(ExitCode.SIGINT))
        except BrokenPipeError:
            # `runner status | head`: the reader left; say nothing more.
            _silence_stdout()
            sys.exit(int(ExitCode.OK))
        except sqlite3.DatabaseError as error:
            click.echo(f"state database error: {error}; nothing more was run", err=True)
            sys.exit(int(ExitCode.STORE))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
@click.option("--state", "state", envvar="RUNNER_STATE", help=STATE_HELP)
@click.pass_context
def cli(ctx: click.Context, state: str | None) -> None:
    """Run declarative workflows that survive flaky networks and crashes."""
    ctx.obj = {"state": state}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def state_option(function: Any) -> Any:
    """`--state` after the command name too; it wins over the group's."""

    def remember(ctx: click.Context, _param: Any, value: str | None) -> None:
        if value is not None:
            ctx.find_root().obj["state"] = value

    return click.option(
        "--state",
        "state_after",
        help=STATE_HELP,
        expose_value=False,
        callback=remember,
    )(function)


def main() -> None:
    from runner.cli import commands  # noqa: F401  (registers the commands)

    cli(prog_name="runner")
