"""Profiling through the middleware: per-request capture, windows, the store, downloads.

A small real FastAPI app (distinct CPU work per endpoint, an async sleeper, a
``def`` endpoint run in the threadpool), wrapped in ``PerfMiddleware`` and
driven in-process: httpx's ASGI transport for loopback clients, the raw ASGI
driver where a remote client must be faked. Real profilers, nothing mocked.
Profiles are always read back over HTTP, the way a user reads them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pstats
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pprof_reader
import pytest
from cpu_work import CHUNKS, alpha_work, beta_work, sync_work
from fastapi import FastAPI
from helpers import function_names, load_stats
from starlette.responses import JSONResponse

from asgi_perf import ConfigError, PerfMiddleware
from asgi_perf.capture import Capture, ProfileMeta

ENGINES = ["pyinstrument", "yappi", "cprofile"]
# cProfile sees everything the event loop ran: it does not keep requests apart.
ISOLATING_ENGINES = ["pyinstrument", "yappi"]
FORMATS = ["prof", "svg", "html", "speedscope.json", "collapsed", "pb.gz", "json"]
PROFILE = {"X-Perf-Profile": "1"}
PROFILE_RAW = (b"x-perf-profile", b"1")
ID_HEADER = "x-perf-profile-id"
ID_RE = re.compile(r"^[0-9a-f]{16}$")
REMOTE = ("203.0.113.7", 40000)
UNKNOWN_ID = "0123456789abcdef"
T = TypeVar("T")


class Overlap:
    """Records whether /alpha and /beta were ever in flight at the same time."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.seen = False

    def enter(self, name: str) -> None:
        self.running[name] += 1
        if self.running["alpha"] and self.running["beta"]:
            self.seen = True

    def leave(self, name: str) -> None:
        self.running[name] -= 1


def build_app() -> FastAPI:
    """Routes: ``/alpha``, ``/beta`` (async CPU work), ``/sync`` (a def), ``/nap?ms``,
    ``/fail`` (503), ``/crash`` (raises)."""
    app = FastAPI()
    overlap = app.state.overlap = Overlap()

    @app.get("/alpha")
    async def alpha() -> dict[str, int]:
        overlap.enter("alpha")
        try:
            total = 0
            for _ in range(CHUNKS):
                total += alpha_work()
                await asyncio.sleep(0)
            return {"alpha": total}
        finally:
            overlap.leave("alpha")

    @app.get("/beta")
    async def beta() -> dict[str, int]:
        overlap.enter("beta")
        try:
            total = 0
            for _ in range(CHUNKS):
                total += beta_work()
                await asyncio.sleep(0)
            return {"beta": total}
        finally:
            overlap.leave("beta")

    @app.get("/sync")
    def sync_endpoint() -> dict[str, int]:
        return {"sync": sum(sync_work() for _ in range(CHUNKS))}

    @app.get("/digest")
    def digest() -> dict[str, str]:
        # All of its time is in one C call.
        return {"digest": hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 100_000).hex()}

    @app.get("/nap")
    async def nap(ms: int = 10) -> dict[str, int]:
        await asyncio.sleep(ms / 1000)
        return {"slept_ms": ms}

    @app.get("/fail")
    async def fail() -> JSONResponse:
        return JSONResponse({"failed": True}, status_code=503)

    @app.get("/crash")
    async def crash() -> dict[str, str]:
        raise RuntimeError("boom from the app")

    return app


def perf(**options: Any) -> PerfMiddleware:
    return PerfMiddleware(build_app(), **options)


# --------------------------------------------------------------------------- helpers


def profile_id_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    pid = response.headers.get(ID_HEADER)
    assert pid is not None, f"no {ID_HEADER} header: {dict(response.headers)}"
    assert ID_RE.match(pid), pid
    return pid


async def in_own_task(request: Awaitable[T]) -> T:
    """``request`` run in a task of its own, as a server runs each request.

    httpx's ASGITransport calls the app in the caller's task. Under
    pytest-asyncio on Python 3.10 that is the test's main task, which
    backports.asyncio.runner makes a pure-Python ``asyncio.tasks._PyTask``:
    its ``__step`` is a Python frame that returns between the coroutine's
    yield and the loop's context switch, which empties the await stack
    pyinstrument's ``async_mode="strict"`` keeps, so every await of the
    request is recorded as ``[out-of-context]`` instead of ``[await]`` under
    its function (any Python, any _PyTask). Servers run requests in C tasks.
    """
    return await asyncio.ensure_future(request)


async def profiled(client: httpx.AsyncClient, path: str, **headers: str) -> str:
    """GET ``path`` asking for a profile; the profile's id."""
    return profile_id_of(await client.get(path, headers={**PROFILE, **headers}))


async def prof_functions(
    client: httpx.AsyncClient, ref: str, tmp_path: Path, **params: str
) -> set[str]:
    """Function names in ``/_perf/profiles/{ref}.prof``, loaded with pstats."""
    response = await client.get(f"/_perf/profiles/{ref}.prof", params=params)
    assert response.status_code == 200, response.text
    return function_names(load_stats(response.content, tmp_path))


async def collapsed_frames(client: httpx.AsyncClient, ref: str) -> list[list[str]]:
    """The stacks of ``/_perf/profiles/{ref}.collapsed``: one list of frames per line."""
    response = await client.get(f"/_perf/profiles/{ref}.collapsed")
    assert response.status_code == 200, response.text
    stacks = []
    for line in response.text.splitlines():
        if not line.strip():
            continue
        frames, _, value = line.rpartition(" ")
        assert frames, line
        assert float(value) >= 0, line
        stacks.append(frames.split(";"))
    return stacks


def mentions(stacks: list[list[str]], function: str) -> bool:
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(function)}(?![A-Za-z0-9_])")
    return any(pattern.search(frame) for stack in stacks for frame in stack)


def viewer_seconds(page: str, function: str) -> float:
    """Seconds under ``function``'s outermost frames in an ``.html`` profile's call tree."""
    data = json.loads(page.split("const sessionData = ", 1)[1].split(";\n", 1)[0])

    def walk(node: dict[str, Any]) -> float:
        if node["identifier"].split("\x00")[0] == function:
            return float(node["time"])
        return sum(walk(child) for child in node["children"])

    return walk(data["frame_tree"])


