"""Faults injected into real engines, disks and clients: the app is served,
every failure is counted, ``/_perf`` never answers 500.

The engines are real engines with one fault each (``faulty_engines``); the
disk is a real directory made unwritable, deleted or replaced; the clients
really hang up.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import faulty_engines
import httpx
import pytest
from conftest import build_fastapi_app

from asgi_perf import PerfMiddleware

# An engine that fails is the profiler's trouble, not the client's (4xx)
# nor a crash of asgi_perf (500): the profiling service is unavailable.
ENGINE_FAILED = 503


@pytest.fixture(autouse=True)
def faulty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    faulty_engines.install(monkeypatch)
    yield
    # A failed test must not leave a profiler hook on the next one.
    sys.setprofile(None)


def perf(**options: Any) -> PerfMiddleware:
    return PerfMiddleware(build_fastapi_app(), **options)


async def internal_errors(client: httpx.AsyncClient) -> int:
    stats = await client.get("/_perf/stats")
    assert stats.status_code == 200, stats.text
    return int(stats.json()["internal_errors"])


def assert_engine_failed(response: httpx.Response, window_id: str) -> dict[str, Any]:
    """The JSON answer to a window whose engine failed: says so, never a 500."""
    assert response.status_code == ENGINE_FAILED, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["status"] == ENGINE_FAILED
    assert body["window"] == window_id
    assert body["aborted"] is True
    assert "failed while stopping" in body["error"], body
    assert "injected" in body["error"], body
    return body


# --------------------------------------------------------------------------- engine fails on stop


@pytest.mark.parametrize("engine", ["stop_fails", "stop_and_abort_fail"])
async def test_a_window_whose_engine_fails_to_stop_is_aborted_unhooked_and_said(client_for, engine):
    mw = perf()
    async with client_for(mw) as client:
        started = await client.post("/_perf/windows", params={"seconds": 30, "engine": engine})
        assert started.status_code == 201, started.text
        wid = started.json()["id"]
        # cProfile's hook really is on this (the loop's) thread.
        assert sys.getprofile() is not None

        stopped = await client.post(f"/_perf/windows/{wid}/stop")
        assert_engine_failed(stopped, wid)
        assert sys.getprofile() is None, "the failed engine's hook is still installed"
        assert await internal_errors(client) == 1
        windows = (await client.get("/_perf/windows")).json()
        assert windows["running"] is None
        assert windows["failed"] == 1
        # Asked again, the window is still known: not a 404.
        assert_engine_failed(await client.post(f"/_perf/windows/{wid}/stop"), wid)
        # Nothing is left running: request profiles and the next window go on.
        profiled = await client.get("/", headers={"X-Perf-Profile": "1"})
        assert profiled.status_code == 200
        assert "x-perf-profile-id" in profiled.headers
        again = await client.post("/_perf/windows", params={"seconds": 30, "engine": "cprofile"})
        assert again.status_code == 201, again.text
        assert (await client.post(f"/_perf/windows/{again.json()['id']}/stop")).status_code == 200
        assert await internal_errors(client) == 1


async def test_a_window_whose_engine_fails_at_its_time_limit_is_aborted_and_said(client_for):
    mw = perf()
    async with client_for(mw) as client:
        started = await client.post("/_perf/windows", params={"seconds": 1, "engine": "stop_fails"})
        wid = started.json()["id"]
        await asyncio.sleep(1.3)
        assert sys.getprofile() is None
        assert await internal_errors(client) == 1
        # A stop after the limit is told how the window ended.
        assert_engine_failed(await client.post(f"/_perf/windows/{wid}/stop"), wid)


async def test_a_profile_request_whose_engine_fails_is_answered_503(client_for):
    mw = perf()
    async with client_for(mw) as client:
        response = await client.get("/_perf/profile", params={"seconds": 1, "engine": "stop_fails"})
        assert response.status_code == ENGINE_FAILED, response.text
        assert "failed while stopping" in response.json()["error"]
        assert sys.getprofile() is None
        assert await internal_errors(client) == 1


async def test_a_server_window_part_whose_engine_fails_is_unhooked_and_counted_once(
    client_for, tmp_path
):
    """``Windows.take``: how each worker ends its part of a server-wide window."""
    mw = perf(shared_dir=str(tmp_path / "shared"))
    async with client_for(mw) as client:
        assert (await client.get("/")).status_code == 200  # the loop is known from here on
        response = await client.get("/_perf/profile", params={"seconds": 1, "engine": "stop_fails"})
        assert 400 <= response.status_code < 600, response.text
        assert response.status_code != 500, response.text
        assert sys.getprofile() is None
        assert mw.core.internal_errors == 1
        assert mw.core.windows.current is None


# --------------------------------------------------------------------------- clients that leave


async def assert_nothing_left_running(client: httpx.AsyncClient) -> None:
    """No window runs; request profiles and a new window start at once."""
    listed = (await client.get("/_perf/windows")).json()
    assert listed["running"] is None, listed
    assert listed["aborted"] == 1, listed
    profiled = await client.get("/", headers={"X-Perf-Profile": "1"})
    assert profiled.status_code == 200
    assert "x-perf-profile-id" in profiled.headers, "request profiling is still paused"
    started = await client.post("/_perf/windows", params={"seconds": 30})
    assert started.status_code == 201, started.text
    assert (await client.post(f"/_perf/windows/{started.json()['id']}/stop")).status_code == 200


@pytest.mark.parametrize("engine", ["cprofile", "sampler"])
async def test_a_cancelled_profile_request_aborts_its_window_at_once(client_for, engine):
    """In process the request is the client's own task: cancelling one cancels the other."""
    mw = perf(window_engine=engine)
    async with client_for(mw) as client:
        waiting = asyncio.ensure_future(client.get("/_perf/profile", params={"seconds": 30}))
        await asyncio.sleep(0.5)
        assert mw.core.windows.current is not None
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert sys.getprofile() is None
        await assert_nothing_left_running(client)
        assert await internal_errors(client) == 0


@pytest.mark.parametrize("engine", ["cprofile", "sampler"])
async def test_a_client_that_leaves_a_profile_request_aborts_its_window_at_once(
    live_server, client_for, engine
):
    server = live_server(perf(window_engine=engine))
    async with client_for(server.url) as impatient:
        waiting = asyncio.ensure_future(impatient.get("/_perf/profile", params={"seconds": 30}))
        await asyncio.sleep(0.5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # The client is closed: its connection is gone, and the server knows.
    async with client_for(server.url) as client:
        for _ in range(50):
            if (await client.get("/_perf/windows")).json()["running"] is None:
                break
            await asyncio.sleep(0.02)
        await assert_nothing_left_running(client)
        assert await internal_errors(client) == 0


# --------------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("engine", ["sampler", "cprofile"])
async def test_a_window_still_running_at_shutdown_is_stored_to_profile_dir(
    live_server, client_for, tmp_path, engine
):
    out = tmp_path / "profiles"
    mw = perf(profile_dir=str(out))
    server = live_server(mw)
    async with client_for(server.url) as client:
        started = await client.post("/_perf/windows", params={"seconds": 300, "engine": engine})
        assert started.status_code == 201, started.text
        wid = started.json()["id"]
        for _ in range(10):
            assert (await client.get("/items/7")).status_code == 200
    server.stop()  # lifespan shutdown runs
    written = sorted(p.name for p in out.glob(f"*{wid}*"))
    assert any(name.endswith(f"{wid}.prof") for name in written), sorted(out.iterdir())
    assert mw.core.windows.current is None
    assert mw.core.internal_errors == 0
