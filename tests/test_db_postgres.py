"""Database capture against a real PostgreSQL server (issue #14): asyncpg and psycopg.

The server is the session's private cluster (tests/postgres.py); the app is
served by real uvicorn with ``db=True``, and every number is read back from
its own ``/_perf/stats`` and ``/_perf/db``. Three ways in:

- an asyncpg pool given to ``asgi_perf.db.instrument_asyncpg(pool)``,
- an asyncpg pool made with ``create_pool(init=asgi_perf.db.asyncpg_init)``,
- a psycopg connection wrapped by ``asgi_perf.db.instrument(conn)`` (``def``
  endpoints, so the queries run in the threadpool).

Each app has the same four routes: one query, three queries, the same query
12 times (an N+1 at the default threshold of 10), and a query on a table that
does not exist.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import asgi_perf.db
from asgi_perf import PerfMiddleware

asyncpg = pytest.importorskip("asyncpg", reason="needs asyncpg: pip install asyncpg")
psycopg = pytest.importorskip("psycopg", reason="needs psycopg: pip install 'psycopg[binary]'")

# Real servers under 50 concurrent requests.
pytestmark = pytest.mark.slow

BACKENDS = ("asyncpg-instrument", "asyncpg-init", "psycopg")
LOOPS = 12
# Sent only as a query parameter: it must not appear in any output.
SECRET = f"pg-param-{secrets.token_hex(8)}"
THIS_FILE = Path(__file__).name
NAME_BY_ID = "SELECT name FROM widgets WHERE id = $1"
# The line of each app that runs the repeated query, found by its marker.
N_PLUS_ONE_LINES = {
    marker: next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if text.endswith(marker)
    )
    for marker in ("# asyncpg-n+1", "# psycopg-n+1")
}
# asyncpg's pool resets a connection as it goes back (``SELECT
# pg_advisory_unlock_all(); CLOSE ALL; ...``), inside the request that used
# it: the driver's query, not the app's, so it is not counted.
POOL_RESET = "pg_advisory_unlock_all"


@pytest.fixture(scope="module")
def widgets(postgres_dsn: str) -> Iterator[str]:
    """The DSN, with a ``widgets`` table of 20 rows (made outside any app)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS widgets")
        conn.execute("CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO widgets VALUES (%s, %s)", [(i, f"widget {i}") for i in range(1, 21)]
            )
    yield postgres_dsn
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE widgets")


def _error(exc: Exception) -> dict[str, str]:
    kind = type(exc)
    return {"error": f"{kind.__module__}.{kind.__qualname__}", "sqlstate": str(exc.sqlstate)}  # type: ignore[attr-defined]


def asyncpg_app(dsn: str, *, via_init: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if via_init:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=10, init=asgi_perf.db.asyncpg_init
            )
        else:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
            asgi_perf.db.instrument_asyncpg(pool)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/one")
    async def one() -> dict[str, Any]:
        async with app.state.pool.acquire() as conn:
            return {"name": await conn.fetchval(NAME_BY_ID, 1)}

    @app.get("/three")
    async def three() -> dict[str, Any]:
        async with app.state.pool.acquire() as conn:
            others = await conn.fetchval("SELECT count(*) FROM widgets WHERE name <> $1", SECRET)
            first = await conn.fetchrow("SELECT id, name FROM widgets ORDER BY id LIMIT $1", 1)
            await conn.execute("SELECT pg_sleep(0)")
        return {"others": others, "first": dict(first)}

    @app.get("/loop")
    async def loop() -> dict[str, Any]:
        names = []
        async with app.state.pool.acquire() as conn:
            for i in range(1, LOOPS + 1):
                names.append(await conn.fetchval(NAME_BY_ID, i))  # asyncpg-n+1
        return {"names": names}

    @app.get("/fail")
    async def fail() -> dict[str, str]:
        async with app.state.pool.acquire() as conn:
            try:
                await conn.fetch("SELECT * FROM no_such_table")
            except Exception as exc:  # the driver's own exception, whatever it is
                return _error(exc)
        return {"error": "none"}

    app.add_middleware(PerfMiddleware, db=True)
    return app


def psycopg_app(dsn: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # psycopg's connection serialises the threads that share it.
        conn = asgi_perf.db.instrument(psycopg.connect(dsn, autocommit=True))
        app.state.conn = conn
        try:
            yield
        finally:
            conn.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/one")
    def one() -> dict[str, Any]:
        with app.state.conn.cursor() as cur:
            cur.execute("SELECT name FROM widgets WHERE id = %s", (1,))
            return {"name": cur.fetchone()[0]}

    @app.get("/three")
    def three() -> dict[str, Any]:
        with app.state.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM widgets WHERE name <> %s", (SECRET,))
            (others,) = cur.fetchone()
            cur.execute("SELECT id, name FROM widgets ORDER BY id LIMIT %s", (1,))
            first_id, first_name = cur.fetchone()
            cur.execute("SELECT pg_sleep(0)")
        return {"others": others, "first": {"id": first_id, "name": first_name}}

    @app.get("/loop")
    def loop() -> dict[str, Any]:
        names = []
        with app.state.conn.cursor() as cur:
            for i in range(1, LOOPS + 1):
                cur.execute("SELECT name FROM widgets WHERE id = %s", (i,))  # psycopg-n+1
                names.append(cur.fetchone()[0])
        return {"names": names}

    @app.get("/fail")
    def fail() -> dict[str, str]:
        with app.state.conn.cursor() as cur:
            try:
                cur.execute("SELECT * FROM no_such_table")
            except Exception as exc:
                return _error(exc)
        return {"error": "none"}

    app.add_middleware(PerfMiddleware, db=True)
    return app


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, widgets: str, live_server: Callable[..., Any]) -> str:
    """The base URL of one backend's app, freshly started (empty numbers)."""
    backend = request.param
    if backend == "psycopg":
        app = psycopg_app(widgets)
    else:
        app = asyncpg_app(widgets, via_init=backend == "asyncpg-init")
    url: str = live_server(app, lifespan="on").url
    return url


