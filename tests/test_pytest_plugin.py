"""The pytest plugin and asgi_perf.testing.

The plugin is driven the way users meet it: pytest runs small test files in a
subprocess (``pytester``), where the plugin is loaded from its ``pytest11``
entry point like in any project that installs asgi_perf. The helpers of
``asgi_perf.testing`` are also used directly, and the fixtures in this very
process, where the plugin is loaded too.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request

from asgi_perf import ConfigError, PerfConfig, PerfMiddleware
from asgi_perf.testing import (
    PerfAppFactory,
    PerfTestClient,
    assert_budgets,
    check_budgets,
    format_verdict,
)

INNER_CONFTEST = """
import asyncio

import pytest
from fastapi import FastAPI


@pytest.fixture
def app():
    app = FastAPI()

    @app.get("/fast")
    async def fast():
        return {"ok": True}

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(0.03)
        return {"ok": True}

    return app
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with a FastAPI app fixture: ``GET /fast`` and ``GET /slow`` (30 ms).

    The tests that use it run pytest in a subprocess: they are marked ``slow``.
    """
    monkeypatch.setenv("COLUMNS", "200")  # the short summary lines are not cut
    pytester.makeconftest(INNER_CONFTEST)
    # pytest-asyncio is installed here and warns about an unset loop scope.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args)


# --------------------------------------------------------------------------- budgets


@pytest.mark.slow
def test_marker_budget_passes_and_fails_in_the_call_phase(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.perf_budget("GET /fast", p99_ms="1 s")
        def test_fast(perf_app, app):
            client = perf_app(app)
            for _ in range(5):
                assert client.get("/fast").status_code == 200

        @pytest.mark.perf_budget("GET /slow", p99_ms="10 ms", p50_ms=10)
        def test_slow(perf_app, app):
            client = perf_app(app)
            for _ in range(3):
                client.get("/slow")
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, failed=1)  # a failure, not a teardown error
    result.stdout.fnmatch_lines(
        [
            "*_ test_slow _*",
            "GET /slow p50_ms: * ms > limit 10 ms (3 samples)",
            "GET /slow p99_ms: * ms > limit 10 ms (3 samples)",
            "*Captured asgi_perf call*",
            "fail: GET /slow p50_ms: *",
            "*Captured asgi_perf call*",
            "pass: GET /fast p99_ms: * ms <= limit 1000 ms (5 samples)",
            "PASSED test_marker.py::test_fast",
            "FAILED test_marker.py::test_slow - *GET /slow p50_ms: *",
        ]
    )


@pytest.mark.slow
def test_fixture_argument_overrides_markers(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_argument="""
        import pytest

        pytestmark = pytest.mark.perf_budget("GET /slow", p99_ms="10 ms")

        def test_argument_fails(perf_app, app):
            client = perf_app(app, budgets={"GET /fast": {"p99_ms": 0}})
            client.get("/fast")

        def test_argument_wins(perf_app, app):
            client = perf_app(app, budgets={"GET /slow": {"p99_ms": "5 s"}})
            client.get("/slow")

        @pytest.mark.perf_budget("GET /slow", p99_ms="4 s")
        def test_closest_marker_wins(perf_app, app):
            perf_app(app).get("/slow")

        def test_module_marker(perf_app, app):
            perf_app(app).get("/slow")

        def test_glob_and_error_rate(perf_app, app):
            client = perf_app(app, budgets={"*": {"error_rate": "1%"}})
            client.get("/fast")
            client.get("/missing")
        """,
        test_dynamic="""
        def test_fixture_requested_in_the_body(request, app):
            perf_app = request.getfixturevalue("perf_app")
            perf_app(app, budgets={"GET /slow": {"p99_ms": 10}}).get("/slow")
        """,
    )
    result = run(inner)
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_argument.py::test_argument_fails - *GET /fast p99_ms: * > limit 0 ms*",
            "FAILED test_argument.py::test_module_marker - *GET /slow p99_ms: * > limit 10 ms*",
            "FAILED test_dynamic.py::test_fixture_requested_in_the_body - *GET /slow p99_ms: *",
        ]
    )
    result.stdout.fnmatch_lines(
        ['pass: GET /fast error_rate: 0% <= limit 1% (1 sample, budget "*")']
    )


@pytest.mark.slow
def test_budgets_file_from_the_rootdir(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makefile(
        ".toml",
        **{
            "perf-budgets": """
            min_samples = 2

            ["GET /slow"]
            p99_ms = "10 ms"
            """
        },
    )
    tests = inner.mkdir("tests")
    (tests / "test_file.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.perf_budget(budgets="perf-budgets.toml")
            def test_enough_samples(perf_app, app):
                client = perf_app(app)
                client.get("/slow")
                client.get("/slow")

            @pytest.mark.perf_budget(budgets="perf-budgets.toml")
            def test_too_few_samples(perf_app, app):
                perf_app(app).get("/slow")

            @pytest.mark.perf_budget(budgets="perf-budgets.toml", min_samples=1)
            def test_min_samples_from_the_marker(perf_app, app):
                perf_app(app).get("/slow")
            """
        )
    )
    # Started from a subdirectory: the file is still found, next to pytest.ini.
    monkeypatch.chdir(tests)
    result = run(inner)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "insufficient: GET /slow p99_ms: not enough samples (1 sample), limit 10 ms",
            "PASSED test_file.py::test_too_few_samples",
            "FAILED test_file.py::test_enough_samples - *GET /slow p99_ms: * (2 samples)",
            "FAILED test_file.py::test_min_samples_from_the_marker - *(1 sample)",
        ]
    )


