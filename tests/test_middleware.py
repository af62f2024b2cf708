"""PerfMiddleware in-process: what it measures, what it leaves alone."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware

SLACK_MS = 60


def by_key(mw: PerfMiddleware) -> dict[str, dict[str, Any]]:
    return {r["route"]: r for r in mw.snapshot()["routes"]}


class Crash(Exception):
    pass


def scripted_app(script: list[Any]) -> Any:
    """A raw ASGI app playing ``script``: messages to send, delays (float s),
    exceptions to raise, or asyncio.Events to wait for."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        for step in script:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, asyncio.Event):
                await step.wait()
            else:
                await send(step)

    return app


START_200 = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


# --------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_non_http_scopes_reach_the_app_untouched(scope_type):
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    scope = {"type": scope_type, "path": "/_perf/stats", "asgi": {"version": "3.0"}}
    frozen = json.dumps(scope, sort_keys=True)
    mw = PerfMiddleware(app)
    await mw(scope, receive, send)
    assert len(seen) == 1
    assert seen[0][0] is scope
    assert seen[0][2] is send
    if scope_type == "websocket":
        assert seen[0][1] is receive
    # lifespan: receive is watched, to stop a window still running at
    # shutdown (issue #13.4); what it delivers is below.
    assert json.dumps(scope, sort_keys=True) == frozen
    assert mw.snapshot()["routes"] == []


async def test_the_lifespan_messages_reach_the_app_unchanged():
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    incoming = iter(messages)
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: Any) -> None:
        raise AssertionError("not called")

    await PerfMiddleware(app)({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert got == messages
    assert all(a is b for a, b in zip(got, messages, strict=True))


async def test_lifespan_errors_of_the_app_propagate_unchanged():
    error = Crash("no lifespan")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    with pytest.raises(Crash) as caught:
        await PerfMiddleware(app)({"type": "lifespan"}, receive, send)
    assert caught.value is error


async def test_messages_pass_through_unchanged(asgi):
    script = [START_200, body(b"one", more=True), body(b"", more=True), body(b"two")]
    plain = await asgi(scripted_app(script), "GET", "/x")
    measured = await asgi(PerfMiddleware(scripted_app(script)), "GET", "/x")
    assert measured.messages == plain.messages
    assert measured.body == b"onetwo"


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000])
async def test_concurrent_requests_are_counted_exactly(asgi, n):
    # Numbers are folded in batches; every batch boundary must count exactly.
    async def item(request: Request) -> Response:
        await asyncio.sleep(0)
        return PlainTextResponse("x" * 10)

    mw = PerfMiddleware(Starlette(routes=[Route("/items/{item_id}", item)]))
    results = await asyncio.gather(*(asgi(mw, "GET", f"/items/{i}") for i in range(n)))
    assert all(r.status == 200 for r in results)
    snap = mw.snapshot(histograms=True)
    [route] = snap["routes"]
    assert route["count"] == n
    assert snap["requests"] == n
    assert route["bytes"] == 10 * n
    assert route["status"]["2xx"] == n
    assert route["recent"]["count"] == n
    assert route["histograms"]["latency_ns"]["count"] == n
    assert route["histograms"]["ttfb_ns"]["count"] == n
    assert route["in_flight"] == 0


async def test_ttfb_and_total_of_a_scripted_response(asgi):
    app = scripted_app([START_200, 0.1, body(b"a", more=True), 0.1, body(b"b")])
    mw = PerfMiddleware(app)
    result = await asgi(mw, "GET", "/x")
    assert result.body == b"ab"
    [route] = mw.snapshot()["routes"]
    assert route["ttfb_ms"]["max"] < 100 * 0.99  # the start was sent before any sleep
    assert 200 * 0.99 <= route["latency_ms"]["max"] <= 200 + SLACK_MS
    assert route["bytes"] == 2


async def test_exception_before_the_response_counts_as_500(asgi):
    error = Crash("before start")
    mw = PerfMiddleware(scripted_app([0.01, error]))
    with pytest.raises(Crash) as caught:
        await asgi(mw, "GET", "/x")
    assert caught.value is error
    [route] = mw.snapshot()["routes"]
    assert route["route"] == "<unmatched>"
    assert (route["count"], route["exceptions"], route["errors"]) == (1, 1, 1)
    assert route["status"]["5xx"] == 1
    assert route["latency_ms"]["max"] >= 10 * 0.99
    assert route["in_flight"] == 0


