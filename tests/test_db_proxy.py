"""``asgi_perf.db.instrument``: a sqlite3 connection that behaves exactly like sqlite3.

Each check runs the same steps on a raw connection and on an instrumented
one and compares what they return; the instrumented one must also have
counted its queries (outside any request: under ``<no request>``).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asgi_perf.db import NO_REQUEST, DBStats, instrument, record
from asgi_perf.db.report import merge_states, report

_OPEN: list[sqlite3.Connection] = []


def _connect() -> sqlite3.Connection:
    # Closed after the test: Python 3.13 warns (ResourceWarning) about one
    # garbage-collected unclosed, and the warnings filter makes that an error.
    conn = sqlite3.connect(":memory:")
    _OPEN.append(conn)
    return conn


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def sink() -> DBStats:
    # The last one built receives the queries run outside any request.
    return DBStats(route_key=lambda scope: "unused")


def _both(steps: Callable[[Any], Any]) -> tuple[Any, Any]:
    raw = _connect()
    wrapped = instrument(_connect())
    return steps(raw), steps(wrapped)


def _queries(sink: DBStats) -> dict[str, int]:
    body = report(merge_states([sink.state()]), threshold=10, slow_query_ms=100, limit=1000)
    return {s["statement"]: s["count"] for r in body["routes"] for s in r["statements"]}


def _setup(conn: Any) -> None:
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",), ("c",)])


def test_rows_iteration_fetch_and_cursor_attributes_match(sink: DBStats) -> None:
    def steps(conn: Any) -> Any:
        _setup(conn)
        cur = conn.cursor()
        cur.execute("SELECT id, name FROM t ORDER BY id")
        first = cur.fetchone()
        two = cur.fetchmany(2)
        rest = cur.fetchall()
        iterated = list(conn.execute("SELECT name FROM t WHERE id > ?", (1,)))
        ins = conn.execute("INSERT INTO t (name) VALUES ('d')")
        upd = conn.execute("UPDATE t SET name = 'x' WHERE id < 3")
        return (
            first, two, rest, iterated, cur.description, ins.lastrowid, upd.rowcount,
            cur.arraysize, [tuple(r) for r in conn.execute("SELECT * FROM t")],
        )  # fmt: skip

    raw, wrapped = _both(steps)
    assert wrapped == raw
    counts = _queries(sink)
    assert counts["SELECT id, name FROM t ORDER BY id"] == 1
    assert counts["INSERT INTO t (name) VALUES (?)"] == 2  # executemany once, the 'd' insert
    assert counts["UPDATE t SET name = ? WHERE id < ?"] == 1
    assert sink.state()["routes"][NO_REQUEST]["queries"] == 7


def test_row_factory_and_other_attributes_are_set_on_the_real_connection(sink: DBStats) -> None:
    def steps(conn: Any) -> Any:
        conn.row_factory = sqlite3.Row
        _setup(conn)
        row = conn.execute("SELECT id, name FROM t WHERE id = 2").fetchone()
        return type(row), row["name"], conn.in_transaction, conn.total_changes

    raw, wrapped = _both(steps)
    assert wrapped == raw
    wrapped_conn = instrument(_connect())
    wrapped_conn.isolation_level = None
    assert wrapped_conn._real.isolation_level is None


def test_context_manager_commits_and_rolls_back_like_sqlite3(sink: DBStats) -> None:
    def steps(conn: Any) -> Any:
        _setup(conn)
        conn.commit()
        with conn as entered:
            entered.execute("INSERT INTO t (name) VALUES ('kept')")
        with pytest.raises(ZeroDivisionError), conn:
            conn.execute("INSERT INTO t (name) VALUES ('rolled back')")
            raise ZeroDivisionError
        return [r[0] for r in conn.execute("SELECT name FROM t ORDER BY id")]

    raw, wrapped = _both(steps)
    assert wrapped == raw == ["a", "b", "c", "kept"]


def test_executescript_on_connection_and_cursor(sink: DBStats) -> None:
    def steps(conn: Any) -> Any:
        conn.executescript(
            "CREATE TABLE s (x); INSERT INTO s VALUES (1); INSERT INTO s VALUES (2);"
        )
        conn.cursor().executescript("INSERT INTO s VALUES (3);")
        return conn.execute("SELECT sum(x) FROM s").fetchone()

    raw, wrapped = _both(steps)
    assert wrapped == raw == (6,)
    counts = _queries(sink)
    assert counts["CREATE TABLE s (x); INSERT INTO s VALUES (?); INSERT INTO s VALUES (?);"] == 1


def test_chained_execute_returns_the_instrumented_cursor(sink: DBStats) -> None:
    conn = instrument(_connect())
    cur = conn.cursor()
    assert cur.execute("SELECT 1") is cur
    cur.execute("SELECT 2").fetchall()
    assert _queries(sink)["SELECT ?"] == 2
    assert instrument(conn) is conn


def test_a_driver_error_propagates_unchanged_and_is_counted_as_failed(sink: DBStats) -> None:
    raw = _connect()
    with pytest.raises(sqlite3.OperationalError) as raw_error:
        raw.execute("SELECT * FROM missing WHERE id = 7")
    conn = instrument(_connect())
    with pytest.raises(sqlite3.OperationalError) as wrapped_error:
        conn.execute("SELECT * FROM missing WHERE id = 7")
    assert type(wrapped_error.value) is type(raw_error.value)
    assert str(wrapped_error.value) == str(raw_error.value)
    # sqlite_errorname: Python 3.11 and later.
    name = getattr(raw_error.value, "sqlite_errorname", None)
    assert getattr(wrapped_error.value, "sqlite_errorname", None) == name
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.cursor().execute("INSERT INTO t VALUES (1)")
    body = report(merge_states([sink.state()]), threshold=10, slow_query_ms=100)
    (route,) = body["routes"]
    assert route["route"] == NO_REQUEST
    assert route["failed"] == 2
    failed = {s["statement"]: s["failed"] for s in route["statements"]}
    assert failed == {
        "SELECT * FROM missing WHERE id = ?": 1,
        "CREATE TABLE t (id INTEGER PRIMARY KEY)": 0,
        "INSERT INTO t VALUES (?)": 1,
    }


def test_record_counts_a_query_of_any_driver(sink: DBStats) -> None:
    line = sys._getframe().f_lineno + 1
    record("SELECT * FROM users WHERE email = 'ann@example.com'", 0.25, failed=True)
    body = report(merge_states([sink.state()]), threshold=10, slow_query_ms=100)
    assert body["routes"][0]["statements"][0] == {
        "statement": "SELECT * FROM users WHERE email = ?",
        "count": 1,
        "total_ms": 250.0,
        "mean_ms": 250.0,
        "max_ms": 250.0,
        "failed": 1,
    }
    (slow,) = body["slow"]
    assert slow["route"] == NO_REQUEST
    assert slow["call_site"] == f"tests/test_db_proxy.py:{line}"
    assert "ann@" not in repr(sink.state())


def test_rows_fetched_after_execute_add_to_the_statement_not_to_the_count() -> None:
    sink = DBStats(route_key=lambda scope: "unused", slow_query_ms=100)
    conn = instrument(_connect())
    # Each row sleeps 40 ms when sqlite reaches it: execute reaches the first,
    # fetchall the other two.
    conn.create_function("pause", 1, lambda s: time.sleep(s) or 0)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    line = sys._getframe().f_lineno + 1
    rows = conn.execute("SELECT x, pause(0.04) FROM t").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    body = report(merge_states([sink.state()]), threshold=10, slow_query_ms=100)
    (route,) = body["routes"]
    stmt = next(s for s in route["statements"] if s["statement"].startswith("SELECT x"))
    assert stmt["count"] == 1
    assert stmt["total_ms"] >= 120
    assert stmt["max_ms"] == stmt["total_ms"]
    (slow,) = body["slow"]
    assert slow["statement"] == "SELECT x, pause(?) FROM t"
    assert slow["duration_ms"] >= 120
    assert slow["call_site"] == f"tests/test_db_proxy.py:{line}"
    assert route["queries"] == 3