@pytest.mark.slow
def test_tests_without_the_plugin_are_left_alone(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_plain="""
        import pytest

        def test_passes():
            assert True

        def test_fails():
            assert 1 == 2

        @pytest.mark.perf_budget("GET /slow", p99_ms="10 ms")
        def test_body_failure_comes_first(perf_app, app):
            perf_app(app).get("/slow")
            raise ValueError("the test's own failure")

        @pytest.mark.perf_budget("GET /slow", p99_ms="10 ms")
        @pytest.mark.xfail(reason="known slow", strict=True)
        def test_xfail(perf_app, app):
            perf_app(app).get("/slow")
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, failed=2, xfailed=1)
    result.stdout.fnmatch_lines(["E   *assert 1 == 2", "E*ValueError: the test's own failure"])
    result.stdout.no_fnmatch_line("GET /slow p99_ms: * > limit 10 ms (1 sample)")


@pytest.mark.slow
def test_bad_budgets_are_clear_errors(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.perf_budget("GET /slow", p98_ms=3)
        def test_unknown_metric_in_marker(perf_app, app):
            pass

        @pytest.mark.perf_budget({"GET /slow": {"p99_ms": 3}})
        def test_marker_shape(perf_app, app):
            pass

        @pytest.mark.limit_memory("lots")
        def test_bad_memory_limit():
            pass

        def test_unknown_metric_in_argument(perf_app, app):
            perf_app(app, budgets={"GET /slow": {"p98_ms": 3}})
        """
    )
    result = run(inner)
    result.assert_outcomes(errors=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_unknown_metric_in_marker*",
            "asgi_perf.ConfigError in a perf_budget marker: *GET /slow*: unknown field 'p98_ms'*",
            "*ERROR at setup of test_marker_shape*",
            'asgi_perf.ConfigError in a perf_budget marker: expected perf_budget("METHOD /path"*',
            "*ERROR at setup of test_bad_memory_limit*",
            "asgi_perf.ConfigError in a limit_memory marker: limit: expected a size like *'lots'",
            "*_ test_unknown_metric_in_argument _*",
            "E*asgi_perf.errors.ConfigError: *unknown field 'p98_ms'*",
        ]
    )


@pytest.mark.slow
def test_markers_are_registered(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_strict="""
        import pytest

        @pytest.mark.perf_budget("GET /fast", p99_ms=1000)
        @pytest.mark.limit_memory("100 MB")
        def test_both(perf_app, app):
            perf_app(app).get("/fast")
        """
    )
    run(inner, "--strict-markers").assert_outcomes(passed=1)
    run(inner, "--markers").stdout.fnmatch_lines(
        ["@pytest.mark.perf_budget(pattern, **limits)*", "@pytest.mark.limit_memory(limit)*"]
    )


@pytest.mark.slow
def test_the_plugin_can_be_disabled(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_off="def test_off(perf_app):\n    pass\n")
    result = run(inner, "-p", "no:asgi_perf")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'perf_app' not found*"])