def assert_json_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx JSON error (never a 500, never HTML)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["error"]
    return body


def assert_download(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith("attachment"), response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def assert_declared(described: dict[str, Any]) -> None:
    """Every metadata key served is one ``ProfileMeta`` names (the API adds schema and links)."""
    assert set(described) - {"schema", "links"} <= ProfileMeta.__optional_keys__


def profiling_stats(mw: PerfMiddleware) -> dict[str, Any]:
    stats: dict[str, Any] = mw.snapshot()["profiling"]
    return stats


async def listed(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/_perf/profiles", params=params)
    assert response.status_code == 200, response.text
    profiles: list[dict[str, Any]] = response.json()["profiles"]
    return profiles


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("engine", "gprof"),
        ("engine", ""),
        ("sample_rate", 1.5),
        ("sample_rate", -0.1),
        ("sample_rate", "0.5"),
        ("max_concurrent_profiles", 0),
        ("max_profiles", 0),
        ("max_profile_bytes", 10),
        ("max_window_seconds", 0),
        ("keep_slowest", -1),
        ("keep_last", -1),
        ("profile_interval_ms", 0),
        ("yappi_clock", "gpu"),
        ("lifespan_profile", "yes"),
        ("profile_dir", ""),
    ],
)
def test_a_bad_profiling_option_raises_config_error_naming_it(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        PerfMiddleware(build_app(), strict=True, **{option: value})


def test_lifespan_profile_needs_a_profile_dir() -> None:
    with pytest.raises(ConfigError, match="lifespan_profile"):
        PerfMiddleware(build_app(), lifespan_profile=True, strict=True)


def test_the_default_engine_is_pyinstrument_and_windows_default_to_300_seconds() -> None:
    mw = perf()
    stats = profiling_stats(mw)
    assert stats["requests"]["engine"] == "pyinstrument"
    assert stats["windows"]["max_window_seconds"] == 300
    assert stats["windows"]["running"] is None


def test_environment_variables_choose_the_engine_and_name_themselves(monkeypatch):
    monkeypatch.setenv("ASGI_PERF_ENGINE", "yappi")
    assert profiling_stats(perf())["requests"]["engine"] == "yappi"
    monkeypatch.setenv("ASGI_PERF_SAMPLE_RATE", "2")
    with pytest.raises(ConfigError, match="ASGI_PERF_SAMPLE_RATE"):
        perf(strict=True)


async def test_profile_interval_ms_sets_pyinstruments_interval(client_for):
    async with client_for(perf(profile_interval_ms=5)) as client:
        pid = await profiled(client, "/alpha")
        meta = (await client.get(f"/_perf/profiles/{pid}")).json()
    assert meta["interval_s"] == pytest.approx(0.005)


# --------------------------------------------------------------------------- on demand


@pytest.mark.parametrize("engine", ENGINES)
async def test_profile_header_profiles_the_request_and_names_the_profile(
    engine, client_for, tmp_path
):
    mw = perf(engine=engine)
    async with client_for(mw) as client:
        response = await client.get("/alpha", headers={**PROFILE, "X-Perf-Tag": "run-42"})
        pid = profile_id_of(response)
        assert response.json()["alpha"] >= 0  # the app's own answer, untouched
        meta_response = await client.get(f"/_perf/profiles/{pid}")
        assert meta_response.status_code == 200, meta_response.text
        meta = meta_response.json()
        assert "alpha_work" in await prof_functions(client, pid, tmp_path)
    assert meta["id"] == pid
    assert meta["kind"] == "request"
    assert meta["engine"] == engine
    assert meta["route"] == "GET /alpha"
    assert meta["method"] == "GET"
    assert meta["status"] == 200
    assert meta["tag"] == "run-42"
    assert meta["duration_ms"] > 0
    assert meta["start"] > 0
    assert isinstance(meta["pid"], int)
    assert set(FORMATS) <= set(meta["links"])
    assert_declared(meta)
    requests = profiling_stats(mw)["requests"]
    assert requests["profiled"] == 1
    assert requests["active"] == 0


async def test_without_the_header_nothing_is_profiled(client_for):
    mw = perf()
    async with client_for(mw) as client:
        for headers in ({}, {"X-Perf-Profile": "0"}, {"X-Perf-Profile": "yes"}):
            response = await client.get("/alpha", headers=headers)
            assert response.status_code == 200
            assert ID_HEADER not in response.headers
        assert await listed(client) == []
    assert profiling_stats(mw)["requests"]["profiled"] == 0


async def test_a_long_tag_is_bounded_and_stored(client_for):
    mw = perf()
    async with client_for(mw) as client:
        pid = await profiled(client, "/alpha", **{"X-Perf-Tag": "x" * 500})
        meta = (await client.get(f"/_perf/profiles/{pid}")).json()
    assert meta["tag"].startswith("xxxx")
    assert len(meta["tag"]) <= 64


@pytest.mark.parametrize(
    ("client", "extra_headers"),
    [
        (REMOTE, []),
        (("::ffff:198.51.100.4", 40000), []),
        # A proxy on the same host: the connection is loopback, the client is not.
        (("127.0.0.1", 40000), [(b"x-forwarded-for", b"198.51.100.4")]),
    ],
)
async def test_a_remote_client_cannot_ask_for_a_profile(asgi, client, extra_headers):
    mw = perf()
    response = await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW, *extra_headers], client=client)
    assert response.status == 200
    assert "alpha" in response.json()
    assert response.header(ID_HEADER) is None
    stats = profiling_stats(mw)
    assert stats["requests"]["profiled"] == 0
    assert stats["store"]["count"] == 0
    # The same request from loopback is profiled: the header itself works.
    allowed = await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW])
    assert allowed.header(ID_HEADER) is not None


async def test_with_a_token_the_header_needs_the_token(asgi):
    mw = perf(token="s3cret")
    bearer = (b"authorization", b"Bearer s3cret")
    wrong = (b"authorization", b"Bearer nope")
    assert (await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW])).header(ID_HEADER) is None
    assert (await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW, wrong])).header(ID_HEADER) is None
    remote = await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW, bearer], client=REMOTE)
    assert remote.status == 200
    assert remote.header(ID_HEADER) is not None
    assert profiling_stats(mw)["store"]["count"] == 1


