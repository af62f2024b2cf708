"""Faults injected into real engines, disks and clients: the app is served,
every failure is counted, ``/_perf`` never answers 500.

The engines are real engines with one fault each (``faulty_engines``); the
disk is a real directory made unwritable, deleted or replaced; the clients
really hang up.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faulty_engines
import httpx
import pytest
from conftest import build_fastapi_app

from asgi_perf import PerfMiddleware
from asgi_perf.window import unhook

# An engine that fails is the profiler's trouble, not the client's (4xx)
# nor a crash of asgi_perf (500): the profiling service is unavailable.
ENGINE_FAILED = 503


@pytest.fixture(autouse=True)
def faulty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    faulty_engines.install(monkeypatch)
    yield
    # A failed test must not leave a profiler hook on the next one.
    unhook()


def hooked() -> bool:
    """A profiler hook is installed: sys.setprofile's, or (Python 3.12+,
    where cProfile uses it) sys.monitoring's profiler tool id."""
    monitoring: Any = getattr(sys, "monitoring", None)
    if monitoring is not None and monitoring.get_tool(monitoring.PROFILER_ID) is not None:
        return True
    return sys.getprofile() is not None


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
        assert hooked()

        stopped = await client.post(f"/_perf/windows/{wid}/stop")
        assert_engine_failed(stopped, wid)
        assert not hooked(), "the failed engine's hook is still installed"
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
        assert not hooked()
        assert await internal_errors(client) == 1
        # A stop after the limit is told how the window ended.
        assert_engine_failed(await client.post(f"/_perf/windows/{wid}/stop"), wid)


async def test_a_profile_request_whose_engine_fails_is_answered_503(client_for):
    mw = perf()
    async with client_for(mw) as client:
        response = await client.get("/_perf/profile", params={"seconds": 1, "engine": "stop_fails"})
        assert response.status_code == ENGINE_FAILED, response.text
        assert "failed while stopping" in response.json()["error"]
        assert not hooked()
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
        assert not hooked()
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
        assert not hooked()
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


# --------------------------------------------------------------------------- the harness


