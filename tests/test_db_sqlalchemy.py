"""SQLAlchemy with no user code (issue #14): sync sqlite and async aiosqlite engines.

``db=True`` listens on the ``Engine`` class, so an engine made before or
after the middleware is timed, and an ``AsyncEngine`` (which runs a sync
engine in a greenlet) too. Real uvicorn, real engines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_perf import PerfMiddleware

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")
from sqlalchemy import text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

pytestmark = pytest.mark.slow

SECRET = "hunter2-b7c1"


def build_app(db_path: Path) -> Any:
    # NullPool: every connection is closed when given back, so none is left
    # for the garbage collector to find (a ResourceWarning in a later test).
    engine = sqlalchemy.create_engine(f"sqlite:///{db_path}", poolclass=NullPool)
    aengine = create_async_engine(f"sqlite+aiosqlite:///{db_path}", poolclass=NullPool)

    def sync_items(request: Request) -> JSONResponse:
        with engine.connect() as conn:
            for i in range(3):
                conn.execute(text("SELECT * FROM items WHERE id = :id"), {"id": i}).all()
        return JSONResponse({"ok": True})

    async def async_items(request: Request) -> JSONResponse:
        async with aengine.connect() as conn:
            for i in range(11):
                await conn.execute(text("SELECT name FROM items WHERE id = :id"), {"id": i})  # loop
            await conn.execute(text("SELECT count(*) FROM items WHERE name != :n"), {"n": SECRET})
        return JSONResponse({"ok": True})

    async def failing(request: Request) -> JSONResponse:
        async with aengine.connect() as conn:
            try:
                await conn.execute(text("SELECT * FROM missing WHERE x = :x"), {"x": SECRET})
            except OperationalError:
                return JSONResponse({"failed": True})
        return JSONResponse({"failed": False})  # pragma: no cover

    app = Starlette(
        routes=[Route("/sync", sync_items), Route("/async", async_items), Route("/fail", failing)]
    )
    return PerfMiddleware(app, db=True, n_plus_one_threshold=10)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "items.sqlite"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO items (name) VALUES ('a'), ('b')"))
    engine.dispose()
    return path


async def test_sync_and_async_engines_are_counted_per_request(
    live_server: Any, db_path: Path, routes_of: Any
) -> None:
    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        plan = ["/sync"] * 10 + ["/async"] * 10
        responses = await asyncio.gather(*(client.get(p) for p in plan))
        assert {r.status_code for r in responses} == {200}
        assert (await client.get("/fail")).json() == {"failed": True}
        snap = (await client.get("/_perf/stats")).json()
        body = (await client.get("/_perf/db", params={"limit": 100})).json()
        everything = snap.__repr__() + body.__repr__()

    routes = routes_of(snap)
    assert routes["GET /sync"]["db"]["queries"]["total"] == 30
    assert routes["GET /sync"]["db"]["queries"]["max"] == 3
    assert routes["GET /async"]["db"]["queries"]["total"] == 120
    assert routes["GET /async"]["db"]["queries"]["max"] == 12
    assert routes["GET /async"]["db"]["n_plus_one"] == 10
    by_route = {r["route"]: r for r in body["routes"]}
    statements = {s["statement"]: s["count"] for s in by_route["GET /async"]["statements"]}
    assert statements == {
        "SELECT name FROM items WHERE id = ?": 110,
        "SELECT count(*) FROM items WHERE name != ?": 10,
    }
    assert by_route["GET /fail"]["failed"] == 1
    (n_plus_one,) = body["n_plus_one"]
    assert n_plus_one["route"] == "GET /async"
    line = next(
        n
        for n, src in enumerate(Path(__file__).read_text().splitlines(), 1)
        if src.rstrip().endswith("# loop")
    )
    assert n_plus_one["call_site"] == f"tests/test_db_sqlalchemy.py:{line}"
    assert SECRET not in everything


async def test_a_failure_while_counting_never_reaches_the_apps_query(
    live_server: Any, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLAlchemy's listeners run inside the app's execute: an exception of
    # ours there would be the app's. Injected into the normaliser.
    import asgi_perf.db.tally as tally

    def broken(sql: str) -> str:
        raise RuntimeError("injected: the normaliser failed")

    server = live_server(build_app(db_path))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        before = (await client.get("/_perf/stats")).json()["internal_errors"]
        monkeypatch.setattr(tally, "normalise", broken)
        tally._shapes.clear()
        assert (await client.get("/sync")).status_code == 200
        assert (await client.get("/async")).status_code == 200
        monkeypatch.undo()
        after = (await client.get("/_perf/stats")).json()["internal_errors"]
    assert after >= before + 1