async def test_sampled_and_asked_for_is_profiled_once(client_for):
    mw = perf(sample_rate=1.0, profile_budget=1.0)
    async with client_for(mw) as client:
        pid = await profiled(client, "/alpha")
        profiles = await listed(client)
    assert [p["id"] for p in profiles] == [pid]
    assert profiling_stats(mw)["requests"]["profiled"] == 1


async def test_a_request_that_raises_is_profiled_and_kept_and_the_error_propagates(client_for):
    mw = perf()
    async with client_for(mw, raise_app_exceptions=False) as client:
        response = await client.get("/crash", headers=PROFILE)
        assert response.status_code == 500
        pid = response.headers.get(ID_HEADER)
        assert pid is not None and ID_RE.match(pid)
        meta = (await client.get(f"/_perf/profiles/{pid}")).json()
    assert meta["status"] == 500
    assert meta["route"] == "GET /crash"
    with pytest.raises(RuntimeError, match="boom from the app"):
        async with client_for(mw) as client:
            await client.get("/crash", headers=PROFILE)
    assert profiling_stats(mw)["requests"]["active"] == 0


# --------------------------------------------------------------------------- isolation


@pytest.mark.parametrize("engine", ISOLATING_ENGINES)
async def test_concurrent_requests_each_profile_only_their_own_work(engine, client_for, tmp_path):
    app = build_app()
    mw = PerfMiddleware(app, engine=engine, max_concurrent_profiles=64)
    paths = ["/alpha", "/beta"] * 6
    async with client_for(mw) as client:
        responses = await asyncio.gather(*(client.get(p, headers=PROFILE) for p in paths))
        # The requests really ran interleaved on the event loop.
        assert app.state.overlap.seen
        for path, response in zip(paths, responses, strict=True):
            pid = profile_id_of(response)
            own, other = ("alpha_work", "beta_work")[:: 1 if path == "/alpha" else -1]
            names = await prof_functions(client, pid, tmp_path)
            assert own in names, (path, sorted(names))
            assert other not in names, (path, sorted(names))
            stacks = await collapsed_frames(client, pid)
            assert mentions(stacks, own), (path, stacks)
            assert not mentions(stacks, other), (path, stacks)
    requests = profiling_stats(mw)["requests"]
    assert requests["profiled"] == len(paths)
    assert requests["skipped"] == 0


async def test_yappi_shows_a_def_endpoints_own_work(client_for, tmp_path):
    mw = perf(engine="yappi")
    async with client_for(mw) as client:
        pid = await profiled(client, "/sync")
        assert "sync_work" in await prof_functions(client, pid, tmp_path)
        assert mentions(await collapsed_frames(client, pid), "sync_work")


async def test_yappi_keeps_threadsync_work_apart_from_concurrent_async_work(client_for, tmp_path):
    mw = perf(engine="yappi", max_concurrent_profiles=64)
    paths = ["/sync", "/alpha"] * 4
    async with client_for(mw) as client:
        responses = await asyncio.gather(*(client.get(p, headers=PROFILE) for p in paths))
        for path, response in zip(paths, responses, strict=True):
            names = await prof_functions(client, profile_id_of(response), tmp_path)
            own, other = ("sync_work", "alpha_work")[:: 1 if path == "/sync" else -1]
            assert own in names, (path, sorted(names))
            assert other not in names, (path, sorted(names))


async def test_yappi_flame_graph_counts_time_in_c_calls_as_the_callers(client_for, tmp_path):
    """yappi leaves C calls out of own time; the stacks put it back on the caller."""
    mw = perf(engine="yappi")
    async with client_for(mw) as client:
        pid = await profiled(client, "/digest")
        collapsed = (await client.get(f"/_perf/profiles/{pid}.collapsed")).text
        prof = (await client.get(f"/_perf/profiles/{pid}.prof")).content
    stats = load_stats(prof, tmp_path).stats  # type: ignore[attr-defined]
    digest_s = max(e[3] for (_f, _l, name), e in stats.items() if name == "digest")
    own_s = 0.0
    for line in collapsed.splitlines():
        frames, _, micros = line.rpartition(" ")
        if mentions([frames.split(";")[-1:]], "digest"):
            own_s += int(micros) / 1_000_000
    # pbkdf2_hmac is all of digest's time: it is digest's own in the flame graph.
    assert digest_s > 0.005
    assert own_s >= 0.9 * digest_s, (own_s, digest_s)


def test_idle_waits_do_not_become_own_time():
    from asgi_perf.capture import with_unlisted_time_as_own

    wait = ("/usr/lib/python3.11/threading.py", 295, "Condition.wait")
    work = ("/app/shop.py", 10, "search")
    idle_caller = ("/usr/lib/python3.11/queue.py", 154, "Queue.get")
    stats = {
        idle_caller: (1, 1, 0.0, 9.0, {}),
        wait: (1, 1, 0.0, 9.0, {idle_caller: (1, 1, 0.0, 9.0)}),
        work: (1, 1, 0.001, 2.0, {}),
    }
    adjusted = with_unlisted_time_as_own(stats)
    assert adjusted[work][2] == 2.0
    assert adjusted[wait][2] == 0.0
    assert adjusted[idle_caller][2] == 0.0


async def test_yappi_cpu_clock_does_not_count_sleeping(client_for, tmp_path):
    """A coroutine's await is wall time, not CPU time."""

    async def nap_seconds(clock: str) -> float:
        mw = perf(engine="yappi", yappi_clock=clock)
        async with client_for(mw) as client:
            pid = await profiled(client, "/nap?ms=300")
            response = await client.get(f"/_perf/profiles/{pid}.prof")
        stats = load_stats(response.content, tmp_path).stats  # type: ignore[attr-defined]
        return max(ct for (_f, _l, name), (_cc, _nc, _tt, ct, _c) in stats.items() if name == "nap")

    assert await nap_seconds("wall") >= 0.25
    assert await nap_seconds("cpu") < 0.25


# --------------------------------------------------------------------------- limits


