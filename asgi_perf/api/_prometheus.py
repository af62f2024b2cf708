"""A snapshot as Prometheus metric families, with ``prometheus_client``.

Imported on the first scrape only (see ``asgi_perf.api.metrics``). One
``SnapshotCollector`` sits on a private ``CollectorRegistry``: each scrape
takes one snapshot and builds every family from it, so the numbers of one
scrape agree with one another. Nothing is registered globally and the
library's multiprocess mode is not used: workers are merged by the snapshot.
"""

from __future__ import annotations

import gzip
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from asgi_perf.budgets import BudgetReport, Verdict
from asgi_perf.stats.entry import STATUS_CLASSES
from asgi_perf.stats.histogram import GAMMA, LAYOUT_ALPHA

_MB = float(1 << 20)

# Bucket edges of asgi_perf_request_duration_seconds. Nominally 1, 1.5, 2, 3,
# 4, 5, 7.5 per decade from 0.5 ms to 60 s (36 edges, neighbours at most 1.52
# apart), each moved to the nearest boundary of our own log buckets (GAMMA**i
# ns, ~1.9 % apart). There, the count of requests <= the edge is exact: the
# sum of our buckets up to i, with no interpolation. Latencies are whole
# nanoseconds, so the edge is written as the whole ns below the boundary
# (nine decimals of a second) and still counts the same requests. The edges
# change only if our bucket layout does, which saved snapshots refuse too.
NOMINAL_EDGES_S: tuple[float, ...] = (
    0.0005, 0.00075,
    *(m * 10.0**e for e in (-3, -2, -1, 0) for m in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5)),
    10.0, 15.0, 20.0, 30.0, 40.0, 60.0,
)  # fmt: skip
EDGE_INDICES: tuple[int, ...] = tuple(
    round(math.log(s * 1e9) / math.log(GAMMA)) for s in NOMINAL_EDGES_S
)
EDGES_NS: tuple[int, ...] = tuple(math.floor(GAMMA**i) for i in EDGE_INDICES)
LE_LABELS: tuple[str, ...] = tuple(f"{ns / 1e9:.9f}".rstrip("0") for ns in EDGES_NS)


