"""The ``/_perf`` HTTP API (spec 6) and configuration errors (spec 1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_perf import ConfigError, PerfConfig, PerfMiddleware

ENDPOINTS = {
    "/_perf/stats": ("GET", ("histograms",)),
    "/_perf/budgets": ("GET", ()),
    "/_perf/reset": ("POST", ()),
    "/_perf/": ("GET", ()),
}
LATENCY_FIELDS = {"p50", "p90", "p95", "p99", "p999", "max", "mean"}


def bad_inputs() -> list[Any]:
    """(method, path, query, status, words the error must name)."""
    cases: list[Any] = []
    for path, (allowed, _) in ENDPOINTS.items():
        name = path.rsplit("/", 2)[-1] or "index"
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            if method != allowed:
                cases.append(pytest.param(method, path, "", 405, [method], id=f"{name}-{method}"))
        cases.append(
            pytest.param(allowed, path, "bogus=1", 400, ["bogus"], id=f"{name}-unknown-param")
        )
        cases.append(
            pytest.param(allowed, path, "x%20y=2", 400, ["x y"], id=f"{name}-encoded-param")
            if path != "/_perf/stats"
            else pytest.param(allowed, path, "histograms=1&zzz", 400, ["zzz"], id="stats-extra")
        )
    for value in ("maybe", "2", "-1", "yes%00", "%FF", "1.0"):
        cases.append(
            pytest.param(
                "GET",
                "/_perf/stats",
                f"histograms={value}",
                400,
                ["histograms"],
                id=f"hist-{value}",
            )
        )
    for path in (
        "/_perf/nope",
        "/_perf/stats/",
        "/_perf/stats/extra",
        "/_perf//stats",
        "/_perf/STATS",
        "/_perf/stats.json",
        "/_perf/../etc/passwd",
        "/_perf/%2e%2e/etc/passwd",
        "/_perf/reset/now",
    ):
        cases.append(pytest.param("GET", path, "", 404, [path], id=f"404-{path}"))
    return cases


@pytest.fixture
def app_and_mw() -> tuple[FastAPI, PerfMiddleware]:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app, PerfMiddleware(app)


@pytest.mark.parametrize(("method", "path", "query", "status", "names"), bad_inputs())
async def test_bad_input_is_a_4xx_json_answer_naming_the_problem(
    asgi, app_and_mw, method, path, query, status, names
):
    _, mw = app_and_mw
    for i in range(3):
        assert (await asgi(mw, "GET", f"/items/{i}")).status == 200
    before = mw.snapshot()["routes"]

    result = await asgi(mw, method, path, query=query.encode())

    assert result.status == status, result.body
    assert result.header("content-type") == "application/json"
    body = result.json()
    assert body["status"] == status
    for name in names:
        assert name in body["error"], body
    if status == 405:
        assert result.header("allow") == ENDPOINTS[path][0]
    if status == 400:
        assert body["parameter"] == names[0]
    after = mw.snapshot()["routes"]
    assert [(r["route"], r["count"]) for r in after] == [("GET /items/{item_id}", 3)]
    assert [(r["route"], r["count"]) for r in before] == [("GET /items/{item_id}", 3)]


# Every integer query parameter of the API: (method, path, the rest of the query).
INTEGER_PARAMETERS = [
    ("GET", "/_perf/profiles", "limit", ""),
    ("GET", "/_perf/profile", "last", ""),
    ("GET", "/_perf/profile", "pid", "seconds=1&"),
    ("POST", "/_perf/windows", "pid", ""),
    ("POST", "/_perf/memory/tracemalloc/start", "frames", ""),
    ("GET", "/_perf/memory/top", "top", ""),
    ("GET", "/_perf/memory/diff", "top", ""),
]
NOT_WHOLE_NUMBERS = {
    "superscript-2": "%C2%B2",  # str.isdigit() says yes, int() says no
    "arabic-indic-3": "%D9%A3",  # int() takes it, nobody typed 3
    "fullwidth-1": "%EF%BC%91",
    "exponent": "1e3",
    "negative": "-1",
    "plus": "%2B1",
    "space": "%201",
    "underscore": "1_0",
    "empty": "",
    "5000-digits": "9" * 5000,  # int() refuses past 4300 digits
}


@pytest.mark.parametrize(
    ("method", "path", "name", "before"),
    INTEGER_PARAMETERS,
    ids=[f"{p.rsplit('/', 1)[-1]}-{n}" for _, p, n, _ in INTEGER_PARAMETERS],
)
@pytest.mark.parametrize("value", NOT_WHOLE_NUMBERS.values(), ids=list(NOT_WHOLE_NUMBERS))
async def test_integer_parameters_take_ascii_digits_only(asgi, method, path, name, before, value):
    # continuous=True: ?last= is read (not refused as "continuous is off").
    mw = PerfMiddleware(FastAPI(), continuous=True)
    result = await asgi(mw, method, path, query=f"{before}{name}={value}".encode())
    assert result.status == 400, result.body
    assert result.header("content-type") == "application/json"
    body = result.json()
    assert body["parameter"] == name
    assert "whole number" in body["error"]
    assert len(body["error"]) < 200  # a huge value is not echoed whole
    assert mw.snapshot()["internal_errors"] == 0


NOT_DECIMALS = {
    "nan": "nan",
    "inf": "inf",
    "exponent": "1e1",
    "fullwidth-10": "%EF%BC%91%EF%BC%90",  # float() reads it as 10
    "underscore": "1_0",
    "space": "%2010",
    "5000-digits": "9" * 5000,
}


@pytest.mark.parametrize("value", NOT_DECIMALS.values(), ids=list(NOT_DECIMALS))
async def test_seconds_take_ascii_decimals_only(asgi, value):
    mw = PerfMiddleware(FastAPI())
    result = await asgi(mw, "POST", "/_perf/windows", query=f"seconds={value}".encode())
    assert result.status == 400, result.body
    body = result.json()
    assert body["parameter"] == "seconds"
    assert len(body["error"]) < 200
    assert mw.snapshot()["internal_errors"] == 0


async def test_seconds_with_a_fraction_are_read(asgi):
    mw = PerfMiddleware(FastAPI())
    started = await asgi(mw, "POST", "/_perf/windows", query=b"seconds=1.5")
    assert started.status == 201, started.body
    stopped = await asgi(mw, "POST", f"/_perf/windows/{started.json()['id']}/stop")
    assert stopped.status == 200, stopped.body


async def test_bad_input_never_runs_the_action(asgi, app_and_mw):
    _, mw = app_and_mw
    assert (await asgi(mw, "GET", "/items/1")).status == 200
    assert (await asgi(mw, "POST", "/_perf/reset", query=b"force=1")).status == 400
    assert (await asgi(mw, "GET", "/_perf/reset")).status == 405
    assert mw.snapshot()["requests"] == 1


async def test_head_on_a_read_endpoint_is_answered(client_for, app_and_mw):
    _, mw = app_and_mw
    async with client_for(mw) as client:
        assert (await client.head("/_perf/stats")).status_code == 200
        response = await client.head("/_perf/reset")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"


async def test_stats_has_the_documented_fields(client_for, app_and_mw):
    _, mw = app_and_mw
    async with client_for(mw) as client:
        assert (await client.get("/items/7")).status_code == 200
        assert (await client.get("/items/nope")).status_code == 422
        response = await client.get("/_perf/stats")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    snap = response.json()
    assert snap["schema"] == 1
    assert next(iter(snap)) == "schema"
    assert isinstance(snap["pid"], int)
    assert isinstance(snap["uptime_s"], (int, float)) and snap["uptime_s"] >= 0
    assert snap["requests"] == 2
    assert snap["internal_errors"] == 0
    assert snap["process"]["rss_mb"] > 0
    [route] = snap["routes"]
    assert route["route"] == "GET /items/{item_id}"
    assert route["method"] == "GET"
    assert route["template"] == "/items/{item_id}"
    assert route["count"] == 2
    assert (route["errors"], route["exceptions"], route["in_flight"]) == (0, 0, 0)
    assert route["status"]["2xx"] == 1
    assert route["status"]["4xx"] == 1
    assert route["status"]["3xx"] == 0
    assert route["status"]["5xx"] == 0
    assert route["bytes"] > 0
    assert set(route["latency_ms"]) >= LATENCY_FIELDS
    assert set(route["ttfb_ms"]) >= LATENCY_FIELDS
    assert 0 < route["ttfb_ms"]["max"] <= route["latency_ms"]["max"]
    assert route["memory_mb"]["method"] == "rss"
    recent = route["recent"]
    assert recent["window_s"] == 60
    assert recent["count"] == 2
    assert recent["rps"] > 0
    assert set(recent["latency_ms"]) >= LATENCY_FIELDS
    assert "histograms" not in route
    # The in-process snapshot is the same document.
    same = mw.snapshot()
    assert same.keys() == snap.keys()
    assert same["routes"][0].keys() == route.keys()
    assert same["routes"][0]["count"] == 2


@pytest.mark.parametrize("value", ["1", "true", "yes", ""])
async def test_histograms_adds_bucket_counts(asgi, app_and_mw, value):
    _, mw = app_and_mw
    for i in range(5):
        await asgi(mw, "GET", f"/items/{i}")
    result = await asgi(mw, "GET", "/_perf/stats", query=f"histograms={value}".encode())
    assert result.status == 200
    [route] = result.json()["routes"]
    latency = route["histograms"]["latency_ns"]
    assert latency["count"] == 5
    assert sum(n for _, n in latency["buckets"]) + latency["zero"] == 5
    assert route["histograms"]["ttfb_ns"]["count"] == 5


@pytest.mark.parametrize("value", ["0", "false", "no"])
async def test_histograms_off(asgi, app_and_mw, value):
    _, mw = app_and_mw
    await asgi(mw, "GET", "/items/1")
    result = await asgi(mw, "GET", "/_perf/stats", query=f"histograms={value}".encode())
    assert result.status == 200
    assert "histograms" not in result.json()["routes"][0]


async def test_reset_returns_what_it_cleared_and_zeroes_counts(client_for, app_and_mw):
    _, mw = app_and_mw
    async with client_for(mw) as client:
        for i in range(3):
            assert (await client.get(f"/items/{i}")).status_code == 200
        before = (await client.get("/_perf/stats")).json()
        cleared = await client.post("/_perf/reset")
        assert cleared.status_code == 200
        cleared_body = cleared.json()
        after = (await client.get("/_perf/stats")).json()
        assert (await client.get("/items/9")).status_code == 200
        again = (await client.post("/_perf/reset")).json()
        empty = (await client.post("/_perf/reset")).json()
    assert cleared_body["schema"] == 1
    assert cleared_body["requests"] == 3
    assert [(r["route"], r["count"]) for r in cleared_body["routes"]] == [
        ("GET /items/{item_id}", 3)
    ]
    assert cleared_body["routes"][0]["latency_ms"] == before["routes"][0]["latency_ms"]
    assert after["requests"] == 0
    assert after["routes"] == []
    assert [(r["route"], r["count"]) for r in again["routes"]] == [("GET /items/{item_id}", 1)]
    assert empty["requests"] == 0 and empty["routes"] == []


async def test_in_process_reset_matches_the_endpoint(asgi, app_and_mw):
    _, mw = app_and_mw
    await asgi(mw, "GET", "/items/1")
    cleared = mw.reset()
    assert cleared["requests"] == 1
    assert mw.snapshot()["requests"] == 0


@pytest.mark.parametrize("path", ["/_perf/", "/_perf"])
async def test_index_lists_the_endpoints(asgi, app_and_mw, path):
    _, mw = app_and_mw
    result = await asgi(mw, "GET", path)
    assert result.status == 200
    body = result.json()
    assert body["schema"] == 1
    assert body["endpoints"]["stats"] == "GET /_perf/stats"
    assert body["endpoints"]["budgets"] == "GET /_perf/budgets"
    assert body["endpoints"]["reset"] == "POST /_perf/reset"


async def test_index_is_html_for_a_browser(asgi, app_and_mw):
    _, mw = app_and_mw
    result = await asgi(mw, "GET", "/_perf/", headers=[(b"accept", b"text/html,*/*")])
    assert result.status == 200
    assert (result.header("content-type") or "").startswith("text/html")
    assert result.header("x-content-type-options") == "nosniff"
    assert b"/_perf/stats" in result.body


async def test_budgets_endpoint(client_for):
    app = FastAPI()

    @app.get("/fast")
    async def fast_endpoint() -> dict[str, bool]:
        return {"ok": True}

    mw = PerfMiddleware(
        app,
        budgets={"GET /fast": {"p99_ms": 10_000}, "GET /never": {"p50_ms": 1}},
        min_samples=2,
    )
    async with client_for(mw) as client:
        first = (await client.get("/_perf/budgets")).json()
        for _ in range(2):
            assert (await client.get("/fast")).status_code == 200
        response = await client.get("/_perf/budgets")
    assert response.status_code == 200
    body = response.json()
    assert body["schema"] == 1
    assert body["ok"] is True
    verdicts = {v["route"]: v for v in body["verdicts"]}
    fast = verdicts["GET /fast"]
    assert fast.keys() >= {"route", "pattern", "metric", "limit", "measured", "samples", "verdict"}
    assert (fast["pattern"], fast["metric"], fast["limit"]) == ("GET /fast", "p99_ms", 10_000)
    assert (fast["samples"], fast["verdict"]) == (2, "pass")
    assert 0 < fast["measured"] < 10_000
    assert verdicts["GET /never"]["verdict"] == "insufficient"
    assert {v["route"]: v["verdict"] for v in first["verdicts"]} == {
        "GET /fast": "insufficient",
        "GET /never": "insufficient",
    }


async def test_budgets_endpoint_reports_a_failure(asgi):
    app = FastAPI()

    @app.get("/slowish")
    async def slowish() -> dict[str, bool]:
        return {"ok": True}

    mw = PerfMiddleware(app, budgets={"GET /slowish": {"max_ms": "0 ms"}}, min_samples=1)
    await asgi(mw, "GET", "/slowish")
    body = (await asgi(mw, "GET", "/_perf/budgets")).json()
    assert body["ok"] is False
    [verdict] = body["verdicts"]
    assert (verdict["verdict"], verdict["metric"], verdict["samples"]) == ("fail", "max_ms", 1)
    assert verdict["measured"] > 0


# --------------------------------------------------------------------------- enabled / prefix


def app_with_own_perf_route() -> FastAPI:
    app = FastAPI()

    @app.get("/_perf/mine")
    async def mine() -> dict[str, str]:
        return {"owner": "app"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app


async def test_disabled_is_a_transparent_pass_through(asgi):
    mw = PerfMiddleware(app_with_own_perf_route(), enabled=False)
    stats = await asgi(mw, "GET", "/_perf/stats")
    assert stats.status == 404
    assert stats.json() == {"detail": "Not Found"}  # the app's own 404
    mine = await asgi(mw, "GET", "/_perf/mine")
    assert (mine.status, mine.json()) == (200, {"owner": "app"})
    assert (await asgi(mw, "GET", "/items/1")).status == 200
    assert mw.snapshot()["requests"] == 0
    assert mw.snapshot()["routes"] == []


async def test_disabled_from_the_environment(asgi, monkeypatch):
    monkeypatch.setenv("ASGI_PERF_ENABLED", "0")
    mw = PerfMiddleware(app_with_own_perf_route(), enabled=True)
    assert (await asgi(mw, "GET", "/_perf/stats")).json() == {"detail": "Not Found"}
    assert (await asgi(mw, "GET", "/items/1")).status == 200
    assert mw.snapshot()["requests"] == 0


async def test_disabled_with_add_middleware_over_real_uvicorn(live_server):
    app = app_with_own_perf_route()
    app.add_middleware(PerfMiddleware, enabled=False)
    server = live_server(app)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/_perf/mine")).json() == {"owner": "app"}
        response = await client.get("/_perf/stats")
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
        assert "x-content-type-options" not in response.headers


@pytest.mark.parametrize("source", ["keyword", "env"])
async def test_custom_prefix(asgi, monkeypatch, source):
    if source == "env":
        monkeypatch.setenv("ASGI_PERF_PREFIX", "/ops/perf")
        mw = PerfMiddleware(app_with_own_perf_route())
    else:
        mw = PerfMiddleware(app_with_own_perf_route(), prefix="/ops/perf")
    assert (await asgi(mw, "GET", "/items/1")).status == 200
    # The default prefix now belongs to the app.
    assert (await asgi(mw, "GET", "/_perf/mine")).json() == {"owner": "app"}
    assert (await asgi(mw, "GET", "/_perf/stats")).json() == {"detail": "Not Found"}
    # A path that merely starts with the prefix is the app's, too.
    assert (await asgi(mw, "GET", "/ops/perfx")).status == 404
    stats = await asgi(mw, "GET", "/ops/perf/stats")
    assert stats.status == 200
    routes = {r["route"]: r["count"] for r in stats.json()["routes"]}
    assert routes == {"GET /items/{item_id}": 1, "GET /_perf/mine": 1, "<unmatched>": 2}
    index = (await asgi(mw, "GET", "/ops/perf/")).json()
    assert index["endpoints"]["stats"] == "GET /ops/perf/stats"
    missing = await asgi(mw, "GET", "/ops/perf/nope")
    assert (missing.status, missing.header("content-type")) == (404, "application/json")


async def test_perf_requests_are_not_measured(asgi, app_and_mw):
    _, mw = app_and_mw
    for _ in range(3):
        await asgi(mw, "GET", "/_perf/stats")
    await asgi(mw, "GET", "/_perf/nope")
    assert mw.snapshot()["routes"] == []


# --------------------------------------------------------------------------- configuration


def noop_app() -> FastAPI:
    return FastAPI()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_route": 3}, "max_route"),
        ({"tokn": "x"}, "tokn"),
        ({"prefix": "_perf"}, "prefix"),
        ({"prefix": "/_perf/"}, "prefix"),
        ({"prefix": "/"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "/a b"}, "prefix"),
        ({"prefix": "/_perf\n"}, "prefix"),  # "$" matched before a trailing newline
        ({"prefix": 5}, "prefix"),
        ({"max_routes": 0}, "max_routes"),
        ({"max_routes": -1}, "max_routes"),
        ({"max_routes": "10"}, "max_routes"),
        ({"max_routes": True}, "max_routes"),
        ({"max_routes": 2.5}, "max_routes"),
        ({"min_samples": -1}, "min_samples"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"tracemalloc": "on"}, "tracemalloc"),
        ({"token": ""}, "token"),
        ({"token": 123}, "token"),
        ({"authorize": "admin"}, "authorize"),
        ({"route_key": "path"}, "route_key"),
        ({"budgets": 42}, "budgets"),
        ({"budgets": {"GET /x": {"p99": 5}}}, "p99"),
        ({"budgets": {"GET /x": {"p99_ms": "fast"}}}, "p99_ms"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]!r}" for k in v),
)
def test_invalid_options_fail_at_construction_naming_the_option(options, name):
    # strict=True: fail fast, as in CI (without it asgi_perf steps aside:
    # tests/test_config_errors.py).
    with pytest.raises(ConfigError, match=name) as caught:
        PerfMiddleware(noop_app(), strict=True, **options)
    assert isinstance(caught.value, ValueError)


def test_invalid_option_via_add_middleware_fails_when_the_stack_is_built():
    app = noop_app()
    app.add_middleware(PerfMiddleware, max_routes=0, strict=True)
    with pytest.raises(ConfigError, match="max_routes"):
        app.build_middleware_stack()


def test_missing_budgets_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        PerfMiddleware(noop_app(), budgets=str(missing), strict=True)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ASGI_PERF_ENABLED", "maybe"),
        ("ASGI_PERF_TRACEMALLOC", "sometimes"),
        ("ASGI_PERF_MAX_ROUTES", "many"),
        ("ASGI_PERF_MAX_ROUTES", "1.5"),
        ("ASGI_PERF_MIN_SAMPLES", "x"),
        # Whole numbers are ASCII digits here too, as in query parameters.
        ("ASGI_PERF_MAX_ROUTES", "٣٠٠"),
        ("ASGI_PERF_MAX_ROUTES", "1_000"),
        ("ASGI_PERF_MIN_SAMPLES", "+5"),
        # Decimals are ASCII too: float() reads all of these.
        ("ASGI_PERF_SAMPLE_RATE", "nan"),
        ("ASGI_PERF_MEMORY_INTERVAL_S", "inf"),
        ("ASGI_PERF_SAMPLE_RATE", "5e-2"),
        ("ASGI_PERF_FLUSH_INTERVAL_S", "\uff11"),
    ],
)
def test_bad_environment_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        PerfMiddleware(noop_app(), strict=True)


@pytest.mark.parametrize(
    ("var", "value", "option"),
    [
        ("ASGI_PERF_MAX_ROUTES", "0", "max_routes"),
        ("ASGI_PERF_PREFIX", "no-slash", "prefix"),
    ],
)
def test_out_of_range_environment_values_name_the_option(monkeypatch, var, value, option):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=option):
        PerfMiddleware(noop_app(), strict=True)


@pytest.mark.parametrize(
    ("var", "value"), [("ASGI_PERF_MAX_ROUTES", "0"), ("ASGI_PERF_PREFIX", "no-slash")]
)
def test_out_of_range_environment_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        PerfMiddleware(noop_app(), strict=True)


async def test_environment_overrides_keywords(asgi, monkeypatch, tmp_path: Path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('["GET /items/{item_id}"]\np99_ms = 5000\n')
    monkeypatch.setenv("ASGI_PERF_MAX_ROUTES", "7")
    monkeypatch.setenv("ASGI_PERF_BUDGETS", str(budgets))
    monkeypatch.setenv("ASGI_PERF_PREFIX", "/metrics-perf")
    mw = PerfMiddleware(app_with_own_perf_route(), max_routes=500, prefix="/_perf")
    assert mw.config.max_routes == 7
    assert mw.config.prefix == "/metrics-perf"
    await asgi(mw, "GET", "/items/1")
    body = (await asgi(mw, "GET", "/metrics-perf/budgets")).json()
    assert [(v["route"], v["metric"], v["limit"]) for v in body["verdicts"]] == [
        ("GET /items/{item_id}", "p99_ms", 5000)
    ]


def test_config_object_is_frozen_and_can_be_passed_whole():
    config = PerfConfig(max_routes=3, prefix="/p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_routes = 4  # type: ignore[misc]
    mw = PerfMiddleware(noop_app(), config=config)
    assert (mw.config.max_routes, mw.config.prefix) == (3, "/p")
    # Keywords refine a passed config.
    mw = PerfMiddleware(noop_app(), config=config, max_routes=9)
    assert (mw.config.max_routes, mw.config.prefix) == (9, "/p")
    assert PerfConfig().prefix == "/_perf"
    assert PerfConfig().max_routes == 500
    with pytest.raises(ConfigError, match="max_routes"):
        PerfConfig(max_routes=0)