async def test_cprofile_profiles_one_request_at_a_time(client_for):
    mw = perf(engine="cprofile")
    async with client_for(mw) as client:
        first, second = await asyncio.gather(
            client.get("/nap?ms=200", headers=PROFILE), client.get("/nap?ms=200", headers=PROFILE)
        )
        assert first.status_code == second.status_code == 200
        ids = [r.headers.get(ID_HEADER) for r in (first, second)]
        assert sum(1 for i in ids if i) == 1, ids
        requests = profiling_stats(mw)["requests"]
        assert requests["skipped"] >= 1
        assert requests["profiled"] == 1
        # The engine is free again afterwards.
        await profiled(client, "/nap?ms=1")


async def test_max_concurrent_profiles_skips_the_rest(client_for):
    mw = perf(max_concurrent_profiles=1)
    async with client_for(mw) as client:
        responses = await asyncio.gather(
            client.get("/nap?ms=200", headers=PROFILE), client.get("/nap?ms=200", headers=PROFILE)
        )
        assert [r.status_code for r in responses] == [200, 200]
        assert sum(1 for r in responses if ID_HEADER in r.headers) == 1
        assert profiling_stats(mw)["requests"]["skipped"] >= 1
        await profiled(client, "/nap?ms=1")


# --------------------------------------------------------------------------- retention


async def test_sample_rate_one_profiles_every_request_without_a_response_header(client_for):
    mw = perf(sample_rate=1.0, profile_budget=1.0, keep_last=100)
    async with client_for(mw) as client:
        for _ in range(5):
            response = await client.get("/beta")
            assert response.status_code == 200
            assert ID_HEADER not in response.headers
        profiles = await listed(client, route="GET /beta")
    assert len(profiles) == 5
    assert profiling_stats(mw)["requests"]["profiled"] == 5


async def test_sampled_profiles_keep_the_slowest_and_the_last_per_route(client_for, tmp_path):
    keep_slowest, keep_last = 1, 2
    mw = perf(sample_rate=1.0, profile_budget=1.0, keep_slowest=keep_slowest, keep_last=keep_last)
    async with client_for(mw) as client:
        for ms in (2, 2, 150, 2, 2, 2, 2):
            response = await in_own_task(client.get("/nap", params={"ms": ms}))
            assert response.status_code == 200
        kept = await listed(client, route="GET /nap")
        assert len(kept) == keep_slowest + keep_last
        slowest = await client.get("/_perf/profiles/slowest", params={"route": "GET /nap"})
        assert slowest.status_code == 200, slowest.text
        slowest_meta = slowest.json()
        # The request that slept 150 ms survived six faster ones after it.
        assert slowest_meta["duration_ms"] >= 150
        assert slowest_meta["duration_ms"] == max(p["duration_ms"] for p in kept)
        assert slowest_meta["id"] in {p["id"] for p in kept}
        # The same profile through the alias, as a file.
        assert "nap" in await prof_functions(client, "slowest", tmp_path, route="GET /nap")
        # On-demand profiles are pinned: they do not count against the per-route choice.
        pinned = [await profiled(client, "/nap?ms=1") for _ in range(3)]
        kept = await listed(client, route="GET /nap")
        assert set(pinned) <= {p["id"] for p in kept}
        assert sum(1 for p in kept if p["id"] not in pinned) <= keep_slowest + keep_last
        assert slowest_meta["id"] in {p["id"] for p in kept}
    assert profiling_stats(mw)["store"]["superseded"] >= 4


async def test_5xx_over_budget_and_on_demand_profiles_are_kept(client_for):
    mw = perf(
        sample_rate=1.0,
        profile_budget=1.0,
        keep_slowest=0,
        keep_last=0,
        budgets={"GET /nap": {"max_ms": 20}},
    )
    async with client_for(mw) as client:
        for _ in range(3):
            assert (await client.get("/alpha")).status_code == 200
            assert (await client.get("/fail")).status_code == 503
            assert (await client.get("/nap?ms=60")).status_code == 200
        asked = [await profiled(client, "/beta") for _ in range(2)]
        assert await listed(client, route="GET /alpha") == []
        failed = await listed(client, route="GET /fail")
        assert len(failed) == 3
        assert {p["status"] for p in failed} == {503}
        assert len(await listed(client, route="GET /nap")) == 3
        assert {p["id"] for p in await listed(client, route="GET /beta")} == set(asked)


async def test_the_store_is_bounded_by_count_oldest_first(client_for):
    mw = perf(max_profiles=3, keep_slowest=0)
    async with client_for(mw) as client:
        ids = [await profiled(client, "/alpha") for _ in range(6)]
        for pid in ids[:3]:
            assert_json_error(await client.get(f"/_perf/profiles/{pid}"), 404)
            assert_json_error(await client.get(f"/_perf/profiles/{pid}.prof"), 404)
        for pid in ids[3:]:
            assert (await client.get(f"/_perf/profiles/{pid}.prof")).status_code == 200
        assert [p["id"] for p in await listed(client)] == ids[:2:-1]
    store = profiling_stats(mw)["store"]
    assert store["count"] == 3
    assert store["evicted"] == 3


async def test_the_store_spares_the_kept_slowest_when_bounded(client_for):
    mw = perf(max_profiles=3, keep_slowest=1, keep_last=10)
    async with client_for(mw) as client:
        slow = await profiled(client, "/nap?ms=150")
        fast = [await profiled(client, "/nap?ms=1") for _ in range(5)]
        kept = {p["id"] for p in await listed(client)}
    assert kept == {slow, *fast[-2:]}


async def test_the_store_is_bounded_by_bytes(client_for):
    # cProfile: the same request gives the same functions, so profiles of one
    # size give or take 2 % (pyinstrument's vary 4x with where samples fell).
    # Each app serves one request unprofiled first: FastAPI inspects an
    # endpoint on its first call, which makes that profile the biggest.
    probe = perf(engine="cprofile")
    async with client_for(probe) as client:
        assert (await client.get("/alpha")).status_code == 200
        sizes = []
        for _ in range(2):
            pid = await profiled(client, "/alpha")
            sizes.append((await client.get(f"/_perf/profiles/{pid}")).json()["size_bytes"])
    max_bytes = 3 * max(sizes)
    mw = perf(engine="cprofile", max_profile_bytes=max_bytes, keep_slowest=0)
    ids: list[str] = []
    async with client_for(mw) as client:
        assert (await client.get("/alpha")).status_code == 200
        while profiling_stats(mw)["store"]["evicted"] == 0:
            assert len(ids) < 10, (sizes, profiling_stats(mw)["store"])
            ids.append(await profiled(client, "/alpha"))
        newest = await client.get(f"/_perf/profiles/{ids[-1]}.prof")
        assert newest.status_code == 200, newest.text
    store = profiling_stats(mw)["store"]
    assert store["bytes"] <= max_bytes
    assert 1 <= store["count"] < len(ids)


