"""Per-route database numbers of one process, bounded, and their plain state.

A request's ``Tally`` is folded in once, when the request ends (on the
event loop); queries outside any request are added one by one. Every
collection is capped: routes by ``max_routes`` (past it: ``<other>``),
statements per route by ``MAX_STATEMENTS`` (past it: ``<other statements>``),
slow statements by ``max_slow_queries`` (newest kept). ``state()`` is the
plain form that workers share and that every answer is built from.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from asgi_perf.db.report import DBMetricRow, merge_states, metric_rows
from asgi_perf.db.tally import DEFAULT, NO_REQUEST, Tally
from asgi_perf.routes import OTHER, UNMATCHED
from asgi_perf.stats.histogram import Histogram

MAX_STATEMENTS = 50
OTHER_STATEMENTS = "<other statements>"
_SPECIAL = frozenset({NO_REQUEST, OTHER, UNMATCHED})

State = dict[str, Any]


class RouteDB:
    """The database numbers of one route."""

    __slots__ = ("failed", "n_plus_one", "ns", "per_query", "queries", "queries_hist",
                 "request_ns", "requests", "statements", "time_hist")  # fmt: skip

    def __init__(self) -> None:
        self.requests = 0
        self.queries = 0
        self.ns = 0
        self.failed = 0
        # Sum of the requests' own durations: the denominator of the DB share.
        self.request_ns = 0
        self.n_plus_one = 0
        self.queries_hist = Histogram()  # queries per request
        self.time_hist = Histogram()  # DB ns per request
        self.per_query = Histogram()  # ns per query (Prometheus)
        # statement -> [count, total ns, max ns, failed]
        self.statements: dict[str, list[int]] = {}

    def statement(self, text: str) -> list[int]:
        counts = self.statements.get(text)
        if counts is None:
            if len(self.statements) >= MAX_STATEMENTS:
                text = OTHER_STATEMENTS
                counts = self.statements.get(text)
            if counts is None:
                counts = self.statements[text] = [0, 0, 0, 0]
        return counts

    def state(self) -> State:
        return {
            "requests": self.requests,
            "queries": self.queries,
            "ns": self.ns,
            "failed": self.failed,
            "request_ns": self.request_ns,
            "n_plus_one": self.n_plus_one,
            "queries_hist": self.queries_hist.to_state(),
            "time_hist": self.time_hist.to_state(),
            "per_query": self.per_query.to_state(),
            "statements": {k: list(v) for k, v in self.statements.items()},
        }


class DBStats:
    """``core.db``: every route's queries, the N+1s and the slow statements."""

    def __init__(
        self,
        *,
        route_key: Callable[[Any], str],
        max_routes: int = 500,
        n_plus_one_threshold: int = 10,
        slow_query_ms: float = 100.0,
        max_slow_queries: int = 200,
        wall: Callable[[], float] = time.time,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._route_key = route_key
        self.max_routes = max_routes
        self.threshold = n_plus_one_threshold
        self.slow_query_ms = float(slow_query_ms)
        self.slow_ns = int(slow_query_ms * 1e6)
        self._wall = wall
        self._lock = threading.Lock()
        self.routes: dict[str, RouteDB] = {}
        # (route, statement) -> [most per request, requests]
        self.n_plus_one: dict[tuple[str, str], list[int]] = {}
        self.sites: dict[tuple[str, str], str | None] = {}
        self.slow: deque[tuple[str, str, int, str | None, float]] = deque(maxlen=max_slow_queries)
        # The other workers' states (set by the core when workers share a directory).
        self.others: Callable[[], list[State]] = list
        # Queries outside any request come here: the last one built wins.
        DEFAULT.sink = self
        DEFAULT.on_error = on_error

    # -- called while queries run

    def route_of(self, tally: Tally) -> str:
        return self._route_key(tally.scope)

    def known_site(self, route: str, statement: str) -> bool:
        return (route, statement) in self.sites

    def outside(
        self,
        route: str,
        statement: str,
        ns: int,
        failed: bool,
        site: str | None,
        queries: int = 1,
        whole_ns: int | None = None,
    ) -> None:
        """A query with no request to count it (or after its request was counted).

        ``queries=0``: rows fetched for a statement already counted, ``ns``
        more of it, ``whole_ns`` since it began.
        """
        whole = ns if whole_ns is None else whole_ns
        with self._lock:
            rdb = self._route(route)
            rdb.queries += queries
            rdb.ns += ns
            rdb.failed += failed
            if queries:
                rdb.per_query.record(ns)
            counts = rdb.statement(statement)
            _add(counts, queries, ns, whole, int(failed))
            if site is not None or (queries and ns >= self.slow_ns):
                self.slow.append((route, statement, whole, site, self._wall()))

    # -- called by the middleware when a request ends

    def fold(self, route: str, tally: Tally, request_ns: int) -> None:
        """Count one finished request's queries under ``route``."""
        tally.done = True
        tally.route = route
        with self._lock:
            rdb = self._route(route)
            rdb.requests += 1
            rdb.request_ns += request_ns
            rdb.queries_hist.record(tally.queries)
            rdb.time_hist.record(tally.ns)
            if not tally.queries:
                return
            rdb.queries += tally.queries
            rdb.ns += tally.ns
            rdb.failed += tally.failed
            rdb.per_query.record_many(tally.times)
            sites = self.sites
            found_sites = tally.sites or {}
            n_plus_one = False
            for statement, (count, total, most, failed) in tally.statements.items():
                counts = rdb.statement(statement)
                _add(counts, count, total, most, failed)
                if statement in found_sites and (route, statement) not in sites:
                    sites[(route, statement)] = found_sites[statement]
                if count >= self.threshold:
                    n_plus_one = True
                    found = self.n_plus_one.get((route, statement))
                    if found is None:
                        found = self.n_plus_one[(route, statement)] = [0, 0]
                    found[0] = max(found[0], count)
                    found[1] += 1
            if n_plus_one:
                rdb.n_plus_one += 1
            for statement, ns, site, at in tally.slow or ():
                self.slow.append((route, statement, ns, site, at))

    def _route(self, route: str) -> RouteDB:
        rdb = self.routes.get(route)
        if rdb is None:
            # Only a new route pays for the count (a few per process).
            if route not in _SPECIAL and (
                sum(1 for k in self.routes if k not in _SPECIAL) >= self.max_routes
            ):
                return self._route(OTHER)
            rdb = self.routes[route] = RouteDB()
        return rdb

    # -- read

    def state(self) -> State:
        """Plain data (marshal- and JSON-ready): what workers share and answers read."""
        with self._lock:
            return {
                "routes": {k: v.state() for k, v in self.routes.items()},
                "n_plus_one": [[r, s, v[0], v[1]] for (r, s), v in self.n_plus_one.items()],
                "sites": [[r, s, site] for (r, s), site in self.sites.items() if site],
                "slow": [list(row) for row in self.slow],
            }

    def states(self) -> list[State]:
        """This process's state first, then every other worker's."""
        return [self.state(), *self.others()]

    def metric_rows(self) -> list[DBMetricRow]:
        """Per route (every worker): queries, seconds, cumulative per-query buckets."""

        return metric_rows(merge_states(self.states()))

    def reset(self) -> None:
        with self._lock:
            self.routes = {}
            self.n_plus_one = {}
            self.sites = {}
            self.slow.clear()


def _add(counts: list[int], count: int, total: int, most: int, failed: int) -> None:
    counts[0] += count
    counts[1] += total
    if most > counts[2]:
        counts[2] = most
    counts[3] += failed
