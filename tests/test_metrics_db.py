"""The DB families of ``GET /_perf/metrics``: a real server, real sqlite3, read by real parsers.

``asgi_perf_db_queries_total{route}`` and the ``asgi_perf_db_seconds{route}``
histogram are parsed with ``prometheus_client``'s text and OpenMetrics
parsers and checked against the exact number of queries each route ran and
against ``/_perf/stats`` of the same server.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import asgi_perf.db
from asgi_perf import PerfMiddleware

ORDERS_PER_USER = 3  # GET /orders: 1 query for the orders, then 1 per order
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
PLAIN = {"Accept-Encoding": "identity"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def shop_db() -> Iterator[sqlite3.Connection]:
    # One connection, used from the server's thread: its event loop runs every query.
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    yield conn
    conn.close()


def make_app(conn: sqlite3.Connection, **perf: Any) -> PerfMiddleware:
    db = asgi_perf.db.instrument(conn)

    async def orders(request: Request) -> Response:
        found = db.execute("SELECT id FROM orders WHERE user_id = ?", (1,)).fetchall()
        lines = [
            db.execute("SELECT sku FROM lines WHERE order_id = ?", (order_id,)).fetchall()
            for (order_id,) in found
        ]
        return JSONResponse({"orders": len(found), "lines": sum(map(len, lines))})

    async def one(request: Request) -> Response:
        return JSONResponse({"n": db.execute("SELECT count(*) FROM orders").fetchone()[0]})

    app = PerfMiddleware(Starlette(routes=[Route("/orders", orders), Route("/one", one)]), **perf)
    # Built after the middleware: these queries run outside any request.
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
    db.execute("CREATE TABLE lines (order_id INTEGER, sku TEXT)")
    db.executemany("INSERT INTO orders (user_id) VALUES (?)", [(1,)] * ORDERS_PER_USER)
    db.executemany("INSERT INTO lines VALUES (?, 'x')", [(i,) for i in range(1, 4)])
    return app


def parse(text: str, parser: Callable[[str], Any] = text_string_to_metric_families) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def buckets(samples: Samples, route: str) -> list[tuple[float, float]]:
    return sorted(
        (float(dict(labels)["le"]), n)
        for (name, labels), n in samples.items()
        if name == "asgi_perf_db_seconds_bucket" and dict(labels)["route"] == route
    )


def scrape(url: str, requests: dict[str, int], accept: str | None = None) -> tuple[str, Any]:
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for path, n in requests.items():
            for _ in range(n):
                assert client.get(path).status_code == 200
        headers = {**PLAIN, **({"Accept": accept} if accept else {})}
        text = client.get("/_perf/metrics", headers=headers).text
        stats = client.get("/_perf/stats").json()
    return text, stats


def test_queries_and_seconds_per_route(live_server: Any, shop_db: sqlite3.Connection) -> None:
    server = live_server(make_app(shop_db, db=True))
    text, stats = scrape(server.url, {"/orders": 7, "/one": 5})
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["asgi_perf_db_queries"] == "counter"
    assert types["asgi_perf_db_seconds"] == "histogram"
    samples = parse(text)
    expected = {"GET /orders": 7 * (1 + ORDERS_PER_USER), "GET /one": 5, "<no request>": 4}
    db_time = {r["route"]: r["db"]["time_ms"]["total"] for r in stats["routes"]}
    for route, queries in expected.items():
        assert value(samples, "asgi_perf_db_queries_total", route=route) == queries
        assert value(samples, "asgi_perf_db_seconds_count", route=route) == queries
        seconds = value(samples, "asgi_perf_db_seconds_sum", route=route)
        assert seconds > 0
        if route in db_time:  # <no request> serves no request: it has no stats route
            assert seconds * 1000 == pytest.approx(db_time[route], abs=0.001)
        found = buckets(samples, route)
        bounds = [le for le, _ in found]
        counts = [n for _, n in found]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf and len(bounds) > 10
        assert counts == sorted(counts) and counts[-1] == queries
        # Sub-millisecond sqlite queries: most fall at or below 10 ms.
        assert next(n for le, n in found if le >= 0.01) > 0
    assert {r for (name, labels), _ in samples.items() if name == "asgi_perf_db_queries_total"
            for k, r in labels if k == "route"} == set(expected)  # fmt: skip


def test_openmetrics_parses_too(live_server: Any, shop_db: sqlite3.Connection) -> None:
    server = live_server(make_app(shop_db, db=True))
    text, _ = scrape(server.url, {"/one": 2}, accept=OPENMETRICS)
    assert text.rstrip().endswith("# EOF")
    samples = parse(text, openmetrics_families)
    assert value(samples, "asgi_perf_db_queries_total", route="GET /one") == 2
    assert value(samples, "asgi_perf_db_seconds_count", route="GET /one") == 2


def test_no_db_families_when_capture_is_off(live_server: Any, shop_db: sqlite3.Connection) -> None:
    server = live_server(make_app(shop_db))
    text, stats = scrape(server.url, {"/orders": 2})
    assert "asgi_perf_db_" not in text
    assert "asgi_perf_requests_total" in text
    assert "db" not in stats and all("db" not in r for r in stats["routes"])


def test_reset_clears_the_db_counters(live_server: Any, shop_db: sqlite3.Connection) -> None:
    server = live_server(make_app(shop_db, db=True))
    scrape(server.url, {"/one": 3})
    httpx.post(f"{server.url}/_perf/reset", trust_env=False, timeout=30).raise_for_status()
    text, _ = scrape(server.url, {"/one": 1})
    samples = parse(text)
    assert value(samples, "asgi_perf_db_queries_total", route="GET /one") == 1
