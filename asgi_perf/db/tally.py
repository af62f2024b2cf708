"""The queries of one request, counted where they run, and the one entry for every driver.

The middleware puts a ``Tally`` in a context variable for each request. The
context is the request's own: starlette copies it into the threadpool that
runs sync endpoints, and background tasks run in the request's task, so
their queries land in the request that caused them. A query with no tally
(start-up, a script, a thread of its own) goes to the route ``<no request>``
of the sink that was built last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from asgi_perf.db.callsite import call_site
from asgi_perf.db.normalise import SHAPES as _shapes
from asgi_perf.db.normalise import normalise

NO_REQUEST = "<no request>"

# One statement's numbers within a request: count, total ns, max ns, failed.
Counts = list[int]


class Sink(Protocol):
    """Where tallies and queries outside any request go (``DBStats``)."""

    slow_ns: int

    def known_site(self, route: str, statement: str) -> bool: ...

    def route_of(self, tally: Tally) -> str: ...

    def outside(
        self,
        route: str,
        statement: str,
        ns: int,
        failed: bool,
        site: str | None,
        queries: int = 1,
        whole_ns: int | None = None,
    ) -> None: ...


class Tally:
    """One request's queries: per statement, plus the slow ones and call sites."""

    __slots__ = ("done", "failed", "ns", "queries", "route", "scope", "sink", "sites", "slow",
                 "slow_ns", "statements", "times")  # fmt: skip

    def __init__(self, sink: Sink, scope: object) -> None:
        self.sink = sink
        self.slow_ns = sink.slow_ns
        self.scope = scope
        self.queries = 0
        self.ns = 0
        self.failed = 0
        self.statements: dict[str, Counts] = {}
        # Per-query durations, folded into the route's histogram in one C call.
        self.times: list[int] = []
        # (statement, ns, call site, wall time) of the slow ones.
        # Made when first needed: most requests have neither.
        self.slow: list[tuple[str, int, str | None, float]] | None = None
        self.sites: dict[str, str | None] | None = None
        # The route, found at the first query that needs it (a call site).
        self.route: str | None = None
        self.done = False

    def add(self, statement: str, ns: int, failed: bool, locate: bool = True) -> None:
        self.queries += 1
        self.ns += ns
        self.times.append(ns)
        counts = self.statements.get(statement)
        if counts is None:
            self.statements[statement] = [1, ns, ns, int(failed)]
            # The first time in this request: the route may not know where
            # in the app this statement comes from yet.
            route = self.route
            if route is None:
                route = self.route = self.sink.route_of(self)
            if not self.sink.known_site(route, statement):
                if self.sites is None:
                    self.sites = {}
                self.sites[statement] = call_site(3) if locate else None
        else:
            counts[0] += 1
            counts[1] += ns
            if ns > counts[2]:
                counts[2] = ns
            if failed:
                counts[3] += 1
        if failed:
            self.failed += 1
        if ns >= self.slow_ns:
            self._slow(statement, ns, call_site(4) if locate else None)

    def extend(self, statement: str, ns: int, whole_ns: int) -> None:
        """Rows fetched after ``execute``: more time for the statement, not a query."""
        self.ns += ns
        counts = self.statements.get(statement)
        if counts is not None:
            counts[1] += ns
            if whole_ns > counts[2]:
                counts[2] = whole_ns
        if whole_ns >= self.slow_ns > whole_ns - ns:
            self._slow(statement, whole_ns, call_site(4))

    def _slow(self, statement: str, ns: int, site: str | None) -> None:
        if self.slow is None:
            self.slow = []
        self.slow.append((statement, ns, site, time.time()))


CURRENT: ContextVar[Tally | None] = ContextVar("asgi_perf_db_tally", default=None)
_current = CURRENT.get


class _Default:
    """The sink that queries outside any request go to: the last one built,
    and what its core does with a failure of ours (counts and logs it)."""

    sink: Sink | None = None
    on_error: Callable[[str, BaseException], None] | None = None


DEFAULT = _Default()


def counting_failed(exc: Exception) -> None:
    """A bug of ours while counting a query: the query is the app's and stands;
    the failure is counted in ``internal_errors`` and logged once."""
    report = DEFAULT.on_error
    if report is not None:
        report("db", exc)  # PerfCore.internal_error: never raises


def record_ns(sql: str, ns: int, failed: bool = False, locate: bool = True) -> None:
    """One query of ``ns`` nanoseconds: every capture path ends here.

    ``locate=False``: the caller's stack is not the code that ran the query
    (asyncpg's logger runs later, from the event loop): no call site.
    """
    tally = _current()
    if tally is not None and not tally.done:
        # The cache's lookup inlined: a statement seen before costs one get.
        tally.add(_shapes.get(sql) or normalise(sql), ns, failed, locate)
        return
    sink = tally.sink if tally is not None else DEFAULT.sink
    if sink is None:
        return
    # A query after its request was counted (a task it left behind) keeps
    # its route; one with no request at all has none.
    route = NO_REQUEST if tally is None else (tally.route or sink.route_of(tally))
    site = call_site(2) if locate and ns >= sink.slow_ns else None
    sink.outside(route, normalise(sql), ns, failed, site)


def record_fetch_ns(sql: str, ns: int, whole_ns: int) -> None:
    """Rows of ``sql`` fetched in ``ns``, ``whole_ns`` since its execute began."""
    tally = _current()
    if tally is not None and not tally.done:
        tally.extend(normalise(sql), ns, whole_ns)
        return
    sink = tally.sink if tally is not None else DEFAULT.sink
    if sink is None:
        return
    route = NO_REQUEST if tally is None else (tally.route or sink.route_of(tally))
    slow = whole_ns >= sink.slow_ns > whole_ns - ns
    sink.outside(route, normalise(sql), ns, False, call_site(2) if slow else None, 0, whole_ns)


def record(statement: str, seconds: float, *, failed: bool = False) -> None:
    """Count one query run by a driver asgi_perf does not wrap.

    ``statement`` is the SQL text (its literals are folded to ``?`` before
    anything is kept); ``seconds`` how long it took.
    """
    record_ns(statement, int(seconds * 1e9), failed)
