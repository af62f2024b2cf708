"""yappi holds nothing after a capture, or, where it leaks, is capped (issue #13.1).

yappi up to 1.7.6 on Python 3.11+ keeps a reference to every coroutine it
sees return (sumerc/yappi#217): 1 860 coroutines per window of 50 FastAPI
requests, +26 MB/min with ``sample_rate=0.05`` under load. These tests run
real yappi in-process and count the app's endpoint coroutines still alive
after many captures: they stay flat where yappi does not leak, and stop at
the leak budget where it does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
import types
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from helpers import perf_middleware_of

from asgi_perf import PerfMiddleware

yappi_impl = pytest.importorskip("asgi_perf.engines.yappi_impl")

BUDGET_MB = 1.0
CAPTURES = 14
REQUESTS = 20
PROFILE = [(b"x-perf-profile", b"1")]


def build_app(perf: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"id": item_id}

    app.state.endpoint = get_item.__code__
    app.add_middleware(PerfMiddleware, engine="yappi", window_engine="yappi", **perf)
    return app


def live_endpoint_coroutines(code: types.CodeType) -> int:
    """Coroutines of the endpoint still in memory: every one ran and returned."""
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if isinstance(o, types.CoroutineType) and o.cr_code is code
    )


@pytest.fixture
def traced() -> Iterator[None]:
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    yield
    if not was:
        tracemalloc.stop()


async def window_capture(asgi: Any, app: FastAPI) -> int:
    """One yappi window over ``REQUESTS`` requests; its status (201 started, 409 refused)."""
    started = await asgi(app, "POST", "/_perf/windows", query=b"seconds=60")
    if started.status != 201:
        return int(started.status)
    await asyncio.gather(*(asgi(app, "GET", f"/items/{i}") for i in range(REQUESTS)))
    stopped = await asgi(app, "POST", f"/_perf/windows/{started.json()['id']}/stop")
    assert stopped.status == 200, stopped.body
    return 201


async def request_captures(asgi: Any, app: FastAPI) -> int:
    """``REQUESTS`` requests that ask for a yappi profile; 200 when any was profiled."""
    answers = await asyncio.gather(
        *(asgi(app, "GET", f"/items/{i}", headers=PROFILE) for i in range(REQUESTS))
    )
    return 200 if any(a.header("x-perf-profile-id") for a in answers) else 409


@pytest.mark.parametrize("capture", [window_capture, request_captures])
async def test_live_coroutines_and_memory_stay_bounded_over_many_yappi_captures(
    asgi, traced, capture
):
    # A small store: the profiles it keeps (a window's is ~230 KB) are not a
    # leak; nor are the memory timeline and the loop monitor's readings, which
    # fill their bounded buffers while a slow run (coverage) goes on.
    app = build_app(
        {
            "max_concurrent_profiles": REQUESTS,
            "max_profiles": 3,
            "memory_interval_s": 0,
            "loop_monitor": False,
        }
    )
    await asgi(app, "GET", "/items/0")  # builds the middleware stack
    engine = perf_middleware_of(app).core.engine("yappi")
    engine.leak_budget = int(BUDGET_MB * 2**20)
    code = app.state.endpoint
    base = live_endpoint_coroutines(code)
    counts, traced_bytes, statuses = [], [], []
    for _ in range(CAPTURES):
        statuses.append(await capture(asgi, app))
        counts.append(live_endpoint_coroutines(code) - base)
        traced_bytes.append(tracemalloc.get_traced_memory()[0])

    # Once refused (or never leaking), the process stops growing: the last
    # captures add no endpoint coroutines and almost no memory.
    assert counts[-1] == counts[-4], counts
    growth = traced_bytes[-1] - traced_bytes[-4]
    if engine.leak is None and growth >= 64 * 1024:
        # Seen with yappi 1.7.6 on Python 3.10, where nothing caps yappi. On
        # 3.11+ the same leak is there, but the coroutine leak's budget turns
        # yappi off before it shows.
        pytest.xfail(
            f"yappi's _del_pit never releases a function entry's name and module "
            f"strings at clear_stats, and asgi_perf's per-request tags give every "
            f"profiled request its own entries: +{growth // 1024} KB over 3 captures"
        )
    assert growth < 64 * 1024, (growth, traced_bytes)
    if engine.leak is None:
        # yappi holds nothing: every capture runs, nothing stays alive.
        assert set(statuses) <= {200, 201}, statuses
        assert max(counts) <= 2, counts
    else:
        # Leaked coroutines stop at the budget; later captures are refused.
        per_capture_bytes = REQUESTS * 40 * yappi_impl.CORO_BYTES
        assert counts[-1] * yappi_impl.CORO_BYTES <= engine.leak_budget + per_capture_bytes
        assert statuses[-1] not in (200, 201), statuses
        assert engine.refusal() is not None


async def test_a_window_that_spends_the_leak_budget_stops_early(client_for):
    app = build_app({})
    async with client_for(app) as client:
        assert (await client.get("/items/0")).status_code == 200
        engine = perf_middleware_of(app).core.engine("yappi")
        if engine.leak is None:
            pytest.skip("the installed yappi does not leak: no budget to spend")
        engine.leak_budget = 64 * 1024

        async def load() -> None:
            while True:
                await asyncio.gather(*(client.get(f"/items/{i}") for i in range(10)))

        loader = asyncio.ensure_future(load())
        try:
            started = asyncio.get_running_loop().time()
            response = await client.get("/_perf/profile", params={"seconds": 20})
            waited = asyncio.get_running_loop().time() - started
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
        assert response.status_code == 200, response.text
        # Answered when the window stopped, not at its 20 s.
        assert waited < 10, waited
        listed = (await client.get("/_perf/profiles", params={"kind": "window"})).json()
        (meta,) = listed["profiles"]
        assert "leak budget is spent" in meta["stopped_early"]


async def test_a_refused_window_says_why(asgi):
    app = build_app({})
    await asgi(app, "GET", "/items/0")
    engine = perf_middleware_of(app).core.engine("yappi")
    if engine.leak is None:
        pytest.skip("the installed yappi does not leak: nothing is refused")
    engine.leaked = engine.leak_budget
    refused = await asgi(app, "POST", "/_perf/windows", query=b"seconds=60")
    assert refused.status == 409, refused.body
    assert "yappi#217" in refused.json()["error"]
    assert "until restart" in refused.json()["error"]


async def test_sample_rate_never_feeds_a_leaking_yappi(asgi, caplog):
    caplog.set_level(logging.ERROR, logger="asgi_perf")
    app = build_app({"sample_rate": 1.0, "profile_budget": 1.0})
    await asgi(app, "GET", "/items/0")
    mw = perf_middleware_of(app)
    engine = mw.core.engine("yappi")
    if engine.leak is None:
        pytest.skip("the installed yappi does not leak: sampling is allowed")
    code = app.state.endpoint
    base = live_endpoint_coroutines(code)
    for i in range(30):
        assert (await asgi(app, "GET", f"/items/{i}")).status == 200
    stats = mw.core.requests.stats()
    assert stats["profiled"] == 0
    assert stats["refused"] == 31
    assert "yappi#217" in stats["sampling_refused"]
    assert live_endpoint_coroutines(code) - base <= 2
    # Said once, loudly, at start-up.
    assert any("sample_rate=1.0 is not applied" in r.getMessage() for r in caplog.records)
    # A request that asks is still profiled.
    asked = await asgi(app, "GET", "/items/1", headers=PROFILE)
    assert asked.header("x-perf-profile-id")