# --------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_memory_limits(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_memory="""
        import tracemalloc

        import pytest

        @pytest.mark.limit_memory("24 MB")
        def test_marker_over():
            blob = [bytes(1024) for _ in range(50 * 1024)]
            assert len(blob) == 50 * 1024

        @pytest.mark.limit_memory("24 MB")
        def test_marker_under():
            blob = [bytes(1024) for _ in range(1024)]
            assert len(blob) == 1024

        def test_fixture_over(memory_budget):
            memory_budget("24 MB")
            blob = [bytes(1024) for _ in range(50 * 1024)]
            del blob

        @pytest.mark.limit_memory("24 MB")
        def test_transient_over():
            import sys, time

            # Held for less than a poll by construction, loaded machine or not:
            # a poll due now runs during the sleep, and the next one cannot
            # force a thread switch for a minute, only wait for one.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(60)
            try:
                time.sleep(0.01)
                assert len(bytes(50 * 2**20)) == 50 * 2**20
            finally:
                sys.setswitchinterval(interval)

        def test_tracing_was_stopped():
            assert not tracemalloc.is_tracing()
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_marker_over _*",
            "memory budget: peak * MB > limit 24 MB",
            "  top allocation sites at * MB (tracemalloc, by line):",
            "    test_memory.py:7: * MB in * blocks",
            "*_ test_fixture_over _*",
            "memory budget: peak * MB > limit 24 MB",
            "  top allocation sites at * MB (tracemalloc, by line):",
            "    test_memory.py:17: * MB in * blocks",
            "*_ test_transient_over _*",
            "memory budget: peak 50 MB > limit 24 MB",
            "  (no allocation sites: the memory was held for less than 5 ms)",
            "*Captured asgi_perf call*",
            "memory: peak * (limit 24 MB)",
        ]
    )


