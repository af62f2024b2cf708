"""One route of a snapshot: counters and histograms shaped into the public fields.

A process's own snapshot (``Recorder.snapshot``) and a merge of several
(``merge_snapshots``) are built by ``route_entry`` alike.
"""

from __future__ import annotations

from typing import Any

from asgi_perf.stats.histogram import Histogram

_MB = float(1 << 20)
# RouteStats.status is indexed by status // 100; index 0 is "no response".
STATUS_NAMES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")


def route_entry(
    key: str,
    counters: dict[str, Any],
    latency: Histogram,
    ttfb: Histogram,
    memory: Histogram,
    recent: Histogram,
    recent_rps: float,
    *,
    window_s: int,
    in_flight: int,
    memory_method: str,
    histograms: bool,
) -> dict[str, Any]:
    """One route of a snapshot, from its counters and histograms.

    The one place that shapes a route's numbers: a process's own snapshot
    and a merge of several (workers, hosts) are built by it alike.
    """
    method, sep, template = key.partition(" ")
    if not (sep and method.isalpha() and method.isupper()):
        method, template = "", key
    status = counters["status"]
    entry: dict[str, Any] = {
        "route": key,
        "method": method,
        "template": template,
        "count": counters["count"],
        "errors": counters["errors"],
        "exceptions": counters["exceptions"],
        "disconnects": counters["disconnects"],
        "status": {name: status.get(name, 0) for name in STATUS_CLASSES},
        "in_flight": in_flight,
        "bytes": counters["bytes"],
        "latency_ms": latency.summary(1e6),
        "ttfb_ms": ttfb.summary(1e6),
        "memory_mb": memory_summary(memory, memory_method),
        "recent": {
            "window_s": window_s,
            "count": recent.count,
            "rps": recent_rps,
            "latency_ms": recent.summary(1e6),
        },
    }
    if histograms:
        entry["histograms"] = {
            "latency_ns": latency.to_dict(),
            "ttfb_ns": ttfb.to_dict(),
            "memory_bytes": memory.to_dict(),
            "recent_latency_ns": recent.to_dict(),
        }
    return entry


def memory_summary(h: Histogram, method: str) -> dict[str, Any]:
    """Per-request memory growth in MB (2**20 bytes), labelled with its method."""
    out: dict[str, Any] = {
        "p50": round(h.quantile(0.5) / _MB, 3),
        "p99": round(h.quantile(0.99) / _MB, 3),
        "max": round(h.max / _MB, 3),
        "mean": round(h.mean / _MB, 3),
        "samples": h.count,
        "method": method,
    }
    return out
