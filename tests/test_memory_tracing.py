"""Spec section 4, on demand: the leak finder, alone and over ``/_perf/memory``.

A function that leaks on a known line (marked ``# LEAK-...``) must come
first in the diff, by file and line. Every test starts with tracemalloc off
and leaves it off: a traced process is slower for every test after it.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_perf import PerfMiddleware
from asgi_perf.memory.tracing import Busy, Conflict, LeakFinder, NoBaseline, NotTracing

_LEAK: list[Any] = []
BLOCK = 100_000


def leak(times: int) -> None:
    for _ in range(times):
        _LEAK.append(bytearray(BLOCK))  # LEAK-FUNCTION


def leaky_app(**perf: Any) -> PerfMiddleware:
    app = FastAPI()

    @app.get("/leak")
    async def leak_route() -> dict[str, int]:
        _LEAK.append(bytearray(BLOCK))  # LEAK-ROUTE
        return {"held": len(_LEAK)}

    return PerfMiddleware(app, **perf)


def line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))


def is_here(stat: dict[str, Any]) -> bool:
    return Path(stat["file"]).resolve() == Path(__file__).resolve()


@pytest.fixture(autouse=True)
def tracing_off() -> Iterator[None]:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc was already tracing: these tests start and stop it")
    yield
    _LEAK.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()


# --------------------------------------------------------------------------- LeakFinder


@pytest.mark.parametrize("group_by", ["lineno", "traceback"])
def test_the_diff_names_the_leaking_line_first(group_by):
    finder = LeakFinder()
    finder.start(5)
    finder.baseline()
    leak(30)
    diff = finder.diff(10, group_by)
    first = diff["stats"][0]
    assert is_here(first) and first["line"] == line_of("LEAK-FUNCTION")
    assert first["size_diff_bytes"] >= 30 * BLOCK
    assert first["count_diff"] >= 30
    assert first["size_diff_mb"] == round(first["size_diff_bytes"] / 2**20, 3)
    assert diff["growth_mb"] >= 30 * BLOCK / 2**20 * 0.99
    assert diff["schema"] == 1 and diff["group_by"] == group_by
    assert diff["seconds"] >= 0 and diff["since"] == finder.status()["baseline"]["at"]
    # Most recent call last: the allocation, after the call that led to it.
    assert first["traceback"][-1] == {"file": first["file"], "line": first["line"]}
    if group_by == "traceback":
        assert len(first["traceback"]) > 1
    growths = [s["size_diff_bytes"] for s in diff["stats"]]
    assert growths == sorted(growths, reverse=True)


@pytest.mark.parametrize("group_by", ["lineno", "filename", "traceback"])
def test_top_allocators(group_by):
    finder = LeakFinder()
    finder.start(3)
    leak(30)
    top = finder.top(4, group_by)
    assert top["schema"] == 1 and top["group_by"] == group_by
    assert len(top["stats"]) == min(4, top["count"])
    first = top["stats"][0]
    assert is_here(first)
    assert first["line"] == (None if group_by == "filename" else line_of("LEAK-FUNCTION"))
    assert first["size_bytes"] >= 30 * BLOCK
    sizes = [s["size_bytes"] for s in top["stats"]]
    assert sizes == sorted(sizes, reverse=True)
    assert top["total_mb"] >= sum(sizes) / 2**20 - 0.01
    assert top["traced_mb"] >= 30 * BLOCK / 2**20 and top["peak_mb"] >= top["traced_mb"]
    for stat in top["stats"]:
        assert 1 <= len(stat["traceback"]) <= (3 if group_by == "traceback" else 1)
        assert stat["traceback"][-1] == {"file": stat["file"], "line": stat["line"]}
        assert "tracemalloc" not in Path(stat["file"]).name


def test_start_is_idempotent_and_bounded():
    finder = LeakFinder(max_frames=10)
    assert finder.status() == {
        "tracing": False,
        "frames": 0,
        "traced_mb": 0.0,
        "peak_mb": 0.0,
        "started_by": None,
        "baseline": None,
    }
    for frames in (0, 11, -1):
        with pytest.raises(ValueError, match="frames"):
            finder.start(frames)
    assert not tracemalloc.is_tracing()
    started = finder.start(3)
    assert (started["started"], started["tracing"], started["frames"]) == (True, True, 3)
    assert started["started_by"] == "api"
    again = finder.start(7)
    assert (again["started"], again["frames"]) == (False, 3)


def test_stop_drops_the_baseline_and_is_idempotent():
    finder = LeakFinder()
    finder.start(1)
    assert finder.baseline()["traces"] >= 0
    stopped = finder.stop()
    assert (stopped["stopped"], stopped["tracing"], stopped["baseline"]) == (True, False, None)
    assert finder.stop()["stopped"] is False
    finder.start(1)
    with pytest.raises(NoBaseline):
        finder.diff(5, "lineno")


def test_stop_is_refused_when_the_configuration_traces():
    tracemalloc.start()
    finder = LeakFinder(configured=True)
    with pytest.raises(Conflict, match="tracemalloc=True"):
        finder.stop()
    assert tracemalloc.is_tracing()
    assert finder.status()["started_by"] == "config"
    assert finder.start(5)["started"] is False


def test_tracing_started_or_stopped_elsewhere():
    finder = LeakFinder()
    tracemalloc.start(2)
    assert finder.status()["started_by"] == "other"
    finder.baseline()
    tracemalloc.stop()
    # Someone stopped it: the baseline is gone with it.
    assert finder.status()["baseline"] is None
    finder.start(1)
    with pytest.raises(NoBaseline, match="no baseline"):
        finder.diff(5, "lineno")
    assert finder.stop()["stopped"] is True  # started here, stopped here


def test_reads_when_off_say_how_to_start():
    finder = LeakFinder()
    for read in (
        lambda: finder.top(5, "lineno"),
        finder.baseline,
        lambda: finder.diff(5, "lineno"),
    ):
        with pytest.raises(NotTracing) as raised:
            read()
        assert "POST /ops/memory/tracemalloc/start" in raised.value.advice("/ops")


def test_one_baseline_is_held_and_the_diff_compares_with_the_last():
    finder = LeakFinder()
    finder.start(1)
    finder.baseline()
    held = sum(isinstance(o, tracemalloc.Snapshot) for o in gc.get_objects())
    leak(20)
    second = finder.baseline()
    assert finder.status()["baseline"] == second
    gc.collect()
    assert sum(isinstance(o, tracemalloc.Snapshot) for o in gc.get_objects()) == held
    diff = finder.diff(5, "lineno")
    assert not any(is_here(s) and s["size_diff_bytes"] >= BLOCK for s in diff["stats"])


def test_threads_share_one_finder_and_never_wait_for_a_snapshot():
    finder = LeakFinder()
    finder.start(2)
    finder.baseline()
    calls = [finder.baseline, lambda: finder.diff(3, "lineno"), lambda: finder.top(3, "lineno")]

    def call(i: int) -> Any:
        try:
            return calls[i % 3]()
        except Busy as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, range(12)))
    assert all(isinstance(a, (dict, Busy)) for a in answers)
    assert any(isinstance(a, dict) for a in answers)
    with finder._lock:  # as if another thread were taking a snapshot
        for busy in (finder.baseline, finder.stop, lambda: finder.start(1)):
            with pytest.raises(Busy) as raised:
                busy()
            assert "try again" in raised.value.advice("/_perf")
    assert finder.stop()["stopped"] is True


# --------------------------------------------------------------------------- over HTTP


async def test_find_a_leak_over_real_uvicorn(live_server):
    server = live_server(leaky_app())
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        index = (await client.get("/_perf/")).json()["endpoints"]
        assert "POST /_perf/memory/snapshot" in index["leaks"]
        started = (await client.post("/_perf/memory/tracemalloc/start?frames=1")).json()
        assert (started["schema"], started["started"], started["frames"]) == (1, True, 1)
        snap = await client.post("/_perf/memory/snapshot")
        assert snap.status_code == 200 and snap.json()["schema"] == 1
        assert set(snap.json()["baseline"]) == {"at", "traced_mb", "traces"}
        for _ in range(50):
            assert (await client.get("/leak")).status_code == 200
        diff = (await client.get("/_perf/memory/diff?top=5")).json()
        first = diff["stats"][0]
        assert is_here(first) and first["line"] == line_of("LEAK-ROUTE"), diff
        assert first["count_diff"] >= 50 and diff["growth_mb"] >= 50 * BLOCK / 2**20 * 0.9
        top = (await client.get("/_perf/memory/top?top=3&group_by=filename")).json()
        assert (top["schema"], len(top["stats"])) == (1, min(3, top["count"]))
        stopped = (await client.post("/_perf/memory/tracemalloc/stop")).json()
        assert (stopped["schema"], stopped["stopped"], stopped["tracing"]) == (1, True, False)
        off = await client.get("/_perf/memory/top")
        assert off.status_code == 409 and off.json()["status"] == 409


BAD = [
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=abc", "frames"),
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=0", "frames"),
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=101", "frames"),
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=%C2%B2", "frames"),
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=-1", "frames"),
    ("POST", "/_perf/memory/tracemalloc/start", b"frames=", "frames"),
    ("POST", "/_perf/memory/tracemalloc/stop", b"now=1", "now"),
    ("GET", "/_perf/memory/top", b"top=0", "top"),
    ("GET", "/_perf/memory/top", b"top=1001", "top"),
    ("GET", "/_perf/memory/top", b"top=1e3", "top"),
    ("GET", "/_perf/memory/top", b"group_by=line", "lineno, filename, traceback"),
    ("GET", "/_perf/memory/top", b"frames=3", "frames"),
    ("POST", "/_perf/memory/snapshot", b"top=3", "top"),
    ("GET", "/_perf/memory/diff", b"top=abc", "top"),
    ("GET", "/_perf/memory/diff", b"group_by=LINENO", "lineno, filename, traceback"),
]


@pytest.mark.parametrize(("method", "path", "query", "named"), BAD)
async def test_bad_parameters_are_400_json(asgi, method, path, query, named):
    result = await asgi(leaky_app(), method, path, query=query)
    assert result.status == 400, result.body
    body = result.json()
    assert body["status"] == 400 and named in body["error"]
    assert not tracemalloc.is_tracing()


async def test_reads_are_409_while_tracing_is_off(asgi):
    mw = leaky_app(prefix="/ops/perf")
    for method, path in [("GET", "top"), ("POST", "snapshot"), ("GET", "diff")]:
        result = await asgi(mw, method, f"/ops/perf/memory/{path}")
        assert result.status == 409 and result.json()["status"] == 409
        assert "POST /ops/perf/memory/tracemalloc/start" in result.json()["error"]
    stop = await asgi(mw, "POST", "/ops/perf/memory/tracemalloc/stop")
    assert (stop.status, stop.json()["stopped"]) == (200, False)
    assert (await asgi(mw, "POST", "/ops/perf/memory/tracemalloc/start")).status == 200
    no_baseline = await asgi(mw, "GET", "/ops/perf/memory/diff")
    assert no_baseline.status == 409
    assert "POST /ops/perf/memory/snapshot" in no_baseline.json()["error"]
    with mw.core.leaks._lock:  # a snapshot is being taken
        busy = await asgi(mw, "POST", "/ops/perf/memory/snapshot")
    assert busy.status == 409 and "try again" in busy.json()["error"]


async def test_stop_is_409_when_the_app_traces_by_configuration(asgi):
    mw = leaky_app(tracemalloc=True)
    result = await asgi(mw, "POST", "/_perf/memory/tracemalloc/stop")
    assert (result.status, result.json()["option"]) == (409, "tracemalloc")
    assert tracemalloc.is_tracing()
    started = (await asgi(mw, "POST", "/_perf/memory/tracemalloc/start")).json()
    assert (started["started"], started["started_by"]) == (False, "config")


MEMORY_REQUESTS = [
    ("POST", "/_perf/memory/tracemalloc/start"),
    ("POST", "/_perf/memory/tracemalloc/stop"),
    ("GET", "/_perf/memory/top"),
    ("POST", "/_perf/memory/snapshot"),
    ("GET", "/_perf/memory/diff"),
]


@pytest.mark.parametrize(("method", "path"), MEMORY_REQUESTS)
async def test_every_memory_endpoint_is_behind_the_gate(asgi, method, path):
    token = leaky_app(token="s3cret")
    for headers in ([], [(b"authorization", b"Bearer wrong")]):
        result = await asgi(token, method, path, headers=headers)
        assert (result.status, result.json()["status"]) == (401, 401)
    remote = await asgi(leaky_app(), method, path, client=("203.0.113.5", 1))
    assert (remote.status, remote.json()["status"]) == (403, 403)
    assert not tracemalloc.is_tracing()
    opened = await asgi(token, method, path, headers=[(b"authorization", b"Bearer s3cret")])
    assert opened.status in (200, 409)


async def test_the_token_over_real_uvicorn(live_server):
    server = live_server(leaky_app(token="s3cret"))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.post("/_perf/memory/tracemalloc/start")).status_code == 401
        assert not tracemalloc.is_tracing()
        auth = {"Authorization": "Bearer s3cret"}
        response = await client.post("/_perf/memory/tracemalloc/start", headers=auth)
        assert response.status_code == 200 and tracemalloc.is_tracing()
