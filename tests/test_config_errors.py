"""A configuration error never takes the app down (spec 7, issue #12).

The README's first snippet, ``budgets="perf-budgets.toml"`` without that
file, under uvicorn's default ``--lifespan auto``, used to answer every
request of the app with 500: Starlette builds its middleware stack on the
first event, and ``PerfMiddleware.__init__`` raised. Now the error is logged
once at start-up, the app is served untouched and ``/_perf`` answers 503
with the error; ``strict=True`` (``ASGI_PERF_STRICT=1``) raises as before.
Real uvicorn, real FastAPI, nothing mocked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_perf import ConfigError, PerfConfig, PerfMiddleware

REMOTE = ("203.0.113.7", 40000)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own ASGI_PERF_* must not change what is tested here.
    for name in ("ASGI_PERF_STRICT", "ASGI_PERF_BUDGETS", "ASGI_PERF_PREFIX", "ASGI_PERF_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def shop(**perf: Any) -> FastAPI:
    """A FastAPI app with a lifespan of its own, wrapped with ``perf`` options."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started = True
        yield

    app = FastAPI(lifespan=lifespan)
    app.state.started = False

    @app.get("/products")
    async def products() -> dict[str, list[str]]:
        return {"products": ["tea", "coffee"]}

    app.add_middleware(PerfMiddleware, **perf)
    return app


def errors_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_missing_budgets_file_leaves_the_app_up_under_uvicorn(
    live_server: Any, caplog: pytest.LogCaptureFixture, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # "missing.toml" is looked up here, and is not
    app = shop(budgets="missing.toml")
    caplog.set_level(logging.INFO)
    url = live_server(app, lifespan="auto").url
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for _ in range(3):
            response = client.get("/products")
            assert response.status_code == 200, response.text
            assert response.json() == {"products": ["tea", "coffee"]}
        stats = client.get("/_perf/stats")
        index = client.get("/_perf/")
    # The app's own lifespan ran: uvicorn saw a working lifespan protocol.
    assert app.state.started is True
    assert stats.status_code == 503
    assert stats.headers["content-type"] == "application/json"
    body = stats.json()
    assert body["option"] == "budgets"
    assert "missing.toml" in body["reason"] and "No such file" in body["reason"]
    assert body["error"].startswith("asgi_perf is not running: budgets: missing.toml")
    assert "ASGI_PERF_STRICT=1" in body["fix"]
    assert index.status_code == 503 and index.json()["option"] == "budgets"

    errors = errors_of(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    logged = errors[0]
    assert logged.name == "asgi_perf"
    assert "budgets: missing.toml: cannot read budgets" in logged.getMessage()
    assert "/_perf/* answers 503" in logged.getMessage()
    assert not any("unsupported" in r.getMessage() for r in caplog.records)


def test_strict_raises_as_before(tmp_path: Any) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"budgets: .*missing\.toml"):
        PerfMiddleware(FastAPI(), budgets=missing, strict=True)
    app = shop(budgets=missing, strict=True)
    with pytest.raises(ConfigError, match="budgets"):
        app.build_middleware_stack()
    # In a PerfConfig, validated like the rest.
    with pytest.raises(ConfigError, match="budgets"):
        PerfMiddleware(FastAPI(), config=PerfConfig(budgets=missing, strict=True))


def test_strict_is_read_before_the_other_options() -> None:
    # Whatever the order, and whatever else is wrong: strict decides.
    with pytest.raises(ConfigError, match="prefix"):
        PerfMiddleware(FastAPI(), prefix="bad", max_routes=0, strict=True)
    with pytest.raises(ConfigError, match="unknown option 'max_route'"):
        PerfMiddleware(FastAPI(), max_route=3, strict=True)


def test_the_environment_variable_sets_and_unsets_strict(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ASGI_PERF_STRICT", "1")
    with pytest.raises(ConfigError, match="max_routes"):
        PerfMiddleware(FastAPI(), max_routes=0)
    # The environment overrides the code, as for every option.
    monkeypatch.setenv("ASGI_PERF_STRICT", "0")
    mw = PerfMiddleware(FastAPI(), max_routes=0, strict=True)
    assert mw.config_error is not None and "max_routes" in mw.config_error
    assert mw.config.strict is False
    # A bad value is an error like any other, and not strict.
    monkeypatch.setenv("ASGI_PERF_STRICT", "maybe")
    mw = PerfMiddleware(FastAPI())
    assert mw.config_error is not None and mw.config_error.startswith("ASGI_PERF_STRICT='maybe'")
    assert len(errors_of(caplog)) == 2


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_routes": 0}, "max_routes"),
        ({"max_route": 3}, "max_route"),
        ({"strict": "yes"}, "strict"),
        ({"budgets": {"GET /x": {"p98_ms": 5}}}, "budgets"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
async def test_every_bad_option_gives_503_naming_it(
    options: dict[str, Any], option: str, asgi: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = shop(**options)
    response = await asgi(app, "GET", "/_perf/stats")
    assert response.status == 503
    assert response.json()["option"] == option
    assert (await asgi(app, "GET", "/products")).status == 200
    assert len(errors_of(caplog)) == 1


async def test_the_error_keeps_the_prefix_and_the_gate(asgi: Any) -> None:
    app = shop(prefix="/ops/perf", token="s3cret", max_routes=0)
    # Under the configured prefix; the old one is the app's (404).
    assert (await asgi(app, "GET", "/_perf/stats")).status == 404
    assert (await asgi(app, "GET", "/ops/perf/stats")).status == 401
    auth = [(b"authorization", b"Bearer s3cret")]
    response = await asgi(app, "GET", "/ops/perf/stats", headers=auth)
    assert response.status == 503
    assert response.json()["option"] == "max_routes"
    # Without a token, a remote client sees no details.
    remote = await asgi(shop(max_routes=0), "GET", "/_perf/stats", client=REMOTE)
    assert remote.status == 403


async def test_disabled_and_broken_is_just_the_app(asgi: Any) -> None:
    app = shop(enabled=False, max_routes=0)
    assert (await asgi(app, "GET", "/_perf/stats")).status == 404
    assert (await asgi(app, "GET", "/products")).status == 200


def test_in_process_readers_get_the_error(tmp_path: Any) -> None:
    mw = PerfMiddleware(FastAPI(), budgets=str(tmp_path / "missing.toml"))
    assert mw.enabled is False
    for read in (mw.snapshot, mw.reset, lambda: mw.budgets):
        with pytest.raises(ConfigError, match="asgi_perf is not running: budgets: "):
            read()
