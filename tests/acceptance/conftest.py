"""Fixtures: the real `runner` in a subprocess, workflow files, ledgers.

Acceptance tests drive the command line as a user would: real SQLite, real
processes, real signals. The helpers themselves live in `support.py`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Cli, Ledger, processes_with, write_workflow


@pytest.fixture
def runner(tmp_path: Path) -> Cli:
    """The runner CLI with a state directory of this test's own."""
    return Cli(tmp_path)


@pytest.fixture
def workflow(tmp_path: Path) -> Callable[..., Path]:
    """Write a workflow file into the test's folder (steps run there)."""

    def write(document: dict[str, Any] | str, name: str = "wf.yaml") -> Path:
        return write_workflow(tmp_path / name, document)

    return write


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """The test's side-effect ledger."""
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture(autouse=True)
def _no_stray_processes(tmp_path: Path) -> Iterator[None]:
    """Whatever a test leaves running under its folder is killed afterwards."""
    yield
    for pid in processes_with(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
