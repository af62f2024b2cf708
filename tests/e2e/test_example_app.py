"""End to end: examples/app.py under real uvicorn, with its perf-budgets.toml."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

# The example app under a real server: outside the quick loop (-m "not slow").
pytestmark = pytest.mark.slow

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "app.py"


@pytest.fixture
def example_app() -> Any:
    """A fresh import of examples/app.py, so every test starts with empty stats.

    Loaded from its path: ``examples`` is a directory of scripts, not a package.
    """
    spec = importlib.util.spec_from_file_location("asgi_perf_example_app", EXAMPLE_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_every_route_is_keyed_by_its_template(
    live_server: Callable[..., Any], example_app: Any
) -> None:
    server = live_server(example_app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        for path in (
            "/",
            "/items/1",
            "/items/2",
            "/search?q=oak",
            "/slow",
            "/report",
            "/stream",
            "/api/v1/users/u1",
            "/api/v1/users/u2",
        ):
            assert (await client.get(path)).status_code == 200, path
        created = await client.post("/items", json={"name": "lamp", "price": 9.5})
        assert created.status_code == 201, created.text
        # /flaky answers 200 or 500 at random; either way it is one request.
        assert (await client.get("/flaky")).status_code in (200, 500)
        stats = await get_json(client, "/_perf/stats")
    counts = {r["route"]: r["count"] for r in stats["routes"]}
    assert counts == {
        "GET /": 1,
        "GET /items/{item_id}": 2,
        "GET /search": 1,
        "GET /slow": 1,
        "GET /report": 1,
        "GET /stream": 1,
        "GET /flaky": 1,
        "GET /api/v1/users/{user_id}": 2,
        "POST /items": 1,
    }


async def test_budgets_from_the_toml_give_verdicts(
    live_server: Callable[..., Any], example_app: Any
) -> None:
    server = live_server(example_app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        before = await get_json(client, "/_perf/budgets")
        # Concurrent, so 20 sleeps of 120 ms cost about 120 ms of test time.
        await asyncio.gather(*(client.get("/slow") for _ in range(20)))
        for i in range(20):
            await client.get(f"/api/v1/users/u{i}")
        after = await get_json(client, "/_perf/budgets")
        stats = await get_json(client, "/_perf/stats")

    assert Path(before["source"]) == EXAMPLE_APP.with_name("perf-budgets.toml")
    assert before["min_samples"] == 20
    # Untested exact budgets are listed, not hidden, until traffic arrives.
    assert {v["verdict"] for v in before["verdicts"]} == {"insufficient"}
    assert "GET /slow" in {v["route"] for v in before["verdicts"]}

    by_key = {(v["route"], v["metric"]): v for v in after["verdicts"]}
    # The handler sleeps 120 ms: above the 100 ms limit on any machine.
    slow = by_key["GET /slow", "p99_ms"]
    assert (slow["verdict"], slow["limit"], slow["samples"]) == ("fail", 100.0, 20)
    assert slow["measured"] >= 100.0
    assert after["ok"] is False
    # The glob applies to the router's route; its verdict follows its numbers.
    user = by_key["GET /api/v1/users/{user_id}", "p99_ms"]
    assert user["pattern"] == "GET /api/v1/*"
    assert user["verdict"] == ("fail" if user["measured"] > user["limit"] else "pass")
    routes = {r["route"]: r for r in stats["routes"]}
    assert routes["GET /slow"]["budget"] == "fail"
    assert stats["budgets"]["ok"] is False
