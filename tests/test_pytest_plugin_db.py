"""DB budgets in the pytest plugin: ``@pytest.mark.perf_budget("GET /orders", max_queries=3)``.

pytest runs small test files in a subprocess (``pytester``), as a user's
project would, against a FastAPI app whose sqlite3 connection goes through
``asgi_perf.db.instrument``: ``GET /orders`` has a deliberate N+1 (one query
per order), ``GET /orders/joined`` asks once. The plugin turns DB capture on
by itself when a budget needs it.
"""

from __future__ import annotations

import pytest

from asgi_perf.testing import PerfTestClient, check_budgets

INNER_CONFTEST = """
import sqlite3

import pytest
from fastapi import FastAPI

import asgi_perf.db

ORDERS = 5


@pytest.fixture
def app():
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
    conn.execute("CREATE TABLE lines (order_id INTEGER, sku TEXT)")
    conn.executemany("INSERT INTO orders (user_id) VALUES (1)", [()] * ORDERS)
    conn.executemany("INSERT INTO lines VALUES (?, 'x')", [(i,) for i in range(1, ORDERS + 1)])
    db = asgi_perf.db.instrument(conn)
    app = FastAPI()

    @app.get("/orders")
    async def orders():
        found = db.execute("SELECT id FROM orders WHERE user_id = ?", (1,)).fetchall()
        return [db.execute("SELECT sku FROM lines WHERE order_id = ?", (i,)).fetchall()
                for (i,) in found]

    @app.get("/orders/joined")
    async def joined():
        return db.execute(
            "SELECT o.id, l.sku FROM orders o JOIN lines l ON l.order_id = o.id"
            " WHERE o.user_id = ?", (1,)
        ).fetchall()

    yield app
    conn.close()
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("COLUMNS", "200")  # the short summary lines are not cut
    monkeypatch.delenv("ASGI_PERF_DB", raising=False)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args)


@pytest.mark.slow
def test_max_queries_fails_the_n_plus_one_and_passes_the_join(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_orders="""
        import pytest

        @pytest.mark.perf_budget("GET /orders", max_queries=3)
        def test_n_plus_one(perf_app, app):
            client = perf_app(app)
            assert client.get("/orders").status_code == 200

        @pytest.mark.perf_budget("GET /orders/joined", max_queries=3, p99_db_ms="1 s")
        def test_joined(perf_app, app):
            client = perf_app(app)
            for _ in range(2):
                assert client.get("/orders/joined").status_code == 200
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, failed=1)  # a failure of the test, not a teardown error
    result.stdout.fnmatch_lines(
        [
            "*_ test_n_plus_one _*",
            "GET /orders max_queries: 6 queries > limit 3 queries (1 sample)",
            "*Captured asgi_perf call*",
            "fail: GET /orders max_queries: 6 queries > limit 3 queries (1 sample)",
            "*Captured asgi_perf call*",
            "pass: GET /orders/joined max_queries: 1 query <= limit 3 queries (2 samples)",
            "pass: GET /orders/joined p99_db_ms: * ms <= limit 1000 ms (2 samples)",
            "PASSED test_orders.py::test_joined",
            "FAILED test_orders.py::test_n_plus_one - *GET /orders max_queries: 6 queries > *",
        ]
    )


@pytest.mark.slow
def test_a_db_budget_with_capture_off_fails_saying_how(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_off="""
        import pytest

        @pytest.mark.perf_budget("GET /orders/joined", max_queries=3)
        def test_off(perf_app, app):
            client = perf_app(app, db=False)
            assert client.get("/orders/joined").status_code == 200
        """
    )
    result = run(inner)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "GET /orders/joined max_queries: no DB numbers: start the app with db=True "
            "(or ASGI_PERF_DB=1) (1 sample), limit 3 queries",
            "*Captured asgi_perf call*",
            "insufficient: GET /orders/joined max_queries: no DB numbers: *",
        ]
    )


@pytest.mark.slow
def test_a_budgets_file_with_max_queries(inner: pytest.Pytester) -> None:
    inner.makefile(".toml", budgets='["GET /orders"]\nmax_queries = 6\n')
    inner.makepyfile(
        test_file="""
        import pytest

        @pytest.mark.perf_budget(budgets="budgets.toml")
        def test_exactly_at_the_limit(perf_app, app):
            perf_app(app).get("/orders")
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pass: GET /orders max_queries: 6 queries <= limit 6 queries *"])


def test_the_client_turns_capture_on_for_a_db_budget() -> None:
    from fastapi import FastAPI

    with PerfTestClient(FastAPI(), budgets={"GET /x": {"max_queries": 1}}) as client:
        assert client.perf.config.db is True
        # Never requested, capture on: not enough samples, nothing to fix.
        assert check_budgets(client) == []
    with PerfTestClient(FastAPI(), budgets={"GET /x": {"p99_ms": 1}}) as client:
        assert client.perf.config.db is False
    with PerfTestClient(FastAPI(), budgets={"GET /x": {"max_queries": 1}}, db=False) as client:
        assert check_budgets(client) == [
            "GET /x max_queries: no DB numbers: start the app with db=True (or ASGI_PERF_DB=1) "
            "(0 samples), limit 1 query"
        ]
