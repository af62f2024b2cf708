"""End to end under real uvicorn: counts, latency, streaming, disconnects, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_perf import PerfMiddleware

# Real servers and timed loads: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

# A known sleep is measured by the server within the histogram's 1 % error,
# plus this much for scheduling on a busy CI machine (never a speed limit).
SLACK_MS = 60


async def stats(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/_perf/stats", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_200_concurrent_requests_are_counted_exactly_per_route(
    live_server, fastapi_app, routes_of
):
    server = live_server(fastapi_app(perf={}))
    plan = (
        [("GET", f"/items/{i}") for i in range(80)]
        + [("GET", "/")] * 40
        + [("POST", "/items")] * 30
        + [("GET", f"/api/v1/users/u{i}") for i in range(30)]
        + [("GET", f"/no/such/page/{i}") for i in range(20)]
    )
    assert len(plan) == 200
    # 200 connections at once, each closed after its response: none sits idle
    # in the pool for the next request to find it closed by the server.
    async with httpx.AsyncClient(
        base_url=server.url,
        trust_env=False,
        timeout=30,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
    ) as client:
        responses = await asyncio.gather(*(client.request(m, p) for m, p in plan))
        assert Counter(r.status_code for r in responses) == {200: 150, 201: 30, 404: 20}
        snap = await stats(client)

    routes = routes_of(snap)
    assert {k: r["count"] for k, r in routes.items()} == {
        "GET /items/{item_id}": 80,
        "GET /": 40,
        "POST /items": 30,
        "GET /api/v1/users/{user_id}": 30,
        "<unmatched>": 20,
    }
    assert snap["requests"] == 200
    assert routes["POST /items"]["status"]["2xx"] == 30
    assert routes["<unmatched>"]["status"]["4xx"] == 20
    assert routes["POST /items"]["method"] == "POST"
    assert routes["POST /items"]["template"] == "/items"
    assert all(r["in_flight"] == 0 for r in routes.values())
    assert all(r["errors"] == 0 and r["exceptions"] == 0 for r in routes.values())
    assert routes["GET /items/{item_id}"]["recent"]["count"] == 80
    # Raw paths never become keys.
    assert not any("u1" in key or "page" in key for key in routes)


async def test_known_sleep_is_measured_within_one_percent_plus_slack(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.get("/slow?ms=200") for _ in range(5)))
        client_ms = (time.perf_counter() - started) * 1000
        assert all(r.status_code == 200 for r in responses)
        snap = await stats(client)
    route = next(r for r in snap["routes"] if r["route"] == "GET /slow")
    assert route["count"] == 5
    latency = route["latency_ms"]
    for name in ("p50", "p99", "max", "mean"):
        assert 200 * 0.99 <= latency[name] <= 200 + SLACK_MS, (name, latency)
    # The server cannot have seen a request take longer than the client did.
    assert latency["max"] <= client_ms * 1.01
    # A JSON response is sent at once: first byte and end are (nearly) the same.
    assert 200 * 0.99 <= route["ttfb_ms"]["p50"] <= latency["max"] * 1.01
    assert route["recent"]["latency_ms"]["p50"] == latency["p50"]


async def test_streaming_response_is_timed_to_its_last_chunk(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}))
    chunks, gap_ms, size = 5, 60, 1000
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        response = await client.get(f"/stream?chunks={chunks}&ms={gap_ms}&size={size}")
        assert response.status_code == 200
        assert len(response.content) == chunks * size
        snap = await stats(client)
    route = next(r for r in snap["routes"] if r["route"] == "GET /stream")
    assert route["count"] == 1
    assert route["bytes"] == chunks * size
    streamed_ms = (chunks - 1) * gap_ms
    assert streamed_ms * 0.99 <= route["latency_ms"]["max"] <= streamed_ms + SLACK_MS
    # The response starts before the first sleep: first byte long before the end.
    assert route["ttfb_ms"]["max"] < gap_ms
    assert route["ttfb_ms"]["max"] * 4 < route["latency_ms"]["max"]
    assert route["disconnects"] == 0


async def test_client_disconnecting_mid_stream_is_recorded_once_and_server_stays_healthy(
    live_server, fastapi_app, eventually
):
    server = live_server(fastapi_app(perf={}))
    chunks, gap_ms = 30, 100  # 2.9 s if it ran to the end
    client = httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30)
    async with client, client.stream("GET", f"/stream?chunks={chunks}&ms={gap_ms}&size=10") as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_raw():
            assert chunk
            break
    # Leaving the block closes the unfinished response: the connection goes.

    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:

        async def recorded() -> bool:
            snap = await stats(client)
            return any(r["route"] == "GET /stream" and r["count"] for r in snap["routes"])

        await eventually(recorded, timeout=10)
        healthy = await client.get("/items/7")
        assert healthy.status_code == 200
        assert healthy.json() == {"id": 7}
        snap = await stats(client)

    route = next(r for r in snap["routes"] if r["route"] == "GET /stream")
    assert route["count"] == 1
    assert route["disconnects"] == 1
    assert route["exceptions"] == 0
    assert route["in_flight"] == 0
    # Timed to the disconnect, not to the end of a stream nobody read.
    assert route["latency_ms"]["max"] < (chunks - 1) * gap_ms * 0.9
    assert route["bytes"] < chunks * 10
    assert next(r for r in snap["routes"] if r["route"] == "GET /items/{item_id}")["count"] == 1


class Boom(Exception):
    """Raised by an endpoint on purpose."""


def boom_app(perf: dict[str, Any]) -> tuple[FastAPI, list[Boom]]:
    app = FastAPI()
    raised: list[Boom] = []

    @app.get("/boom/{n}")
    async def boom(n: int) -> None:
        exc = Boom(f"boom {n}")
        raised.append(exc)
        raise exc

    @app.get("/fine")
    async def fine() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(PerfMiddleware, **perf)
    return app, raised


async def test_endpoint_exception_counts_as_exception_and_5xx_under_uvicorn(live_server):
    app, _ = boom_app({})
    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for n in range(3):
            # uvicorn closes the connection after an app exception (with or
            # without asgi_perf); a fresh connection per request avoids a race.
            response = await client.get(f"/boom/{n}", headers={"Connection": "close"})
            assert response.status_code == 500
        assert (await client.get("/fine")).status_code == 200
        snap = await stats(client)
    route = next(r for r in snap["routes"] if r["route"] == "GET /boom/{n}")
    assert route["count"] == 3
    assert route["exceptions"] == 3
    assert route["errors"] == 3
    assert route["status"]["5xx"] == 3
    assert route["status"]["2xx"] == 0
    fine = next(r for r in snap["routes"] if r["route"] == "GET /fine")
    assert (fine["count"], fine["exceptions"], fine["errors"]) == (1, 0, 0)


async def test_endpoint_exception_propagates_unchanged_in_process(client_for):
    app, raised = boom_app({})
    async with client_for(app, raise_app_exceptions=True) as client:
        with pytest.raises(Boom) as caught:
            await client.get("/boom/1")
        assert type(caught.value) is Boom
        assert caught.value is raised[0]
        snap = (await client.get("/_perf/stats")).json()
    route = next(r for r in snap["routes"] if r["route"] == "GET /boom/{n}")
    assert (route["count"], route["exceptions"], route["status"]["5xx"]) == (1, 1, 1)


async def test_sync_def_endpoint_is_timed(live_server, fastapi_app):
    server = live_server(fastapi_app(perf={}))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for _ in range(3):
            assert (await client.get("/sync?ms=100")).status_code == 200
        snap = await stats(client)
    route = next(r for r in snap["routes"] if r["route"] == "GET /sync")
    assert route["count"] == 3
    assert 100 * 0.99 <= route["latency_ms"]["p50"] <= 100 + SLACK_MS
    assert 100 * 0.99 <= route["latency_ms"]["max"] <= 100 + SLACK_MS


async def test_in_flight_is_one_while_a_slow_request_runs(live_server, eventually):
    release = threading.Event()
    app = FastAPI()

    @app.get("/hold/{n}")
    def hold(n: int) -> dict[str, bool]:
        # Blocks a threadpool thread until the test lets go (bounded).
        return {"released": release.wait(timeout=10)}

    app.add_middleware(PerfMiddleware)
    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        pending = asyncio.ensure_future(client.get("/hold/1"))
        try:

            async def running() -> bool:
                snap = await stats(client)
                return any(r["route"] == "GET /hold/{n}" for r in snap["routes"])

            await eventually(running, timeout=10)
            during = await stats(client)
            route = next(r for r in during["routes"] if r["route"] == "GET /hold/{n}")
            assert route["in_flight"] == 1
            assert route["count"] == 0
        finally:
            release.set()
        response = await pending
        assert response.json() == {"released": True}
        after = await stats(client)
    route = next(r for r in after["routes"] if r["route"] == "GET /hold/{n}")
    assert (route["in_flight"], route["count"]) == (0, 1)