def db_of(stats: dict[str, Any], route: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in stats["routes"] if r["route"] == route)["db"]
    return found


def app_statements(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The route's statements; asyncpg's pool reset is the driver's, never among them."""
    statements: list[dict[str, Any]] = route["statements"]
    assert [s for s in statements if POOL_RESET in s["statement"]] == [], route
    return statements


async def test_exact_query_counts_per_route_under_concurrency(
    served: str, client_for: Callable[..., Any]
) -> None:
    async with client_for(served) as http:
        # 50 at once, the two routes interleaved over the pool's 10 connections.
        paths = ["/one", "/three"] * 25
        responses = await asyncio.gather(*(http.get(p) for p in paths))
        assert [r.status_code for r in responses] == [200] * 50
        assert responses[0].json() == {"name": "widget 1"}
        assert responses[1].json() == {"others": 20, "first": {"id": 1, "name": "widget 1"}}
        stats = (await http.get("/_perf/stats")).json()
        report = (await http.get("/_perf/db")).json()

    routes = {r["route"]: r for r in report["routes"]}
    assert set(routes) == {"GET /one", "GET /three"}
    for name, per_request in (("GET /one", 1), ("GET /three", 3)):
        route = routes[name]
        assert (route["requests"], route["queries"]) == (25, 25 * per_request)
        assert sorted(s["count"] for s in app_statements(route)) == [25] * per_request
        # Exact per request: no query of one route counted for the other.
        queries = db_of(stats, name)["queries"]
        summary = (queries["total"], queries["max"], queries["p50"])
        assert summary == (25 * per_request, per_request, per_request)
        assert db_of(stats, name)["n_plus_one"] == 0
    assert stats["db"]["queries"] == sum(r["queries"] for r in routes.values())
    assert report["n_plus_one"] == []


async def test_an_n_plus_one_is_found_with_its_line(
    served: str, client_for: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    async with client_for(served) as http:
        for _ in range(3):
            response = await http.get("/loop")
            assert response.json()["names"] == [f"widget {i}" for i in range(1, LOOPS + 1)]
        await http.get("/one")
        stats = (await http.get("/_perf/stats")).json()
        report = (await http.get("/_perf/db")).json()

    loop = next(r for r in report["routes"] if r["route"] == "GET /loop")
    assert db_of(stats, "GET /loop")["n_plus_one"] == 3
    assert [s["count"] for s in app_statements(loop)] == [3 * LOOPS]
    assert db_of(stats, "GET /loop")["queries"]["total"] == 3 * LOOPS
    [found] = report["n_plus_one"]
    assert (found["route"], found["per_request"], found["requests"]) == ("GET /loop", LOOPS, 3)
    assert "FROM widgets WHERE id = " in found["statement"]
    psycopg_app = "psycopg" in request.node.name
    if not psycopg_app and found["call_site"] is None:
        # asyncpg calls its query logger a loop turn after the query, from
        # the event loop, where the app's frame is gone.
        return
    marker = "# psycopg-n+1" if psycopg_app else "# asyncpg-n+1"
    path, _, line = found["call_site"].rpartition(":")
    assert Path(path).name == THIS_FILE, found
    assert int(line) == N_PLUS_ONE_LINES[marker], found


async def test_a_driver_error_reaches_the_app_unchanged_and_is_counted(
    served: str, client_for: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    async with client_for(served) as http:
        failures = [(await http.get("/fail")).json() for _ in range(2)]
        await http.get("/one")
        report = (await http.get("/_perf/db")).json()

    expected = (
        "psycopg.errors.UndefinedTable"
        if "psycopg" in request.node.name
        else "asyncpg.exceptions.UndefinedTableError"
    )
    assert failures == [{"error": expected, "sqlstate": "42P01"}] * 2
    routes = {r["route"]: r for r in report["routes"]}
    fail = routes["GET /fail"]
    assert (fail["queries"], fail["failed"]) == (2, 2)
    [statement] = app_statements(fail)
    assert "no_such_table" in statement["statement"]
    assert (statement["count"], statement["failed"]) == (2, 2)
    assert routes["GET /one"]["failed"] == 0


async def test_no_parameter_value_in_any_output(
    served: str, client_for: Callable[..., Any]
) -> None:
    async with client_for(served) as http:
        for path in ("/three", "/three", "/loop", "/fail"):
            assert (await http.get(path)).status_code == 200
        outputs = {
            path: (await http.get(path)).text
            for path in ("/_perf/stats", "/_perf/db", "/_perf/metrics")
        }
    assert "count(*) FROM widgets WHERE name <> " in outputs["/_perf/db"]
    for path, text in outputs.items():
        assert SECRET not in text, path