class Traffic:
    """Requests to the app all along a test, in the background: every one 2xx."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.statuses: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while True:
            n += 1
            path = "/" if n % 2 else f"/items/{n}"
            self.statuses.append((await self.client.get(path)).status_code)
            await asyncio.sleep(0.002)

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, failed: object, *exc: object) -> None:
        assert self._task is not None
        for _ in range(250):  # a quick test still sees some traffic served alongside
            if failed is not None or len(self.statuses) >= 5 or self._task.done():
                break
            await asyncio.sleep(0.02)
        self._task.cancel()
        outcome = await asyncio.gather(self._task, return_exceptions=True)
        if failed is not None:
            return  # the test's own failure says more
        assert isinstance(outcome[0], asyncio.CancelledError), outcome
        assert len(self.statuses) >= 5, "the background traffic hardly ran"
        bad = [s for s in self.statuses if not 200 <= s < 300]
        assert not bad, f"background requests not served: {bad[:10]}"


class Perf:
    """Calls to ``/_perf``: never a 500, every error a JSON answer."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, f"/_perf{path}", **kwargs)
        assert response.status_code != 500, (path, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json"), path
            assert response.json()["error"], path
        return response

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.call("POST", path, **kwargs)

    async def internal_errors(self) -> int:
        return int((await self.get("/stats")).json()["internal_errors"])

    async def exercise(self) -> None:
        """Everything that writes or renders a profile, once."""
        for _ in range(3):
            profiled = await self.client.get("/items/3", headers={"X-Perf-Profile": "1"})
            assert profiled.status_code == 200
        started = await self.post("/windows", params={"seconds": 30})
        if started.status_code == 201:
            await asyncio.sleep(0.2)
            await self.post(f"/windows/{started.json()['id']}/stop")
        await self.get("/profile", params={"seconds": 1})
        listed = (await self.get("/profiles")).json()["profiles"]
        for meta in listed[:3]:
            for fmt in ("prof", "svg", "collapsed"):
                await self.get(f"/profiles/{meta['id']}.{fmt}")


# --------------------------------------------------------------------------- profile_dir


def unwritable(path: Path) -> Path:
    """A directory that cannot be written, for root too (no permission bits stop root)."""
    if os.geteuid() == 0:
        return Path("/proc/asgi-perf-cannot-write-here")
    path.mkdir()
    path.chmod(0o500)
    return path


@pytest.mark.parametrize("fault", ["unwritable", "deleted", "replaced"])
async def test_a_profile_dir_that_fails_never_fails_a_request(client_for, tmp_path, fault):
    directory = tmp_path / "profiles"
    if fault == "unwritable":
        directory = unwritable(directory)
    mw = perf(profile_dir=str(directory), window_engine="sampler")
    async with client_for(mw) as client, Traffic(client):
        perf_api = Perf(client)
        assert (await client.get("/items/1", headers={"X-Perf-Profile": "1"})).status_code == 200
        if fault == "deleted":
            shutil.rmtree(directory, ignore_errors=True)
        elif fault == "replaced":
            shutil.rmtree(directory, ignore_errors=True)
            directory.write_text("not a directory any more")
        await perf_api.exercise()
        errors = await perf_api.internal_errors()
        store = (await perf_api.get("/stats")).json()["profiling"]["store"]
    # Every write that failed is counted, and nothing else failed.
    assert errors == store["disk_errors"], store
    if fault != "deleted":
        assert errors > 0
    if fault == "replaced":
        assert directory.read_text() == "not a directory any more"


# --------------------------------------------------------------------------- engines


async def test_an_engine_that_fails_to_start_a_window_is_a_503_and_counted(client_for):
    mw = perf()
    async with client_for(mw) as client, Traffic(client):
        perf_api = Perf(client)
        response = await perf_api.post("/windows", params={"seconds": 30, "engine": "start_fails"})
        assert response.status_code == ENGINE_FAILED, response.text
        assert "failed to start" in response.json()["error"]
        response = await perf_api.get("/profile", params={"seconds": 1, "engine": "start_fails"})
        assert response.status_code == ENGINE_FAILED, response.text
        assert await perf_api.internal_errors() == 2
        assert not hooked()
        # Nothing half-started stays: the next window runs.
        started = await perf_api.post("/windows", params={"seconds": 30, "engine": "cprofile"})
        assert started.status_code == 201
        assert (await perf_api.post(f"/windows/{started.json()['id']}/stop")).status_code == 200


@pytest.mark.parametrize(
    ("engine", "failures"),
    # cProfile neither stopped nor aborted stays busy (single-flight): the
    # requests after the first are not profiled, counted as skipped.
    [("start_fails", 3), ("stop_fails", 3), ("stop_and_abort_fail", 1)],
)
async def test_a_request_engine_that_fails_serves_the_request_and_counts(
    client_for, engine, failures
):
    mw = perf(engine=engine)
    async with client_for(mw) as client, Traffic(client):
        perf_api = Perf(client)
        for i in range(3):
            response = await client.get(f"/items/{i}", headers={"X-Perf-Profile": "1"})
            assert response.status_code == 200
            assert response.json() == {"id": i}
        assert await perf_api.internal_errors() == failures
        requests = (await perf_api.get("/stats")).json()["profiling"]["requests"]
        assert requests["failed"] == failures
        assert requests["failed"] + requests["skipped"] == 3
    # The hook a failed engine left is gone, whatever failed.
    assert not hooked()


async def test_a_profile_no_format_can_render_is_a_json_answer_and_counted(client_for):
    mw = perf(window_engine="render_fails")
    async with client_for(mw) as client, Traffic(client):
        perf_api = Perf(client)
        started = await perf_api.post("/windows", params={"seconds": 30})
        wid = started.json()["id"]
        stopped = await perf_api.post(f"/windows/{wid}/stop")
        assert stopped.status_code == 200, stopped.text
        before = await perf_api.internal_errors()
        for fmt in ("prof", "svg", "speedscope.json", "collapsed", "pb.gz"):
            response = await perf_api.get(f"/profiles/{wid}.{fmt}")
            assert response.status_code == ENGINE_FAILED, (fmt, response.text)
        assert await perf_api.internal_errors() == before + 5
        # The file asked for in the same request as the window fails the same way.
        response = await perf_api.get("/profile", params={"seconds": 1, "format": "svg"})
        assert response.status_code == ENGINE_FAILED, response.text


# --------------------------------------------------------------------------- clients that leave


async def test_a_client_that_leaves_during_a_download_breaks_nothing(live_server, client_for):
    mw = perf(window_engine="cprofile")
    server = live_server(mw)
    async with client_for(server.url) as client, Traffic(client):
        perf_api = Perf(client)
        started = await perf_api.post("/windows", params={"seconds": 30})
        for i in range(200):
            await client.get(f"/items/{i}")
        wid = started.json()["id"]
        assert (await perf_api.post(f"/windows/{wid}/stop")).status_code == 200
        for _ in range(3):
            async with (
                client_for(server.url) as leaving,
                leaving.stream("GET", f"/_perf/profiles/{wid}.svg") as body,
            ):
                assert body.status_code == 200
                async for _chunk in body.aiter_bytes():
                    break  # and hang up, the rest unread
        assert (await perf_api.get(f"/profiles/{wid}.svg")).status_code == 200
        assert await perf_api.internal_errors() == 0


async def test_shutdown_with_a_window_whose_engine_fails_still_shuts_down(
    live_server, client_for, tmp_path
):
    out = tmp_path / "profiles"
    mw = perf(profile_dir=str(out))
    server = live_server(mw)
    async with client_for(server.url) as client, Traffic(client):
        started = await Perf(client).post(
            "/windows", params={"seconds": 300, "engine": "stop_fails"}
        )
        assert started.status_code == 201
        for _ in range(5):
            assert (await client.get("/")).status_code == 200
    server.stop()  # raises if the shutdown hangs
    assert mw.core.internal_errors == 1
    assert mw.core.windows.current is None
    assert not list(out.glob(f"*{started.json()['id']}*"))
