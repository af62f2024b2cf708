"""Memory end to end under real uvicorn: per-route verdicts, the timeline, its slope."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_perf import PerfMiddleware

pytestmark = pytest.mark.slow

MB = 1 << 20
# Objects the routes keep: a leak the test can free at teardown.
_KEPT: list[bytes] = []


@pytest.fixture(autouse=True)
def _free_the_leaks():
    yield
    _KEPT.clear()


def memory_app(**perf: Any) -> PerfMiddleware:
    app = FastAPI()

    @app.get("/grow")
    async def grow() -> dict[str, int]:
        # One object, every page written, no temporary: RSS grows by 24 MB.
        # (A temporary as large can leave 24 MB more resident once glibc
        # raises its mmap threshold: that growth would be real, not noise.)
        _KEPT.append(b"\x01" * (24 * MB))
        return {"kept": len(_KEPT)}

    @app.get("/leak")
    async def leak() -> dict[str, int]:
        _KEPT.append(b"\x01" * MB)
        return {"kept": len(_KEPT)}

    @app.get("/nothing")
    async def nothing() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/other/{n}")
    async def other(n: int) -> dict[str, int]:
        return {"n": n}

    return PerfMiddleware(app, **perf)


def client(url: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, trust_env=False, timeout=30, **kwargs)


async def get_json(c: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await c.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_route_that_grows_24_mb_fails_max_mb_8_after_its_first_requests(live_server):
    budgets = {"GET /grow": {"max_mb": 8}, "GET /nothing": {"max_mb": 50}}
    server = live_server(memory_app(budgets=budgets))
    async with client(server.url) as c:
        for i in range(300):
            await c.get(f"/other/{i}")
        for _ in range(25):
            await c.get("/nothing")
        for _ in range(3):
            assert (await c.get("/grow")).status_code == 200
        snap = await get_json(c, "/_perf/stats")
        report = await get_json(c, "/_perf/budgets")
    routes = {r["route"]: r for r in snap["routes"]}
    grow = routes["GET /grow"]["memory_mb"]
    assert grow["samples"] == 3
    assert grow["method"] == "rss"
    assert 22 <= grow["max"] <= 27, grow
    assert routes["GET /nothing"]["memory_mb"]["samples"] >= 20
    verdicts = {(v["route"], v["metric"]): v for v in report["verdicts"]}
    assert verdicts[("GET /grow", "max_mb")]["verdict"] == "fail"
    assert verdicts[("GET /grow", "max_mb")]["samples"] == 3
    assert verdicts[("GET /nothing", "max_mb")]["verdict"] == "pass"
    assert report["ok"] is False
    # A busy route keeps being measured after its first 20 requests: every
    # 64th (memory_sample_every) of the other 280.
    assert routes["GET /other/{n}"]["memory_mb"]["samples"] >= 20 + 280 // 64 - 1


async def test_the_timeline_is_bounded_and_served_as_json_csv_and_svg(live_server):
    server = live_server(memory_app(memory_interval_s=0.05, memory_points=6))
    async with client(server.url) as c:
        await c.get("/nothing")
        await asyncio.sleep(1.0)
        data = await get_json(c, "/_perf/memory/timeline", format="json")
        assert data["schema"] == 1
        assert len(data["points"]) == 6 == data["max_points"]
        point = data["points"][-1]
        for name in ("rss_mb", "vms_mb", "fds", "threads", "connections", "requests"):
            assert isinstance(point[name], (int, float)), name
        assert len(point["gc_collections"]) == 3
        assert point["connections"] >= 1  # this client's
        assert point["requests"] >= 1

        response = await c.get("/_perf/memory/timeline", params={"format": "csv"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        assert response.headers["x-content-type-options"] == "nosniff"
        rows = list(csv.reader(io.StringIO(response.text)))
        assert rows[0][:4] == ["elapsed_min", "rss_mb", "vms_mb", "connections"]
        assert 6 <= len(rows) - 1 <= 7  # a point may land between the two calls

        response = await c.get("/_perf/memory/timeline", params={"format": "svg"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        ET.fromstring(response.text)


async def test_memory_says_now_the_trend_and_the_top_routes(live_server):
    budgets = {"process": {"max_rss_mb": 100_000, "max_growth_mb_per_h": "1000 GB/h"}}
    server = live_server(memory_app(memory_interval_s=0.05, budgets=budgets))
    async with client(server.url) as c:
        for _ in range(2):
            await c.get("/grow")
        await asyncio.sleep(0.8)
        data = await get_json(c, "/_perf/memory")
        stats = await get_json(c, "/_perf/stats")
    assert data["schema"] == 1
    assert data["now"]["rss_mb"] > 48
    assert data["trend"] in ("flat", "growing")
    assert data["points"] >= 8 and data["slope_mb_per_h"] is not None
    assert data["peak_rss_mb"] >= data["now"]["rss_mb"] - 1
    assert data["routes"][0]["route"] == "GET /grow"
    assert data["tracemalloc"]["tracing"] is False
    assert {v["metric"]: v["verdict"] for v in data["budgets"]} == {
        "max_rss_mb": "pass",
        "max_growth_mb_per_h": "pass",
    }
    assert stats["process"]["trend"] in ("flat", "growing")
    assert stats["process"]["peak_rss_mb"] > 48


async def test_a_steady_leak_is_growing_and_its_slope_is_within_20_percent(live_server):
    server = live_server(memory_app(memory_interval_s=0.1))
    async with client(server.url) as c:
        await c.post("/_perf/reset")
        start = time.monotonic()
        # 1 MB every 20 ms for 6 s, paced by the clock (not by response times).
        sent = 0
        while (elapsed := time.monotonic() - start) < 6.0:
            due = int(elapsed / 0.02)
            while sent < due:
                await c.get("/leak")
                sent += 1
            await asyncio.sleep(0.005)
        data = await get_json(c, "/_perf/memory")
        timeline = await get_json(c, "/_perf/memory/timeline")
    points = timeline["points"]
    skip = data["warmup_points"]
    first, last = points[skip], points[-1]
    minutes = last["elapsed_min"] - first["elapsed_min"]
    # The true rate: the requests served between the points, 1 MB each.
    true_mb_per_h = (last["requests"] - first["requests"]) / minutes * 60
    assert data["trend"] == "growing", data["reason"]
    assert data["slope_mb_per_h"] == pytest.approx(true_mb_per_h, rel=0.2)


async def test_a_flat_app_is_not_growing(live_server):
    server = live_server(memory_app(memory_interval_s=0.05))
    async with client(server.url) as c:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            await asyncio.gather(*(c.get(f"/other/{i}") for i in range(20)))
        data = await get_json(c, "/_perf/memory")
    assert data["points"] >= 10
    assert data["trend"] == "flat", data["reason"]


async def test_reset_starts_a_new_timeline(live_server):
    server = live_server(memory_app(memory_interval_s=0.05))
    async with client(server.url) as c:
        await asyncio.sleep(0.5)
        before = len((await get_json(c, "/_perf/memory/timeline"))["points"])
        assert (await c.post("/_perf/reset")).status_code == 200
        after = len((await get_json(c, "/_perf/memory/timeline"))["points"])
    assert before >= 5
    assert after <= 2


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/_perf/memory/timeline", {"format": "xml"}),
        ("/_perf/memory/timeline", {"format": ""}),
        ("/_perf/memory/timeline", {"points": "5"}),
        ("/_perf/memory", {"top": "5"}),
    ],
)
async def test_bad_parameters_are_400_json(live_server, path, params):
    server = live_server(memory_app())
    async with client(server.url) as c:
        response = await c.get(path, params=params)
    assert response.status_code == 400
    assert response.json()["status"] == 400


async def test_the_timeline_off_is_409_and_memory_still_answers(live_server):
    server = live_server(memory_app(memory_interval_s=0))
    async with client(server.url) as c:
        response = await c.get("/_perf/memory/timeline")
        assert response.status_code == 409
        assert "memory_interval_s" in response.json()["error"]
        data = await get_json(c, "/_perf/memory")
    assert data["trend"] == "flat" and data["slope_mb_per_h"] is None
    assert data["now"]["rss_mb"] > 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_perf/memory"),
        ("GET", "/_perf/memory/timeline"),
        ("GET", "/_perf/memory/timeline?format=csv"),
        ("GET", "/_perf/memory/timeline?format=svg"),
    ],
)
async def test_every_memory_endpoint_is_behind_the_gate(live_server, method, path):
    server = live_server(memory_app(token="s3cret"))
    async with client(server.url) as c:
        denied = await c.request(method, path)
        allowed = await c.request(method, path, headers={"Authorization": "Bearer s3cret"})
    assert denied.status_code == 401
    assert "error" in denied.json()
    assert allowed.status_code == 200
