"""pytest plugin of asgi_perf (entry point ``pytest11``, disable with ``-p no:asgi_perf``).

- ``perf_app(app, budgets=..., **options)``: a ``PerfTestClient`` serving ``app``
  wrapped by ``PerfMiddleware``; its budgets are checked when the test body ends.
- ``@pytest.mark.perf_budget("GET /path", p99_ms="50 ms")`` or
  ``@pytest.mark.perf_budget(budgets="perf-budgets.toml")``: budgets for every
  app the test serves with ``perf_app``.
- ``@pytest.mark.limit_memory("24 MB")`` or the ``memory_budget("24 MB")``
  fixture: a limit on the tracemalloc peak of the test body.
- ``soak(app, "/path", requests=2000)``: drives ``app`` in-process and fails
  the test when its RSS or tracemalloc trend grows with the requests
  (``asgi_perf.testing.soak``); a passing soak's summary goes to the report.

A broken budget or limit fails the test in its call phase, one line per
violation. Tests that use none of these are left alone.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from asgi_perf._types import ASGIApp
from asgi_perf.config import PerfConfig
from asgi_perf.errors import ConfigError
from asgi_perf.testing.budgets import (
    DEFAULT_MIN_SAMPLES,
    format_verdict,
    is_broken,
    load_source,
    merge_budgets,
)
from asgi_perf.testing.memory_watch import MB, MemoryWatch, size_text
from asgi_perf.units import parse_size_mb

if TYPE_CHECKING:  # asgi_perf.testing.client needs httpx: imported only by tests that use it
    from asgi_perf.budgets import Budget
    from asgi_perf.testing import BudgetsLike, MemoryBudget, PerfAppFactory, PerfTestClient
    from asgi_perf.testing.soak import SoakResult

MARKERS = (
    'perf_budget(pattern, **limits) or perf_budget(budgets="perf-budgets.toml"): budgets '
    "(p50_ms, p99_ms, max_mb, error_rate, max_queries, ...) that the apps served by the "
    "perf_app fixture must meet; the test fails listing the broken ones.",
    'limit_memory(limit): fail the test when the tracemalloc peak of its body exceeds "24 MB".',
)


@dataclass
class _TestState:
    """What one test asked of the plugin, kept in its item's stash."""

    marker_budgets: list[tuple[Budget, ...]] = field(default_factory=list)
    memory_limit_mb: float | None = None
    trace_memory: bool = False
    clients: list[PerfTestClient] = field(default_factory=list)


_STATE = pytest.StashKey[_TestState]()


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Markers are read before the fixtures are set up, so a bad one is a setup error.
    if _STATE in item.stash:  # a rerun starts afresh
        del item.stash[_STATE]
    budget_marks = list(item.iter_markers("perf_budget"))
    memory_mark = item.get_closest_marker("limit_memory")
    # With --memray, pytest-memray owns the limit_memory marker.
    if memory_mark is not None and item.config.pluginmanager.hasplugin("memray_manager"):
        memory_mark = None
    if not budget_marks and memory_mark is None:
        return
    state = item.stash[_STATE] = _TestState()
    root = item.config.rootpath
    # iter_markers yields the closest first; the closest must override, so it goes last.
    for mark in reversed(budget_marks):
        state.marker_budgets.append(_marker_budgets(mark, root))
    if memory_mark is not None:
        state.memory_limit_mb = _memory_limit(memory_mark)
        state.trace_memory = True


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # trylast: innermost of the wrappers, so the memory measured is the test's own.
    state = item.stash.get(_STATE, None)
    watch = None
    if state is not None and state.trace_memory:
        watched = state
        watch = MemoryWatch(lambda: watched.memory_limit_mb)
    try:
        result = yield
    finally:
        peak = watch.finish() if watch is not None else None
        # Read again: perf_app requested with request.getfixturevalue() in the body starts now.
        state = item.stash.get(_STATE, None)
        problems = [] if state is None else _problems(item, state, watch, peak)
        if state is not None:
            del item.stash[_STATE]  # the fixtures keep what their teardown needs
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    return result


@pytest.fixture
def perf_app(request: pytest.FixtureRequest) -> Iterator[PerfAppFactory]:
    """Factory: ``client = perf_app(app, budgets=None, **options)``.

    ``client`` is an ``asgi_perf.testing.PerfTestClient`` (an ``httpx.Client``)
    serving ``app`` wrapped by ``PerfMiddleware(**options)`` in-process; its
    ``.perf`` is the middleware. The budgets (this argument merged over the
    ``perf_budget`` markers) are checked when the test body ends.
    """
    _need_httpx()
    from asgi_perf.testing import PerfTestClient

    state = _state(request.node.stash)
    root = request.config.rootpath

    def make(app: ASGIApp, /, budgets: BudgetsLike = None, **options: Any) -> PerfTestClient:
        config = options.get("config")
        default = config.min_samples if isinstance(config, PerfConfig) else DEFAULT_MIN_SAMPLES
        # The argument is the closest to the test: it overrides the markers.
        parts = [*state.marker_budgets, load_source(_rooted(budgets, root))]
        merged = merge_budgets(parts, min_samples=options.get("min_samples", default))
        client = PerfTestClient(app, merged, **options)
        state.clients.append(client)
        return client

    yield make
    clients, state.clients = state.clients, []
    for client in clients:
        client.close()


