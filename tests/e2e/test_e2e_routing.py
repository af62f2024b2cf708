"""End to end: route template keys, bounds, websockets and lifespan."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import perf_middleware_of
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware

# Real servers: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/_perf/stats")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def counts(snapshot: dict[str, Any]) -> dict[str, int]:
    return {r["route"]: r["count"] for r in snapshot["routes"]}


async def test_fastapi_router_prefixes_give_template_keys(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for path in (
            "/api/health",
            "/api/v1/users/alice",
            "/api/v1/users/bob",
            "/admin/reports/monday",
            "/items/1",
            "/users/carol",
        ):
            assert (await client.get(path)).status_code == 200, path
        snap = await stats(client)
    assert counts(snap) == {
        "GET /api/health": 1,
        "GET /api/v1/users/{user_id}": 2,
        "GET /admin/reports/{day}": 1,
        "GET /items/{item_id}": 1,
        "GET /users/{user_id}": 1,
    }


async def test_starlette_mounts_and_static_files_give_template_keys(live_server, starlette_app):
    server = live_server(starlette_app(perf={}))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for path in (
            "/tenants/acme/orders/1",
            "/tenants/globex/orders/2",
            "/tenants/acme/profile",
            "/admin/reports/2024",
            "/static/hello.txt",
            "/items/5",
        ):
            assert (await client.get(path)).status_code == 200, path
        missing = await client.get("/static/missing.txt")
        assert missing.status_code == 404
        inside_mount_missing = await client.get("/tenants/acme/nothing-here")
        assert inside_mount_missing.status_code == 404
        snap = await stats(client)
    assert counts(snap) == {
        "GET /tenants/{tenant}/orders/{order_id}": 2,
        "GET /tenants/{tenant}/profile": 1,
        "GET /admin/reports/{year}": 1,
        "GET /static/{path}": 2,
        "GET /items/{item_id}": 1,
        "<unmatched>": 1,
    }
    static = next(r for r in snap["routes"] if r["route"] == "GET /static/{path}")
    assert static["status"]["2xx"] == 1
    assert static["status"]["4xx"] == 1
    assert static["bytes"] >= len("hello, static\n")
    dump = json.dumps(snap)
    assert "acme" not in dump
    assert "globex" not in dump
    assert "hello.txt" not in dump


async def test_route_keys_stay_templates_when_uvicorn_has_a_root_path(
    live_server, fastapi_app, eventually
):
    server = live_server(fastapi_app(perf={}), root_path="/svc")
    # uvicorn puts the root path in front of every path; the app routes below it.
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/items/3")).status_code == 200

    # The server records after the client has its answer: wait for it.
    async def recorded() -> bool:
        return bool(perf_middleware_of(server.app).snapshot()["requests"])

    await eventually(recorded)
    snap = perf_middleware_of(server.app).snapshot()
    assert counts(snap) == {"GET /items/{item_id}": 1}


async def test_perf_api_is_reachable_when_uvicorn_has_a_root_path(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}), root_path="/svc")
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/items/3")).status_code == 200
        response = await client.get("/_perf/stats")
    assert response.status_code == 200, response.text
    assert counts(response.json()) == {"GET /items/{item_id}": 1}


async def test_ten_thousand_unknown_paths_share_one_key_and_the_snapshot_stays_small(
    asgi, fastapi_app
):
    mw = PerfMiddleware(fastapi_app())
    for i in range(10):
        assert (await asgi(mw, "GET", f"/scanner/{i}")).status == 404
    size_before = len(json.dumps(mw.snapshot()))
    for i in range(10, 10_000):
        response = await asgi(mw, "GET", f"/wp-admin/{i}/x{i}.php", query=f"q={i}".encode())
        assert response.status == 404
    snap = mw.snapshot()
    assert counts(snap) == {"<unmatched>": 10_000}
    assert snap["routes"][0]["status"]["4xx"] == 10_000
    size_after = len(json.dumps(snap))
    # Only digits of the numbers may grow; nothing per path is kept.
    assert size_after < size_before + 200, (size_before, size_after)
    assert "wp-admin" not in json.dumps(mw.snapshot(histograms=True))


async def test_ten_thousand_tenants_of_a_templated_mount_share_one_key(asgi, starlette_app):
    mw = PerfMiddleware(starlette_app())
    for i in range(10_000):
        assert (await asgi(mw, "GET", f"/tenants/t{i}/profile")).status == 200
    snap = mw.snapshot()
    assert counts(snap) == {"GET /tenants/{tenant}/profile": 10_000}
    assert "t9999" not in json.dumps(snap)


async def test_max_routes_overflow_goes_to_other(live_server):
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(f"/r{i}/{{x}}", ok) for i in range(10)])
    app.add_middleware(PerfMiddleware, max_routes=3)
    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for i in range(10):
            assert (await client.get(f"/r{i}/a")).status_code == 200
            assert (await client.get(f"/r{i}/b")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        snap = await stats(client)
    keys = counts(snap)
    normal = {k: v for k, v in keys.items() if not k.startswith("<")}
    assert len(normal) == 3
    assert normal == {"GET /r0/{x}": 2, "GET /r1/{x}": 2, "GET /r2/{x}": 2}
    assert keys["<other>"] == 14
    assert keys["<unmatched>"] == 1
    assert snap["requests"] == 21


async def websocket_session(app: Any, path: str, texts: list[str]) -> list[dict[str, Any]]:
    """Drive one websocket connection through ``app`` like a server would."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in (
        {"type": "websocket.connect"},
        *({"type": "websocket.receive", "text": t} for t in texts),
    ):
        incoming.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await incoming.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