@pytest.mark.slow
def test_memory_limit_keeps_a_running_tracemalloc(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_traced="""
        import time
        import tracemalloc

        import pytest

        tracemalloc.start()
        OLD = [bytes(1024) for _ in range(30 * 1024)]  # traced before the test: not counted

        @pytest.mark.limit_memory("24 MB")
        def test_under():
            blob = [bytes(1024) for _ in range(4 * 1024)]

        @pytest.mark.limit_memory("1 MB")
        def test_over():
            blob = [bytes(1024) for _ in range(4 * 1024)]
            time.sleep(0.05)  # held long enough for a snapshot

        def test_still_tracing():
            assert tracemalloc.is_tracing()
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["memory budget: peak * MB > limit 1 MB", "    test_traced.py:15: *"]
    )


# --------------------------------------------------------------------------- the fixtures here


async def test_async_client_in_this_process(
    perf_app: PerfAppFactory, fastapi_app: Callable[..., FastAPI]
) -> None:
    client = perf_app(fastapi_app(), budgets={"GET /items/{item_id}": {"p99_ms": "5 s"}})
    async with client.async_client() as http:
        for i in range(3):
            assert (await http.get(f"/items/{i}")).json() == {"id": i}
    assert client.check()["ok"] is True
    assert client.snapshot()["routes"][0]["count"] == 3


@pytest.mark.perf_budget("GET /items/{item_id}", p99_ms="5 s", max_mb="1 GB")
@pytest.mark.limit_memory("200 MB")
def test_markers_in_this_process(
    perf_app: PerfAppFactory,
    fastapi_app: Callable[..., FastAPI],
    memory_budget: Callable[[str], None],
) -> None:
    memory_budget("100 MB")
    client = perf_app(fastapi_app())
    assert client.get("/items/1").status_code == 200
    verdicts = {v["metric"]: v["verdict"] for v in client.check()["verdicts"]}
    assert verdicts == {"p99_ms": "pass", "max_mb": "pass"}


# --------------------------------------------------------------------------- asgi_perf.testing


def lifespan_app(events: list[str], fail: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        if fail:
            raise RuntimeError("no database")
        yield {"db": "connected"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/db")
    async def db(request: Request) -> dict[str, Any]:
        return {"db": request.state.db, "loop": id(asyncio.get_running_loop())}

    return app


def test_client_runs_the_lifespan_on_one_loop() -> None:
    events: list[str] = []
    with PerfTestClient(lifespan_app(events)) as client:
        assert events == ["startup"]
        first, second = client.get("/db").json(), client.get("/db").json()
    assert events == ["startup", "shutdown"]
    assert first["db"] == "connected"
    assert first["loop"] == second["loop"]  # one loop for every request


def test_client_reports_a_failed_startup() -> None:
    app = lifespan_app([], fail=True)
    with (
        pytest.raises(RuntimeError, match="lifespan startup failed: ") as failed,
        PerfTestClient(app),
    ):
        pass
    assert str(failed.value.__cause__) == "no database"
    # The loop's thread was stopped although the with block never ran.
    assert "asgi_perf-test-client" not in {t.name for t in threading.enumerate()}


def test_client_sends_bodies_and_uses_test_defaults() -> None:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, str]:
        return {"body": (await request.body()).decode()}

    with PerfTestClient(app, config=PerfConfig(min_samples=7)) as client:
        assert client.post("/echo", content=b"bytes").json() == {"body": "bytes"}
        # A generator is a sync-only stream: it is read before it reaches the loop.
        chunks = (part for part in (b"one ", b"two"))
        assert client.post("/echo", content=chunks).json() == {"body": "one two"}
    assert client.perf.config.min_samples == client.budgets.min_samples == 7


def test_client_serves_an_app_without_lifespan(raw_app: Any) -> None:
    with PerfTestClient(raw_app) as client:
        assert client.get("/").text == "hello"
        # The client is on loopback: /_perf answers it.
        stats = client.get("/_perf/stats").json()
    assert stats["routes"][0]["route"] == "<unmatched>"


def test_client_defaults_for_tests(fastapi_app: Callable[..., FastAPI]) -> None:
    client = PerfTestClient(fastapi_app(), budgets={"GET /slow": {"p50_ms": 5}})
    with client:
        client.get("/slow", params={"ms": 20})
    assert client.perf.config.min_samples == 1
    assert client.perf.config.memory_sample_every == 1
    [line] = client.violations()
    assert re.fullmatch(r"GET /slow p50_ms: [\d.]+ ms > limit 5 ms \(1 sample\)", line)
    # Without budgets none apply: pyproject.toml is not read.
    assert not PerfTestClient(fastapi_app()).budgets


def test_check_and_assert_budgets(fastapi_app: Callable[..., FastAPI]) -> None:
    with PerfTestClient(fastapi_app()) as client:
        client.get("/slow", params={"ms": 20})
        client.get("/items/1")
    budgets = {"GET /slow": {"p99_ms": "10 ms"}, "GET /items/{item_id}": {"p99_ms": "5 s"}}
    expected = check_budgets(client, budgets)
    assert len(expected) == 1
    assert re.fullmatch(r"GET /slow p99_ms: [\d.]+ ms > limit 10 ms \(1 sample\)", expected[0])
    assert check_budgets(client.snapshot(), budgets) == expected
    assert check_budgets(client.perf, budgets) == expected
    assert check_budgets(client, budgets, min_samples=2) == []
    assert check_budgets(client) == []  # the client's own budgets: none
    with pytest.raises(AssertionError, match=r"GET /slow p99_ms: .* > limit 10 ms"):
        assert_budgets(client, budgets)
    assert_budgets(client, {"GET /slow": {"p99_ms": "5 s"}})
    with pytest.raises(TypeError, match="needs budgets"):
        check_budgets(client.snapshot())
    with pytest.raises(ConfigError, match="unknown field 'p98_ms'"):
        check_budgets(client, {"GET /slow": {"p98_ms": 1}})


def test_app_errors_as_responses_for_error_budgets() -> None:
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    budgets = {"GET /boom": {"error_rate": "1%"}}
    client = PerfTestClient(app, budgets)
    with pytest.raises(RuntimeError, match="boom"):
        client.get("/boom")  # by default the app's exception reaches the test
    client.close()
    with PerfTestClient(app, budgets, raise_app_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    assert client.violations() == ["GET /boom error_rate: 100% > limit 1% (1 sample)"]


def test_check_a_middleware_with_its_own_budgets(raw_app: Any) -> None:
    perf = PerfMiddleware(raw_app, budgets={"<unmatched>": {"max_ms": 0}}, min_samples=1)
    with PerfTestClient(perf, budgets={"<unmatched>": {"max_ms": "5 s"}}) as client:
        client.get("/x")
    # The inner middleware saw the request too, and judges it by its own budgets.
    [line] = check_budgets(perf)
    assert re.fullmatch(r"<unmatched> max_ms: [\d.e-]+ ms > limit 0 ms \(1 sample\)", line)
    assert client.violations() == []


@pytest.mark.parametrize(
    ("verdict", "line"),
    [
        (
            {"route": "GET /slow", "pattern": "GET /slow", "metric": "p99_ms", "limit": 50.0,
             "measured": 101.234, "samples": 412, "verdict": "fail"},
            "GET /slow p99_ms: 101.2 ms > limit 50 ms (412 samples)",
        ),
        (
            {"route": "GET /a", "pattern": "GET /*", "metric": "max_mb", "limit": 24.0,
             "measured": 2.5, "samples": 1, "verdict": "pass"},
            'GET /a max_mb: 2.5 MB <= limit 24 MB (1 sample, budget "GET /*")',
        ),
        (
            {"route": "GET /a", "pattern": "GET /a", "metric": "error_rate", "limit": 0.01,
             "measured": 0.5, "samples": 4, "verdict": "fail"},
            "GET /a error_rate: 50% > limit 1% (4 samples)",
        ),
        (
            {"route": "GET /a", "pattern": "GET /a", "metric": "p50_ms", "limit": 0.25,
             "measured": None, "samples": 0, "verdict": "insufficient"},
            "GET /a p50_ms: not enough samples (0 samples), limit 0.25 ms",
        ),
    ],
)  # fmt: skip
def test_format_verdict(verdict: dict[str, Any], line: str) -> None:
    assert format_verdict(verdict) == line