async def test_exception_mid_stream_is_an_exception_with_the_status_sent(asgi):
    error = Crash("mid stream")
    mw = PerfMiddleware(scripted_app([START_200, body(b"partial", more=True), error]))
    with pytest.raises(Crash) as caught:
        await asgi(mw, "GET", "/x")
    assert caught.value is error
    [route] = mw.snapshot()["routes"]
    assert (route["count"], route["exceptions"]) == (1, 1)
    assert route["status"]["2xx"] == 1
    assert route["bytes"] == len(b"partial")


async def test_fastapi_http_exceptions_are_not_exceptions(asgi):
    from fastapi import HTTPException

    app = FastAPI()

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418)

    @app.get("/down")
    async def down() -> None:
        raise HTTPException(status_code=503)

    mw = PerfMiddleware(app)
    assert (await asgi(mw, "GET", "/teapot")).status == 418
    assert (await asgi(mw, "GET", "/down")).status == 503
    routes = by_key(mw)
    assert (routes["GET /teapot"]["status"]["4xx"], routes["GET /teapot"]["errors"]) == (1, 0)
    assert (routes["GET /down"]["status"]["5xx"], routes["GET /down"]["errors"]) == (1, 1)
    assert routes["GET /down"]["exceptions"] == 0


async def test_a_response_that_never_finishes_is_a_disconnect(asgi):
    mw = PerfMiddleware(scripted_app([START_200, body(b"x", more=True)]))
    await asgi(mw, "GET", "/x")
    [route] = mw.snapshot()["routes"]
    assert (route["count"], route["disconnects"], route["exceptions"]) == (1, 1, 0)


async def test_an_app_that_sends_nothing_is_counted_without_a_status(asgi):
    mw = PerfMiddleware(scripted_app([]))
    with pytest.raises(AssertionError, match="no response start"):
        await asgi(mw, "GET", "/x")
    [route] = mw.snapshot()["routes"]
    assert route["count"] == 1
    assert route["status"]["none"] == 1
    assert sum(route["status"][c] for c in ("2xx", "3xx", "4xx", "5xx")) == 0


