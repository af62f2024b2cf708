"""asgi_perf.testing.soak and the pytest plugin's ``soak`` fixture.

The apps are real FastAPI apps served in-process; the leak is a real one (a
module-level list that keeps 10 KB per request). Each soak makes 200
requests: 180 after the warm-up leak 1.8 MB, above the trend's 1 MB of
allocator noise, and the whole soak takes a second or two.
"""

from __future__ import annotations

import re
import textwrap
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from asgi_perf import ConfigError
from asgi_perf.testing.soak import SoakResult, asoak, soak

REQUESTS = 200
LEAKED: list[bytes] = []
# The names of the /seen/{name} requests, in the order they came.
arrived: list[str] = []


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(marker))


@pytest.fixture
def app() -> Iterator[FastAPI]:
    """``/leak`` keeps 10 KB per request; ``/flat`` allocates as much and lets it go;
    ``/seen/{name}`` notes the paths in the order they came; ``/items`` echoes a JSON body.
    The lifespan puts a greeting in the request state."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    app = FastAPI(lifespan=lifespan)

    @app.get("/leak")
    async def leak() -> dict[str, int]:
        LEAKED.append(b"x" * 10240)  # the leak
        return {"held": len(LEAKED)}

    @app.get("/flat")
    async def flat(request: Request) -> dict[str, Any]:
        scratch = [b"y" * 1024 for _ in range(10)]
        return {"size": sum(map(len, scratch)), "greeting": request.state.greeting}

    @app.get("/seen/{name}")
    async def seen(name: str) -> dict[str, str]:
        arrived.append(name)
        return {"name": name}

    @app.post("/items")
    async def items(item: dict[str, Any]) -> dict[str, Any]:
        return item

    yield app
    LEAKED.clear()
    arrived.clear()


def test_a_leaking_route_fails_naming_its_line(app: FastAPI) -> None:
    with pytest.raises(AssertionError) as raised:
        soak(app, "/leak", requests=REQUESTS)
    message = str(raised.value)
    # Not RSS: after other tests the leak may fill memory the process freed before.
    assert "tracemalloc is growing: +1." in message
    assert "MB per 1000 requests" in message
    # 10 KB a request: 10 MB per 1000 requests, give or take the list and the allocator.
    sites = message.split("growing sites (tracemalloc, by line, since the warm-up):\n")[1]
    first = sites.splitlines()[0].strip()
    leak = rf"test_soak\.py:{_line_of('# the leak')}: \+1\.\d+ MB in \+180 blocks"
    assert re.search(leak, first), message


def test_a_leak_measured_without_check(app: FastAPI) -> None:
    result = soak(app, "/leak", requests=REQUESTS, check=False)
    assert isinstance(result, SoakResult)
    assert result.label == "GET /leak"
    assert (result.warmup, result.every) == (20, 3)
    # One reading at the end of the warm-up, one every 3 requests.
    assert [p.requests for p in result.points] == list(range(20, 201, 3))
    assert result.statuses == {200: REQUESTS}
    assert result.traced is not None
    assert not result.traced.flat
    assert result.rss.per_1000_mb < 12.0  # at most the leak, if the heap had no room for it
    assert 8.0 < result.traced.per_1000_mb < 12.0
    assert 1.5 < result.traced.growth_mb < 2.2
    assert "tracemalloc is growing: +" in "\n".join(result.problems())
    assert "tracemalloc: growing, +" in result.summary()


def test_a_flat_route_passes(app: FastAPI) -> None:
    result = soak(app, "/flat", requests=REQUESTS)
    assert result.traced is not None
    assert result.rss.flat and result.traced.flat, result.summary()
    assert result.problems() == []
    assert abs(result.traced.per_1000_mb) < 1.0, result.summary()
    assert result.statuses == {200: REQUESTS}  # the lifespan ran: request.state had its greeting


def test_a_growth_limit_below_the_trends_noise(app: FastAPI) -> None:
    # 180 requests after the warm-up keep 1.8 MB: more than a 0.5 MB limit.
    result = soak(app, "/leak", requests=REQUESTS, max_growth_mb="0.5 MB", check=False)
    assert result.max_growth_mb == 0.5
    assert any(p.startswith("tracemalloc is growing") for p in result.problems())
    flat = soak(app, "/flat", requests=100, tracemalloc=False, max_growth_mb=50)
    assert flat.traced is None and flat.sites == ()


def test_tracemalloc_is_left_as_it_was(app: FastAPI) -> None:
    assert not tracemalloc.is_tracing()
    soak(app, "/flat", requests=40, warmup=0, every=5)
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        soak(app, "/flat", requests=40, warmup=0, every=5)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_paths_in_turn_a_function_of_the_index_and_a_json_body(app: FastAPI) -> None:
    result = soak(app, ["/seen/a", "/seen/b"], requests=20, every=2, tracemalloc=False)
    assert arrived == ["a", "b"] * 10
    assert result.label == "GET /seen/a, /seen/b"
    arrived.clear()

    def by_index(i: int) -> str:
        return f"/seen/{i}"

    result = soak(app, by_index, requests=20, every=2, tracemalloc=False)
    assert arrived == [str(i) for i in range(20)]
    assert result.label == "GET by_index(i)"
    posted = soak(app, "/items", method="POST", json={"a": 1}, requests=20, every=2)
    assert posted.statuses == {200: 20}


def test_an_error_status_stops_the_soak(app: FastAPI) -> None:
    with pytest.raises(AssertionError, match=r"GET /nowhere answered 404 \(request 1\)"):
        soak(app, "/nowhere", requests=20)
    result = soak(app, "/nowhere", requests=20, allow_errors=True, tracemalloc=False)
    assert result.statuses == {404: 20}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"requests": 0}, "warmup: 0 <= warmup < requests needed, got 0 and 0"),
        ({"requests": 10, "warmup": 10}, "warmup: 0 <= warmup < requests needed"),
        ({"every": 0}, "every: must be at least 1"),
        ({"requests": 100, "every": 20}, "every: 6 readings after the warm-up"),
        ({"max_growth_mb": "lots"}, "max_growth_mb"),
    ],
)
def test_options_are_checked_before_any_request(
    app: FastAPI, options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        soak(app, "/seen/x", **options)
    assert arrived == []


async def test_asoak_keeps_the_callers_loop_running(app: FastAPI) -> None:
    result = await asoak(app, "/flat", requests=40, warmup=0, every=5, tracemalloc=False)
    assert result.statuses == {200: 40}


# --------------------------------------------------------------------------- the fixture

SOAK_TESTS = """
from fastapi import FastAPI

HELD = []
app = FastAPI()


@app.get("/flat")
async def flat():
    return {"ok": True}


@app.get("/leak")
async def leak():
    HELD.append(b"x" * 10240)
    return {"held": len(HELD)}


def test_flat(soak):
    result = soak(app, "/flat", requests=200)
    assert result.rss.flat


def test_leak(soak):
    soak(app, "/leak", requests=200)
"""


@pytest.mark.slow
def test_the_fixture_passes_a_flat_app_and_fails_a_leak(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the short summary lines are not cut
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_soaked=textwrap.dedent(SOAK_TESTS))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leak _*",
            "E * tracemalloc is growing: +* MB over the 180 requests after the warm-up, *",
            "E * soak GET /leak: 200 requests (20 of warm-up, a reading every 3) in * s",
            "E * growing sites (tracemalloc, by line, since the warm-up):",
            "E * test_soaked.py:14: +1.* MB in +180 blocks",
            "test_soaked.py:24: AssertionError",
            "*= PASSES =*",
            "*Captured asgi_perf call*",
            "soak GET /flat: 200 requests *",
            "  rss: flat, *",
            "PASSED test_soaked.py::test_flat",
            "FAILED test_soaked.py::test_leak - AssertionError: *is growing*",
        ]
    )
