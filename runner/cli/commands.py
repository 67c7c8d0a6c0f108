"""Registers every command module on the group."""

from runner.cli import cmd_recovery, cmd_run, cmd_spec, cmd_state  # noqa: F401