async def test_websocket_works_through_the_middleware_and_is_not_counted(asgi, starlette_app):
    # uvicorn needs the `websockets` or `wsproto` package for websockets and
    # neither is installed here; the ASGI websocket protocol is driven in-process.
    mw = PerfMiddleware(starlette_app())
    sent = await websocket_session(mw, "/ws", ["ping"])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "echo:ping"
    assert mw.snapshot()["routes"] == []
    assert (await asgi(mw, "GET", "/items/2")).status == 200
    snap = mw.snapshot()
    assert counts(snap) == {"GET /items/{item_id}": 1}
    assert snap["requests"] == 1


async def test_lifespan_handlers_run_with_the_middleware(live_server):
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        events.append("startup")
        yield {"greeting": "hi"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greet")
    async def greet(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    app.add_middleware(PerfMiddleware)
    server = live_server(app, lifespan="on")
    assert events == ["startup"]
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        response = await client.get("/greet")
        assert response.json() == {"greeting": "hi"}
        assert counts(await stats(client)) == {"GET /greet": 1}
    server.stop()
    assert events == ["startup", "shutdown"]


async def test_app_without_lifespan_support_keeps_working_under_lifespan_auto(live_server, raw_app):
    server = live_server(PerfMiddleware(raw_app), lifespan="auto")
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for path in ("/a", "/b/c"):
            response = await client.get(path)
            assert (response.status_code, response.text) == (200, "hello")
        snap = await stats(client)
    # No router wrote a route: both are <unmatched>, never their raw paths.
    assert counts(snap) == {"<unmatched>": 2}


async def test_app_without_lifespan_support_with_a_route_key(live_server, raw_app):
    mw = PerfMiddleware(raw_app, route_key=lambda scope: f"{scope['method']} /{{any}}")
    server = live_server(mw, lifespan="auto")
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/x")).status_code == 200
        assert counts(await stats(client)) == {"GET /{any}": 1}


async def test_bad_perf_requests_over_the_wire_are_4xx_json(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/items/1")).status_code == 200
        cases = [
            ("GET", "/_perf/nope", 404),
            ("DELETE", "/_perf/stats", 405),
            ("GET", "/_perf/reset", 405),
            ("GET", "/_perf/stats?histograms=maybe", 400),
            ("GET", "/_perf/budgets?x=1", 400),
        ]
        for method, url, status in cases:
            response = await client.request(method, url)
            assert response.status_code == status, (method, url, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["status"] == status
        assert counts(await stats(client)) == {"GET /items/{item_id}": 1}
