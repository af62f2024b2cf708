"""``DBStats`` and its report: bounds, N+1s, merging workers, Prometheus rows."""

from __future__ import annotations

import math

from asgi_perf.db import NO_REQUEST, DBMetricRow, DBStats
from asgi_perf.db.report import BOUNDS_S, merge_states, metric_rows, report, route_summary
from asgi_perf.db.store import MAX_STATEMENTS, OTHER_STATEMENTS
from asgi_perf.db.tally import CURRENT, Tally, record_ns


def _request(stats: DBStats, route: str, queries: list[tuple[str, int]], total_ns: int) -> None:
    """One request running ``queries`` ((sql, ns) each), counted as the middleware does."""
    tally = Tally(stats, {})
    token = CURRENT.set(tally)
    try:
        for sql, ns in queries:
            record_ns(sql, ns)
    finally:
        CURRENT.reset(token)
    stats.fold(route, tally, total_ns)


def test_a_request_with_a_repeated_statement_is_an_n_plus_one() -> None:
    stats = DBStats(route_key=lambda scope: "GET /orders", n_plus_one_threshold=3)
    _request(stats, "GET /orders", [("SELECT * FROM l WHERE o = 1", 1000)] * 2, 10_000)
    _request(stats, "GET /orders", [("SELECT * FROM l WHERE o = 2", 1000)] * 5, 10_000)
    _request(stats, "GET /orders", [("SELECT * FROM l WHERE o = 3", 1000)] * 4, 10_000)
    merged = merge_states([stats.state()])
    summary = route_summary(merged.routes["GET /orders"])
    assert summary["n_plus_one"] == 2
    assert summary["queries"] == {"total": 11, "mean": 3.667, "p50": 4.0, "p99": 5.0, "max": 5}
    assert summary["share"] == round(11_000 / 30_000, 4)
    (found,) = report(merged, threshold=3, slow_query_ms=100)["n_plus_one"]
    assert found["per_request"] == 5
    assert found["requests"] == 2
    assert found["call_site"] == f"tests/test_db_store.py:{_request.__code__.co_firstlineno + 6}"


def test_statements_routes_and_slow_ones_are_bounded() -> None:
    stats = DBStats(
        route_key=lambda scope: "x", max_routes=2, slow_query_ms=0.001, max_slow_queries=3
    )
    many = [(f"SELECT c{i} FROM t", 2000) for i in range(MAX_STATEMENTS + 5)]
    _request(stats, "GET /a", many, 1)
    for route in ("GET /b", "GET /c", "GET /d"):
        _request(stats, route, [("SELECT 1", 10)], 1)
    state = stats.state()
    assert set(state["routes"]) == {"GET /a", "GET /b", "<other>"}
    statements = state["routes"]["GET /a"]["statements"]
    assert len(statements) == MAX_STATEMENTS + 1
    assert statements[OTHER_STATEMENTS][0] == 5
    assert state["routes"]["<other>"]["requests"] == 2
    assert len(state["slow"]) == 3


def test_workers_states_merge_exactly() -> None:
    one = DBStats(route_key=lambda scope: "x")
    two = DBStats(route_key=lambda scope: "x")
    for stats, n in ((one, 2), (two, 12)):
        for _ in range(3):
            _request(stats, "GET /x", [("SELECT * FROM t WHERE id = 9", 5000)] * n, 100_000)
    merged = merge_states([one.state(), two.state()])
    summary = route_summary(merged.routes["GET /x"])
    assert summary["queries"]["total"] == 42
    assert summary["queries"]["max"] == 12
    assert summary["n_plus_one"] == 3
    body = report(merged, threshold=10, slow_query_ms=100)
    assert body["routes"][0]["statements"][0]["count"] == 42
    assert body["routes"][0]["requests"] == 6
    assert body["n_plus_one"][0]["requests"] == 3


def test_metric_rows_are_cumulative_per_query_buckets_ending_at_inf() -> None:
    stats = DBStats(route_key=lambda scope: "x")
    _request(stats, "GET /x", [("SELECT 1", 50_000), ("SELECT 1", 2_000_000)], 3_000_000)
    record_ns("SELECT 2", 20_000_000)  # no request
    rows = {row.route: row for row in stats.metric_rows()}
    row = rows["GET /x"]
    assert isinstance(row, DBMetricRow)
    assert row.queries == 2
    assert math.isclose(row.seconds_sum, 0.00205)
    assert [b for b, _ in row.buckets] == [*BOUNDS_S, math.inf]
    counts = dict(row.buckets)
    assert counts[BOUNDS_S[0]] == 1  # 50 µs <= ~100 µs
    assert counts[next(b for b in BOUNDS_S if b > 0.002)] == 2
    assert row.buckets[-1] == (math.inf, 2)
    assert [c for _, c in row.buckets] == sorted(c for _, c in row.buckets)
    assert rows[NO_REQUEST].queries == 1
    assert metric_rows(merge_states([])) == []


def test_a_query_after_its_request_was_counted_keeps_its_route() -> None:
    stats = DBStats(route_key=lambda scope: "GET /late")
    tally = Tally(stats, {})
    token = CURRENT.set(tally)
    try:
        record_ns("SELECT 1", 1000)
        stats.fold("GET /late", tally, 5000)
        record_ns("SELECT 2", 1000)  # a task the request left behind
    finally:
        CURRENT.reset(token)
    state = stats.state()["routes"]["GET /late"]
    assert (state["requests"], state["queries"]) == (1, 2)


def test_reset_clears_everything() -> None:
    stats = DBStats(route_key=lambda scope: "x", n_plus_one_threshold=2, slow_query_ms=0.001)
    _request(stats, "GET /x", [("SELECT 1", 5000)] * 3, 1)
    stats.reset()
    assert stats.state() == {"routes": {}, "n_plus_one": [], "sites": [], "slow": []}


def test_snapshots_of_several_hosts_merge_their_database_numbers() -> None:
    from starlette.applications import Starlette

    from asgi_perf import PerfMiddleware
    from asgi_perf.stats.merge import merge_snapshots

    hosts = []
    for n in (2, 12):
        app = PerfMiddleware(Starlette(), db=True, memory_interval_s=0, loop_monitor=False)
        core = app.core
        assert core.db is not None
        for _ in range(3):
            core.recorder.record("GET /x", 1000, 2000, 200, 10, None, 0, 5000)
            _request(core.db, "GET /x", [("SELECT * FROM t WHERE id = 1", 3000)] * n, 2000)
        hosts.append(core.snapshot(histograms=True))
    merged = merge_snapshots(hosts, histograms=True)
    (route,) = merged["routes"]
    assert route["db"]["queries"] == {"total": 42, "mean": 7.0, "p50": 2.0, "p99": 12.0, "max": 12}
    assert route["db"]["n_plus_one"] == 3
    assert merged["db"] == {"enabled": True, "queries": 42, "n_plus_one_threshold": 10}
    assert merge_snapshots([merged, merged])["routes"][0]["db"]["queries"]["total"] == 84
    without = dict(hosts[0])
    del without["db"]
    assert "db" not in merge_snapshots([without, hosts[1]])