async def test_a_pyinstrument_profile_does_not_grow_while_its_request_waits(client_for):
    """Waiting while other requests keep the event loop busy costs a profile nothing.

    pyinstrument takes a sample every interval for the whole life of a
    request, awaits included: a one-second wait must not be stored as a
    thousand copies of the same stack.
    """
    mw = perf(engine="pyinstrument")
    sizes: dict[int, int] = {}
    async with client_for(mw) as client:
        # An app's first profile is the biggest (FastAPI inspects the endpoint once).
        await in_own_task(profiled(client, "/nap?ms=1"))
        for ms in (20, 1000):
            done = asyncio.Event()

            async def keep_busy(done: asyncio.Event = done) -> None:
                # Unprofiled requests: CPU work that yields to the loop often.
                while not done.is_set():
                    assert (await client.get("/alpha")).status_code == 200

            busy = asyncio.create_task(keep_busy())
            try:
                pid = await in_own_task(profiled(client, f"/nap?ms={ms}"))
            finally:
                done.set()
                await busy
            meta = (await client.get(f"/_perf/profiles/{pid}")).json()
            assert meta["samples"] > 0, meta
            sizes[ms] = meta["size_bytes"]
            # pyinstrument's viewer still shows all of the wait, where it was.
            page = await client.get(f"/_perf/profiles/{pid}.html")
            assert page.status_code == 200, page.text
            assert viewer_seconds(page.text, "nap") >= 0.9 * ms / 1000, ms
        assert profiling_stats(mw)["requests"]["profiled"] == 3
    # Warm profiles vary with where the samples fell (0.8-1.4x here under
    # coverage); every sample kept would make it 50x.
    assert sizes[1000] < 3 * sizes[20], sizes


# --------------------------------------------------------------------------- store endpoints


async def test_profile_list_is_newest_first_and_filters(client_for):
    mw = perf()
    async with client_for(mw) as client:
        a1 = await profiled(client, "/alpha", **{"X-Perf-Tag": "run-42"})
        b1 = await profiled(client, "/beta", **{"X-Perf-Tag": "run-43"})
        a2 = await profiled(client, "/alpha", **{"X-Perf-Tag": "run-43"})
        window = await client.post("/_perf/windows", params={"seconds": 30})
        assert window.status_code == 201, window.text
        wid = window.json()["id"]
        assert (await client.post(f"/_perf/windows/{wid}/stop")).status_code == 200

        assert [p["id"] for p in await listed(client)] == [wid, a2, b1, a1]
        assert [p["id"] for p in await listed(client, route="GET /alpha")] == [a2, a1]
        assert [p["id"] for p in await listed(client, kind="request")] == [a2, b1, a1]
        assert [p["id"] for p in await listed(client, kind="window")] == [wid]
        assert [p["id"] for p in await listed(client, tag="run-43")] == [a2, b1]
        assert [p["id"] for p in await listed(client, tag="run-42")] == [a1]
        assert [p["id"] for p in await listed(client, limit=2)] == [wid, a2]
        assert await listed(client, route="GET /nowhere") == []
        for entry in await listed(client):
            assert set(FORMATS) <= set(entry["links"])


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "100000000"},
        {"kind": "bogus"},
        {"bogus": "1"},
    ],
)
async def test_profile_list_rejects_bad_parameters(client_for, query):
    async with client_for(perf()) as client:
        body = assert_json_error(await client.get("/_perf/profiles", params=query), 400)
    assert body["parameter"] == next(iter(query))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_downloads_for_every_engine(engine, fmt, client_for, tmp_path):
    mw = perf(engine=engine)
    async with client_for(mw) as client:
        pid = await profiled(client, "/alpha")
        # .svg and .html open in place by default (tests/test_inline_profiles.py).
        response = await client.get(f"/_perf/profiles/{pid}.{fmt}", params={"download": "1"})
    if fmt == "html" and engine != "pyinstrument" and response.status_code != 200:
        # pyinstrument's viewer may refuse a capture without a pyinstrument session.
        assert_json_error(response)
        return
    assert_download(response)
    assert f".{fmt}" in response.headers["content-disposition"]
    if fmt == "prof":
        assert "alpha_work" in function_names(load_stats(response.content, tmp_path))
    elif fmt == "svg":
        root = ET.fromstring(response.content)
        assert root.tag.endswith("svg"), root.tag
        assert "alpha_work" in response.text
    elif fmt == "html":
        assert "<html" in response.text.lower()
        assert "alpha_work" in response.text
    elif fmt == "speedscope.json":
        data = json.loads(response.content)
        assert "speedscope" in data["$schema"]
        assert any("alpha_work" in f["name"] for f in data["shared"]["frames"])
        assert data["profiles"]
    elif fmt == "pb.gz":
        assert response.headers["content-type"] == "application/octet-stream"
        profile = pprof_reader.read(response.content)
        assert any("alpha_work" in profile.names(s) for s in profile.samples)
    elif fmt == "json":
        capture = Capture.from_json(response.json())
        assert capture.meta["id"] == pid and capture.engine == engine
        assert any(f.function == "alpha_work" for stack in capture.stacks for f in stack)
    else:
        assert fmt == "collapsed"
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["x-perf-profile-id"] == pid


async def test_meta_links_all_resolve(client_for):
    async with client_for(perf()) as client:
        pid = await profiled(client, "/alpha")
        links = (await client.get(f"/_perf/profiles/{pid}")).json()["links"]
        for name, url in links.items():
            response = await client.get(url)
            assert response.status_code == 200, (name, url, response.text[:300])


