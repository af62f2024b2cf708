"""Prints the interleaved overhead summary after pytest-benchmark's tables."""

from __future__ import annotations

import pytest

_SUMMARY = pytest.StashKey[list[str]]()


@pytest.fixture
def summary_lines(request: pytest.FixtureRequest) -> list[str]:
    """Lines a benchmark wants printed at the end of the run, even when output is captured."""
    return request.config.stash.setdefault(_SUMMARY, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("asgi_perf overhead summary")
        for line in lines:
            terminalreporter.write_line(line)