async def test_cancelled_request_is_recorded_once_and_leaves_no_in_flight(asgi):
    never = asyncio.Event()
    mw = PerfMiddleware(scripted_app([START_200, never]))
    task = asyncio.ensure_future(asgi(mw, "GET", "/hang"))
    for _ in range(100):
        await asyncio.sleep(0)
        if mw.snapshot()["in_flight"]:
            break
    assert mw.snapshot()["in_flight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = mw.snapshot()
    assert snap["in_flight"] == 0
    [route] = snap["routes"]
    assert (route["count"], route["in_flight"]) == (1, 0)


async def test_in_flight_and_reset_during_a_request(asgi):
    release = asyncio.Event()

    async def hold(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("done")

    mw = PerfMiddleware(Starlette(routes=[Route("/hold/{n}", hold)]))
    task = asyncio.ensure_future(asgi(mw, "GET", "/hold/1"))
    for _ in range(100):
        await asyncio.sleep(0)
        if by_key(mw).get("GET /hold/{n}"):
            break
    during = by_key(mw)["GET /hold/{n}"]
    assert (during["in_flight"], during["count"]) == (1, 0)
    cleared = mw.reset()
    assert {r["route"]: r["in_flight"] for r in cleared["routes"]} == {"GET /hold/{n}": 1}
    release.set()
    assert (await task).body == b"done"
    after = by_key(mw)["GET /hold/{n}"]
    assert (after["in_flight"], after["count"]) == (0, 1)


async def test_in_flight_requests_respect_the_route_cap(asgi):
    release = asyncio.Event()

    async def page(request: Request) -> Response:
        if request.url.path == "/b":
            await release.wait()
        return PlainTextResponse("ok")

    mw = PerfMiddleware(Starlette(routes=[Route("/a", page), Route("/b", page)]), max_routes=1)
    await asgi(mw, "GET", "/a")
    task = asyncio.ensure_future(asgi(mw, "GET", "/b"))
    try:
        for _ in range(100):
            await asyncio.sleep(0)
            if mw.snapshot()["in_flight"]:
                break
        keys = set(by_key(mw))
        assert keys <= {"GET /a", "<other>"}, keys
    finally:
        release.set()
        await task


# --------------------------------------------------------------------------- files


async def test_file_response_over_pathsend_is_timed_to_the_pathsend(asgi, tmp_path: Path):
    data = tmp_path / "big.bin"
    data.write_bytes(b"z" * 4096)

    async def download(request: Request) -> Response:
        return FileResponse(data)

    mw = PerfMiddleware(Starlette(routes=[Route("/download", download)]))
    result = await asgi(mw, "GET", "/download", extensions={"http.response.pathsend": {}})
    assert result.messages[-1]["type"] == "http.response.pathsend"
    [route] = mw.snapshot()["routes"]
    assert (route["route"], route["count"], route["disconnects"]) == ("GET /download", 1, 0)
    assert route["status"]["2xx"] == 1


async def test_file_response_over_pathsend_counts_its_bytes(asgi, tmp_path: Path):
    data = tmp_path / "big.bin"
    data.write_bytes(b"z" * 4096)

    async def download(request: Request) -> Response:
        return FileResponse(data)

    mw = PerfMiddleware(Starlette(routes=[Route("/download", download)]))
    await asgi(mw, "GET", "/download", extensions={"http.response.pathsend": {}})
    [route] = mw.snapshot()["routes"]
    assert route["bytes"] == 4096


async def test_file_response_over_body_messages_counts_its_bytes(asgi, tmp_path: Path):
    data = tmp_path / "big.bin"
    data.write_bytes(b"z" * 200_000)

    async def download(request: Request) -> Response:
        return FileResponse(data)

    mw = PerfMiddleware(Starlette(routes=[Route("/download", download)]))
    result = await asgi(mw, "GET", "/download")
    assert len(result.body) == 200_000
    assert by_key(mw)["GET /download"]["bytes"] == 200_000


# --------------------------------------------------------------------------- memory


async def test_rss_memory_is_sampled_and_labelled(asgi, raw_app):
    mw = PerfMiddleware(raw_app, memory_sample_every=1)
    for _ in range(5):
        await asgi(mw, "GET", "/x")
    memory = by_key(mw)["<unmatched>"]["memory_mb"]
    assert memory["method"] == "rss"
    assert memory["samples"] == 5
    default = PerfMiddleware(raw_app)
    await asgi(default, "GET", "/x")
    # A quiet app still shows a number: the first request is measured.
    assert by_key(default)["<unmatched>"]["memory_mb"]["samples"] == 1


@pytest.mark.parametrize("source", ["keyword", "env"])
async def test_tracemalloc_measures_the_peak_of_each_request(
    asgi, monkeypatch, stop_tracemalloc, source
):
    async def allocate(request: Request) -> Response:
        block = bytearray(8 * 2**20)  # 8 MB, freed before the request ends
        return PlainTextResponse(str(len(block)))

    async def small(request: Request) -> Response:
        return PlainTextResponse("s")

    app = Starlette(routes=[Route("/big", allocate), Route("/small", small)])
    if source == "env":
        monkeypatch.setenv("ASGI_PERF_TRACEMALLOC", "1")
        mw = PerfMiddleware(app)
    else:
        mw = PerfMiddleware(app, tracemalloc=True)
    for _ in range(3):
        await asgi(mw, "GET", "/big")
        await asgi(mw, "GET", "/small")
    routes = by_key(mw)
    big = routes["GET /big"]["memory_mb"]
    assert big["method"] == "tracemalloc"
    assert big["samples"] == 3
    assert 8 <= big["max"] < 9
    assert big["p50"] * 1.01 >= 8
    assert routes["GET /small"]["memory_mb"]["max"] < 1


# --------------------------------------------------------------------------- snapshot


async def test_snapshot_is_plain_json(asgi, fastapi_app):
    mw = PerfMiddleware(fastapi_app())
    await asgi(mw, "GET", "/items/1")
    await asgi(mw, "GET", "/nope")
    for histograms in (False, True):
        snap = mw.snapshot(histograms=histograms)
        text = json.dumps(snap, allow_nan=False)
        assert json.loads(text) == snap


async def test_two_instances_are_independent(asgi, raw_app):
    first, second = PerfMiddleware(raw_app), PerfMiddleware(raw_app)
    await asgi(first, "GET", "/x")
    assert first.snapshot()["requests"] == 1
    assert second.snapshot()["requests"] == 0


async def test_added_with_add_middleware_on_starlette(client_for):
    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(PerfMiddleware, prefix="/perf")
    async with client_for(app) as client:
        assert (await client.get("/")).text == "home"
        snap = (await client.get("/perf/stats")).json()
    assert {r["route"]: r["count"] for r in snap["routes"]} == {"GET /": 1}


def test_disabled_middleware_does_not_start_tracemalloc(stop_tracemalloc, raw_app):
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc was already running")
    PerfMiddleware(raw_app, enabled=False, tracemalloc=True)
    assert not tracemalloc.is_tracing()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_discarded_instances_do_not_leak_file_descriptors(asgi, raw_app):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    before = open_fds()
    for _ in range(50):
        mw = PerfMiddleware(raw_app)
        assert (await asgi(mw, "GET", "/x")).status == 200
    del mw
    gc.collect()
    assert open_fds() - before < 5