async def test_latest_and_slowest_are_ids(client_for, tmp_path):
    async with client_for(perf()) as client:
        for alias in ("latest", "slowest", "latest.prof", "slowest.svg"):
            assert_json_error(await client.get(f"/_perf/profiles/{alias}"), 404)
        await profiled(client, "/nap?ms=1")
        slow = await profiled(client, "/nap?ms=120")
        last = await profiled(client, "/alpha")
        assert (await client.get("/_perf/profiles/latest")).json()["id"] == last
        assert (await client.get("/_perf/profiles/slowest")).json()["id"] == slow
        nap = {"route": "GET /nap"}
        assert (await client.get("/_perf/profiles/latest", params=nap)).json()["id"] == slow
        assert (await client.get("/_perf/profiles/slowest", params=nap)).json()["id"] == slow
        latest_file = await client.get("/_perf/profiles/latest.prof")
        assert_download(latest_file)
        assert latest_file.headers[ID_HEADER] == last
        assert "alpha_work" in function_names(load_stats(latest_file.content, tmp_path))
        nothing = {"route": "GET /nowhere"}
        assert_json_error(await client.get("/_perf/profiles/slowest", params=nothing), 404)


async def test_merged_profiles_by_route_and_by_ids(client_for, tmp_path):
    async with client_for(perf()) as client:
        alphas = [await profiled(client, "/alpha") for _ in range(2)]
        beta = await profiled(client, "/beta")
        by_route = await client.get("/_perf/profiles/merged.prof", params={"route": "GET /alpha"})
        assert_download(by_route)
        names = function_names(load_stats(by_route.content, tmp_path))
        assert "alpha_work" in names
        assert "beta_work" not in names
        by_ids = await client.get(
            "/_perf/profiles/merged.prof", params={"ids": f"{alphas[0]},{beta}"}
        )
        assert_download(by_ids)
        names = function_names(load_stats(by_ids.content, tmp_path))
        assert {"alpha_work", "beta_work"} <= names
        collapsed = await client.get(
            "/_perf/profiles/merged.collapsed", params={"route": "GET /beta"}
        )
        assert_download(collapsed)
        assert "beta_work" in collapsed.text
        pprof = await client.get(
            "/_perf/profiles/merged.pb.gz", params={"ids": f"{alphas[0]},{beta}"}
        )
        assert_download(pprof)
        assert 'filename="merged' in pprof.headers["content-disposition"]
        assert pprof.headers["content-disposition"].endswith('.pb.gz"')
        profile = pprof_reader.read(pprof.content)
        names = {name for s in profile.samples for name in profile.names(s)}
        assert {"alpha_work", "beta_work"} <= names

        assert_json_error(await client.get("/_perf/profiles/merged.prof"), 400)
        both = {"route": "GET /alpha", "ids": beta}
        assert_json_error(await client.get("/_perf/profiles/merged.prof", params=both), 400)
        bad_ids = {"ids": "zzz,../etc"}
        assert_json_error(await client.get("/_perf/profiles/merged.prof", params=bad_ids), 400)
        gone = {"ids": UNKNOWN_ID}
        assert_json_error(await client.get("/_perf/profiles/merged.prof", params=gone), 404)
        empty = {"route": "GET /nowhere"}
        assert_json_error(await client.get("/_perf/profiles/merged.prof", params=empty), 404)
        bad_format = {"route": "GET /alpha"}
        assert_json_error(await client.get("/_perf/profiles/merged.txt", params=bad_format), 400)


@pytest.mark.parametrize(
    "path",
    [
        "/_perf/profiles/zzz",
        "/_perf/profiles/zzz.prof",
        "/_perf/profiles/ABCDEF0123456789",
        "/_perf/profiles/0123456789abcdef0",
        "/_perf/profiles/../etc",
        "/_perf/profiles/../../etc/passwd",
        "/_perf/profiles/..%2f..%2fetc.prof",
        "/_perf/profiles/%00.prof",
        f"/_perf/profiles/{UNKNOWN_ID}",
        f"/_perf/profiles/{UNKNOWN_ID}.prof",
        f"/_perf/profiles/{UNKNOWN_ID}/snakeviz",
        "/_perf/profiles/zzz/snakeviz",
        "/_perf/profiles/latest.txt",
        "/_perf/profiles/latest.",
        "/_perf/windows/zzz/stop",
    ],
)
async def test_bad_ids_and_paths_are_4xx_json(asgi, path):
    mw = perf()
    assert (await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW])).status == 200
    method = "POST" if path.endswith("/stop") else "GET"
    response = await asgi(mw, method, path)
    assert 400 <= response.status < 500, (response.status, response.body[:300])
    assert response.header("content-type").startswith("application/json")
    assert response.json()["status"] == response.status
    assert mw.snapshot()["internal_errors"] == 0


async def test_an_unknown_format_is_400_naming_the_format(client_for):
    async with client_for(perf()) as client:
        pid = await profiled(client, "/alpha")
        for fmt in ("txt", "prof.gz", "yaml", "PROF"):
            body = assert_json_error(await client.get(f"/_perf/profiles/{pid}.{fmt}"), 400)
            assert body["parameter"] == "format"


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("seconds=0", "seconds"),
        ("seconds=301", "seconds"),
        ("seconds=-1", "seconds"),
        ("seconds=abc", "seconds"),
        ("seconds=nan", "seconds"),
        ("seconds=inf", "seconds"),
        ("seconds=", "seconds"),
        ("", "seconds"),
        ("seconds=1&engine=gprof", "engine"),
        ("seconds=1&format=txt", "format"),
        ("seconds=1&bogus=1", "bogus"),
    ],
)
async def test_a_bad_window_request_is_400_and_starts_nothing(client_for, query, parameter):
    mw = perf()
    async with client_for(mw) as client:
        body = assert_json_error(await client.get(f"/_perf/profile?{query}"), 400)
    assert body["parameter"] == parameter
    if query == "seconds=301":
        assert "300" in body["error"]
    windows = profiling_stats(mw)["windows"]
    assert windows["running"] is None
    assert windows["completed"] == windows["aborted"] == 0


