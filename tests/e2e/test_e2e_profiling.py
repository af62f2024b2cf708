"""End to end: profiles from a real uvicorn server under load.

Windows over real sockets while background tasks send load, a client that
hangs up mid-window, the lifespan profile written at shutdown, request
isolation across connections, and a saved ``.prof`` opened by a real
``snakeviz --server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import pstats
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cpu_work import CHUNKS, alpha_work, beta_work, sync_work
from fastapi import FastAPI
from helpers import function_names, load_stats, perf_middleware_of

from asgi_perf import PerfMiddleware

# Real servers, profiler windows and a subprocess: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

ID_HEADER = "x-perf-profile-id"
PROFILE = {"X-Perf-Profile": "1"}
ID_RE = re.compile(r"^[0-9a-f]{16}$")


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/alpha")
    async def alpha() -> dict[str, int]:
        total = 0
        for _ in range(CHUNKS):
            total += alpha_work()
            await asyncio.sleep(0)
        return {"alpha": total}

    @app.get("/beta")
    async def beta() -> dict[str, int]:
        total = 0
        for _ in range(CHUNKS):
            total += beta_work()
            await asyncio.sleep(0)
        return {"beta": total}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, int]:
        return {"sync": sum(sync_work() for _ in range(CHUNKS))}

    return app


def assert_download(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith("attachment"), response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


async def send_load(client: httpx.AsyncClient, path: str, stop: asyncio.Event) -> int:
    """GET ``path`` back to back until ``stop``; how many answered 200."""
    sent = 0
    while not stop.is_set():
        response = await client.get(path)
        assert response.status_code == 200, response.text
        sent += 1
    return sent


async def window_under_load(
    client: httpx.AsyncClient, load: httpx.AsyncClient, path: str, **params: Any
) -> httpx.Response:
    """``GET /_perf/profile`` while two tasks keep ``path`` busy."""
    stop = asyncio.Event()
    loaders = [asyncio.create_task(send_load(load, path, stop)) for _ in range(2)]
    try:
        response = await client.get("/_perf/profile", params=params)
    finally:
        stop.set()
        sent = await asyncio.gather(*loaders)
    assert sum(sent) > 0
    return response


def window_stats(mw: PerfMiddleware) -> dict[str, Any]:
    stats: dict[str, Any] = mw.snapshot()["profiling"]["windows"]
    return stats


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize("engine", ["pyinstrument", "yappi", "cprofile"])
async def test_a_window_under_load_holds_the_apps_work(live_server, client_for, tmp_path, engine):
    mw = PerfMiddleware(build_app())
    server = live_server(mw)
    async with client_for(server.url) as client, client_for(server.url) as load:
        response = await window_under_load(client, load, "/alpha", seconds=1, engine=engine)
        assert_download(response)
        assert response.headers["content-disposition"].endswith('.prof"')
        assert "alpha_work" in function_names(load_stats(response.content, tmp_path))
        # The window is stored like any profile and can be fetched again.
        pid = response.headers[ID_HEADER]
        meta = (await client.get(f"/_perf/profiles/{pid}")).json()
        assert meta["kind"] == "window"
        assert meta["engine"] == engine
        again = await client.get(f"/_perf/profiles/{pid}.prof")
        assert_download(again)
        assert "alpha_work" in function_names(load_stats(again.content, tmp_path))
    windows = window_stats(mw)
    assert windows["completed"] == 1
    assert windows["running"] is None
    assert mw.snapshot()["internal_errors"] == 0


async def test_a_window_as_svg(live_server, client_for):
    server = live_server(PerfMiddleware(build_app()))
    async with client_for(server.url) as client, client_for(server.url) as load:
        response = await window_under_load(client, load, "/alpha", seconds=1, format="svg")
    assert_download(response)
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(response.content).tag.endswith("svg")
    assert "alpha_work" in response.text


async def test_a_yappi_window_sees_threadsync_work(live_server, client_for, tmp_path):
    server = live_server(PerfMiddleware(build_app()))
    async with client_for(server.url) as client, client_for(server.url) as load:
        response = await window_under_load(client, load, "/sync", seconds=1, engine="yappi")
    assert_download(response)
    assert "sync_work" in function_names(load_stats(response.content, tmp_path))


async def test_a_client_that_hangs_up_aborts_the_window(live_server, client_for, eventually):
    mw = PerfMiddleware(build_app())
    server = live_server(mw)
    async with client_for(server.url, timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.get("/_perf/profile", params={"seconds": 5})

    async def aborted() -> bool:
        windows = window_stats(mw)
        return windows["running"] is None and windows["aborted"] == 1

    await eventually(aborted, timeout=5)
    async with client_for(server.url) as client:
        listed = await client.get("/_perf/profiles", params={"kind": "window"})
        assert listed.status_code == 200
        assert listed.json()["profiles"] == []
        assert (await client.get("/alpha")).status_code == 200
        # Nothing is left running: the next window starts and completes.
        response = await client.get("/_perf/profile", params={"seconds": 1})
        assert_download(response)
    windows = window_stats(mw)
    assert windows["aborted"] == 1
    assert windows["completed"] == 1
    assert mw.snapshot()["internal_errors"] == 0


async def test_a_window_started_by_post_brackets_a_load_run(live_server, client_for, tmp_path):
    # A sampler window (the default) over a short run in the test's own
    # process: coverage traces the sampler's thread, so it may take 5 %.
    mw = PerfMiddleware(build_app(), sampler_max_cpu=0.05)
    server = live_server(mw)
    async with client_for(server.url) as client:
        started = await client.post("/_perf/windows", params={"seconds": 30, "tag": "run-7"})
        assert started.status_code == 201, started.text
        wid = started.json()["id"]
        busy = await client.get("/_perf/profile", params={"seconds": 1})
        assert busy.status_code == 409
        assert busy.json()["status"] == 409
        for _ in range(20):
            assert (await client.get("/beta")).status_code == 200
        stopped = await client.post(f"/_perf/windows/{wid}/stop")
        assert stopped.status_code == 200, stopped.text
        meta = stopped.json()
        assert meta["tag"] == "run-7"
        prof = await client.get(meta["links"]["prof"])
        assert_download(prof)
    assert "beta_work" in function_names(load_stats(prof.content, tmp_path))
    assert window_stats(mw)["running"] is None


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("engine", ["pyinstrument", "yappi"])
async def test_profiles_of_concurrent_connections_stay_apart(
    live_server, client_for, tmp_path, engine
):
    server = live_server(PerfMiddleware(build_app(), engine=engine, max_concurrent_profiles=64))
    paths = ["/alpha", "/beta"] * 5
    async with client_for(server.url) as client:
        responses = await asyncio.gather(*(client.get(p, headers=PROFILE) for p in paths))
        for path, response in zip(paths, responses, strict=True):
            assert response.status_code == 200, response.text
            pid = response.headers.get(ID_HEADER)
            assert pid is not None and ID_RE.match(pid), dict(response.headers)
            prof = await client.get(f"/_perf/profiles/{pid}.prof")
            assert_download(prof)
            names = function_names(load_stats(prof.content, tmp_path))
            own, other = ("alpha_work", "beta_work")[:: 1 if path == "/alpha" else -1]
            assert own in names, (path, sorted(names))
            assert other not in names, (path, sorted(names))


async def test_a_yappi_request_profile_shows_a_def_endpoints_work(
    live_server, client_for, tmp_path
):
    server = live_server(PerfMiddleware(build_app(), engine="yappi"))
    async with client_for(server.url) as client:
        response = await client.get("/sync", headers=PROFILE)
        pid = response.headers[ID_HEADER]
        prof = await client.get(f"/_perf/profiles/{pid}.prof")
    assert "sync_work" in function_names(load_stats(prof.content, tmp_path))


# --------------------------------------------------------------------------- lifespan


@pytest.mark.parametrize("wiring", ["wrapped", "add_middleware"])
async def test_lifespan_profile_is_written_at_shutdown(live_server, client_for, tmp_path, wiring):
    out = tmp_path / "profiles"
    # pyinstrument sees every call of the five requests; the sampler's own
    # lifespan profile is tested in test_sampler.py.
    options = {"lifespan_profile": True, "profile_dir": out, "window_engine": "pyinstrument"}
    if wiring == "wrapped":
        app: Any = PerfMiddleware(build_app(), **options)
    else:
        app = build_app()
        app.add_middleware(PerfMiddleware, **options)
    server = live_server(app, lifespan="on")
    mw = app if wiring == "wrapped" else perf_middleware_of(app)
    running = window_stats(mw)["running"]
    assert running is not None and running["kind"] == "lifespan"
    async with client_for(server.url) as client:
        for _ in range(5):
            assert (await client.get("/alpha")).status_code == 200
    assert list(out.glob("*LIFESPAN*.prof")) == []
    server.stop()
    files = list(out.glob("*LIFESPAN*.prof"))
    assert len(files) == 1, sorted(p.name for p in out.iterdir())
    assert "alpha_work" in function_names(pstats.Stats(str(files[0])))
    windows = window_stats(mw)
    assert windows["running"] is None
    assert windows["completed"] == 1


async def test_a_lifespan_profile_that_cannot_be_written_does_not_break_shutdown(
    live_server, client_for, tmp_path
):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory\n")
    mw = PerfMiddleware(build_app(), lifespan_profile=True, profile_dir=blocker / "sub")
    server = live_server(mw, lifespan="on")
    async with client_for(server.url) as client:
        assert (await client.get("/alpha")).status_code == 200
    server.stop()
    snap = mw.snapshot()
    assert snap["profiling"]["store"]["disk_errors"] >= 1
    assert snap["internal_errors"] >= 1
    assert snap["profiling"]["windows"]["running"] is None


# --------------------------------------------------------------------------- snakeviz


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_saved_window_opens_in_snakeviz(live_server, client_for, tmp_path, eventually):
    out = tmp_path / "profiles"
    server = live_server(PerfMiddleware(build_app(), profile_dir=out))
    async with client_for(server.url) as client, client_for(server.url) as load:
        response = await window_under_load(client, load, "/alpha", seconds=1)
    assert_download(response)
    saved = list(out.glob("*-WINDOW-*.prof"))
    assert len(saved) == 1, sorted(p.name for p in out.iterdir())
    assert "alpha_work" in function_names(pstats.Stats(str(saved[0])))

    port = free_port()
    command = [sys.executable, "-m", "snakeviz", "--server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        [*command, str(saved[0].resolve())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/snakeviz/{quote(str(saved[0].resolve()), safe='')}"
        async with client_for(f"http://127.0.0.1:{port}", timeout=10) as viewer:
            page: dict[str, httpx.Response] = {}

            async def served() -> bool:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                with contextlib.suppress(httpx.TransportError):
                    page["response"] = await viewer.get(url)
                    return True
                return False

            await eventually(served, timeout=20, interval=0.2)
        response = page["response"]
        assert response.status_code == 200, response.text[:500]
        assert "alpha_work" in response.text
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
