"""States of one or many workers merged, and shaped into the public answers.

``routes[].db`` of ``/_perf/stats``, the body of ``/_perf/db`` and the rows
of the Prometheus families are all read from one merged state, so a server
of several workers answers as one process fed every request would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from asgi_perf.stats.histogram import GAMMA, Histogram

_COUNTERS = ("requests", "queries", "ns", "failed", "request_ns", "n_plus_one")
_HISTOGRAMS = ("queries_hist", "time_hist", "per_query")
# Upper bounds of asgi_perf_db_seconds, nominal: 0.1 ms to 10 s. Each is
# moved onto a boundary of the log buckets, where counting "<= bound" is exact.
NOMINAL_BOUNDS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
_BOUND_INDICES = tuple(round(math.log(s * 1e9) / math.log(GAMMA)) for s in NOMINAL_BOUNDS_S)
BOUNDS_S: tuple[float, ...] = tuple(math.floor(GAMMA**i) / 1e9 for i in _BOUND_INDICES)


class DBMetricRow(NamedTuple):
    """One route's Prometheus numbers: ``buckets`` are cumulative, the last bound ``inf``."""

    route: str
    queries: int
    seconds_sum: float
    buckets: tuple[tuple[float, int], ...]


@dataclass
class MergedRoute:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    histograms: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram() for name in _HISTOGRAMS}
    )
    statements: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Merged:
    routes: dict[str, MergedRoute] = field(default_factory=dict)
    n_plus_one: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    sites: dict[tuple[str, str], str] = field(default_factory=dict)
    slow: list[list[Any]] = field(default_factory=list)


def merge_states(states: Iterable[Mapping[str, Any]]) -> Merged:
    """Counts add, histograms add bucket by bucket, lists join (exact)."""
    out = Merged()
    for state in states:
        for key, route in (state.get("routes") or {}).items():
            acc = out.routes.get(key)
            if acc is None:
                acc = out.routes[key] = MergedRoute()
            add_route_state(acc, route)
        for route_key, text, most, requests in state.get("n_plus_one") or ():
            found = out.n_plus_one.setdefault((route_key, text), [0, 0])
            found[0] = max(found[0], most)
            found[1] += requests
        for route_key, text, site in state.get("sites") or ():
            out.sites.setdefault((route_key, text), site)
        out.slow.extend(state.get("slow") or ())
    out.slow.sort(key=lambda row: row[4], reverse=True)
    return out


def route_state(route: MergedRoute | None) -> dict[str, Any]:
    """A route's numbers as plain data (``histograms=1`` snapshots): hosts merge it exactly."""
    route = route or MergedRoute()
    return {
        **route.counters,
        **{name: h.to_dict() for name, h in route.histograms.items()},
    }


def add_route_state(acc: MergedRoute, state: Mapping[str, Any]) -> None:
    """Add one ``route_state`` (or one worker's route) into ``acc``."""
    for name in _COUNTERS:
        acc.counters[name] += int(state.get(name, 0))
    for name in _HISTOGRAMS:
        if state.get(name):
            acc.histograms[name].merge(Histogram.from_dict(state[name]))
    for text, counts in (state.get("statements") or {}).items():
        mine = acc.statements.setdefault(text, [0, 0, 0, 0])
        mine[0] += counts[0]
        mine[1] += counts[1]
        mine[2] = max(mine[2], counts[2])
        mine[3] += counts[3]


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def route_summary(route: MergedRoute | None) -> dict[str, Any]:
    """``routes[].db`` of ``/_perf/stats`` (zeros for a route with no request counted)."""
    route = route or MergedRoute()
    c = route.counters
    qh, th = route.histograms["queries_hist"], route.histograms["time_hist"]
    # Query counts are whole numbers: below ~50 each has a bucket of its
    # own, so rounding the bucket's value gives the count itself.
    qq, tq = qh.quantiles(), th.quantiles()
    return {
        "queries": {
            "total": c["queries"],
            "mean": round(c["queries"] / c["requests"], 3) if c["requests"] else 0.0,
            "p50": float(round(qq["p50"])),
            "p99": float(round(qq["p99"])),
            "max": int(qh.max),
        },
        "time_ms": {
            "total": _ms(c["ns"]),
            "mean": _ms(th.mean),
            "p50": _ms(tq["p50"]),
            "p99": _ms(tq["p99"]),
            "max": _ms(th.max),
        },
        "share": round(min(1.0, c["ns"] / c["request_ns"]), 4) if c["request_ns"] else 0.0,
        "n_plus_one": c["n_plus_one"],
    }


def report(
    merged: Merged,
    *,
    threshold: int,
    slow_query_ms: float,
    route: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """The body of ``GET /_perf/db``."""
    routes: list[dict[str, Any]] = []
    for key, acc in merged.routes.items():
        if route is not None and key != route:
            continue
        c = acc.counters
        statements = sorted(acc.statements.items(), key=lambda kv: kv[1][1], reverse=True)
        routes.append(
            {
                "route": key,
                "requests": c["requests"],
                "queries": c["queries"],
                "time_ms": _ms(c["ns"]),
                "failed": c["failed"],
                "statements": [
                    {
                        "statement": text,
                        "count": count,
                        "total_ms": _ms(total),
                        "mean_ms": _ms(total / count) if count else 0.0,
                        "max_ms": _ms(most),
                        "failed": failed,
                    }
                    for text, (count, total, most, failed) in statements[:limit]
                ],
            }
        )
    routes.sort(key=lambda r: (-r["time_ms"], r["route"]))
    n_plus_one: list[dict[str, Any]] = [
        {
            "route": key,
            "statement": text,
            "per_request": most,
            "requests": requests,
            "call_site": merged.sites.get((key, text)),
        }
        for (key, text), (most, requests) in merged.n_plus_one.items()
        if route is None or key == route
    ]
    n_plus_one.sort(key=lambda r: (-r["per_request"], r["route"], r["statement"]))
    slow = [
        {
            "route": key,
            "duration_ms": _ms(ns),
            "statement": text,
            "call_site": site,
            "at": at,
        }
        for key, text, ns, site, at in merged.slow
        if route is None or key == route
    ]
    return {
        "enabled": True,
        "n_plus_one_threshold": threshold,
        "slow_query_ms": float(slow_query_ms),
        "routes": routes[:limit],
        "n_plus_one": n_plus_one[:limit],
        "slow": slow[:limit],
    }


def metric_rows(merged: Merged) -> list[DBMetricRow]:
    """Per route: queries, their seconds and cumulative counts per bound (last: inf)."""
    rows = []
    for key in sorted(merged.routes):
        acc = merged.routes[key]
        h = acc.histograms["per_query"]
        rows.append(
            DBMetricRow(
                route=key,
                queries=acc.counters["queries"],
                seconds_sum=acc.counters["ns"] / 1e9,
                buckets=_cumulative(h),
            )
        )
    return rows


def _cumulative(h: Histogram) -> tuple[tuple[float, int], ...]:
    indices = sorted(h.buckets)
    out: list[tuple[float, int]] = []
    seen = h.zero
    pos = 0
    for index, bound in zip(_BOUND_INDICES, BOUNDS_S, strict=True):
        while pos < len(indices) and indices[pos] <= index:
            seen += h.buckets[indices[pos]]
            pos += 1
        out.append((bound, seen))
    out.append((math.inf, h.count))
    return tuple(out)


def total_queries(merged: Merged) -> int:
    return sum(acc.counters["queries"] for acc in merged.routes.values())


def summaries(merged: Merged, routes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``routes[].db`` for each of ``routes``."""
    return {key: route_summary(merged.routes.get(key)) for key in routes}