async def test_max_window_seconds_bounds_windows(client_for):
    mw = perf(max_window_seconds=2)
    async with client_for(mw) as client:
        body = assert_json_error(await client.get("/_perf/profile?seconds=3"), 400)
        assert body["parameter"] == "seconds"
        assert "2" in body["error"]
        body = assert_json_error(await client.post("/_perf/windows?seconds=3"), 400)
        assert body["parameter"] == "seconds"
    assert profiling_stats(mw)["windows"]["max_window_seconds"] == 2
    assert profiling_stats(mw)["windows"]["running"] is None


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_started_window_blocks_others_and_stops_on_request(engine, client_for, tmp_path):
    mw = perf()
    async with client_for(mw) as client:
        started = await client.post("/_perf/windows", params={"seconds": 30, "engine": engine})
        assert started.status_code == 201, started.text
        window = started.json()
        assert ID_RE.match(window["id"])
        assert window["engine"] == engine
        running = profiling_stats(mw)["windows"]["running"]
        assert running is not None and running["id"] == window["id"]

        busy = assert_json_error(await client.get("/_perf/profile?seconds=1"), 409)
        assert window["id"] in busy["error"]
        assert_json_error(await client.post("/_perf/windows?seconds=5"), 409)

        # Requests are served; asking for a request profile is skipped meanwhile.
        during = await client.get("/alpha", headers=PROFILE)
        assert during.status_code == 200
        assert ID_HEADER not in during.headers
        assert profiling_stats(mw)["requests"]["skipped"] >= 1

        stopped = await client.post(f"/_perf/windows/{window['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        meta = stopped.json()
        assert meta["id"] == window["id"]
        assert meta["kind"] == "window"
        assert meta["engine"] == engine
        assert set(FORMATS) <= set(meta["links"])
        assert meta["stored"] is True
        assert_declared(meta)
        assert profiling_stats(mw)["windows"]["running"] is None
        assert profiling_stats(mw)["windows"]["completed"] == 1

        prof = await client.get(meta["links"]["prof"])
        assert_download(prof)
        assert "alpha_work" in function_names(load_stats(prof.content, tmp_path))
        assert [p["id"] for p in await listed(client, kind="window")] == [window["id"]]
        # And request profiles work again.
        await profiled(client, "/alpha")


async def test_stopping_an_unknown_or_malformed_window(client_for):
    async with client_for(perf()) as client:
        assert_json_error(await client.post(f"/_perf/windows/{UNKNOWN_ID}/stop"), 404)
        assert_json_error(await client.post("/_perf/windows/not-an-id/stop"), 400)
        assert_json_error(await client.post("/_perf/windows/ABCDEF0123456789/stop"), 400)


async def test_stopping_a_window_twice_answers_with_what_it_stored(client_for):
    # Idempotent: a stop that races the window's own time limit is no error.
    async with client_for(perf()) as client:
        wid = (await client.post("/_perf/windows?seconds=30")).json()["id"]
        first = await client.post(f"/_perf/windows/{wid}/stop")
        assert first.status_code == 200
        again = await client.post(f"/_perf/windows/{wid}/stop")
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"] == wid
        assert again.json()["kind"] == "window"


async def test_stopping_a_request_profile_id_as_a_window_is_404(client_for):
    async with client_for(perf()) as client:
        pid = await profiled(client, "/alpha")
        assert_json_error(await client.post(f"/_perf/windows/{pid}/stop"), 404)


async def test_a_window_stops_by_itself_at_its_seconds(client_for, eventually):
    mw = perf()
    async with client_for(mw) as client:
        started = await client.post("/_perf/windows?seconds=1")
        assert started.status_code == 201, started.text
        wid = started.json()["id"]

        async def stored() -> bool:
            return [p["id"] for p in await listed(client, kind="window")] == [wid]

        await eventually(stored, timeout=5)
        windows = profiling_stats(mw)["windows"]
        assert windows["running"] is None
        assert windows["completed"] == 1
        meta = (await client.get(f"/_perf/profiles/{wid}")).json()
        assert meta["duration_ms"] >= 990
        # The next window may start.
        again = await client.post("/_perf/windows?seconds=1")
        assert again.status_code == 201, again.text
        assert (await client.post(f"/_perf/windows/{again.json()['id']}/stop")).status_code == 200


async def test_get_profile_answers_with_the_window_file(client_for, tmp_path):
    mw = perf()
    async with client_for(mw) as client:

        async def load() -> None:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert (await client.get("/alpha")).status_code == 200

        response, _ = await asyncio.gather(client.get("/_perf/profile?seconds=1"), load())
        assert_download(response)
        assert "alpha_work" in function_names(load_stats(response.content, tmp_path))
        windows = await listed(client, kind="window")
        assert [w["id"] for w in windows] == [response.headers[ID_HEADER]]
    assert profiling_stats(mw)["windows"]["completed"] == 1


@pytest.mark.parametrize(
    ("request_engine", "window_engine"),
    [
        ("pyinstrument", "pyinstrument"),
        ("pyinstrument", "yappi"),
        ("pyinstrument", "cprofile"),
        ("yappi", "pyinstrument"),
        ("cprofile", "pyinstrument"),
        ("cprofile", "yappi"),
    ],
)
async def test_a_window_started_while_a_request_is_profiled_does_not_nest(
    client_for, tmp_path, request_engine, window_engine
):
    """Refused (409), or a window that holds what the process ran."""
    mw = perf(engine=request_engine)
    async with client_for(mw) as client:
        in_flight = asyncio.ensure_future(client.get("/nap?ms=200", headers=PROFILE))
        await asyncio.sleep(0.05)
        assert profiling_stats(mw)["requests"]["active"] == 1
        params = {"seconds": 30, "engine": window_engine}
        started = await client.post("/_perf/windows", params=params)
        profile_id_of(await in_flight)
        if started.status_code == 409:
            assert_json_error(started)
            started = await client.post("/_perf/windows", params=params)
        assert started.status_code == 201, started.text
        for _ in range(3):
            assert (await client.get("/alpha")).status_code == 200
        stopped = await client.post(f"/_perf/windows/{started.json()['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        prof = await client.get(stopped.json()["links"]["prof"])
        assert "alpha_work" in function_names(load_stats(prof.content, tmp_path))
        # Request profiles still work afterwards.
        pid = await profiled(client, "/alpha")
        assert "alpha_work" in await prof_functions(client, pid, tmp_path)


async def test_a_window_larger_than_the_store_is_not_a_500(client_for):
    mw = perf(max_profile_bytes=1024)
    async with client_for(mw) as client:

        async def load() -> None:
            for _ in range(10):
                assert (await client.get("/alpha")).status_code == 200

        response, _ = await asyncio.gather(client.get("/_perf/profile?seconds=1"), load())
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert_json_error(response)


# --------------------------------------------------------------------------- snakeviz


async def test_snakeviz_page_renders_from_the_installed_package(client_for):
    async with client_for(perf()) as client:
        pid = await profiled(client, "/alpha")
        response = await client.get(f"/_perf/profiles/{pid}/snakeviz")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="snakeviz-text"' in response.text
    assert 'id="sv-call-stack"' in response.text
    assert "alpha_work" in response.text


def asset_urls(html: str) -> list[str]:
    """Local ``<script src>`` and ``<link href>`` targets of a page."""
    found = re.findall(
        r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", html, re.I
    )
    return [u for u in found if not re.match(r"^(?:[a-z]+:)?//", u, re.I)]


async def test_every_asset_of_the_snakeviz_page_is_served_under_the_prefix(client_for):
    async with client_for(perf()) as client:
        pid = await profiled(client, "/alpha")
        page = await client.get(f"/_perf/profiles/{pid}/snakeviz")
        urls = asset_urls(page.text)
        assert len(urls) >= 5, urls
        for url in urls:
            assert url.startswith("/_perf/snakeviz-static/"), url
            asset = await client.get(url)
            assert asset.status_code == 200, url


async def test_snakeviz_static_serves_its_files(client_for):
    async with client_for(perf()) as client:
        for name, kind in (("snakeviz.js", "javascript"), ("snakeviz.css", "css")):
            response = await client.get(f"/_perf/snakeviz-static/{name}")
            assert response.status_code == 200
            assert kind in response.headers["content-type"]
            assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/_perf/snakeviz-static/../../etc/passwd",
        "/_perf/snakeviz-static/../templates/viz.html",
        "/_perf/snakeviz-static/../__init__.py",
        "/_perf/snakeviz-static//etc/passwd",
        "/_perf/snakeviz-static/vendor",
        "/_perf/snakeviz-static/nope.js",
    ],
)
async def test_snakeviz_static_serves_nothing_else(asgi, path):
    mw = perf()
    response = await asgi(mw, "GET", path)
    assert response.status == 404, (response.status, response.body[:200])
    assert response.header("content-type").startswith("application/json")
    assert b"root:" not in response.body


