"""Options shared by every test: trial counts, and opting in to stress tests."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trials",
        type=int,
        default=20,
        help="Random crash trials per harness test (default 20, the CI size).",
    )
    parser.addoption(
        "--stress",
        action="store_true",
        help="Run tests marked stress (also RUNNER_STRESS=1).",
    )


def stress_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--stress")) or os.environ.get("RUNNER_STRESS") == "1"


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if stress_enabled(config):
        return
    skip = pytest.mark.skip(reason="stress test: pass --stress or set RUNNER_STRESS=1")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`trial` runs each trial as its own test; stress-marked under --stress."""
    if "trial" not in metafunc.fixturenames:
        return
    count = metafunc.config.getoption("--trials")
    marks = [pytest.mark.stress] if stress_enabled(metafunc.config) else []
    metafunc.parametrize(
        "trial",
        [
            pytest.param(number, marks=marks, id=f"trial{number}")
            for number in range(count)
        ],
    )
