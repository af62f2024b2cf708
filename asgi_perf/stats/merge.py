"""Snapshots of several processes merged into one: workers of a server, hosts of a fleet.

Every part must carry its histograms (``snapshot(histograms=True)``, or
``GET /_perf/stats?histograms=1``). Counts add, histograms add bucket by
bucket, and percentiles are read from the merged histograms: the answer is
the one a single process fed every request would give (the histograms'
buckets are fixed, so adding them loses nothing). The recent window adds
each part's recent histogram and rate, as of when the part was taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asgi_perf.db.report import MergedRoute, add_route_state, route_state, route_summary
from asgi_perf.stats.entry import STATUS_CLASSES, route_entry
from asgi_perf.stats.histogram import Histogram
from asgi_perf.stats.store import SCHEMA

_COUNTERS = ("count", "errors", "exceptions", "disconnects", "bytes")
_HISTOGRAMS = ("latency_ns", "ttfb_ns", "memory_bytes", "recent_latency_ns")


class NotMergeable(ValueError):
    """A part without histograms, or of another schema: the message says which."""


def merge_snapshots(
    parts: Sequence[Mapping[str, Any]], *, histograms: bool = False, memory_method: str = ""
) -> dict[str, Any]:
    """One snapshot adding up ``parts`` exactly (see the module docstring)."""
    if not parts:
        raise NotMergeable("nothing to merge")
    routes: dict[str, dict[str, Any]] = {}
    for i, part in enumerate(parts):
        if part.get("schema") != SCHEMA:
            raise NotMergeable(f"part {i}: schema {part.get('schema')!r}, expected {SCHEMA}")
        for route in part.get("routes", ()):
            _add_route(routes, route, i)
    window_s = int(parts[0]["routes"][0]["recent"]["window_s"]) if parts[0].get("routes") else 60
    method = memory_method or _memory_method(parts)
    merged_routes = [
        route_entry(
            key,
            acc["counters"],
            acc["histograms"]["latency_ns"],
            acc["histograms"]["ttfb_ns"],
            acc["histograms"]["memory_bytes"],
            acc["histograms"]["recent_latency_ns"],
            round(acc["rps"], 3),
            window_s=window_s,
            in_flight=acc["in_flight"],
            memory_method=method,
            histograms=histograms,
        )
        for key, acc in sorted(routes.items())
    ]
    # Database numbers (issue #14), when every part has them: added exactly.
    with_db = [p["db"] for p in parts if isinstance(p.get("db"), Mapping)]
    db: dict[str, Any] | None = None
    if with_db and len(with_db) == len(parts):
        db = {
            "enabled": True,
            "queries": sum(int(d.get("queries", 0)) for d in with_db),
            "n_plus_one_threshold": with_db[0].get("n_plus_one_threshold"),
        }
        for entry in merged_routes:
            found = routes[entry["route"]]["db"]
            entry["db"] = route_summary(found)
            if histograms:
                entry["histograms"]["db"] = route_state(found)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "uptime_s": max(float(p.get("uptime_s", 0.0)) for p in parts),
        "since_reset_s": max(float(p.get("since_reset_s", 0.0)) for p in parts),
        "started_at": min(float(p.get("started_at", 0.0)) for p in parts),
        "reset_at": max(float(p.get("reset_at", 0.0)) for p in parts),
        "requests": sum(r["count"] for r in merged_routes),
        "in_flight": sum(int(p.get("in_flight", 0)) for p in parts),
        "max_routes": max(int(p.get("max_routes", 0)) for p in parts),
        "routes_dropped": sum(int(p.get("routes_dropped", 0)) for p in parts),
        "routes": merged_routes,
    }
    if db is not None:
        out["db"] = db
    return out


def _add_route(routes: dict[str, dict[str, Any]], route: Mapping[str, Any], part: int) -> None:
    key = str(route["route"])
    found = route.get("histograms")
    if not isinstance(found, Mapping) or not all(n in found for n in _HISTOGRAMS[:3]):
        raise NotMergeable(f"part {part}, route {key!r}: no histograms (ask with histograms=1)")
    acc = routes.get(key)
    if acc is None:
        acc = routes[key] = {
            "counters": {name: 0 for name in _COUNTERS}
            | {"status": dict.fromkeys(STATUS_CLASSES, 0)},
            "histograms": {name: Histogram() for name in _HISTOGRAMS},
            "rps": 0.0,
            "in_flight": 0,
            "db": MergedRoute(),
        }
    counters = acc["counters"]
    for name in _COUNTERS:
        counters[name] += int(route.get(name, 0))
    for name, n in (route.get("status") or {}).items():
        counters["status"][name] = counters["status"].get(name, 0) + int(n)
    for name in _HISTOGRAMS:
        data = found.get(name)
        if data is not None:
            acc["histograms"][name].merge(Histogram.from_dict(data))
    if isinstance(found.get("db"), Mapping):
        add_route_state(acc["db"], found["db"])
    acc["rps"] += float((route.get("recent") or {}).get("rps", 0.0))
    acc["in_flight"] += int(route.get("in_flight", 0))


def _memory_method(parts: Sequence[Mapping[str, Any]]) -> str:
    for part in parts:
        for route in part.get("routes", ()):
            method = (route.get("memory_mb") or {}).get("method")
            if method:
                return str(method)
    return "rss"