# --------------------------------------------------------------------------- profile_dir


FILE_RE = re.compile(
    r"^(?P<utc>\d{8}T\d{6}Z)-(?P<method>[A-Z]+)-(?P<slug>[a-z0-9-]+)-(?P<ms>\d+)ms-"
    r"(?P<id>[0-9a-f]{16})\.prof$"
)


async def test_profile_dir_gets_a_readable_prof_file_per_profile(client_for, tmp_path):
    out = tmp_path / "profiles"
    async with client_for(perf(profile_dir=out)) as client:
        pid = await profiled(client, "/alpha")
        meta = (await client.get(f"/_perf/profiles/{pid}")).json()
    profs = sorted(out.glob("*.prof"))
    assert len(profs) == 1, profs
    match = FILE_RE.match(profs[0].name)
    assert match, profs[0].name
    assert match["method"] == "GET"
    assert match["slug"] == "alpha"
    assert match["id"] == pid
    assert int(match["ms"]) == round(meta["duration_ms"])
    assert "alpha_work" in function_names(pstats.Stats(str(profs[0])))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []


async def test_evicted_profiles_leave_profile_dir(client_for, tmp_path):
    out = tmp_path / "profiles"
    async with client_for(perf(profile_dir=out, max_profiles=2, keep_slowest=0)) as client:
        ids = [await profiled(client, "/alpha") for _ in range(4)]
    names = {FILE_RE.match(p.name)["id"] for p in out.glob("*.prof")}  # type: ignore[index]
    assert names == set(ids[2:])


async def test_an_unwritable_profile_dir_is_counted_and_requests_are_served(client_for, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a directory\n")
    mw = perf(profile_dir=blocker / "sub")
    async with client_for(mw) as client:
        pid = await profiled(client, "/alpha")
        assert (await client.get("/beta", headers=PROFILE)).status_code == 200
        response = await client.get(f"/_perf/profiles/{pid}.prof")
        assert_download(response)
    snap = mw.snapshot()
    assert snap["profiling"]["store"]["disk_errors"] >= 1
    assert snap["internal_errors"] >= 1
    assert blocker.read_text() == "a file, not a directory\n"


# --------------------------------------------------------------------------- gate


GATED = [
    ("GET", "/_perf/profiles", b""),
    ("GET", "/_perf/profiles/latest", b""),
    ("GET", "/_perf/profiles/latest.prof", b""),
    ("GET", "/_perf/profiles/latest/snakeviz", b""),
    ("GET", "/_perf/profiles/merged.prof", b"route=GET%20/alpha"),
    ("GET", "/_perf/profile", b"seconds=1"),
    ("GET", "/_perf/windows", b""),
    ("POST", "/_perf/windows", b"seconds=1"),
    ("POST", f"/_perf/windows/{UNKNOWN_ID}/stop", b""),
    ("GET", "/_perf/snakeviz-static/snakeviz.js", b""),
]


@pytest.mark.parametrize(("method", "path", "query"), GATED)
async def test_profile_endpoints_refuse_remote_clients(asgi, method, path, query):
    mw = perf()
    assert (await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW])).status == 200
    response = await asgi(mw, method, path, query=query, client=REMOTE)
    assert response.status == 403, (response.status, response.body[:200])
    assert response.header("content-type").startswith("application/json")
    stats = profiling_stats(mw)
    assert stats["windows"]["running"] is None
    assert stats["store"]["count"] == 1


@pytest.mark.parametrize(("method", "path", "query"), GATED)
async def test_profile_endpoints_need_the_token_when_one_is_set(asgi, method, path, query):
    mw = perf(token="s3cret")
    bearer = (b"authorization", b"Bearer s3cret")
    assert (await asgi(mw, "GET", "/alpha", headers=[PROFILE_RAW, bearer])).status == 200
    response = await asgi(mw, method, path, query=query)
    assert response.status == 401, (response.status, response.body[:200])
    assert response.header("content-type").startswith("application/json")
    assert profiling_stats(mw)["windows"]["running"] is None
    allowed = await asgi(mw, "GET", "/_perf/profiles", headers=[bearer], client=REMOTE)
    assert allowed.status == 200
    assert len(allowed.json()["profiles"]) == 1