@pytest.fixture
def memory_budget(request: pytest.FixtureRequest) -> MemoryBudget:
    """``memory_budget("24 MB")`` limits the tracemalloc peak of the test body
    (the whole body, wherever in it the call is made)."""
    state = _state(request.node.stash)
    state.trace_memory = True

    def limit(size: float | str) -> None:
        state.memory_limit_mb = parse_size_mb(size, name="memory_budget")

    return limit


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> Callable[..., SoakResult]:
    """``soak(app, "/path", requests=2000, **options)``: ``asgi_perf.testing.soak.soak``;
    the summary of a soak that passed goes to the test's report (shown with ``-rP``)."""
    _need_httpx()
    from asgi_perf.testing.soak import soak as soak_app

    def run(app: ASGIApp, /, *args: Any, check: bool = True, **options: Any) -> SoakResult:
        __tracebackhide__ = True
        result = soak_app(app, *args, check=False, **options)
        if check:
            result.check()  # its message ends with the summary: no section to repeat it
        request.node.add_report_section("call", "asgi_perf", result.summary())
        return result

    return run


def _state(stash: pytest.Stash) -> _TestState:
    return stash.setdefault(_STATE, _TestState())


def _need_httpx() -> None:
    # httpx is an extra, not a dependency of asgi_perf: say so rather than show an ImportError.
    if importlib.util.find_spec("httpx") is None:
        pytest.fail("asgi_perf's perf_app needs httpx: pip install httpx", pytrace=False)


def _rooted(source: Any, root: Path) -> Any:
    """Relative budget files are found from pytest's rootdir, wherever pytest started."""
    if isinstance(source, (str, os.PathLike)) and not os.path.isabs(source):
        return root / source
    return source


def _marker_budgets(mark: pytest.Mark, root: Path) -> tuple[Budget, ...]:
    _need_httpx()  # the budgets are for perf_app: say at setup that it cannot run
    kwargs = dict(mark.kwargs)
    try:
        if len(mark.args) == 1 and isinstance(mark.args[0], str) and "budgets" not in kwargs:
            return load_source({mark.args[0]: kwargs})
        if not mark.args and "budgets" in kwargs and set(kwargs) <= {"budgets", "min_samples"}:
            source = _rooted(kwargs["budgets"], root)
            return load_source(source, min_samples=kwargs.get("min_samples"))
        error = (
            'expected perf_budget("METHOD /path", p99_ms=...) '
            'or perf_budget(budgets="perf-budgets.toml")'
        )
    except ConfigError as exc:
        error = str(exc)
    # Failed outside the except block: the ConfigError's traceback would only add noise.
    pytest.fail(f"asgi_perf.ConfigError in a perf_budget marker: {error}", pytrace=False)


def _memory_limit(mark: pytest.Mark) -> float:
    args = [*mark.args, *mark.kwargs.values()]
    error = 'expected limit_memory("24 MB")'
    if len(args) == 1 and set(mark.kwargs) <= {"limit"}:
        try:
            return parse_size_mb(args[0], name="limit")
        except ConfigError as exc:
            error = str(exc)
    pytest.fail(f"asgi_perf.ConfigError in a limit_memory marker: {error}", pytrace=False)


def _problems(
    item: pytest.Item, state: _TestState, watch: MemoryWatch | None, peak: int | None
) -> list[str]:
    """The violations of this test, one line each; every verdict goes to a report section
    (shown for failed tests, and for passed ones with ``-rP``)."""
    problems: list[str] = []
    report: list[str] = []
    limit = state.memory_limit_mb
    if watch is not None and peak is not None:
        line = f"memory: peak {size_text(peak)}"
        if limit is not None and peak > limit * MB:
            problems.append(
                f"memory budget: peak {size_text(peak)} > limit {size_text(limit * MB)}"
            )
            problems.extend(watch.top_sites(item.config.rootpath, peak))
        report.append(line + ("" if limit is None else f" (limit {size_text(limit * MB)})"))
    for client in state.clients:
        for verdict in client.check()["verdicts"]:
            text = format_verdict(verdict)
            report.append(f"{verdict['verdict']}: {text}")
            if is_broken(verdict):
                problems.append(text)
    if report:
        item.add_report_section("call", "asgi_perf", "\n".join(report))
    return problems
