"""Database capture end to end (issue #14): real uvicorn, real sqlite3, real httpx.

Queries are attributed to the request that ran them (async endpoints, sync
ones in the threadpool, background tasks), counted exactly under
concurrency, N+1s are found with the app's file:line, slow statements are
kept, and no parameter value reaches any output.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_perf import PerfMiddleware
from asgi_perf.db import instrument

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-9f4e2a"
SECRET_NUMBER = 987654321
SLOW_MS = 30


def _line(marker: str) -> int:
    for number, text in enumerate(Path(__file__).read_text().splitlines(), 1):
        if text.rstrip().endswith(marker):
            return number
    raise AssertionError(marker)


def build_app(db_path: Path, **perf: Any) -> Any:
    @contextmanager
    def connect() -> Iterator[Any]:
        with closing(instrument(sqlite3.connect(db_path))) as conn:
            # A pause that always lasts at least its argument: a slow statement
            # that needs no timing assumption.
            conn.create_function("pause", 1, lambda s: time.sleep(s) or 0)
            yield conn

    async def few(request: Request) -> JSONResponse:
        with connect() as conn:
            conn.execute("SELECT count(*) FROM products").fetchone()
            conn.execute("SELECT name FROM products WHERE id = ?", (SECRET_NUMBER,)).fetchall()
        return JSONResponse({"ok": True})

    async def orders(request: Request) -> JSONResponse:
        lines = []
        with connect() as conn:
            sql = "SELECT * FROM lines WHERE order_id = ?"
            for oid in range(12):
                lines.append(conn.execute(sql, (oid,)).fetchall())  # N+1 here
        return JSONResponse({"orders": len(lines)})

    def sync_endpoint(request: Request) -> JSONResponse:
        with connect() as conn:
            for _ in range(3):
                conn.execute(f"SELECT * FROM products WHERE name = '{SECRET}'").fetchall()
        return JSONResponse({"ok": True})

    def after_response() -> None:
        with connect() as conn:
            conn.execute("UPDATE products SET name = ? WHERE id = 1", (SECRET,))
            conn.execute("DELETE FROM lines WHERE order_id = 999999")
            conn.commit()

    async def background(request: Request) -> JSONResponse:
        with connect() as conn:
            conn.execute("SELECT 1").fetchall()
        return JSONResponse({"ok": True}, background=BackgroundTask(after_response))

    async def slow(request: Request) -> JSONResponse:
        with connect() as conn:
            conn.execute("SELECT pause(?)", ((SLOW_MS + 10) / 1000,)).fetchall()  # slow one
        return JSONResponse({"ok": True})

    async def broken(request: Request) -> JSONResponse:
        with connect() as conn:
            conn.execute("SELECT * FROM no_such_table WHERE token = ?", (SECRET,))
        return JSONResponse({"ok": True})  # pragma: no cover - the query raises

    app = Starlette(
        routes=[
            Route("/few", few),
            Route("/orders", orders),
            Route("/sync", sync_endpoint),
            Route("/background", background),
            Route("/slow", slow),
            Route("/broken", broken),
        ]
    )
    options = {"db": True, "n_plus_one_threshold": 10, "slow_query_ms": SLOW_MS, **perf}
    return PerfMiddleware(app, **options)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER);"
            "INSERT INTO products (name) VALUES ('tea'), ('coffee');"
            "INSERT INTO lines (order_id) VALUES (1), (2), (3);"
        )
    return path


async def _get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_concurrent_requests_are_counted_exactly_per_route(
    live_server: Any, db_path: Path, routes_of: Any
) -> None:
    server = live_server(build_app(db_path))
    plan = ["/few"] * 25 + ["/orders"] * 25
    async with httpx.AsyncClient(
        base_url=server.url,
        trust_env=False,
        timeout=30,
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=0),
    ) as client:
        responses = await asyncio.gather(*(client.get(p) for p in plan))
        assert {r.status_code for r in responses} == {200}
        snap = await _get(client, "/_perf/stats")
        body = await _get(client, "/_perf/db")

    routes = routes_of(snap)
    few, orders = routes["GET /few"]["db"], routes["GET /orders"]["db"]
    assert few["queries"] == {"total": 50, "mean": 2.0, "p50": 2.0, "p99": 2.0, "max": 2}
    assert orders["queries"] == {"total": 300, "mean": 12.0, "p50": 12.0, "p99": 12.0, "max": 12}
    assert few["n_plus_one"] == 0
    assert orders["n_plus_one"] == 25
    assert 0 < orders["share"] <= 1
    assert orders["time_ms"]["total"] > 0
    assert orders["time_ms"]["max"] >= orders["time_ms"]["p50"] > 0
    assert snap["db"] == {"enabled": True, "queries": 350, "n_plus_one_threshold": 10}

    by_route = {r["route"]: r for r in body["routes"]}
    assert by_route["GET /orders"]["requests"] == 25
    assert by_route["GET /orders"]["statements"][0]["statement"] == (
        "SELECT * FROM lines WHERE order_id = ?"
    )
    assert by_route["GET /orders"]["statements"][0]["count"] == 300
    assert {s["statement"]: s["count"] for s in by_route["GET /few"]["statements"]} == {
        "SELECT count(*) FROM products": 25,
        "SELECT name FROM products WHERE id = ?": 25,
    }
    assert body["n_plus_one"] == [
        {
            "route": "GET /orders",
            "statement": "SELECT * FROM lines WHERE order_id = ?",
            "per_request": 12,
            "requests": 25,
            "call_site": f"tests/test_db_e2e.py:{_line('# N+1 here')}",
        }
    ]


async def test_threadpool_background_slow_and_failed_queries_are_attributed(
    live_server: Any, db_path: Path, routes_of: Any
) -> None:
    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for _ in range(2):
            assert (await client.get("/sync")).status_code == 200
            assert (await client.get("/background")).status_code == 200
        assert (await client.get("/slow")).status_code == 200
        assert (await client.get("/broken")).status_code == 500
        snap = await _get(client, "/_perf/stats")
        body = await _get(client, "/_perf/db")
        filtered = await _get(client, "/_perf/db", route="GET /sync", limit=1)

    routes = routes_of(snap)
    assert routes["GET /sync"]["db"]["queries"]["total"] == 6
    assert routes["GET /sync"]["db"]["queries"]["max"] == 3
    # The response's query, and the two of its background task.
    assert routes["GET /background"]["db"]["queries"]["total"] == 6
    assert routes["GET /background"]["db"]["queries"]["max"] == 3
    by_route = {r["route"]: r for r in body["routes"]}
    assert by_route["GET /broken"]["failed"] == 1
    assert by_route["GET /broken"]["statements"][0]["failed"] == 1
    assert "<no request>" not in by_route

    (slow,) = body["slow"]
    assert slow["route"] == "GET /slow"
    assert slow["statement"] == "SELECT pause(?)"
    assert slow["duration_ms"] >= SLOW_MS
    assert slow["call_site"] == f"tests/test_db_e2e.py:{_line('# slow one')}"
    assert time.time() - 60 < slow["at"] <= time.time()
    assert body["slow_query_ms"] == float(SLOW_MS)

    assert [r["route"] for r in filtered["routes"]] == ["GET /sync"]
    assert len(filtered["routes"][0]["statements"]) == 1
    assert filtered["slow"] == []


async def test_no_parameter_value_reaches_any_output(live_server: Any, db_path: Path) -> None:
    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for path in ("/few", "/orders", "/sync", "/background", "/broken"):
            await client.get(path)
        outputs = [
            (await client.get("/_perf/stats", params={"histograms": 1})).text,
            (await client.get("/_perf/db", params={"limit": 1000})).text,
            (await client.get("/_perf/metrics")).text,
            (await client.post("/_perf/reset")).text,
        ]
    for text in outputs:
        assert SECRET not in text
        assert str(SECRET_NUMBER) not in text
    assert "SELECT * FROM products WHERE name = ?" in outputs[1]


async def test_reset_clears_the_database_numbers(live_server: Any, db_path: Path) -> None:
    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        await client.get("/orders")
        before = await _get(client, "/_perf/db")
        assert before["n_plus_one"] and before["routes"]
        assert (await client.post("/_perf/reset")).status_code == 200
        after = await _get(client, "/_perf/db")
        snap = await _get(client, "/_perf/stats")
    assert after["routes"] == after["n_plus_one"] == after["slow"] == []
    assert snap["db"]["queries"] == 0


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"limit": "-1"}, {"route": ""},
     {"route": "x" * 1001}, {"unknown": "1"}],
)  # fmt: skip
async def test_bad_parameters_are_400_json(
    live_server: Any, db_path: Path, params: dict[str, str]
) -> None:
    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        response = await client.get("/_perf/db", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]


async def test_db_off_is_409_and_no_db_fields(live_server: Any, db_path: Path) -> None:
    server = live_server(build_app(db_path, db=False))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        await client.get("/few")
        response = await client.get("/_perf/db")
        snap = await _get(client, "/_perf/stats")
    assert response.status_code == 409
    assert "db=True" in response.json()["error"]
    assert "db" not in snap
    assert all("db" not in route for route in snap["routes"])


async def test_a_failure_while_counting_is_ours_the_query_still_answers(
    live_server: Any, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug of asgi_perf's while it counts a query (injected into the
    # normaliser every capture path goes through) must not reach the app.
    import asgi_perf.db.tally as tally

    def broken(sql: str) -> str:
        raise RuntimeError("injected: the normaliser failed")

    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        before = (await _get(client, "/_perf/stats"))["internal_errors"]
        monkeypatch.setattr(tally, "normalise", broken)
        tally._shapes.clear()
        assert await _get(client, "/few") == {"ok": True}
        assert await _get(client, "/sync") == {"ok": True}
        monkeypatch.undo()
        after = (await _get(client, "/_perf/stats"))["internal_errors"]
    assert after >= before + 1