def cumulative_buckets(histogram: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``(le, requests <= le)`` for every edge and ``+Inf``, from a histogram dict.

    The dict is ``Histogram.to_dict``'s: its buckets sorted by index. One
    pass sums them up, then one bisection per edge reads its count.
    """
    if histogram.get("layout_alpha", LAYOUT_ALPHA) != LAYOUT_ALPHA:
        raise ValueError("histogram was recorded with another bucket layout")
    pairs = histogram.get("buckets") or ()
    indices = [p[0] for p in pairs]
    running = [0, *accumulate(p[1] for p in pairs)]
    zero = histogram.get("zero", 0)
    count = histogram.get("count", 0)
    if running[-1] + zero != count:
        raise ValueError("histogram bucket counts do not add up to its count")
    out: list[tuple[str, float]] = [
        (le, zero + running[bisect_right(indices, index)])
        for index, le in zip(EDGE_INDICES, LE_LABELS, strict=True)
    ]
    out.append(("+Inf", count))
    return out


class DBRow(Protocol):
    """One route's DB numbers (``asgi_perf.db.DBMetricRow``): cumulative buckets, last ``inf``."""

    @property
    def route(self) -> str: ...
    @property
    def queries(self) -> int: ...
    @property
    def seconds_sum(self) -> float: ...
    @property
    def buckets(self) -> tuple[tuple[float, int], ...]: ...


def metric_families(
    snapshot: Mapping[str, Any],
    budgets: BudgetReport | None,
    db_rows: Sequence[DBRow] | None = None,
) -> list[Metric]:
    """Every family of one scrape, from one snapshot, its budget verdicts and,
    with DB capture on, the DB rows (``core.db.metric_rows()``)."""
    requests = CounterMetricFamily(
        "asgi_perf_requests",
        "Requests finished, by route and status class (none: no response was sent).",
        labels=("route", "status_class"),
    )
    duration = HistogramMetricFamily(
        "asgi_perf_request_duration_seconds",
        "Request latency, from the request's start to its last body byte.",
        labels=("route",),
    )
    exceptions = CounterMetricFamily(
        "asgi_perf_exceptions", "Requests whose app raised an exception.", labels=("route",)
    )
    in_flight = GaugeMetricFamily(
        "asgi_perf_in_flight", "Requests running at the time of the scrape.", labels=("route",)
    )
    for route in snapshot.get("routes", ()):
        key = route["route"]
        status = route["status"]
        for cls in STATUS_CLASSES:
            requests.add_metric((key, cls), status.get(cls, 0))
        latency = route["histograms"]["latency_ns"]
        duration.add_metric((key,), cumulative_buckets(latency), latency["sum"] / 1e9)
        exceptions.add_metric((key,), route["exceptions"])
        in_flight.add_metric((key,), route["in_flight"])
    families: list[Metric] = [requests, duration, exceptions, in_flight]
    if budgets is not None and budgets["verdicts"]:
        families.extend(_budget_families(budgets["verdicts"]))
    process = snapshot.get("process")
    if isinstance(process, Mapping) and "rss_mb" in process:
        families.append(
            GaugeMetricFamily(
                "asgi_perf_process_rss_bytes",
                "Resident set size of the process (to the KiB).",
                value=round(process["rss_mb"] * _MB),
            )
        )
        if isinstance(process.get("slope_mb_per_h"), (int, float)):
            families.append(
                GaugeMetricFamily(
                    "asgi_perf_process_memory_growth_mb_per_hour",
                    "The leak slope: RSS growth of the process timeline (least squares).",
                    value=process["slope_mb_per_h"],
                )
            )
    loop = snapshot.get("loop")
    if isinstance(loop, Mapping):
        families.extend(_loop_families(loop))
    if db_rows is not None:
        families.extend(db_families(db_rows))
    families.append(
        CounterMetricFamily(
            "asgi_perf_internal_errors",
            "Failures inside asgi_perf (logged once per kind; the requests were served).",
            value=snapshot.get("internal_errors", 0),
        )
    )
    return families


def _budget_families(verdicts: Sequence[Verdict]) -> list[Metric]:
    # An alert on `asgi_perf_budget_ok == 0` must not fire for a route that
    # has too few samples to judge: "insufficient" has no budget_ok series,
    # and budget_insufficient says so (it has one for every verdict).
    ok = GaugeMetricFamily(
        "asgi_perf_budget_ok",
        "1 when the route meets the budget of the metric, 0 when it breaks it; "
        "absent while too few samples were measured.",
        labels=("route", "metric"),
    )
    insufficient = GaugeMetricFamily(
        "asgi_perf_budget_insufficient",
        "1 while too few samples were measured to judge the budget, else 0.",
        labels=("route", "metric"),
    )
    for v in verdicts:
        labels = (v["route"], v["metric"])
        if v["verdict"] != "insufficient":
            ok.add_metric(labels, 1 if v["verdict"] == "pass" else 0)
        insufficient.add_metric(labels, 1 if v["verdict"] == "insufficient" else 0)
    return [ok, insufficient]


def db_families(rows: Sequence[DBRow]) -> list[Metric]:
    """``asgi_perf_db_queries_total`` and the ``asgi_perf_db_seconds`` histogram, by route.

    Both families are there as soon as capture is on, even with no query
    yet: a dashboard tells "no queries" from "capture off" by their presence.
    """
    queries = CounterMetricFamily(
        "asgi_perf_db_queries",
        "Database queries run, by route (<no request>: outside any request).",
        labels=("route",),
    )
    seconds = HistogramMetricFamily(
        "asgi_perf_db_seconds", "Time of each database query, by route.", labels=("route",)
    )
    for row in rows:
        queries.add_metric((row.route,), row.queries)
        buckets = [(_le(bound), float(n)) for bound, n in row.buckets]
        seconds.add_metric((row.route,), buckets, row.seconds_sum)
    return [queries, seconds]


def _le(bound: float) -> str:
    # The last bound is inf, which the exposition spells +Inf.
    # Written as the request histogram's edges are: nine decimals, trailing zeros cut.
    return "+Inf" if math.isinf(bound) else f"{bound:.9f}".rstrip("0").rstrip(".")


def _loop_families(loop: Mapping[str, Any]) -> list[Metric]:
    lag_ms = loop.get("lag_ms") or {}
    # A gauge per statistic, not a summary: the snapshot has no count of
    # pings to go with the quantiles, and `quantile` is a summary's label.
    lag = GaugeMetricFamily(
        "asgi_perf_loop_lag_seconds",
        "Event-loop scheduling delay since start or reset: p50, p90, p99, max.",
        labels=("stat",),
    )
    for stat in ("p50", "p90", "p99", "max"):
        lag.add_metric((stat,), lag_ms.get(stat, 0.0) / 1000)
    return [
        lag,
        CounterMetricFamily(
            "asgi_perf_loop_blocks",
            "Times the event loop was stuck longer than block_threshold_ms.",
            value=loop.get("block_count", 0),
        ),
        CounterMetricFamily(
            "asgi_perf_loop_blocked_seconds",
            "Time the event loop spent stuck in those blocks.",
            value=loop.get("blocked_ms_total", 0.0) / 1000,
        ),
    ]


class SnapshotCollector:
    """A ``prometheus_client`` collector reading one snapshot per ``collect``."""

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        check: Callable[[Mapping[str, Any]], BudgetReport] | None,
        db_rows: Callable[[], Sequence[DBRow]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._check = check
        self._db_rows = db_rows

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        rows = None if self._db_rows is None else self._db_rows()
        return metric_families(snap, None if self._check is None else self._check(snap), rows)


def private_registry(collector: SnapshotCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def expose(
    registry: CollectorRegistry, accept: str, accept_encoding: str
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a scrape: OpenMetrics when the scraper asks
    for it, else text format 0.0.4; gzipped when accepted, as
    ``prometheus_client``'s own handlers do."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    headers = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return body, headers
