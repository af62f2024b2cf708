"""Per-route statistics: cumulative since start or reset, plus a recent window.

Each route records into the histograms of the current time slice only; when
a slice leaves the recent window it is folded into the cumulative base. So a
request touches one set of histograms, and "since start" is the base plus
the live slices, merged exactly when a snapshot is taken.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from typing import Any

from asgi_perf.routes import OTHER, UNMATCHED
from asgi_perf.stats.entry import STATUS_NAMES, route_entry
from asgi_perf.stats.histogram import Histogram

SCHEMA = 1
SLICES = 6
# Finished requests buffered before their numbers are folded in, mostly in C
# (see Histogram.record_many): about 20 KB at most.
BATCH = 128
EXCEPTION = 1
INCOMPLETE = 2
_SPECIAL = frozenset({UNMATCHED, OTHER})
# (key, ttfb_ns, total_ns, status, bytes, memory, flags, end_ns)
Row = tuple[str, int, int, int, int, int | None, int, int]
_by_key = itemgetter(0)


class _Slice:
    __slots__ = ("epoch", "memory", "total", "ttfb")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.ttfb = Histogram()
        self.total = Histogram()
        self.memory = Histogram()

    def merge_into(self, other: _Slice) -> None:
        other.ttfb.merge(self.ttfb)
        other.total.merge(self.total)
        other.memory.merge(self.memory)


class RouteStats:
    """Counters and histograms of one route key."""

    __slots__ = (
        "base",
        "bytes",
        "count",
        "current",
        "disconnects",
        "errors",
        "exceptions",
        "key",
        "method",
        "slices",
        "status",
        "template",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        method, sep, template = key.partition(" ")
        if sep and method.isalpha() and method.isupper():
            self.method, self.template = method, template
        else:
            self.method, self.template = "", key
        self.count = 0
        self.errors = 0
        self.exceptions = 0
        self.disconnects = 0
        self.bytes = 0
        # Indexed by status // 100; index 0 holds "no response was sent".
        self.status = [0, 0, 0, 0, 0, 0]
        self.base = _Slice(-1)
        self.current = _Slice(-1)
        self.slices: deque[_Slice] = deque()

    def add(self, rows: list[Row], epoch: int) -> None:
        """Fold finished requests of one time slice into the histograms and counters."""
        if epoch > self.current.epoch:
            self.rotate(epoch)
        # A row of an older slice (a late finisher) joins the current one.
        _, ttfbs, totals, statuses, sizes, memories, flags, _ = zip(*rows, strict=True)
        cur = self.current
        cur.ttfb.record_many(ttfbs)
        cur.total.record_many(totals)
        if memories.count(None) != len(memories):
            cur.memory.record_many([m for m in memories if m is not None])
        self.count += len(rows)
        self.bytes += sum(sizes)
        status = self.status
        # Few distinct codes per batch: counting each in C beats a Counter.
        for code in set(statuses):
            n = statuses.count(code)
            cls = code // 100
            if 0 < cls < 6:
                status[cls] += n
            else:
                status[0] += n
            if cls >= 5:
                self.errors += n
        if any(flags):
            self.exceptions += sum(1 for f in flags if f & EXCEPTION)
            self.disconnects += sum(1 for f in flags if f & INCOMPLETE)

    def rotate(self, epoch: int) -> _Slice:
        """Start the slice for ``epoch``; fold slices that left the window."""
        slices = self.slices
        while slices and slices[0].epoch <= epoch - SLICES:
            slices.popleft().merge_into(self.base)
        self.current = _Slice(epoch)
        slices.append(self.current)
        return self.current

    def merged(self, since_epoch: int | None) -> _Slice:
        """Everything recorded (``since_epoch`` None) or only the recent slices."""
        out = _Slice(-1)
        if since_epoch is None:
            self.base.merge_into(out)
        for s in self.slices:
            if since_epoch is None or s.epoch > since_epoch:
                s.merge_into(out)
        return out


class Recorder:
    """All routes of one process. The hot path calls ``record`` only."""

    def __init__(
        self,
        *,
        max_routes: int = 500,
        window_s: int = 60,
        clock_ns: Any = time.perf_counter_ns,
        wall: Any = time.time,
    ) -> None:
        self.max_routes = max_routes
        self.window_s = window_s
        self._slice_ns = window_s * 1_000_000_000 // SLICES
        self._clock_ns = clock_ns
        self._wall = wall
        self.routes: dict[str, RouteStats] = {}
        # Finished requests not yet folded in; the middleware appends here.
        self.pending: list[Row] = []
        # Snapshots may be read from another thread (tests, plugins) while the
        # event loop folds a batch; the hot path itself never takes this lock.
        self._lock = threading.RLock()
        self.started_ns = clock_ns()
        self.started_at = wall()
        self.reset_ns = self.started_ns
        self.reset_at = self.started_at
        self.overflowed = 0
        # Told after each fold: (route key as recorded by the middleware, its count).
        self.on_fold: Callable[[str, int], None] | None = None

    def record(
        self,
        key: str,
        ttfb_ns: int,
        total_ns: int,
        status: int,
        nbytes: int,
        memory: int | None,
        flags: int,
        now_ns: int,
    ) -> None:
        """One finished request; ``flags`` holds EXCEPTION and INCOMPLETE bits.

        The middleware inlines this (append to ``pending``, flush when full).
        """
        pending = self.pending
        pending.append((key, ttfb_ns, total_ns, status, nbytes, memory, flags, now_ns))
        if len(pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered requests into their routes."""
        pending = self.pending
        if not pending:
            return
        with self._lock:
            # Requests finishing meanwhile append behind the copied rows; the
            # slice delete keeps them (both steps are atomic under the GIL).
            batch = pending[:]
            del pending[: len(batch)]
            self._fold(batch)

    def _fold(self, batch: list[Row]) -> None:
        # Stable: each route's rows stay in the order they finished.
        batch.sort(key=_by_key)
        slice_ns = self._slice_ns
        routes = self.routes
        on_fold = self.on_fold
        for key, group in groupby(batch, _by_key):
            rows = list(group)
            rs = routes.get(key)
            if rs is None:
                rs = self._route(key, len(rows))
            first = rows[0][7] // slice_ns
            if first == rows[-1][7] // slice_ns:
                rs.add(rows, first)
            else:
                for epoch, part in groupby(rows, lambda row: row[7] // slice_ns):
                    rs.add(list(part), epoch)
            if on_fold is not None:
                on_fold(key, rs.count)

    def _route(self, key: str, n: int = 1) -> RouteStats:
        if key not in _SPECIAL and len(self.routes) - self._specials() >= self.max_routes:
            self.overflowed += n
            key = OTHER
            rs = self.routes.get(key)
            if rs is not None:
                return rs
        rs = self.routes[key] = RouteStats(key)
        return rs

    def count(self) -> int:
        """Requests recorded so far (any thread; folded or waiting)."""
        return sum(rs.count for rs in list(self.routes.values())) + len(self.pending)

    def capped(self, key: str) -> str:
        """The key ``key`` would be recorded under now (``<other>`` past the cap)."""
        if key in self.routes or key in _SPECIAL:
            return key
        return key if len(self.routes) - self._specials() < self.max_routes else OTHER

    def _specials(self) -> int:
        return sum(1 for k in _SPECIAL if k in self.routes)

    def reset(self) -> None:
        with self._lock:
            self.pending.clear()
            self.routes = {}
            self.overflowed = 0
            self.reset_ns = self._clock_ns()
            self.reset_at = self._wall()

    def snapshot(
        self,
        in_flight: dict[str, int] | None = None,
        memory_method: str = "rss",
        histograms: bool = False,
    ) -> dict[str, Any]:
        """Plain JSON-ready numbers of every route (see README for the fields)."""
        with self._lock:
            self.flush()
            return self._snapshot(in_flight or {}, memory_method, histograms)

    def state(self, in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """The numbers ``merge_snapshots`` needs and nothing else (no percentiles).

        What a worker shares with the others every second: a tenth of the
        cost of a snapshot with histograms, which computes every summary.
        """
        in_flight = in_flight or {}
        with self._lock:
            self.flush()
            now = self._clock_ns()
            recent_since, span_s = self._recent(now)
            routes = []
            for rs in self.routes.values():
                total = rs.merged(None)
                recent = rs.merged(recent_since)
                routes.append(
                    {
                        "route": rs.key,
                        **_counters(rs),
                        "in_flight": in_flight.get(rs.key, 0),
                        "recent": {
                            "window_s": self.window_s,
                            "rps": round(recent.total.count / span_s, 3),
                        },
                        "histograms": {
                            "latency_ns": total.total.to_state(),
                            "ttfb_ns": total.ttfb.to_state(),
                            "memory_bytes": total.memory.to_state(),
                            "recent_latency_ns": recent.total.to_state(),
                        },
                    }
                )
            return self._envelope(now, routes, in_flight)

    def _snapshot(
        self, in_flight: dict[str, int], memory_method: str, histograms: bool
    ) -> dict[str, Any]:
        now = self._clock_ns()
        recent_since, span_s = self._recent(now)
        routes = [
            self._route_snapshot(
                rs, recent_since, span_s, in_flight.get(rs.key, 0), memory_method, histograms
            )
            for rs in sorted(self.routes.values(), key=lambda r: r.key)
        ]
        for key in sorted(set(in_flight) - set(self.routes)):
            # In flight but not finished once yet: show it, with no numbers.
            routes.append(
                self._route_snapshot(
                    RouteStats(key), recent_since, span_s, in_flight[key], memory_method, histograms
                )
            )
        return self._envelope(now, routes, in_flight)

    def _recent(self, now: int) -> tuple[int, float]:
        """The first slice epoch of the recent window, and its length in seconds."""
        # The window is 60 s once running that long; before, what has elapsed.
        span_s = max(min(self.window_s, (now - self.reset_ns) / 1e9), 1e-3)
        return now // self._slice_ns - SLICES, span_s

    def _envelope(
        self, now: int, routes: list[dict[str, Any]], in_flight: dict[str, int]
    ) -> dict[str, Any]:
        """The process-wide fields around ``routes`` (a snapshot's or a state's)."""
        return {
            "schema": SCHEMA,
            "uptime_s": round((now - self.started_ns) / 1e9, 3),
            "since_reset_s": round((now - self.reset_ns) / 1e9, 3),
            "started_at": self.started_at,
            "reset_at": self.reset_at,
            "requests": sum(r["count"] for r in routes),
            "in_flight": sum(in_flight.values()),
            "max_routes": self.max_routes,
            "routes_dropped": self.overflowed,
            "routes": routes,
        }

    def _route_snapshot(
        self,
        rs: RouteStats,
        recent_since: int,
        span_s: float,
        in_flight: int,
        memory_method: str,
        histograms: bool,
    ) -> dict[str, Any]:
        total = rs.merged(None)
        recent = rs.merged(recent_since)
        return route_entry(
            rs.key,
            _counters(rs),
            total.total,
            total.ttfb,
            total.memory,
            recent.total,
            round(recent.total.count / span_s, 3),
            window_s=self.window_s,
            in_flight=in_flight,
            memory_method=memory_method,
            histograms=histograms,
        )


def _counters(rs: RouteStats) -> dict[str, Any]:
    return {
        "count": rs.count,
        "errors": rs.errors,
        "exceptions": rs.exceptions,
        "disconnects": rs.disconnects,
        "status": dict(zip(STATUS_NAMES, rs.status, strict=True)),
        "bytes": rs.bytes,
    }
